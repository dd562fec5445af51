"""npa_train.augment: image, label and weight stay aligned under resize, rotation, mirror, blur.

The store built here makes every pixel's image colour and weight a function of its
label. Whatever the augmentation does, wherever a crop pixel is not near a label
boundary (erode the label map), the label decoded from the image colour and the
weight must equal what the label says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import ISPRS
from npa_precompute.store import open_store
from npa_train.augment import (
    AugmentConfig,
    CropParams,
    collate_windows,
    gaussian_blur,
    sample_params,
    warp_windows,
)
from npa_train.data import StoreCropDataset
from npa_train.distributed import worker_init as _worker_init

IGN = 255
WNAME = "k2_log10_L0.5"
# image colour of each class (0..5) and of ignore (index 6): far apart in RGB
COLOURS = np.array(
    [[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20], [20, 230, 230],
     [230, 20, 230], [120, 120, 120]], dtype=np.uint8
)  # fmt: skip
SHAPES = {"areaA": (160, 144), "areaB": (96, 112)}


pytestmark = pytest.mark.usefixtures("one_thread")


def weight_of(label: np.ndarray) -> np.ndarray:
    """The synthetic store's weight as a function of the label (0 at ignore)."""
    return np.where(label == IGN, 0.0, 0.5 + 0.75 * label.astype(np.float64)).astype(np.float32)


