"""Weights derived from the stored counts, stores written without weights, stores that grow.

Derived weights must equal the arrays ``npa-precompute run`` stores bit for bit, for
every transformation, k and dtype, on the real crops and on random labels; a store
written with ``--no-store-weights`` must train to the same losses; growing a store must
leave its arrays untouched (bytes and mtimes) and add arrays equal to a fresh
precompute, also when the grow is killed with SIGKILL and re-run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import write_isprs_tile, write_train_store
from PIL import Image

from npa_precompute import open_weights, parse_transform, weights_name
from npa_precompute.blockwise import DaskOptions
from npa_precompute.cli import main as precompute_main
from npa_precompute.derived import (
    DerivedWeights,
    derive,
    derived_weights,
    multiscale_formula,
    parse_weights_name,
)
from npa_precompute.pipeline import run_precompute
from npa_precompute.store import StoreError, leftover_arrays, list_tiles, open_store, open_tile
from npa_precompute.summary import inspect_store
from npa_train.weights import TorchDeriver

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMS = ("raw", "norm:L=0", "norm:L=0.5", "log10:L=0.5", "ln:L=0.5", "log:a=2,L=0.25")


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.view({4: np.uint32, 2: np.uint16}[a.dtype.itemsize])


def _assert_bits(a, b, what: str) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert np.array_equal(_bits(a), _bits(b)), f"{what}: {np.count_nonzero(_bits(a) != _bits(b))}"


# -- names ----------------------------------------------------------------------------------
def test_weights_names_parse_to_canonical_specs():
    spec = parse_weights_name("k32_log10_L0.5")
    assert spec.ks == (32,) and spec.transform == parse_transform("log10:L=0.5")
    assert spec.name == "k32_log10_L0.5" and not spec.multiscale
    for t in TRANSFORMS:
        name = weights_name(16, t)
        assert parse_weights_name(name).name == name
        assert parse_weights_name(name).transform == parse_transform(t)
    assert parse_weights_name("k16_norm_L0").transform == parse_transform("norm:L=0")
    assert parse_weights_name("k8_log_a2_L0.25").transform == parse_transform("log:a=2,L=0.25")
    ms = parse_weights_name("ms_k32-8-16_ln_L0.5")
    assert ms.ks == (8, 16, 32) and ms.multiscale and ms.name == "ms_k8-16-32_ln_L0.5"
    assert parse_weights_name("weights/k4_raw").name == "k4_raw"
    for bad in ("k32", "k32_log10", "k32_log10_La", "ms_k8_log10_L0.5", "k32_log_L0.5",
                "x32_raw", "k32_log10_L-1", "k32_log_a1_L0.5"):  # fmt: skip
        with pytest.raises(ValueError, match="not a weights name"):
            parse_weights_name(bad)


def test_count_ranges_equal_valid_min_max():
    from npa_precompute._kernels import count_ranges, valid_min_max

    rng = np.random.default_rng(3)
    for shape in ((1, 1), (3, 70), (129, 5), (200, 131)):
        aff = rng.integers(0, 5000, size=(3, *shape)).astype(np.uint16)
        for p in (0.0, 0.3, 1.0):
            ignore = rng.random(shape) < p
            out = np.empty((3, 2), dtype=np.int64)
            count_ranges(aff, ignore, out)
            want = [tuple(int(v) for v in valid_min_max(a, ignore)) for a in aff]
            assert [tuple(r) for r in out.tolist()] == want


def test_lookup_tables_do_not_depend_on_their_length():
    # the precompute sizes each table by the tile's (or a block's) largest count; derived
    # weights and the device path size them otherwise, so values must not depend on it
    for spec in TRANSFORMS:
        t = parse_transform(spec)
        full = t.table(20000, lo=3, hi=19999)
        for m in (1, 2, 7, 8, 15, 16, 17, 31, 33, 64, 100, 1023, 4225, 16641, 19999):
            part = t.table(m, lo=3, hi=19999)
            assert np.array_equal(full[:m], part), (spec, m)


# -- derived == materialized ----------------------------------------------------------------
def _index_tiles(folder: Path) -> Path:
    """Random label maps (`index` preset, 5 classes, ignore 255), including edge cases."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    tiles = {}
    blocks = rng.integers(0, 5, size=(9, 13))
    t = np.kron(blocks, np.ones((7, 5), dtype=np.int64))[:61, :59]
    noise = rng.random(t.shape) < 0.15
    t[noise] = rng.integers(0, 5, size=int(noise.sum()))
    t[rng.random(t.shape) < 0.1] = 255
    tiles["blocky"] = t
    tiles["random"] = rng.integers(0, 5, size=(40, 33))
    tiles["constant"] = np.full((17, 23), 3)
    tiles["ignored"] = np.full((12, 9), 255)
    one = np.full((30, 30), 255)
    one[4, 7] = 2  # a single non-ignore pixel: min == max
    tiles["single"] = one
    for name, lab in tiles.items():
        Image.fromarray(lab.astype(np.uint8), mode="L").save(folder / f"{name}.png")
    return folder


