"""Eq. 1 in N-D: volumes (D, H, W) and anisotropic search regions, precompute and online.

Every count is checked against a brute-force reference that edge-pads the labels
explicitly and compares every shifted copy (windows larger than the volume included).
"""

from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
import torch

from npa_precompute import affinity_maps, parse_transform
from npa_precompute.errors import ParameterError
from npa_precompute.regions import parse_regions, window_size
from npa_train.loss import NPALoss, npa_cross_entropy
from npa_train.online import affinity_counts, counts_dtype, npa_weights

IGN = 255
TRANSFORMS = ["log10:L=0.5", "ln:L=0.5", "log:a=2,L=0.25", "norm:L=0.5", "raw", "log10:L=0"]


def brute_force_nd(labels: np.ndarray, region) -> np.ndarray:
    """Eq. 1 in N-D: the labels edge-padded by k_a along axis a, every shifted copy compared."""
    padded = np.pad(labels, [(k, k) for k in region], mode="edge")
    out = np.zeros(labels.shape, dtype=np.int64)
    for offset in itertools.product(*[range(2 * k + 1) for k in region]):
        window = tuple(slice(o, o + n) for o, n in zip(offset, labels.shape, strict=True))
        out += padded[window] != labels
    return out


def _grid(shape):
    return np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")


def sphere(shape, centre, radius, label=1):
    z, y, x = _grid(shape)
    cz, cy, cx = centre
    out = np.zeros(shape, dtype=np.int64)
    out[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius**2] = label
    return out


def volumes():
    """Synthetic label volumes: spheres, a tube, thin slabs, random labels, ignore."""
    rng = np.random.default_rng(0)
    shape = (9, 12, 14)
    spheres = sphere(shape, (4, 5, 6), 3.5) + sphere(shape, (2, 9, 11), 2.2, 2)
    _, y, x = _grid(shape)
    tube = np.where((y - 6) ** 2 + (x - 4) ** 2 <= 4, 3, 0)  # along D
    slabs = np.zeros(shape, dtype=np.int64)
    slabs[4] = 1  # one-voxel slab across H, W
    slabs[:, :, 7] = 2  # one-voxel slab across D, H
    rand = rng.integers(0, 4, shape)
    ignored = spheres.copy()
    ignored[:, 0] = IGN
    return {
        "spheres": spheres,
        "tube": tube,
        "slabs": slabs,
        "random": rand,
        "ignore": ignored,
        "single_slice": rng.integers(0, 3, (1, 7, 8)),
        "thin": rng.integers(0, 2, (5, 1, 3)),
    }


REGIONS = [(0, 0, 0), (1, 1, 1), (2, 3, 1), (0, 4, 4), (3, 0, 0), (1, 0, 5), (6, 7, 8),
           (12, 2, 20)]  # fmt: skip


# ---- exact counts --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(volumes()))
def test_affinity_maps_3d_equal_brute_force(name):
    labels = volumes()[name]
    got = affinity_maps(labels, REGIONS)
    assert got.shape == (len(REGIONS), *labels.shape)
    for i, region in enumerate(REGIONS):
        np.testing.assert_array_equal(got[i].astype(np.int64), brute_force_nd(labels, region))


@pytest.mark.parametrize("name", list(volumes()))
def test_online_counts_3d_equal_brute_force(name):
    labels = volumes()[name]
    batch = torch.from_numpy(np.stack([labels, labels[::-1].copy()]))
    got = affinity_counts(batch, REGIONS, spatial_dims=3)
    assert got.shape == (2, len(REGIONS), *labels.shape) and got.dtype == torch.int32
    for n in range(2):
        for i, region in enumerate(REGIONS):
            np.testing.assert_array_equal(
                got[n, i].numpy().astype(np.int64), brute_force_nd(batch[n].numpy(), region)
            )


def test_isotropic_int_k_is_the_cube_and_the_string_form_works():
    labels = volumes()["spheres"]
    np.testing.assert_array_equal(
        affinity_maps(labels, 2)[0], affinity_maps(labels, [(2, 2, 2)])[0]
    )
    both = affinity_maps(labels, "2x3x1,2")
    np.testing.assert_array_equal(both[0], brute_force_nd(labels, (2, 3, 1)))
    np.testing.assert_array_equal(both[1], brute_force_nd(labels, (2, 2, 2)))
    assert parse_regions("2x3x1, 2, 2x2x2", 3) == ((2, 3, 1), (2, 2, 2))
    assert parse_regions((8, 16), 3) == ((8, 8, 8), (16, 16, 16))  # ints: isotropic list