def make_store(folder: Path, *, classes=(0, 1, 2, 3, 4, 5, 6), shapes=SHAPES, block=16) -> Path:
    """ISPRS tiles of square label blocks; image = COLOURS[label], weight = weight_of(label)."""
    rng = np.random.default_rng(1)
    palette = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)
    gts, top = folder / "gts", folder / "top"
    gts.mkdir(parents=True)
    top.mkdir(parents=True)
    for tid, (h, w) in shapes.items():
        blocks = rng.choice(classes, size=(h // block + 1, w // block + 1))
        idx = np.kron(blocks, np.ones((block, block), dtype=np.int64))[:h, :w]
        tifffile.imwrite(gts / f"{tid}_noBoundary.tif", palette[idx])
        tifffile.imwrite(top / f"{tid}.tif", COLOURS[idx])
    out = folder / "store.zarr"
    run_precompute([str(gts)], out, images=[str(top)], ks="2", chunk=32)
    root = open_store(out, mode="r+")
    for tid in shapes:
        g = root["tiles"][tid]
        label = g["label"][...]
        g["weights"][WNAME][...] = weight_of(label)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("augment"))


def decode_classes(ds: StoreCropDataset, image: np.ndarray) -> np.ndarray:
    """Nearest COLOURS entry of each de-normalized pixel (6 = the ignore colour)."""
    raw = image.transpose(1, 2, 0) * ds.std + ds.mean
    d = ((raw[:, :, None, :] - COLOURS[None, None].astype(np.float32)) ** 2).sum(-1)
    cls = d.argmin(-1)
    return np.where(cls == 6, IGN, cls)


def interior(label: np.ndarray, r: int) -> np.ndarray:
    """Pixels whose (2r+1)² neighbourhood in ``label`` holds one value (label eroded by r)."""
    t = torch.from_numpy(label.astype(np.float32))[None, None]
    hi = F.max_pool2d(t, 2 * r + 1, stride=1, padding=r)
    lo = -F.max_pool2d(-t, 2 * r + 1, stride=1, padding=r)
    same = (hi == lo)[0, 0].numpy()
    same[:r], same[-r:], same[:, :r], same[:, -r:] = False, False, False, False
    return same


def check_aligned(ds, item, erode: int) -> int:
    image, label = item["image"].numpy(), item["label"].numpy()
    weight = item["weight"].numpy()
    inner = interior(label, erode) & (label != IGN)
    np.testing.assert_array_equal(decode_classes(ds, image)[inner], label[inner])
    np.testing.assert_allclose(weight[inner], weight_of(label)[inner], rtol=1e-5, atol=1e-6)
    # anywhere (boundaries included): weight is 0 exactly at ignore, positive elsewhere
    assert (weight[label == IGN] == 0).all()
    assert (weight[label != IGN] > 0).all()
    return int(inner.sum())


# ---- alignment ---------------------------------------------------------------------------------
@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_full_augmentation_keeps_image_label_weight_aligned(store, blur):
    aug = AugmentConfig(crop=(72, 64), blur_p=blur, transpose=False)
    ds = StoreCropDataset(store, WNAME, augment=aug, length=24, seed=4)
    erode = 2 if blur == 0 else 4  # bilinear reach 1 px; the 5x5 blur 2 px more
    scales, angles, compared = [], [], 0
    for i in range(len(ds)):
        p = ds.sample_params(i)
        scales.append(p.scale)
        angles.append(p.angle)
        assert (p.blur_sigma > 0) == (blur == 1.0)
        compared += check_aligned(ds, ds[i], erode)
    assert min(scales) < 0.8 and max(scales) > 1.5  # the samples were really resized
    assert max(abs(a) for a in angles) > 5  # and rotated
    assert compared > 0.15 * len(ds) * 72 * 64


def test_batched_device_warp_is_aligned_and_equals_per_sample(store):
    aug = AugmentConfig(crop=48, transpose=True)
    ds = StoreCropDataset(store, WNAME, augment=aug, length=12, seed=9, output="window")
    batch = collate_windows([ds[i] for i in range(12)], ignore_index=IGN)
    assert len({tuple(s) for s in batch["valid_hw"].tolist()}) > 1  # padded to a common size
    out = ds.warp(batch, "cpu")
    assert out["image"].shape == (12, 3, 48, 48) and out["label"].dtype == torch.int64
    single = StoreCropDataset(store, WNAME, augment=aug, length=12, seed=9)
    for i in range(12):
        item = {k: out[k][i] for k in ("image", "label", "weight")}
        check_aligned(ds, item, 2)
        ref = single[i]
        # the same parameters; float rounding of the padded grid moves points by ~1e-5 px
        differ = (item["label"] != ref["label"]).float().mean().item()
        assert differ < 0.002
        same = item["label"] == ref["label"]
        torch.testing.assert_close(item["weight"][same], ref["weight"][same], atol=1e-3, rtol=0)


def test_nearest_labels_never_hold_new_values(tmp_path):
    # labels 0, 3, 5 only: any interpolation between them would create 1, 2 or 4
    path = make_store(tmp_path, classes=(0, 3, 5), block=5)
    ds = StoreCropDataset(path, None, augment=AugmentConfig(crop=40), length=30, seed=1)
    seen = set()
    for i in range(len(ds)):
        seen |= set(np.unique(ds[i]["label"].numpy()).tolist())
    assert seen <= {0, 3, 5, IGN}
    assert {0, 3, 5} <= seen


def test_weight_without_store_weights_is_one_at_valid_pixels(store):
    ds = StoreCropDataset(store, None, augment=AugmentConfig(crop=40), length=5, seed=2)
    for i in range(5):
        item = ds[i]
        valid = item["label"] != IGN
        assert torch.equal(item["weight"], valid.float())


def _corner_params(ds, angle: float, scale: float = 1.0) -> CropParams:
    """A crop centred on the tile's top-left corner: a quarter of it lies outside."""
    return CropParams("areaA", 0, 0, (0.0, 0.0), scale, angle, False, False, False, 0.0, (41, 41))


@pytest.mark.parametrize(("angle", "scale"), [(10.0, 1.0), (-7.5, 0.6), (3.0, 1.7)])
def test_pixels_from_outside_the_tile_are_ignore_weight_0_image_mean(tmp_path, angle, scale):
    path = make_store(tmp_path, classes=(0, 1, 2, 3, 4, 5), shapes={"areaA": (64, 64)})
    ds = StoreCropDataset(path, WNAME, augment=AugmentConfig(crop=41), output="window")
    p = _corner_params(ds, angle, scale)
    win = ds.read_window(p)
    assert win["window"][0] == 0 and win["window"][2] == 0
    item = {
        "image": torch.from_numpy(win["image"]),
        "label": torch.from_numpy(win["label"]),
        "weight": torch.from_numpy(win["weight"]),
        "theta": torch.from_numpy(p.window_matrix((64, 64))),
        "tile_index": 0, "index": 0, "blur_sigma": 0.0, "tile": "areaA",
    }  # fmt: skip
    out = ds.warp(collate_windows([item], ignore_index=IGN), "cpu")
    label, weight, image = out["label"][0], out["weight"][0], out["image"][0]
    # where each crop pixel lands in the tile
    v, u = np.mgrid[:41, :41]
    xy = np.stack([u, v, np.ones_like(u)], -1) @ p.matrix().T
    far_out = (xy[..., 0] < -1) | (xy[..., 1] < -1)
    far_in = (xy[..., 0] > 0.5) & (xy[..., 1] > 0.5)
    assert far_out.sum() > 300 and far_in.sum() > 300
    assert (label[far_out] == IGN).all() and (weight[far_out] == 0).all()
    assert (image[:, far_out] == 0).all()  # normalized 0 = the mean
    assert (label[far_in] != IGN).all()  # this tile has no ignore pixels
    assert (weight[far_in] > 0).all()


def test_tile_smaller_than_crop_is_placed_at_random_and_padded(store):
    aug = AugmentConfig.identity((128, 128))
    ds = StoreCropDataset(store, WNAME, augment=aug, tiles="areaB", length=30, seed=0)
    offsets = set()
    root = open_store(store)
    tile_label = root["tiles"]["areaB"]["label"][...]
    for i in range(30):
        item = ds[i]
        label = item["label"].numpy()
        inside = label != IGN
        ys, xs = np.nonzero(
            inside | (item["weight"].numpy() > 0) | (item["image"] != 0).any(0).numpy()
        )
        y0, x0 = ys.min(), xs.min()
        offsets.add((int(y0), int(x0)))
        np.testing.assert_array_equal(label[y0 : y0 + 96, x0 : x0 + 112], tile_label)
        pad = np.ones_like(inside)
        pad[y0 : y0 + 96, x0 : x0 + 112] = False
        assert (label[pad] == IGN).all() and (item["weight"].numpy()[pad] == 0).all()
        assert (item["image"].numpy()[:, pad] == 0).all()
    assert len(offsets) > 10


# ---- parameters --------------------------------------------------------------------------------
def test_parameters_are_a_function_of_seed_and_index_and_cover_the_ranges(store):
    ds = StoreCropDataset(store, WNAME, augment=AugmentConfig(crop=32, transpose=True), length=400)
    params = [ds.sample_params(i) for i in range(400)]
    assert params[17] == StoreCropDataset(store, WNAME, augment=ds.augment).sample_params(17)
    s = np.array([p.scale for p in params])
    a = np.array([p.angle for p in params])
    assert 0.5 <= s.min() < 0.55 and 1.95 < s.max() <= 2.0
    assert -10 <= a.min() < -9.5 and 9.5 < a.max() <= 10
    for name in ("hflip", "vflip", "transpose"):
        assert 0.4 < np.mean([getattr(p, name) for p in params]) < 0.6
    assert 0.4 < np.mean([p.blur_sigma > 0 for p in params]) < 0.6
    assert {p.blur_sigma for p in params} == {0.0, 1.1}


def test_switching_the_blur_off_leaves_the_geometry(store):
    on = StoreCropDataset(store, WNAME, augment=AugmentConfig(crop=48, blur_p=1.0), length=4)
    off = StoreCropDataset(store, WNAME, augment=AugmentConfig(crop=48, blur_p=0.0), length=4)
    for i in range(4):
        a, b = on[i], off[i]
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["weight"], b["weight"])
        torch.testing.assert_close(a["image"], gaussian_blur(b["image"][None], [1.1])[0])
        assert not torch.equal(a["image"], b["image"])


