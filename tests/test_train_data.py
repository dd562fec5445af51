"""npa_train.data: crops are aligned, padded, reproducible, and read only the chunks they touch.

The synthetic store's image encodes where each pixel comes from: band 0 is a
function of the class, bands 1 and 2 are the pixel's row and column. A crop's
de-normalized image therefore says, pixel by pixel, which tile location its label
and weight must come from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch.utils.data import DataLoader

from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import ISPRS
from npa_precompute.shards import ShardReader
from npa_precompute.store import IncompleteTileError, StoreError, open_store, open_tile
from npa_train.augment import AugmentConfig, CropParams
from npa_train.data import READERS, StoreCropDataset, parse_crop, parse_tiles

IGN = 255
WNAME = "k2_log10_L0.5"
SHAPES = {"areaA": (96, 80), "areaB": (40, 56)}  # areaB is smaller than a 48 or 64 crop


def band0(cls: np.ndarray) -> np.ndarray:
    """Image band 0 as a function of the class (ignore -> 7)."""
    return np.where(cls == IGN, 7, 20 + 30 * cls.astype(np.int64)).astype(np.uint8)


def write_tiles(folder: Path, shapes=SHAPES, seed=0) -> tuple[Path, Path]:
    """RGB-coded ISPRS labels (with black ignore pixels) and position-coded images."""
    rng = np.random.default_rng(seed)
    palette = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)
    gts, top = folder / "gts", folder / "top"
    gts.mkdir(parents=True)
    top.mkdir(parents=True)
    for tid, (h, w) in shapes.items():
        blocks = rng.integers(0, 7, size=(h // 8 + 1, w // 8 + 1))  # 6 = ignore (black)
        idx = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:h, :w]
        noise = rng.random((h, w)) < 0.05
        idx[noise] = rng.integers(0, 7, size=int(noise.sum()))
        tifffile.imwrite(gts / f"{tid}_noBoundary.tif", palette[idx])
        cls = np.where(idx == 6, IGN, idx)
        yy, xx = np.mgrid[:h, :w]
        image = np.stack([band0(cls), yy.astype(np.uint8), xx.astype(np.uint8)], axis=-1)
        tifffile.imwrite(top / f"{tid}.tif", image)
    return gts, top


def build_store(folder: Path, *, images=True, shapes=SHAPES) -> Path:
    gts, top = write_tiles(folder, shapes)
    out = folder / "store.zarr"
    run_precompute(
        [str(gts)],
        out,
        images=[str(top)] if images else None,
        ks="2,4",
        transforms=("log10:L=0.5",),
        chunk=16,
    )
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="module")
def full(store):
    """Whole-tile arrays read straight from the store: {tile: (image, label, weight)}."""
    root = open_store(store)
    out = {}
    for tid in SHAPES:
        t = open_tile(root, tid)
        out[tid] = (t.image[...], t.label[...], t.weights(WNAME)[...])
    return out


def decode(ds: StoreCropDataset, item: dict) -> tuple[np.ndarray, np.ndarray]:
    """De-normalize an item's image to integers (C, h, w) and return it with the padding mask."""
    img = item["image"].numpy()
    pad = (img == 0).all(axis=0)
    raw = img * ds.std[:, None, None] + ds.mean[:, None, None]
    rounded = np.rint(raw)
    assert np.abs(raw - rounded)[:, ~pad].max(initial=0) < 1e-3
    return rounded.astype(np.int64), pad