def test_anisotropic_2d_regions_equal_brute_force_and_isotropic_ones_unchanged():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (13, 17))
    regions = [(0, 3), (5, 1), (20, 2), (4, 4), 3]
    got = affinity_maps(labels, regions)
    for i, region in enumerate(parse_regions(regions, 2)):
        np.testing.assert_array_equal(got[i].astype(np.int64), brute_force_nd(labels, region))
    # isotropic entries come from the 2-D kernels: the same as the int k
    np.testing.assert_array_equal(got[3], affinity_maps(labels, 4)[0])
    online = affinity_counts(torch.from_numpy(labels)[None], regions)[0].numpy()
    np.testing.assert_array_equal(online, got.astype(np.int32))


def test_windows_larger_than_the_volume():
    labels = volumes()["spheres"][:3, :4, :5]
    for region in [(10, 10, 10), (0, 30, 1), (50, 0, 0)]:
        want = brute_force_nd(labels, region)
        np.testing.assert_array_equal(affinity_maps(labels, [region])[0], want)
        got = affinity_counts(torch.from_numpy(labels)[None], [region])[0, 0]
        np.testing.assert_array_equal(got.numpy(), want)


def test_dtype_rules_for_volumes():
    labels = volumes()["random"][:3, :4, :5]
    # uint16 while the window - 1 fits: 39**3 - 1 = 59318; 41**3 - 1 = 68920 does not
    assert affinity_maps(labels, 19).dtype == np.uint16
    assert affinity_maps(labels, 20).dtype == np.uint32
    assert affinity_maps(labels, [(0, 127, 127)]).dtype == np.uint16
    assert affinity_maps(labels, [(1, 127, 127)]).dtype == np.uint32
    # the widest region decides; the counts of the smaller ones are unchanged
    assert affinity_maps(labels, [1, 20])[0].tolist() == affinity_maps(labels, 1)[0].tolist()
    # online: int32 while the window - 1 fits in int32 (isotropic 3-D: k <= 644)
    assert counts_dtype(644, 3) == torch.int32 and counts_dtype(645, 3) == torch.int64
    assert counts_dtype((0, 23169, 23169)) == torch.int32
    big = affinity_counts(torch.from_numpy(labels)[None], [(700, 700, 700)])
    assert big.dtype == torch.int64
    np.testing.assert_array_equal(big[0, 0].numpy(), affinity_maps(labels, 700)[0])
    # huge windows: uint64 counts, exact
    huge = (3000, 3000, 3000)
    got = affinity_maps(labels, [huge])
    assert got.dtype == np.uint64
    # a brute force of 2e11 voxels per window is out of reach: the two independent
    # implementations (numba, torch int64) must agree, and stay within [0, window - 1]
    online = affinity_counts(torch.from_numpy(labels)[None], [huge])[0, 0].numpy()
    np.testing.assert_array_equal(got[0].astype(np.int64), online)
    assert online.min() >= 0 and online.max() <= window_size(huge) - 1 and online.max() > 0


def test_class_groups_and_thread_counts_give_the_same_counts():
    labels = torch.from_numpy(np.stack([volumes()["spheres"], volumes()["random"]]))
    whole = affinity_counts(labels, [(1, 2, 3), 2])
    for group_elements in (1, 2000, 5000):
        assert torch.equal(affinity_counts(labels, [(1, 2, 3), 2], group_elements=group_elements),
                           whole)  # fmt: skip
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = affinity_maps(labels[1].numpy(), [(1, 2, 3), 2])
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(affinity_maps(labels[1].numpy(), [(1, 2, 3), 2]), one)
    np.testing.assert_array_equal(one.astype(np.int32), whole[1].numpy())


def test_wide_volume_in_many_column_bands():
    rng = np.random.default_rng(2)
    coarse = rng.integers(0, 5, (3, 4, 40))
    labels = np.repeat(np.repeat(coarse, 2, 1), 7, 2)  # (3, 8, 280): several bands of 64
    region = (1, 2, 9)
    np.testing.assert_array_equal(affinity_maps(labels, [region])[0],
                                  brute_force_nd(labels, region))  # fmt: skip