def test_window_covers_the_crop_with_margin_and_stays_small(store):
    ds = StoreCropDataset(store, WNAME, augment=AugmentConfig(crop=32), length=200)
    for i in range(200):
        p = ds.sample_params(i)
        shape = ds.shapes[p.tile_index]
        y0, y1, x0, x1 = p.window(shape)
        v, u = np.mgrid[:32, :32]
        xy = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3) @ p.matrix().T
        inside = (
            (xy[:, 0] >= 0)
            & (xy[:, 0] <= shape[1] - 1)
            & (xy[:, 1] >= 0)
            & (xy[:, 1] <= shape[0] - 1)
        )
        x, y = xy[inside, 0], xy[inside, 1]
        # both bilinear neighbours of every inside point are in the window
        assert (np.floor(x) >= x0).all() and (np.minimum(np.floor(x) + 1, shape[1] - 1) < x1).all()
        assert (np.floor(y) >= y0).all() and (np.minimum(np.floor(y) + 1, shape[0] - 1) < y1).all()
        # and the window is the footprint's bounding box plus a margin of 1-2 px each side
        span = (32 / p.scale) * (
            abs(np.cos(np.radians(p.angle))) + abs(np.sin(np.radians(p.angle)))
        )
        assert y1 - y0 <= span + 5 and x1 - x0 <= span + 5