# ---- alignment (no resampling: exact) ----------------------------------------------------------
@pytest.mark.parametrize("rotate", [False, True])
def test_crops_are_aligned_with_the_store(store, full, rotate):
    aug = AugmentConfig.identity(48, hflip=True, vflip=True, transpose=rotate)
    ds = StoreCropDataset(store, WNAME, augment=aug, length=40, seed=3)
    seen_flags = set()
    for i in range(len(ds)):
        item = ds[i]
        p = ds.sample_params(i)
        seen_flags.add((p.hflip, p.vflip, p.transpose))
        assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
        assert item["label"].shape == (48, 48) and item["label"].dtype == torch.int64
        assert item["weight"].shape == (48, 48) and item["weight"].dtype == torch.float32
        _, tile_label, tile_weight = full[p.tile]
        img, pad = decode(ds, item)
        label, weight = item["label"].numpy(), item["weight"].numpy()
        ys, xs = img[1][~pad], img[2][~pad]
        # every in-tile pixel: label and weight are the stored ones at the pixel's source
        np.testing.assert_array_equal(label[~pad], tile_label[ys, xs])
        np.testing.assert_array_equal(weight[~pad], tile_weight[ys, xs])
        np.testing.assert_array_equal(img[0][~pad], band0(label[~pad]))
        # the source pixels are a window of the tile, each once
        th, tw = SHAPES[p.tile]
        eh, ew = (48, 48)
        rh, rw = min(eh, th), min(ew, tw)
        assert (~pad).sum() == rh * rw
        assert len(set(zip(ys.tolist(), xs.tolist(), strict=True))) == rh * rw
        assert ys.max() - ys.min() == rh - 1 and xs.max() - xs.min() == rw - 1
        # padding: ignore label, weight 0, image 0
        assert (label[pad] == IGN).all() and (weight[pad] == 0).all()
        # rigid: crop neighbours along a row are tile neighbours, in the flagged direction
        row_y, row_x = img[1][:, 1:] - img[1][:, :-1], img[2][:, 1:] - img[2][:, :-1]
        inside = ~pad[:, 1:] & ~pad[:, :-1]
        step = -1 if p.hflip else 1
        if p.transpose:
            assert (row_y[inside] == step).all() and (row_x[inside] == 0).all()
        else:
            assert (row_x[inside] == step).all() and (row_y[inside] == 0).all()
    assert len(seen_flags) == (8 if rotate else 4)


def test_full_augmentation_samples_come_from_the_stored_pixels(store, full):
    # position-coded image: with resampling, every crop pixel away from the fill comes from
    # a tile location near where the crop's affine map says, and its label is stored there
    ds = StoreCropDataset(store, WNAME, augment=AugmentConfig(crop=40, blur_p=0), length=10)
    for i in range(10):
        p = ds.sample_params(i)
        item = ds[i]
        label = item["label"].numpy()
        raw = item["image"].numpy() * ds.std[:, None, None] + ds.mean[:, None, None]
        v, u = np.mgrid[:40, :40]
        xy = np.stack([u, v, np.ones_like(u)], -1) @ p.matrix().T
        th, tw = SHAPES[p.tile]
        inner = (xy[..., 0] > 1) & (xy[..., 1] > 1) & (xy[..., 0] < tw - 2) & (xy[..., 1] < th - 2)
        # bands 1, 2 (row, column) interpolate linearly: they give the source position back
        np.testing.assert_allclose(raw[1][inner], xy[..., 1][inner], atol=0.02)
        np.testing.assert_allclose(raw[2][inner], xy[..., 0][inner], atol=0.02)
        # the label is the stored label of the nearest source pixel
        ry, rx = np.rint(xy[..., 1][inner]).astype(int), np.rint(xy[..., 0][inner]).astype(int)
        agree = label[inner] == full[p.tile][1][ry, rx]
        assert agree.mean() > 0.995  # ties at exactly .5 may round either way


def test_without_weights_name_weight_is_one_at_valid_pixels(store):
    ds = StoreCropDataset(store, None, augment=AugmentConfig.identity(64), tiles=["areaB"],
                          length=2)  # fmt: skip
    for i in range(2):
        item = ds[i]
        valid = item["label"].numpy() != IGN
        np.testing.assert_array_equal(item["weight"].numpy(), valid.astype(np.float32))


def test_tiles_drawn_in_proportion_to_pixels(store):
    ds = StoreCropDataset(store, WNAME, crop=16, length=4000)
    np.testing.assert_allclose(ds.probabilities, [96 * 80 / (96 * 80 + 40 * 56), 40 * 56 / 9920])
    share_a = np.mean([ds.sample_params(i).tile == "areaA" for i in range(4000)])
    assert share_a == pytest.approx(96 * 80 / 9920, abs=0.03)