def _check_derived_equals_stored(stored_store, counts_store, ks, dtype, tiles=None):
    rs, rc = open_store(stored_store), open_store(counts_store)
    rng = np.random.default_rng(0)
    ids = tiles or list_tiles(rs)
    assert ids
    for tid in ids:
        ts, tc = open_tile(rs, tid), open_tile(rc, tid)
        assert tc.stored_weight_names == []
        h, w = ts.shape
        wins = [(slice(None), slice(None))]
        for _ in range(3):
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            wins.append((slice(y0, int(rng.integers(y0 + 1, h + 1))),
                         slice(x0, int(rng.integers(x0 + 1, w + 1)))))  # fmt: skip
        torch_ranges = {k: tc.count_range(k) for k in ks}
        counts = np.stack([tc.affinity(k)[...] for k in ks]).astype(np.int64)
        label = torch.from_numpy(tc.label[...].astype(np.int64))[None]
        for spec in TRANSFORMS:
            for k in ks:
                name = weights_name(k, spec)
                stored = ts.weights(name)
                assert not isinstance(stored, DerivedWeights)
                derived = tc.weights(name)
                assert isinstance(derived, DerivedWeights)
                assert derived.dtype == np.dtype(dtype) == stored.dtype
                for win in wins:
                    _assert_bits(derived[win], stored[win], f"{tid} {name} {win}")
                # the public function gives the same
                pub = open_weights(counts_store, tid, name)[...]
                _assert_bits(pub, stored[...], f"open_weights {tid} {name}")
                if dtype == "float32" and (2 * k + 1) ** 2 <= 1 << 22:
                    td = TorchDeriver(parse_weights_name(name), [torch_ranges], ignore_index=255)
                    i = ks.index(k)
                    c = torch.from_numpy(counts[i : i + 1])[None]
                    got = td(c, label, torch.zeros(1, dtype=torch.int64))[0].numpy()
                    _assert_bits(got, stored[...], f"torch {tid} {name}")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_derived_equals_stored_random_labels(tmp_path, dtype):
    gt = _index_tiles(tmp_path / "labels")
    # k = 130: uint32 counts; raw counts above k = 127 do not fit float16 (refused up front)
    ks = (0, 1, 3, 8, 130 if dtype == "float32" else 127)
    kw = dict(preset="index", num_classes=5, ks=ks, transforms=TRANSFORMS, weight_dtype=dtype)
    run_precompute([str(gt)], tmp_path / "stored.zarr", **kw)
    s = run_precompute([str(gt)], tmp_path / "counts.zarr", store_weights=False, **kw)
    assert len(s.written) == 5
    _check_derived_equals_stored(tmp_path / "stored.zarr", tmp_path / "counts.zarr", ks, dtype)
    t = open_tile(open_store(tmp_path / "counts.zarr"), "ignored")
    assert t.count_range(8) == (0, -1)
    assert not t.weights("k8_norm_L0.5")[...].any()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_derived_equals_stored_real_crops(shared_data, tmp_path, dtype):
    ks = (8, 32, 130 if dtype == "float32" else 127)  # raw float16: k <= 127
    vai = shared_data / "vaihingen_crop"
    lov = shared_data / "loveda_crop" / "Train" / "Rural"
    for name, labels, preset in (
        ("vaihingen", vai / "gts_eroded_for_participants", "isprs"),
        ("loveda", lov / "masks_png" / "1.png", "loveda"),
    ):
        kw = dict(preset=preset, ks=ks, transforms=TRANSFORMS, weight_dtype=dtype)
        run_precompute([str(labels)], tmp_path / f"{name}_s.zarr", **kw)
        run_precompute([str(labels)], tmp_path / f"{name}_c.zarr", store_weights=False, **kw)
        _check_derived_equals_stored(tmp_path / f"{name}_s.zarr", tmp_path / f"{name}_c.zarr",
                                     ks, dtype)  # fmt: skip


