"""The typed store API: StoreInfo / TileMeta round-trip the attrs written on disk, malformed
attrs name their key, and windows are read through the fast shard reader on the stores we
write (a fallback to zarr reads warns once)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import zarr
from helpers import write_train_store

from npa_precompute.shards import ShardReader, SlowReadWarning, ZarrReader, unsupported_layout
from npa_precompute.store import (
    StoreError,
    StoreInfo,
    TileMeta,
    build_tile_meta,
    open_store,
    open_tile,
    store_info,
)

ARRAYS = ("label", "image", "affinity/k2", "affinity/k4", "weights/k4_log10_L0.5")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_train_store(tmp_path_factory.mktemp("api"))


def _raw(path, *parts) -> dict:
    return json.loads(path.joinpath(*parts, "zarr.json").read_text())["attributes"]


def test_store_info_round_trips_the_root_attrs(store):
    raw = _raw(store)["npaloss"]
    info = store_info(open_store(store))
    assert info.to_dict() == raw
    assert StoreInfo.from_dict(raw).to_dict() == raw
    assert info.preset == "isprs" and info.ignore_index == 255 and info.num_classes == 6
    assert info.classes[4] == "car" and info.palette[4] == (255, 255, 0)
    assert info.foreground == info.foreground_classes == (0, 1, 2, 3, 4)
    # the typed attributes are the only way in: no mapping access by raw key
    assert not hasattr(info, "get") and not hasattr(info, "__getitem__")


def test_tile_meta_round_trips_the_tile_attrs(store):
    for tid in ("areaA", "areaB"):
        raw = _raw(store, "tiles", tid)
        tile = open_tile(open_store(store), tid)
        assert TileMeta.from_dict(raw).to_dict() == raw
        meta = tile.meta
        assert meta.complete and meta.tile_id == tid and meta.shape == tile.shape
        assert meta.ks == (2, 4) and meta.transform_specs == ("log10:L=0.5",)
        assert meta.count_range[4] == tuple(raw["count_range"]["4"])
        assert list(meta.image_mean) == raw["image_mean"]
        assert meta.label_path == raw["source"]["label_path"]


def test_build_tile_meta_writes_todays_attrs(store):
    raw = _raw(store, "tiles", "areaA")
    meta = build_tile_meta(
        tile_id="areaA",
        shape=tuple(raw["shape"]),
        source=raw["source"],
        params=raw["params"],
        georef=raw["georef"],
        class_pixels=np.array(raw["class_pixels"]),
        ignored=round(raw["ignore_fraction"] * raw["shape"][0] * raw["shape"][1]),
        count_range={int(k): tuple(v) for k, v in raw["count_range"].items()},
        stored_weights=reversed(raw["stored_weights"]),
        image_stats={"image_mean": raw["image_mean"], "image_std": raw["image_std"]},
    )
    assert meta.to_dict() == {**raw, "complete": False}


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"shape": "80x96"}, r"tile 'a': attr 'shape' is malformed"),
        ({"shape": [80, 96, 3, 2]}, r"tile 'a': attr 'shape' is malformed .*\(D, H, W\)"),
        ({"count_range": {"4": [1]}}, r"tile 'a': attr 'count_range' is malformed"),
        ({"class_pixels": [1.5, 2]}, r"tile 'a': attr 'class_pixels' is malformed"),
    ],
)
def test_malformed_tile_attrs_name_tile_and_key(attrs, match):
    with pytest.raises(StoreError, match=match):
        TileMeta.from_dict(attrs, tile_id="a")


def test_malformed_store_info_names_the_key():
    good = {"classes": ["a", "b"], "ignore_index": 255, "schema_version": 1}
    assert StoreInfo.from_dict(good, where="s").num_classes == 2
    with pytest.raises(StoreError, match=r"s: attr 'classes' is missing"):
        StoreInfo.from_dict({"ignore_index": 255}, where="s")
    with pytest.raises(StoreError, match=r"s: attr 'palette' is malformed"):
        StoreInfo.from_dict({**good, "palette": [[1, 2]]}, where="s")


def test_our_stores_are_read_from_the_shard_files_without_warning(store):
    tile = open_tile(open_store(store), "areaA")
    full = {name: np.asarray(tile.array(name)[...]) for name in ARRAYS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to zarr reads on our own layout fails here
        for name in ARRAYS:
            assert isinstance(tile.reader(name), ShardReader), name
            assert unsupported_layout(tile.array(name)) is None
            np.testing.assert_array_equal(
                tile.read_window(name, 5, 37, 9, 70), full[name][5:37, 9:70]
            )
        # derived weights (not stored) are computed from the count windows
        derived = tile.read_window("k2_ln_L0.5", 5, 37, 9, 70)
    np.testing.assert_array_equal(derived, tile.array("k2_ln_L0.5")[5:37, 9:70])


def test_fallback_to_zarr_reads_warns_once_per_store(store, tmp_path):
    # a copy of the tile whose label and counts are plain gzip-chunked arrays (no shards)
    root = zarr.open_group(tmp_path / "other.zarr", mode="w")
    root.attrs["npaloss"] = _raw(store)["npaloss"]
    tile = open_tile(open_store(store), "areaA")
    g = root.create_group("tiles").create_group("areaA", attributes=dict(tile.attrs))
    values = {}
    for path in ("label", "affinity/k2", "affinity/k4"):
        values[path] = np.asarray(tile.array(path)[...])
        parent, _, name = path.rpartition("/")
        sub = g.require_group(parent) if parent else g
        arr = sub.create_array(name, shape=values[path].shape, dtype=values[path].dtype,
                               chunks=(16, 16), compressors=zarr.codecs.GzipCodec())  # fmt: skip
        arr[...] = values[path]
    other = open_tile(open_store(tmp_path / "other.zarr"), "areaA")
    with pytest.warns(SlowReadWarning, match=r"label.*through zarr.*not a sharded zarr v3") as rec:
        got = other.read_window("label", 3, 50, 7, 90)
    assert len([w for w in rec if issubclass(w.category, SlowReadWarning)]) == 1
    np.testing.assert_array_equal(got, values["label"][3:50, 7:90])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same store is announced once per process
        again = other.read_window("affinity/k4", 0, 80, 0, 96)
        assert isinstance(other.reader("affinity/k4"), ZarrReader)
    np.testing.assert_array_equal(again, values["affinity/k4"])