def test_windows_cover_every_position(store):
    aug = AugmentConfig.identity(32, hflip=True, vflip=True)
    ds = StoreCropDataset(store, WNAME, augment=aug, tiles=["areaA"], length=3000)  # 96 x 80
    params = [ds.sample_params(i) for i in range(3000)]
    y0s = {p.center[0] - 15.5 for p in params}
    x0s = {p.center[1] - 15.5 for p in params}
    assert y0s == set(range(96 - 32 + 1)) and x0s == set(range(80 - 32 + 1))
    flips = np.array([(p.hflip, p.vflip) for p in params])
    np.testing.assert_allclose(flips.mean(0), [0.5, 0.5], atol=0.04)


def test_store_normalization_pools_all_tiles(store, full):
    ds = StoreCropDataset(store, WNAME, crop=16)
    pixels = np.concatenate([full[t][0].reshape(-1, 3) for t in SHAPES]).astype(np.float64)
    np.testing.assert_allclose(ds.mean, pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.std, pixels.std(0), rtol=1e-5)


def test_tile_normalization_uses_each_tiles_stats(store, full):
    aug = AugmentConfig.identity(64)
    ds = StoreCropDataset(store, WNAME, augment=aug, tiles=["areaB"], normalize="tile")
    p = ds.sample_params(0)
    y0, x0 = int(p.center[0] - 31.5), int(p.center[1] - 31.5)
    img = ds[0]["image"].numpy()[:, -y0 : -y0 + 40, -x0 : -x0 + 56]
    px = full["areaB"][0].astype(np.float64)
    expected = (px - px.reshape(-1, 3).mean(0)) / px.reshape(-1, 3).std(0)
    np.testing.assert_allclose(img, expected.transpose(2, 0, 1), atol=1e-4)
    # the other tile's statistics differ: the two normalizations are not the same
    pooled = StoreCropDataset(store, WNAME, augment=aug, tiles=["areaA", "areaB"])
    assert not np.allclose(pooled.mean, ds.tile_mean_std["areaB"][0])


# ---- reproducibility and workers ---------------------------------------------------------------
def _items_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("image", "label", "weight"))


def test_same_seed_same_crops_other_seed_other_crops(store):
    a = StoreCropDataset(store, WNAME, crop=32, seed=5, length=6)
    b = StoreCropDataset(store, WNAME, crop=32, seed=5, length=6)
    c = StoreCropDataset(store, WNAME, crop=32, seed=6, length=6)
    for i in range(6):
        assert _items_equal(a[i], b[i])
        assert a.sample_params(i) == b.sample_params(i)
    assert [a.sample_params(i) for i in range(6)] != [c.sample_params(i) for i in range(6)]
    # an item does not depend on the order items are drawn in
    assert _items_equal(a[4], StoreCropDataset(store, WNAME, crop=32, seed=5)[4])


def test_dataloader_workers_give_distinct_crops_equal_to_single_process(store):
    ds = StoreCropDataset(store, WNAME, crop=32, seed=2, length=8)
    single = list(DataLoader(ds, batch_size=2, num_workers=0))
    multi = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert len(single) == len(multi) == 4
    for s, m in zip(single, multi, strict=True):
        assert _items_equal(s, m)
    # batch 0 came from worker 0 and batch 1 from worker 1: different crops
    assert not torch.equal(multi[0]["label"], multi[1]["label"])
    params = [ds.sample_params(i) for i in range(8)]
    assert len(set(params)) == 8


# ---- reads only the chunks a crop touches ------------------------------------------------------
@pytest.fixture
def byte_log(monkeypatch):
    """Record (key, bytes returned) of every read of a local zarr store."""
    from zarr.storage import LocalStore

    reads: list[tuple[str, int]] = []
    original = LocalStore.get

    async def get(self, key, prototype=None, byte_range=None):
        buf = await original(self, key, prototype, byte_range)
        if buf is not None and not key.endswith("zarr.json"):
            reads.append((key, len(buf)))
        return buf

    monkeypatch.setattr(LocalStore, "get", get)
    return reads