@pytest.mark.filterwarnings("ignore:.*has no windowed reads")
def test_blockwise_counts_only_equals_in_memory(tmp_path):
    gt = _index_tiles(tmp_path / "labels")
    kw = dict(preset="index", num_classes=5, ks=(1, 3, 8), transforms=TRANSFORMS)
    run_precompute([str(gt)], tmp_path / "s.zarr", **kw)
    run_precompute([str(gt)], tmp_path / "b.zarr", store_weights=False,
                   dask=DaskOptions(block=16, scheduler="synchronous"), chunk=16, **kw)  # fmt: skip
    _check_derived_equals_stored(tmp_path / "s.zarr", tmp_path / "b.zarr", (1, 3, 8), "float32")


def test_norm_of_a_tile_without_recorded_ranges_is_computed_from_its_counts(tmp_path):
    gt = _index_tiles(tmp_path / "labels")
    kw = dict(preset="index", num_classes=5, ks=(3, 8), transforms=("norm:L=0.5", "log10:L=0.5"))
    run_precompute([str(gt)], tmp_path / "s.zarr", **kw)
    # a store written before count_range and stored_weights were recorded
    root = open_store(tmp_path / "s.zarr", mode="r+")
    for tid in list_tiles(root):
        attrs = dict(root["tiles"][tid].attrs)
        del attrs["count_range"], attrs["stored_weights"]
        root["tiles"][tid].attrs.put(attrs)
    t = open_tile(open_store(tmp_path / "s.zarr"), "blocky")
    assert "count_range" not in t.attrs
    assert t.stored_weight_names == sorted(weights_name(k, s) for k in (3, 8)
                                           for s in ("norm:L=0.5", "log10:L=0.5"))  # fmt: skip
    stored = t.weights("k8_norm_L0.5")[...]
    lo, hi = t.count_range(8)
    assert (lo, hi) == (int(t.affinity(8)[...][t.label[...] != 255].min()),
                        int(t.affinity(8)[...][t.label[...] != 255].max()))  # fmt: skip
    want = parse_transform("norm:L=0").apply(t.affinity(8)[...], t.label[...] == 255)
    _assert_bits(t.weights("k8_norm_L0")[...], want, "norm:L=0 with the range from the counts")
    _assert_bits(derived_weights(t, "k8_norm_L0.5")[3:40, 5:9], stored[3:40, 5:9], "window")
    d = derive("k8_norm_L0.5", [t.affinity(8)[...]], t.label[...], ignore_index=255)
    _assert_bits(d, stored, "derive() on the whole tile")