# ---- weights and the loss ------------------------------------------------------------------------
def _apply_3d(spec, counts, ignore):
    """WeightTransform.apply over a whole volume (min/max of norm over the volume)."""
    d, h, w = counts.shape
    out = parse_transform(spec).apply(counts.reshape(d * h, w), ignore.reshape(d * h, w))
    return out.reshape(d, h, w)


@pytest.mark.parametrize("spec", TRANSFORMS)
def test_weights_of_volumes_equal_weight_transform_apply(spec):
    labels = np.stack([volumes()["ignore"], volumes()["random"], np.full((9, 12, 14), 2)])
    for k in (0, 2, (1, 3, 2)):
        got = npa_weights(torch.from_numpy(labels), k, spec)
        assert got.shape == labels.shape and got.dtype == torch.float32
        for i in range(3):
            a = affinity_maps(labels[i], [k])[0]
            np.testing.assert_array_equal(got[i].numpy(), _apply_3d(spec, a, labels[i] == IGN))
        assert torch.equal(npa_weights(torch.from_numpy(labels), k, spec, num_classes=4), got)
    # raw counts reach the window size - 1
    one = np.zeros((1, 3, 3, 3), dtype=np.int64)
    one[0, 1, 1, 1] = 1
    assert npa_weights(torch.from_numpy(one), 1, "raw")[0, 1, 1, 1] == 26


def test_npaloss_on_volumes_equals_cross_entropy_with_the_weights():
    rng = np.random.default_rng(3)
    target = torch.from_numpy(np.stack([volumes()["ignore"], volumes()["spheres"]]))
    logits = torch.from_numpy(rng.standard_normal((2, 3, 9, 12, 14))).float()
    logits.requires_grad_(True)
    for k in (2, (1, 2, 3)):
        loss = NPALoss(k=k)(logits, target)
        w = npa_weights(target, k, "log10:L=0.5")
        want = npa_cross_entropy(logits, target, w)
        assert torch.equal(loss, want)
        plain = NPALoss(k=None)(logits, target)
        ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGN)
        torch.testing.assert_close(plain, ref)
    loss = NPALoss(k=(1, 2, 3), reduction="none")(logits, target)
    assert loss.shape == target.shape
    NPALoss(k=2)(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# ---- bad input -----------------------------------------------------------------------------------
def test_bad_regions_name_the_argument():
    labels = volumes()["spheres"]
    with pytest.raises(ParameterError, match=r"`k` tuple \(1, 2\) must have one int per spatial"):
        affinity_maps(labels, [(1, 2)])
    with pytest.raises(ParameterError, match="`k` tuple"):
        affinity_counts(torch.from_numpy(labels)[None], [(1, 2, 3, 4)])
    with pytest.raises(ParameterError, match="`k` must be >= 0"):
        affinity_maps(labels, [(1, -2, 3)])
    with pytest.raises(TypeError, match="`k` must hold integers"):
        affinity_maps(labels, [(1, 2.5, 3)])
    with pytest.raises(ParameterError, match="`k`"):
        npa_weights(torch.from_numpy(labels)[None], (1, 2))
    with pytest.raises(ParameterError, match="`k`"):
        NPALoss(k=(1, 2, 3, 4))
    with pytest.raises(ParameterError, match="2\\*\\*62"):
        affinity_maps(labels, [(2**30, 2**30, 2**30)])
    with pytest.raises(ValueError, match="`method`"):
        affinity_maps(labels, 2, method="columns")
    with pytest.raises(ValueError, match=r"\(N, D, H, W\)"):
        affinity_counts(torch.zeros(1, 1, 2, 3, 4, dtype=torch.int64), 1)
    one_slice = torch.zeros(2, 1, 5, 6, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"`target` of shape \(2, 1, 5, 6\) is ambiguous"):
        npa_weights(one_slice)
    with pytest.raises(ValueError, match="ambiguous"):
        affinity_counts(one_slice, 1)
    assert npa_weights(one_slice, 1, spatial_dims=3).shape == (2, 1, 5, 6)
    with pytest.raises(ValueError, match="`spatial_dims` 2 does not fit"):
        affinity_counts(one_slice, 1, spatial_dims=2)
    with pytest.raises(ValueError, match=r"`target` must have shape \(N, D, H, W\)"):
        NPALoss()(torch.zeros(1, 3, 2, 3, 4), torch.zeros(1, 1, 2, 3, 4, dtype=torch.int64))
