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
from npa_precompute.store import IncompleteTileError, StoreError, open_store, open_tile
from npa_train.data import CropParams, StoreCropDataset, parse_crop, parse_tiles

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


# ---- alignment ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rotate", [False, True])
def test_crops_are_aligned_with_the_store(store, full, rotate):
    ds = StoreCropDataset(store, WNAME, crop=48, length=40, seed=3, rotate=rotate)
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
        # the source pixels are exactly the window, each once
        th, tw = SHAPES[p.tile]
        rh, rw = min(48, th - p.y0), min(48, tw - p.x0)
        assert (~pad).sum() == rh * rw
        assert len(set(zip(ys.tolist(), xs.tolist(), strict=True))) == rh * rw
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == (
            p.y0,
            p.y0 + rh - 1,
            p.x0,
            p.x0 + rw - 1,
        )
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


def test_crop_larger_than_tile_is_padded(store, full):
    ds = StoreCropDataset(store, WNAME, crop=64, tiles=["areaB"], flip=False, length=3)
    tile_image, tile_label, tile_weight = full["areaB"]
    for i in range(3):
        item = ds[i]
        label, weight, image = item["label"].numpy(), item["weight"].numpy(), item["image"].numpy()
        np.testing.assert_array_equal(label[:40, :56], tile_label)
        np.testing.assert_array_equal(weight[:40, :56], tile_weight)
        assert (label[40:] == IGN).all() and (label[:, 56:] == IGN).all()
        assert (weight[40:] == 0).all() and (weight[:, 56:] == 0).all()
        assert (image[:, 40:] == 0).all() and (image[:, :, 56:] == 0).all()
        denorm = image[:, :40, :56] * ds.std[:, None, None] + ds.mean[:, None, None]
        np.testing.assert_allclose(denorm, tile_image.transpose(2, 0, 1), atol=1e-3)


def test_without_weights_name_weight_is_one_inside_zero_in_padding(store):
    ds = StoreCropDataset(store, None, crop=64, tiles=["areaB"], flip=False, length=1)
    w = ds[0]["weight"].numpy()
    assert (w[:40, :56] == 1).all() and (w[40:] == 0).all() and (w[:, 56:] == 0).all()


def test_tiles_drawn_in_proportion_to_pixels(store):
    ds = StoreCropDataset(store, WNAME, crop=16, length=4000)
    np.testing.assert_allclose(ds.probabilities, [96 * 80 / (96 * 80 + 40 * 56), 40 * 56 / 9920])
    share_a = np.mean([ds.sample_params(i).tile == "areaA" for i in range(4000)])
    assert share_a == pytest.approx(96 * 80 / 9920, abs=0.03)


def test_windows_cover_every_position(store):
    ds = StoreCropDataset(store, WNAME, crop=32, tiles=["areaA"], length=3000)  # 96 x 80 tile
    params = [ds.sample_params(i) for i in range(3000)]
    y0s, x0s = {p.y0 for p in params}, {p.x0 for p in params}
    assert y0s == set(range(96 - 32 + 1)) and x0s == set(range(80 - 32 + 1))
    flips = np.array([(p.hflip, p.vflip) for p in params])
    np.testing.assert_allclose(flips.mean(0), [0.5, 0.5], atol=0.04)


def test_store_normalization_pools_all_tiles(store, full):
    ds = StoreCropDataset(store, WNAME, crop=16)
    pixels = np.concatenate([full[t][0].reshape(-1, 3) for t in SHAPES]).astype(np.float64)
    np.testing.assert_allclose(ds.mean, pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.std, pixels.std(0), rtol=1e-5)


def test_tile_normalization_uses_each_tiles_stats(store, full):
    ds = StoreCropDataset(store, WNAME, crop=64, tiles=["areaB"], flip=False, normalize="tile")
    img = ds[0]["image"].numpy()[:, :40, :56]
    px = full["areaB"][0].astype(np.float64)
    expected = (px - px.reshape(-1, 3).mean(0)) / px.reshape(-1, 3).std(0)
    np.testing.assert_allclose(img, expected.transpose(2, 0, 1), atol=1e-4)


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


def test_reads_only_chunks_the_window_touches(store, full, byte_log):
    # areaA is 96 x 80 on a 16-pixel chunk grid (6 x 5 chunks per array), whether each chunk
    # is a file or all of them sit in one shard read by byte range
    ds = StoreCropDataset(store, WNAME, crop=16, tiles=["areaA"])
    arrays = ["label", "image", f"weights/{WNAME}"]
    data_bytes = {
        a: sum(f.stat().st_size for f in (store / "tiles" / "areaA" / a / "c").rglob("*")
               if f.is_file())
        for a in arrays
    }  # fmt: skip

    def read(y0, x0, h=16, w=16):
        byte_log.clear()
        win = ds.read_window(CropParams("areaA", y0, x0, h, w))
        per_array = {a: 0 for a in arrays}
        for key, n in byte_log:
            assert key.startswith("tiles/areaA/"), key
            per_array[next(a for a in arrays if key.startswith(f"tiles/areaA/{a}/"))] += n
        return win, per_array

    one, one_bytes = read(16, 32)  # exactly chunk (1, 2)
    image, label, weight = full["areaA"]
    np.testing.assert_array_equal(one["label"], label[16:32, 32:48])
    np.testing.assert_array_equal(one["weight"], weight[16:32, 32:48])
    np.testing.assert_allclose(one["image"] * ds.std + ds.mean, image[16:32, 32:48], atol=1e-3)
    _, four_bytes = read(8, 24)  # chunks (0..1, 1..2)
    _, all_bytes = read(0, 0, 96, 80)  # every chunk
    for a in arrays:
        assert 0 < one_bytes[a] < four_bytes[a] < all_bytes[a] <= data_bytes[a], a
        assert one_bytes[a] < data_bytes[a] / 4, a


# ---- refusals ----------------------------------------------------------------------------------
def test_unknown_weights_name_lists_available(store):
    with pytest.raises(StoreError, match=r"k2_log10_L0\.5.*k4_log10_L0\.5"):
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
    with pytest.raises(ValueError, match="`rotate`"):
        StoreCropDataset(store, WNAME, crop=(16, 32), rotate=True)
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