# -- multi-scale ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["log10:L=0.5", "norm:L=0", "raw"])
def test_multiscale_weights_are_the_mean_of_the_per_k_weights(tmp_path, spec):
    gt = _index_tiles(tmp_path / "labels")
    ks = (1, 3, 8)
    run_precompute([str(gt)], tmp_path / "s.zarr", preset="index", num_classes=5, ks=ks,
                   transforms=(spec,))  # fmt: skip
    root = open_store(tmp_path / "s.zarr")
    slug = parse_transform(spec).slug
    for tid in list_tiles(root):
        t = open_tile(root, tid)
        per_k = [t.weights(weights_name(k, spec))[...] for k in ks]
        label = t.label[...]
        # the README's formula: W = (1/n) sum_k W_k, summed in float64, rounded to float32
        want = (sum(w.astype(np.float64) for w in per_k) / len(ks)).astype(np.float32)
        _assert_bits(want, multiscale_formula(per_k), "formula helper")
        got = t.weights(f"ms_k8-1-3_{slug}")
        assert isinstance(got, DerivedWeights) and got.name == f"ms_k1-3-8_{slug}"
        _assert_bits(got[...], want, f"ms {tid}")
        assert not got[...][label == 255].any()
        _assert_bits(got[5:9, 2:30], want[5:9, 2:30], "window")
        td = TorchDeriver(got.spec, [{k: t.count_range(k) for k in ks}], ignore_index=255)
        c = torch.from_numpy(np.stack([t.affinity(k)[...] for k in ks]).astype(np.int64))[None]
        lab = torch.from_numpy(label.astype(np.int64))[None]
        _assert_bits(td(c, lab, torch.zeros(1, dtype=torch.int64))[0].numpy(), want, "torch")
    # k = 3 alone is unchanged by a mean over one k
    t = open_tile(root, "blocky")
    _assert_bits(t.weights(f"ms_k3-3_{slug}")[...], t.weights(f"k3_{slug}")[...], "one k")