def test_identity_is_exact_and_integral(store):
    ds = StoreCropDataset(store, WNAME, augment=AugmentConfig.identity(24, hflip=True), length=8)
    root = open_store(store)
    for i in range(8):
        p = ds.sample_params(i)
        assert p.scale == 1.0 and p.angle == 0.0 and p.is_integral()
        g = root["tiles"][p.tile]
        y0 = round(p.center[0] - 11.5)
        x0 = round(p.center[1] - 11.5)
        label = g["label"][y0 : y0 + 24, x0 : x0 + 24]
        weight = g["weights"][WNAME][y0 : y0 + 24, x0 : x0 + 24]
        if p.hflip:
            label, weight = label[:, ::-1], weight[:, ::-1]
        item = ds[i]
        np.testing.assert_array_equal(item["label"].numpy(), label)
        np.testing.assert_array_equal(item["weight"].numpy(), np.where(label == IGN, 0, weight))


# ---- blur, config, workers -----------------------------------------------------------------------
def test_gaussian_blur_matches_a_2d_convolution():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 9, 11, generator=g, dtype=torch.float64)
    out = gaussian_blur(x, [1.1, 0.0, 0.7], kernel=5)
    assert torch.equal(out[1], x[1])
    for i, s in ((0, 1.1), (2, 0.7)):
        t = torch.arange(-2, 3, dtype=torch.float64)
        k1 = torch.exp(-(t**2) / (2 * s * s))
        k1 = k1 / k1.sum()
        k2 = (k1[:, None] * k1[None, :]).expand(2, 1, 5, 5)
        ref = F.conv2d(F.pad(x[i : i + 1], (2, 2, 2, 2), mode="reflect"), k2, groups=2)
        torch.testing.assert_close(out[i], ref[0])


def test_augment_config_validation_and_round_trip():
    cfg = AugmentConfig(crop=(64, 48), scale=(0.75, 1.5), rotation=5, blur_p=0.25)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert AugmentConfig().crop == (513, 513) and AugmentConfig().scale == (0.5, 2.0)
    assert AugmentConfig.identity(32).is_integral and not AugmentConfig().is_integral
    for kw, name in [({"scale": (2.0, 1.0)}, "`scale`"), ({"scale": (0, 1)}, "`scale`"),
                     ({"rotation": -1}, "`rotation`"), ({"blur_p": 1.5}, "`blur_p`"),
                     ({"blur_kernel": 4}, "`blur_kernel`"), ({"crop": 0}, "`crop`"),
                     ({"crop": (8, 16), "transpose": True}, "`transpose`")]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            AugmentConfig(**kw)
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentConfig.from_dict({"zoom": 2})


def test_sample_params_is_pure():
    args = (["a", "b"], [(100, 80), (50, 60)], [0.5, 0.5], AugmentConfig(crop=32))
    assert sample_params(3, 7, *args) == sample_params(3, 7, *args)
    assert sample_params(3, 7, *args) != sample_params(3, 8, *args)
    assert sample_params(3, 7, *args) != sample_params(4, 7, *args)


class _Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return float(np.random.random())  # noqa: NPY002 - the legacy global state under test


def _draws(seed: int) -> list[float]:
    loader = DataLoader(_Draws(), batch_size=2, num_workers=2, worker_init_fn=_worker_init,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return [x for b in loader for x in b.tolist()]


def test_workers_are_seeded_distinctly_and_reproducibly():
    a, b, c = _draws(5), _draws(5), _draws(6)
    assert a == b  # the same seed reproduces the workers' random state
    assert a[0] != a[2]  # worker 0 (items 0, 1) and worker 1 (items 2, 3) differ
    assert a != c


def test_warp_on_empty_weights_and_uint16_labels():
    # a hand-made batch: uint16-range labels (as int32), no weights, window larger than needed
    lab = torch.full((1, 10, 10), 300, dtype=torch.int32)
    lab[0, :, 5:] = 7
    batch = {
        "image": torch.full((1, 10, 10, 1), 50, dtype=torch.uint8),
        "label": lab,
        "valid_hw": torch.tensor([[10, 10]]),
        "theta": torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]], dtype=torch.float64),
        "tile_index": torch.tensor([0]),
        "index": torch.tensor([0]),
        "blur_sigma": torch.tensor([0.0], dtype=torch.float64),
        "tile": ["t"],
    }
    out = warp_windows(batch, mean=torch.tensor([[50.0]]), std=torch.tensor([[2.0]]), crop=(10, 9),
                       ignore_index=65535)  # fmt: skip
    assert set(out["label"].unique().tolist()) == {7, 300}
    assert torch.equal(out["weight"], torch.ones(1, 10, 9))
    torch.testing.assert_close(out["image"], torch.zeros(1, 1, 10, 9))