def _bytes_read(ds, byte_log, arrays) -> dict[str, int]:
    """Bytes read per array since the last call: zarr's store reads, or the ShardReaders'."""
    per_array = {a: 0 for a in arrays}
    if ds.reader == "zarr":
        for key, n in byte_log:
            assert key.startswith("tiles/areaA/"), key
            per_array[next(a for a in arrays if key.startswith(f"tiles/areaA/{a}/"))] += n
        byte_log.clear()
        return per_array
    image, label, weight = ds._tile_arrays("areaA")
    for a, r in zip(arrays, (label, image, weight), strict=True):
        assert isinstance(r, ShardReader)
        per_array[a] = r.bytes_read - getattr(r, "_seen", 0)
        r._seen = r.bytes_read
    return per_array


@pytest.mark.parametrize("reader", READERS)
def test_reads_only_chunks_the_window_touches(store, full, byte_log, reader):
    # areaA is 96 x 80 on a 16-pixel chunk grid (6 x 5 chunks per array), all of them in one
    # shard per array, read chunk by chunk (by byte range)
    ds = StoreCropDataset(store, WNAME, crop=16, tiles=["areaA"], reader=reader)
    arrays = ["label", "image", f"weights/{WNAME}"]
    data_bytes = {
        a: sum(f.stat().st_size for f in (store / "tiles" / "areaA" / a / "c").rglob("*")
               if f.is_file())
        for a in arrays
    }  # fmt: skip

    def read(y0, x0, h=16, w=16):
        _bytes_read(ds, byte_log, arrays) if ds._arrays else None
        centre = (y0 + (h - 1) / 2, x0 + (w - 1) / 2)
        p = CropParams("areaA", 0, 0, centre, 1.0, 0.0, False, False, False, 0.0, (h, w))
        win = ds.read_window(p)
        assert win["window"] == (y0, y0 + h, x0, x0 + w)
        return win, _bytes_read(ds, byte_log, arrays)

    _, first = read(80, 64)  # the last chunk, and the shard index (once per process)
    one, one_bytes = read(16, 32)  # exactly chunk (1, 2)
    image, label, weight = full["areaA"]
    np.testing.assert_array_equal(one["label"], label[16:32, 32:48])
    np.testing.assert_array_equal(one["weight"], weight[16:32, 32:48])
    np.testing.assert_array_equal(one["image"], image[16:32, 32:48])
    _, four_bytes = read(8, 24)  # chunks (0..1, 1..2)
    every, all_bytes = read(0, 0, 96, 80)  # every chunk
    np.testing.assert_array_equal(every["label"], label)
    for a in arrays:
        assert 0 < one_bytes[a] < four_bytes[a] < all_bytes[a] <= data_bytes[a], a
        assert one_bytes[a] < data_bytes[a] / 4 and first[a] < data_bytes[a] / 4, a