# -- counts-only stores ---------------------------------------------------------------------
def test_no_store_weights_writes_counts_and_names_the_weights(tmp_path):
    gt = _index_tiles(tmp_path / "labels")
    out = tmp_path / "c.zarr"
    result = CliRunner().invoke(precompute_main, [
        "run", str(gt), "--out", str(out), "--preset", "index", "--num-classes", "5",
        "--k", "2,5", "--transform", "log10:L=0.5", "--transform", "norm:L=0",
        "--no-store-weights", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not any((out / "tiles" / "blocky" / "weights").rglob("c")), "no weights chunks"
    t = open_tile(open_store(out), "blocky")
    assert t.attrs["params"]["transforms"] == ["log10:L=0.5", "norm:L=0"]
    assert t.attrs["stored_weights"] == []
    assert set(t.attrs["count_range"]) == {"2", "5"}
    assert t.weight_names == ["k2_log10_L0.5", "k2_norm_L0", "k5_log10_L0.5", "k5_norm_L0"]
    # inspect reports the named weights (derived) and any other asked for
    report = inspect_store(out, "blocky", weights=["ms_k2-5_ln_L0.5"])
    entries = {a["path"]: a for a in report["tiles"][0]["arrays"]}
    assert entries["weights/k5_norm_L0"]["derived"] is True
    assert entries["weights/k5_norm_L0"]["stored_bytes"] == 0
    ms = t.weights("ms_k2-5_ln_L0.5")[...][t.label[...] != 255]
    assert entries["weights/ms_k2-5_ln_L0.5"]["stats"]["max"] == float(ms.max())
    result = CliRunner().invoke(precompute_main, ["inspect", str(out), "--tile", "blocky",
                                                  "--weights", "k2_raw"])  # fmt: skip
    assert result.exit_code == 0 and "weights/k2_raw" in result.output
    assert "derived" in result.output
    # a k the store lacks: the k it has and the command that adds it
    result = CliRunner().invoke(precompute_main, ["export", str(out), "--tile", "blocky",
                                                  "--array", "k9_ln_L0.5", "--out",
                                                  str(tmp_path / "x.npy")])  # fmt: skip
    assert result.exit_code == 1
    assert "no affinity counts for k = 9" in result.output and "it has k = 2, 5" in result.output
    assert "--k 9" in result.output and "--no-store-weights" in result.output
    # export and show of derived weights
    result = CliRunner().invoke(precompute_main, ["export", str(out), "--tile", "blocky",
                                                  "--array", "k5_ln_L0.5", "--out",
                                                  str(tmp_path / "x.npy")])  # fmt: skip
    assert result.exit_code == 0, result.output
    want = parse_transform("ln:L=0.5").apply(t.affinity(5)[...], t.label[...] == 255)
    _assert_bits(np.load(tmp_path / "x.npy"), want, "export")
    result = CliRunner().invoke(precompute_main, ["show", str(out), "--tile", "blocky", "--out",
                                                  str(tmp_path / "f.png"), "--arrays",
                                                  "k2_norm_L0,ms_k2-5_norm_L0", "--backend",
                                                  "pillow"])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_counts_only_store_trains_to_the_same_losses(tmp_path):
    stored = write_train_store(tmp_path)
    counts = tmp_path / "counts.zarr"
    run_precompute([str(tmp_path / "gts")], counts, images=[str(tmp_path / "top")], ks="2,4",
                   chunk=16, store_weights=False)  # fmt: skip
    assert open_tile(open_store(counts), "areaA").stored_weight_names == []
    from npa_train.train import fit

    def losses(store, out, **kw) -> list[str]:
        fit(store, out, weights="k4_log10_L0.5", iters=5, batch=2, crop=32, device="cpu",
            progress=False, seed=5, width=8, **kw)  # fmt: skip
        with open(out / "log.csv", newline="") as f:
            return [r["loss"] for r in csv.DictReader(f)]

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = losses(stored, tmp_path / "a")
        b = losses(counts, tmp_path / "b")
        assert a == b and len(a) == 5
        # weights derived on the training device (here the CPU) in the warp
        c = losses(stored, tmp_path / "c", warp_on="device")
        d = losses(counts, tmp_path / "d", warp_on="device")
        assert c == d
    finally:
        torch.set_num_threads(n)


def test_dataset_derives_in_the_loader_or_on_the_device_identically(tmp_path):
    stored = write_train_store(tmp_path)
    from npa_train.data import StoreCropDataset, _collate_windows

    for name in ("k4_log10_L0.5", "k2_norm_L0.5", "ms_k2-4_ln_L0", "k4_raw"):
        a = StoreCropDataset(stored, name, crop=24, seed=2, length=6)
        w = StoreCropDataset(stored, name, crop=24, seed=2, length=6, output="window")
        assert all(d is not None for d in a._derivers) == (name != "k4_log10_L0.5")
        batch = w.collate([w[i] for i in range(6)])
        assert ("counts" in batch) == (name != "k4_log10_L0.5")
        on_device = w.warp(batch, "cpu")
        in_loader = a.warp(_collate_windows([a.window_item(i) for i in range(6)],
                                            ignore_index=255), "cpu")  # fmt: skip
        assert torch.equal(on_device["weight"], in_loader["weight"]), name
        for i in range(6):
            win = a.read_window(a.sample_params(i))
            tile = open_tile(open_store(stored), a.sample_params(i).tile)
            y0, y1, x0, x1 = win["window"]
            _assert_bits(win["weight"], tile.weights(name)[y0:y1, x0:x1], f"window {name} {i}")


# -- stores that grow -----------------------------------------------------------------------
def _snapshot(store: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtimes of every file of the tiles, but the tiles' own attrs files."""
    out = {}
    for p in sorted((store / "tiles").rglob("*")):
        if p.is_file() and not (p.name == "zarr.json" and p.parent.parent.name == "tiles"):
            out[str(p.relative_to(store))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def _assert_same_arrays(a: Path, b: Path, ks, names) -> None:
    ra, rb = open_store(a), open_store(b)
    assert list_tiles(ra) == list_tiles(rb)
    for tid in list_tiles(ra):
        ta, tb = open_tile(ra, tid), open_tile(rb, tid)
        for k in ks:
            assert np.array_equal(ta.affinity(k)[...], tb.affinity(k)[...]), (tid, k)
        for n in names:
            _assert_bits(ta.weights(n)[...], tb.weights(n)[...], f"{tid} {n}")


@pytest.mark.filterwarnings("ignore:.*has no windowed reads")
@pytest.mark.parametrize("mode", ["memory", "workers", "dask"])
def test_growing_adds_arrays_in_place_equal_to_a_fresh_precompute(tmp_path, mode):
    gt = _index_tiles(tmp_path / "labels")
    ref = dict(preset="index", num_classes=5, chunk=16)  # the references: in memory
    kw = dict(ref)
    if mode == "workers":
        kw["workers"] = 2
    elif mode == "dask":
        kw["dask"] = DaskOptions(block=32, scheduler="synchronous")
    out = tmp_path / "s.zarr"
    run_precompute([str(gt)], out, ks=(2, 5), transforms=("log10:L=0.5",), **kw)
    before = _snapshot(out)
    s = run_precompute([str(gt)], out, ks=(5, 9), transforms=("norm:L=0", "log10:L=0.5"), **kw)
    assert s.grown == ["blocky", "constant", "ignored", "random", "single"] and not s.written
    after = _snapshot(out)
    assert {p: after[p] for p in before} == before, "existing arrays rewritten"
    assert set(after) > set(before)
    t = open_tile(open_store(out), "blocky")
    assert t.attrs["params"]["ks"] == [2, 5, 9]
    assert t.attrs["params"]["transforms"] == ["log10:L=0.5", "norm:L=0"]
    assert set(t.attrs["count_range"]) == {"2", "5", "9"}
    want = ["k2_log10_L0.5", "k5_log10_L0.5", "k5_norm_L0", "k9_log10_L0.5", "k9_norm_L0"]
    assert t.stored_weight_names == want
    assert "k2_norm_L0" in t.weight_names  # named: derived from the counts
    fresh = tmp_path / "fresh.zarr"
    run_precompute([str(gt)], fresh, ks=(2, 5, 9), transforms=("log10:L=0.5", "norm:L=0"), **ref)
    _assert_same_arrays(out, fresh, (2, 5, 9), [*want, "k2_norm_L0"])
    # nothing missing any more: skipped, nothing touched
    snap = _snapshot(out)
    s = run_precompute([str(gt)], out, ks=(5, 9), transforms=("norm:L=0",), **kw)
    assert len(s.skipped) == 5 and not s.grown and _snapshot(out) == snap
    s = run_precompute([str(gt)], out, ks=(2,), transforms=("norm:L=0",), store_weights=False,
                       **kw)  # fmt: skip
    assert len(s.skipped) == 5 and not s.grown and _snapshot(out) == snap
    if mode == "workers":
        # below, the same grow job as above runs with other arguments, chosen in the parent:
        # checked in memory and with dask (each worker run spends ~4 s starting its pool)
        return
    # counts only: one more k adds one array per tile
    s = run_precompute([str(gt)], out, ks=(12,), transforms=("ln:L=0.5",), store_weights=False,
                       **kw)  # fmt: skip
    assert len(s.grown) == 5
    t = open_tile(open_store(out), "blocky")
    assert t.stored_weight_names == want and t.affinity_ks == [2, 5, 9, 12]
    assert "k12_ln_L0.5" in t.weight_names and "k2_ln_L0.5" in t.weight_names
    s = run_precompute([str(gt)], tmp_path / "r.zarr", ks=(12,), transforms=("ln:L=0.5",),
                       **ref)  # fmt: skip
    assert s.written
    _assert_same_arrays(out, tmp_path / "r.zarr", (12,), ["k12_ln_L0.5"])
    # a default run on named-but-derived weights materializes them
    s = run_precompute([str(gt)], out, ks=(12,), transforms=("ln:L=0.5",), **kw)
    assert len(s.grown) == 5
    assert "k12_ln_L0.5" in open_tile(open_store(out), "blocky").stored_weight_names


def test_growing_a_tile_whose_source_changed_recomputes_it_whole(tmp_path, isprs_tiles):
    gt, top, truth = isprs_tiles
    out = tmp_path / "s.zarr"
    run_precompute([str(gt)], out, images=[str(top)], ks=[2], transforms=["log10:L=0.5"])
    idx = np.kron(np.random.default_rng(3).integers(0, 6, (5, 5)), np.ones((7, 6), int))
    write_isprs_tile(gt, "area1_noBoundary.tif", idx[:33, :30])
    s = run_precompute([str(gt)], out, images=[str(top)], ks=[3], transforms=["ln:L=0.5"])
    assert s.written == ["area1"] and s.grown == ["area0", "area2"]
    t = open_tile(open_store(out), "area1")
    np.testing.assert_array_equal(t.label[...], idx[:33, :30])
    assert t.affinity_ks == [2, 3]  # the tile keeps what it had, recomputed, plus the new
    assert t.stored_weight_names == ["k2_log10_L0.5", "k3_ln_L0.5"]  # what it had, the run's
    assert "k2_ln_L0.5" in t.weight_names and "k3_log10_L0.5" in t.weight_names  # derived
    fresh = tmp_path / "f.zarr"
    run_precompute([str(gt)], fresh, images=[str(top)], ks=[2, 3],
                   transforms=["log10:L=0.5", "ln:L=0.5"])  # fmt: skip
    _assert_same_arrays(out, fresh, (2, 3), ["k2_log10_L0.5", "k2_ln_L0.5", "k3_ln_L0.5"])


@pytest.fixture
def isprs_tiles(tmp_path):
    rng = np.random.default_rng(1)
    gt, top = tmp_path / "gt", tmp_path / "top"
    truth = {}
    for i, shape in enumerate([(31, 27), (33, 30), (20, 41)]):
        idx = np.kron(rng.integers(0, 6, (8, 8)), np.ones((6, 6), int))[: shape[0], : shape[1]]
        write_isprs_tile(gt, f"area{i}_noBoundary.tif", idx)
        top.mkdir(exist_ok=True)
        img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        Image.fromarray(img).save(top / f"area{i}.tif")
        truth[f"area{i}"] = idx
    return gt, top, truth


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from npa_precompute import grow, pipeline, store
    from npa_precompute.blockwise import DaskOptions

    mode, out, labels = sys.argv[1:4]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "metadata":  # after the new arrays' metadata, before any data
        real_pass = grow._first_pass
        def first_pass(*a):
            die()
        grow._first_pass = first_pass
    elif mode == "blocks":  # after 3 of the blocks: new arrays half written
        real_pass = grow._first_pass
        done = [0]
        def first_pass(*a):
            r = real_pass(*a)
            done[0] += 1
            if done[0] == 3:
                die()
            return r
        grow._first_pass = first_pass
    elif mode == "norm":  # every count written, norm weights half written
        real_norm = grow._norm_pass
        def norm_pass(*a):
            real_norm(*a)
            die()
        grow._norm_pass = norm_pass
    elif mode == "commit":  # every new array written, not yet named by the tile
        store.TileWriter.commit = lambda *a, **k: die()
    pipeline.run_precompute(
        [labels], out, preset="index", num_classes=5, ks=(2, 5, 9), chunk=16,
        transforms=("log10:L=0.5", "norm:L=0"),
        dask=DaskOptions(block=16, scheduler="synchronous"),
    )
    """
)


@pytest.mark.filterwarnings("ignore:.*has no windowed reads")
@pytest.mark.parametrize("mode", ["metadata", "blocks", "norm", "commit"])
def test_sigkill_while_growing_never_yields_a_tile_with_a_partial_array(tmp_path, mode):
    gt = _index_tiles(tmp_path / "labels") / "blocky.png"
    out = tmp_path / "s.zarr"
    kw = dict(preset="index", num_classes=5, chunk=16)
    run_precompute([str(gt)], out, ks=(2, 5), transforms=("log10:L=0.5",), **kw)
    before = _snapshot(out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _KILLER, mode, str(out), str(gt)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the tile is complete and exactly what it was: its old arrays, nothing new
    root = open_store(out)
    t = open_tile(root, "blocky")
    assert t.affinity_ks == [2, 5]
    assert t.stored_weight_names == ["k2_log10_L0.5", "k5_log10_L0.5"]
    after = _snapshot(out)
    assert {p: after[p] for p in before} == before
    assert leftover_arrays(t.group), "the killed grow left its arrays (not part of the tile)"
    with pytest.raises(StoreError, match="no affinity counts for k = 9"):
        t.weights("k9_log10_L0.5")
    with pytest.raises(StoreError, match="no affinity for k=9"):
        t.affinity(9)
    # the half-written k5_norm_L0 is not the tile's: asked for, it is derived from the counts
    if mode != "metadata":
        assert (out / "tiles" / "blocky" / "weights" / "k5_norm_L0").is_dir()
    w = t.weights("k5_norm_L0")
    assert isinstance(w, DerivedWeights)
    want = parse_transform("norm:L=0").apply(t.affinity(5)[...], t.label[...] == 255)
    _assert_bits(w[...], want, "derived while a leftover exists")
    report = inspect_store(out)
    kinds = {a["path"]: a["kind"] for a in report["tiles"][0]["arrays"]}
    assert "leftover" in kinds.values()
    # a re-run removes the leftovers and grows the tile; it equals a fresh precompute
    s = run_precompute([str(gt)], out, ks=(2, 5, 9), transforms=("log10:L=0.5", "norm:L=0"),
                       dask=DaskOptions(block=16, scheduler="synchronous"), **kw)  # fmt: skip
    assert s.grown == ["blocky"]
    t = open_tile(open_store(out), "blocky")
    assert not leftover_arrays(t.group)
    after = _snapshot(out)
    assert {p: after[p] for p in before} == before
    fresh = tmp_path / "fresh.zarr"
    run_precompute([str(gt)], fresh, ks=(2, 5, 9), transforms=("log10:L=0.5", "norm:L=0"), **kw)
    names = [weights_name(k, s) for k in (2, 5, 9) for s in ("log10:L=0.5", "norm:L=0")]
    assert t.stored_weight_names == sorted(names)
    _assert_same_arrays(out, fresh, (2, 5, 9), names)
    meta = json.loads((out / "zarr.json").read_text())
    assert "tiles/blocky/affinity/k9" in meta["consolidated_metadata"]["metadata"]


def test_grown_store_errors_other_dtype_without_overwrite(tmp_path):
    gt = _index_tiles(tmp_path / "labels")
    out = tmp_path / "s.zarr"
    run_precompute([str(gt)], out, preset="index", num_classes=5, ks=(2,))
    with pytest.raises(StoreError, match=r"other parameters .*dtype float32.*dtype float16"):
        run_precompute([str(gt)], out, preset="index", num_classes=5, ks=(3,),
                       weight_dtype="float16")  # fmt: skip
    s = run_precompute([str(gt)], out, preset="index", num_classes=5, ks=(3,),
                       weight_dtype="float16", overwrite=True)  # fmt: skip
    assert len(s.written) == 5
    assert open_tile(open_store(out), "blocky").affinity_ks == [3]
