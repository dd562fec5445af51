"""Label volumes in the precompute: NIfTI (and TIFF stacks with --volume) -> (D, H, W)
counts and weights in the store, read back by inspect, export, open_weights and show."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from npa_precompute import affinity_maps, open_weights
from npa_precompute.cli import main
from npa_precompute.derived import derive
from npa_precompute.errors import StoreError
from npa_precompute.store import open_store, open_tile
from npa_precompute.transforms import parse_transform

nib = pytest.importorskip("nibabel")

INDEX = ["--preset", "index", "--num-classes", "3", "--quiet"]


def _volume(d: int = 9, h: int = 14, w: int = 17) -> np.ndarray:
    """(D, H, W) labels: a sphere of class 1 in class 0, a slab of class 2, an ignored line."""
    z, y, x = np.mgrid[:d, :h, :w]
    lab = ((z - d // 2) ** 2 + (y - h // 2) ** 2 + (x - w // 2) ** 2 < 16).astype(np.uint8)
    lab[:, :, :3] = 2
    lab[0, 0, 5:9] = 255
    return lab


def _nifti(path, labels: np.ndarray, zooms=(0.8, 0.7, 2.5), dtype=None):
    """Save (D, H, W) labels as NIfTI, whose voxel order is (i, j, k) = (W, H, D); ``zooms``
    along (i, j, k)."""
    data = labels.transpose(2, 1, 0)
    if dtype is not None:
        data = data.astype(dtype)
    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _run(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result


def test_nifti_volume_store_matches_affinity_maps_bit_for_bit(tmp_path):
    labels = _volume()
    src = _nifti(tmp_path / "case1_label.nii.gz", labels)
    out = tmp_path / "s.zarr"
    r = _run(src, "--out", out, *INDEX, "--k", "1,2")
    assert r.exit_code == 0, r.output
    tile = open_tile(open_store(out), "case1")  # the tile id drops .nii.gz and _label
    assert tile.is_volume and tile.shape == labels.shape
    np.testing.assert_array_equal(tile.label[...], labels)
    aff = affinity_maps(labels, [1, 2])
    ignore = labels == 255
    for i, k in enumerate((1, 2)):
        counts = tile.affinity(k)[...]
        assert counts.dtype == aff.dtype
        np.testing.assert_array_equal(counts, aff[i])
        expected = parse_transform("log10:L=0.5").apply(aff[i], ignore)
        stored = open_weights(out, "case1", f"k{k}_log10_L0.5")[...]
        np.testing.assert_array_equal(stored, expected)
        # a transformation that is not stored is derived from the counts, bit for bit
        derived = open_weights(out, "case1", f"k{k}_norm_L0.5")
        assert derived.shape == labels.shape
        want = parse_transform("norm:L=0.5").apply(aff[i], ignore)
        np.testing.assert_array_equal(derived[...], want)
        np.testing.assert_array_equal(derived[2:5, :, 4:9], want[2:5, :, 4:9])
    ms = open_weights(out, "case1", "ms_k1-2_ln_L0.5")[...]
    np.testing.assert_array_equal(
        ms, derive("ms_k1-2_ln_L0.5", [aff[0], aff[1]], labels, ignore_index=255)
    )
    meta = tile.meta
    assert meta.spacing == {"values": [2.5, 0.7, 0.8], "unit": "mm", "axes": ["z", "y", "x"],
                            "source": "NIfTI header"}  # fmt: skip
    assert meta.shape == labels.shape and meta.params["volume"] is True
    arr = tile.group["weights"]["k1_log10_L0.5"]
    assert arr.chunks == labels.shape  # smaller than a chunk of 64 x 128 x 128
    assert list(arr.metadata.dimension_names) == ["z", "y", "x"]
    # a second run skips the current tile; more k recompute it whole
    again = _run(src, "--out", out, *INDEX, "--k", "1,2")
    assert "1 up to date" in again.output
    more = _run(src, "--out", out, *INDEX, "--k", "3")
    assert more.exit_code == 0, more.output
    t3 = open_tile(open_store(out), "case1")
    assert t3.affinity_ks == [1, 2, 3]
    np.testing.assert_array_equal(t3.affinity(3)[...], affinity_maps(labels, 3)[0])


def test_volume_chunks_are_3d(tmp_path):
    labels = np.zeros((40, 70, 90), np.uint8)
    labels[10:30, 20:50, 30:60] = 1
    src = _nifti(tmp_path / "big.nii", labels)
    out = tmp_path / "s.zarr"
    assert _run(src, "--out", out, *INDEX, "--k", "1", "--chunk", "64").exit_code == 0
    arr = open_tile(open_store(out), "big").affinity(1)
    assert arr.chunks == (16, 32, 32)  # chunk // 4 along D, chunk // 2 along H and W


def test_float_labels_with_integer_values_are_read(tmp_path):
    labels = _volume()
    src = _nifti(tmp_path / "f.nii.gz", labels, dtype=np.float32)
    out = tmp_path / "s.zarr"
    r = _run(src, "--out", out, *INDEX, "--k", "1")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(open_tile(open_store(out), "f").label[...], labels)


def test_inspect_export_and_show_a_volume(tmp_path):
    labels = _volume()
    src = _nifti(tmp_path / "v.nii.gz", labels, zooms=(2.0, 2.0, 3.0))
    out = tmp_path / "s.zarr"
    assert _run(src, "--out", out, *INDEX, "--k-mm", "2.5").exit_code == 0  # 1.25, 0.83: 1
    runner = CliRunner()
    r = runner.invoke(main, ["inspect", str(out), "--json", "--weights", "k1_raw"])
    assert r.exit_code == 0, r.output
    tile = json.loads(r.output)["tiles"][0]
    assert tile["shape"] == list(labels.shape)
    assert tile["spacing"]["values"] == [3.0, 2.0, 2.0]
    assert tile["k_physical"]["radii"] == [2.5] and tile["k_physical"]["ks"] == [1]
    raw = next(a for a in tile["arrays"] if a["path"] == "weights/k1_raw")
    valid = labels != 255
    counts = affinity_maps(labels, 1)[0]
    assert raw["derived"] and raw["dimension_names"] == ["z", "y", "x"]
    assert raw["stats"]["max"] == counts[valid].max()
    assert raw["stats"]["mean"] == pytest.approx(counts[valid].mean())
    assert raw["stats"]["pixels"] == int(valid.sum())
    text = runner.invoke(main, ["inspect", str(out)]).output
    assert "voxel spacing 3 x 2 x 2 mm along z, y, x (NIfTI header)" in text
    assert "at 3 x 2 x 2 mm/voxel (header, rounded half up): 2.5 mm -> k = 1" in text
    # export: the whole volume (.npy, a .tif stack), a window, one slice (.png)
    npy = tmp_path / "w.npy"
    args = ["export", str(out), "--tile", "v", "--array", "k1_log10_L0.5"]
    assert runner.invoke(main, [*args, "--out", str(npy)]).exit_code == 0
    want = open_weights(out, "v", "k1_log10_L0.5")[...]
    np.testing.assert_array_equal(np.load(npy), want)
    tif = tmp_path / "w.tif"
    r = runner.invoke(main, [*args, "--window", "2,3,10,8", "--out", str(tif)])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(tifffile.imread(tif), want[:, 3:11, 2:12])
    png = tmp_path / "l.png"
    label_args = ["export", str(out), "--tile", "v", "--array", "label"]
    r = runner.invoke(main, [*label_args, "--slice", "4", "--out", str(png)])
    assert r.exit_code == 0, r.output
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(png)), labels[4])
    r = runner.invoke(main, [*label_args, "--out", str(png)])
    assert r.exit_code == 2 and "--slice" in r.output and "to .png" in r.output
    r = runner.invoke(main, [*label_args, "--slice", "9", "--out", str(npy)])
    assert r.exit_code == 2 and "--slice" in r.output and "0 .. 8" in r.output
    # show: the middle slice by default, or the one asked for
    from npa_precompute.viz_data import load_show_data

    data = load_show_data(out, "v")
    assert data.depth == 4 and data.title == "v, slice z = 4"
    np.testing.assert_array_equal(data.label, labels[4])
    data = load_show_data(out, "v", depth=2, window="1,2,6,5")
    np.testing.assert_array_equal(data.rows[0][1][0][1], want[2, 2:7, 1:7])
    fig = tmp_path / "f.png"
    r = runner.invoke(main, ["show", str(out), "--tile", "v", "--slice", "1", "--backend",
                             "pillow", "--out", str(fig)])  # fmt: skip
    assert r.exit_code == 0, r.output and fig.stat().st_size > 0


def test_k_mm_rounds_half_up_and_equals_k(tmp_path):
    labels = _volume()
    src = _nifti(tmp_path / "v.nii.gz", labels, zooms=(0.5, 0.5, 0.5))
    by_mm, by_k = tmp_path / "mm.zarr", tmp_path / "k.zarr"
    # 0.75 / 0.5 = 1.5 rounds up to 2; 1.2 / 0.5 = 2.4 to 2 (a duplicate); 0.5 -> 1
    assert _run(src, "--out", by_mm, *INDEX, "--k-mm", "0.75,1.2,0.5").exit_code == 0
    assert _run(src, "--out", by_k, *INDEX, "--k", "2,1").exit_code == 0
    t_mm, t_k = open_tile(open_store(by_mm), "v"), open_tile(open_store(by_k), "v")
    assert t_mm.affinity_ks == [1, 2]
    for k in (1, 2):
        np.testing.assert_array_equal(t_mm.affinity(k)[...], t_k.affinity(k)[...])
    phys = t_mm.meta.params["k_physical"]
    assert phys["ks"] == [2, 2, 1] and phys["spacing"] == [0.5, 0.5, 0.5]
    assert phys["unit"] == "mm" and phys["spacing_source"] == "header"
    # a TIFF stack has no spacing: --spacing gives it
    stack = tmp_path / "st.tif"
    tifffile.imwrite(stack, labels)
    out = tmp_path / "st.zarr"
    r = _run(stack, "--out", out, *INDEX, "--volume", "--k-mm", "1", "--spacing", "0.5")
    assert r.exit_code == 0, r.output
    t = open_tile(open_store(out), "st")
    np.testing.assert_array_equal(t.affinity(2)[...], t_k.affinity(2)[...])
    assert t.meta.spacing is None and t.meta.params["k_physical"]["spacing_source"] == "spacing"


def test_tiff_stacks_only_with_volume(tmp_path):
    labels = _volume()
    stack = tmp_path / "st.tif"
    tifffile.imwrite(stack, labels)
    r = _run(stack, "--out", tmp_path / "a.zarr", *INDEX, "--k", "1")
    assert r.exit_code != 0 and "multi-page TIFF" in r.output
    r = _run(stack, "--out", tmp_path / "b.zarr", *INDEX, "--k", "1", "--volume")
    assert r.exit_code == 0, r.output
    counts = open_tile(open_store(tmp_path / "b.zarr"), "st").affinity(1)[...]
    np.testing.assert_array_equal(counts, affinity_maps(labels, 1)[0])


def test_bad_volume_inputs_name_the_file_or_option(tmp_path):
    labels = _volume()
    out = ["--out", str(tmp_path / "s.zarr")]
    frac = labels.astype(np.float32)
    frac[2, 3, 4] = 0.5
    bad = _nifti(tmp_path / "frac.nii.gz", frac)
    r = _run(bad, *out, *INDEX, "--k", "1")
    assert r.exit_code == 1 and str(bad) in r.output and "non-integer" in r.output
    for zooms in ((0.8, -0.7, 2.5), (0.8, 0.7, 0.0)):
        img = nib.Nifti1Image(labels.transpose(2, 1, 0), np.eye(4))
        img.header["pixdim"][1:4] = zooms  # set_zooms refuses negative values
        path = tmp_path / f"z{zooms[1]}_{zooms[2]}.nii"
        nib.save(img, str(path))
        r = _run(path, *out, *INDEX, "--k", "1")
        assert r.exit_code == 1 and str(path) in r.output and "spacing" in r.output, r.output
    good = _nifti(tmp_path / "good.nii.gz", labels)  # zooms (i, j, k) = (0.8, 0.7, 2.5)
    r = _run(good, *out, *INDEX, "--k", "1x2")
    assert r.exit_code == 2 and "--k" in r.output, r.output
    r = _run(good, *out, *INDEX, "--k-mm", "0.2")  # 0.2 / (2.5, 0.7, 0.8): 0 everywhere
    assert r.exit_code == 2 and "--k-mm" in r.output and "rounds to k = 0" in r.output
    r = _run(good, *out, *INDEX, "--k", "2x2")  # a (H, W) region for a volume
    assert r.exit_code == 2 and "--k" in r.output and "3 for (D, H, W)" in r.output, r.output
    r = _run(good, *out, *INDEX, "--k-mm", "1", "--spacing", "1,2")
    assert r.exit_code == 2 and "--spacing" in r.output and "one value per" in r.output
    r = _run(good, *out, "--k", "1", "--quiet")  # the default preset decodes RGB maps
    assert r.exit_code == 2 and "--preset" in r.output
    (tmp_path / "img").mkdir()
    image = _nifti(tmp_path / "img" / "good.nii.gz", labels)
    r = _run(good, *out, *INDEX, "--k", "1", "--images", image)
    assert r.exit_code == 2 and "--images" in r.output
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, labels[0])
    r = _run(good, flat, *out, *INDEX, "--k", "1")
    assert r.exit_code == 2 and "mix NIfTI" in r.output
    r = _run(flat, *out, *INDEX, "--k-mm", "1")
    assert r.exit_code == 2 and "--k-mm" in r.output and "volumes" in r.output
    r = _run(good, *out, *INDEX, "--k", "20", "--transform", "raw", "--dtype", "float16")
    assert r.exit_code != 0 and "float16" in r.output  # 41**3 - 1 counts overflow float16
    # a usage error naming the options, from the 3-D window the library checked
    assert r.exit_code == 2 and "--transform raw with --k 20" in r.output, r.output


def test_anisotropic_regions_are_stored_and_read_back(tmp_path):
    """--k-mm 10 at 5 x 0.7 x 0.7 mm stores k = (2, 14, 14) (arrays ``k2x14x14``), equal to
    ``affinity_maps(labels, [(2, 14, 14)])`` bit for bit, as ``--k 2x14x14`` does; inspect,
    export, open_weights (stored and derived) and show read it."""
    labels = _volume(6, 32, 30)
    src = _nifti(tmp_path / "ct_label.nii.gz", labels, zooms=(0.7, 0.7, 5.0))
    by_mm, by_k = tmp_path / "mm.zarr", tmp_path / "k.zarr"
    r = _run(src, "--out", by_mm, *INDEX, "--k-mm", "10,5,4.9")  # 5 mm, 4.9 mm: k 1x7x7
    assert r.exit_code == 0, r.output
    assert _run(src, "--out", by_k, *INDEX, "--k", "2x14x14,1").exit_code == 0
    tile = open_tile(open_store(by_mm), "ct")
    assert tile.affinity_ks == [(1, 7, 7), (2, 14, 14)]
    assert tile.meta.params["ks"] == [[2, 14, 14], [1, 7, 7]]
    assert tile.meta.params["k_physical"]["ks"] == [[2, 14, 14], [1, 7, 7], [1, 7, 7]]
    aff = affinity_maps(labels, [(2, 14, 14), (1, 7, 7)])
    ignore = labels == 255
    for i, k in enumerate(((2, 14, 14), (1, 7, 7))):
        counts = tile.affinity(k)
        assert counts.attrs["k"] == list(k) and counts.dtype == aff.dtype
        np.testing.assert_array_equal(counts[...], aff[i])
        valid = aff[i][~ignore]
        assert tile.meta.count_range[k] == (valid.min(), valid.max())
    t_k = open_tile(open_store(by_k), "ct")
    assert t_k.affinity_ks == [1, (2, 14, 14)]
    np.testing.assert_array_equal(t_k.affinity((2, 14, 14))[...], aff[0])
    stored = open_weights(by_mm, "ct", "k2x14x14_log10_L0.5")
    assert stored.attrs["k"] == [2, 14, 14]
    want = parse_transform("log10:L=0.5").apply(aff[0], ignore)
    np.testing.assert_array_equal(stored[...], want)
    norm = open_weights(by_mm, "ct", "k2x14x14_norm_L0.5")  # derived from the counts
    np.testing.assert_array_equal(norm[...], parse_transform("norm:L=0.5").apply(aff[0], ignore))
    with pytest.raises(StoreError, match="k = 3x14x14"):
        open_weights(by_mm, "ct", "k3x14x14_log10_L0.5")
    with pytest.raises(StoreError, match="one k per axis"):
        open_weights(by_mm, "ct", "ms_k1x7x7-2x14x14_log10_L0.5")
    # a re-run finds the tile current; --k 2x14x14 with the 1x7x7 of the store adds nothing
    r = _run(src, "--out", by_mm, *INDEX, "--k-mm", "10,5")
    assert r.exit_code == 0 and "1 up to date" in r.output, r.output
    runner = CliRunner()
    r = runner.invoke(main, ["inspect", str(by_mm), "--json", "--weights", "k2x14x14_raw"])
    assert r.exit_code == 0, r.output
    arrays = {a["path"]: a for a in json.loads(r.output)["tiles"][0]["arrays"]}
    assert arrays["affinity/k2x14x14"]["k"] == [2, 14, 14]
    raw = arrays["weights/k2x14x14_raw"]
    assert raw["derived"] and raw["stats"]["max"] == aff[0][~ignore].max()
    text = runner.invoke(main, ["inspect", str(by_mm)]).output
    assert "10 mm -> k = 2x14x14, 5 mm -> k = 1x7x7, 4.9 mm -> k = 1x7x7" in text
    assert "weights/k2x14x14_log10_L0.5" in text
    npy = tmp_path / "c.npy"
    for array, expected in (("affinity/k2x14x14", aff[0]), ("k2x14x14", aff[0]),
                            ("k2x14x14_log10_L0.5", want)):  # fmt: skip
        args = ["export", str(by_mm), "--tile", "ct", "--array", array, "--out", str(npy)]
        r = runner.invoke(main, args)
        assert r.exit_code == 0, r.output
        np.testing.assert_array_equal(np.load(npy), expected)
    from npa_precompute.viz_data import load_show_data

    data = load_show_data(by_mm, "ct", arrays=["k2x14x14_log10_L0.5"])
    np.testing.assert_array_equal(data.rows[0][1][0][1], want[3])
    assert data.rows[0][1][0][0].k == (2, 14, 14)


def test_a_2d_region_is_stored_from_k(tmp_path):
    """``--k 4x8`` on a 2-D label map: (H, W) region k_h = 4, k_w = 8, stored as
    ``affinity/k4x8`` and ``weights/k4x8_<transform>``; the weights' range is checked on
    its (9 x 17)-pixel window."""
    from PIL import Image

    rng = np.random.default_rng(3)
    labels = np.repeat(np.repeat(rng.integers(0, 3, (6, 7)), 7, 0), 6, 1).astype(np.uint8)
    labels[0, :5] = 255
    src = tmp_path / "a_label.png"
    Image.fromarray(labels).save(src)
    out = tmp_path / "s.zarr"
    r = _run(src, "--out", out, *INDEX, "--k", "4x8,3,5x5", "--transform", "raw")
    assert r.exit_code == 0, r.output
    tile = open_tile(open_store(out), "a")
    assert tile.affinity_ks == [3, 5, (4, 8)]  # 5x5 is k = 5
    aff = affinity_maps(labels, [(4, 8)])[0]
    np.testing.assert_array_equal(tile.affinity((4, 8))[...], aff)
    stored = open_weights(out, "a", "k4x8_raw")
    np.testing.assert_array_equal(stored[...], parse_transform("raw").apply(aff, labels == 255))
    # the range check takes the region's window: 3 x 401 fits float16, 201 x 801 does not
    r = _run(src, "--out", tmp_path / "h.zarr", *INDEX, "--k", "1x200", "--transform", "raw",
             "--dtype", "float16")  # fmt: skip
    assert r.exit_code == 0, r.output  # 3 x 401 - 1 = 1202 fits float16
    r = _run(src, "--out", tmp_path / "h.zarr", *INDEX, "--k", "100x400", "--transform", "raw",
             "--dtype", "float16", "--overwrite")  # fmt: skip
    assert r.exit_code == 2 and "--dtype" in r.output and "k 100x400" in r.output, r.output
    r = _run(src, "--out", tmp_path / "x.zarr", *INDEX, "--k", "2x2x2")
    assert r.exit_code == 2 and "2 for (H, W)" in r.output, r.output
    r = _run(src, "--out", tmp_path / "x.zarr", *INDEX, "--k", "4x8", "--dask")
    assert r.exit_code == 2 and "--dask" in r.output and "4x8" in r.output, r.output