@pytest.mark.parametrize("reader", READERS)
def test_augmented_samples_read_only_their_window(store, byte_log, reader):
    # resized and rotated crops of 20 px read their footprint's chunks, not the tile
    ds = StoreCropDataset(store, WNAME, augment=AugmentConfig(crop=20, scale=(1.5, 2.0)),
                          tiles=["areaA"], length=6, reader=reader)  # fmt: skip
    arrays = ["label", "image", f"weights/{WNAME}"]
    whole = sum(
        f.stat().st_size
        for a in arrays
        for f in (store / "tiles" / "areaA" / a / "c").rglob("*")
        if f.is_file()
    )
    for i in range(6):
        ds[i]
        read = sum(_bytes_read(ds, byte_log, arrays).values())
        p = ds.sample_params(i)
        y0, y1, x0, x1 = p.window(ds.shapes[0])
        chunks = (-(-y1 // 16) - y0 // 16) * (-(-x1 // 16) - x0 // 16)
        assert chunks <= 4  # a footprint of <= 20 / 1.5 * 1.17 + 4 < 20 px spans 2 x 2 chunks
        assert 0 < read < whole / 4  # <= 4 of 30 chunks (+ the shard index, once)


def test_shard_reader_equals_zarr_and_falls_back(store, tmp_path):
    import zarr

    root = open_store(store)
    arrays = [root["tiles"]["areaA"][k] for k in ("image", "label", f"weights/{WNAME}")]
    rng = np.random.default_rng(0)
    for arr in arrays:
        fast = ShardReader.create(arr)
        assert fast is not None
        for _ in range(25):
            y0, x0 = int(rng.integers(0, 96)), int(rng.integers(0, 80))
            y1, x1 = int(rng.integers(y0 + 1, 97)), int(rng.integers(x0 + 1, 81))
            np.testing.assert_array_equal(fast.read(y0, y1, x0, x1), arr[y0:y1, x0:x1])
    # another layout (no sharding, gzip) is read through zarr, with the same values
    other = zarr.create_array(tmp_path / "plain.zarr", shape=(20, 30), chunks=(8, 8),
                              dtype="float32", compressors=zarr.codecs.GzipCodec())  # fmt: skip
    other[...] = np.arange(600, dtype=np.float32).reshape(20, 30)
    assert ShardReader.create(other) is None
    # a chunk never written reads as the fill value, as in zarr
    sparse = zarr.create_array(tmp_path / "sparse.zarr", shape=(32, 32), chunks=(8, 8),
                               shards=(32, 32), dtype="uint8", fill_value=255,
                               compressors=zarr.codecs.BloscCodec())  # fmt: skip
    sparse[8:16, 8:16] = 3
    reader = ShardReader.create(sparse)
    assert reader is not None
    np.testing.assert_array_equal(reader.read(4, 20, 4, 20), sparse[4:20, 4:20])


# ---- refusals ----------------------------------------------------------------------------------
def test_unknown_weights_name_lists_available(store):
    with pytest.raises(StoreError, match=r"not a weights name.*k2_log10_L0\.5.*k4_log10_L0\.5"):
        StoreCropDataset(store, "k32_log10")
    # a k without counts: the k the tile has and the command that adds the missing one
    with pytest.raises(
        StoreError,
        match=r"no affinity counts for k = 32.*it has k = 2, 4 .*"
        r"npa-precompute run .*--k 32",
    ):
        StoreCropDataset(store, "k32_log10_L0.5")


def test_unknown_tile_lists_tiles(store):
    with pytest.raises(StoreError, match="areaA, areaB"):
        StoreCropDataset(store, WNAME, tiles="areaC")


def test_incomplete_tile_refused_when_named_skipped_by_default(store, tmp_path):
    copy = tmp_path / "store.zarr"
    shutil.copytree(store, copy)
    open_store(copy, mode="r+")["tiles"]["areaB"].attrs["complete"] = False
    with pytest.raises(IncompleteTileError, match="areaB"):
        StoreCropDataset(copy, WNAME, tiles="areaA,areaB")
    assert StoreCropDataset(copy, WNAME).tiles == ["areaA"]


def test_store_without_images_refused(tmp_path):
    path = build_store(tmp_path, images=False, shapes={"areaA": (32, 32)})
    with pytest.raises(StoreError, match="no image"):
        StoreCropDataset(path, WNAME)


def test_missing_store(tmp_path):
    with pytest.raises(StoreError, match="no zarr store"):
        StoreCropDataset(tmp_path / "nothing.zarr")


def test_bad_arguments(store):
    with pytest.raises(ValueError, match="`transpose`"):
        StoreCropDataset(store, WNAME, augment=AugmentConfig(crop=(16, 32), transpose=True))
    with pytest.raises(ValueError, match="`reader`"):
        StoreCropDataset(store, WNAME, reader="fast")
    with pytest.raises(ValueError, match="`output`"):
        StoreCropDataset(store, WNAME, output="tensor")
    with pytest.raises(TypeError, match="`augment`"):
        StoreCropDataset(store, WNAME, augment={"crop": 16})
    with pytest.raises(ValueError, match="`normalize`"):
        StoreCropDataset(store, WNAME, normalize="batch")
    with pytest.raises(ValueError, match="`length`"):
        StoreCropDataset(store, WNAME, length=0)
    with pytest.raises(ValueError, match="`crop`"):
        parse_crop(0)
    with pytest.raises(TypeError, match="`crop`"):
        parse_crop("256")
    assert parse_crop(8) == (8, 8) and parse_crop((8, 12)) == (8, 12)
    assert parse_tiles("a, b") == ["a", "b"] and parse_tiles(None) is None
    with pytest.raises(ValueError, match="`tiles`"):
        parse_tiles("a,a")
