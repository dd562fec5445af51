"""Damaged inputs are refused naming the file: TIFFs with missing strips or tiles, corrupt
compressed data, links to missing files (issue 18, items 3, 4 and 8). Every damaged file
is built here: tifffile writes it, then its bytes or byte-count tags are patched."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from conftest import ISPRS_PALETTE, write_isprs_tile

from npa_precompute.cli import main
from npa_precompute.readers import InputError, Raster, discover_tiles, read_image, read_label

H, W = 256, 64
RUN = ["--k", "4", "--chunk", "32", "-q"]
DASK = ["--dask", "--block", "64", "--scheduler", "synchronous"]


def _label_rgb(seed: int = 0) -> np.ndarray:
    """A (256, 64, 3) ISPRS-coded label of 8 x 8 blocks with no black (ignore) pixel."""
    rng = np.random.default_rng(seed)
    index = np.kron(rng.integers(0, 6, (H // 8, W // 8)), np.ones((8, 8), dtype=np.int64))
    return ISPRS_PALETTE[index]


def _write_sparse(path, data, *, tiled: bool, missing: tuple[int, ...], compression=None):
    """Write ``data`` in strips of 64 rows (or 32 x 32 tiles), then mark the segments
    ``missing`` as absent (offset and byte count 0), as GDAL writes a sparse file."""
    layout = {"tile": (32, 32)} if tiled else {"rowsperstrip": 64}
    tifffile.imwrite(path, data, compression=compression, **layout)
    kind = "Tile" if tiled else "Strip"
    with tifffile.TiffFile(path, mode="r+") as tif:
        for name in (f"{kind}ByteCounts", f"{kind}Offsets"):
            tag = tif.pages[0].tags[name]
            values = list(tag.value)
            for i in missing:
                values[i] = 0
            tag.overwrite(values)
    return path


def _write_corrupt(path, data, compression: str):
    """Write ``data`` compressed in strips of 64 rows, then overwrite the inside of the
    second strip with 0xFF bytes."""
    tifffile.imwrite(path, data, compression=compression, rowsperstrip=64)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[1], tif.pages[0].databytecounts[1]
    raw = bytearray(path.read_bytes())
    raw[offset + 2 : offset + count - 2] = b"\xff" * (count - 4)
    path.write_bytes(bytes(raw))
    return path


# ---- item 3: missing strips or tiles -------------------------------------------------


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_label_with_missing_strips_refused_naming_rows(tmp_path, compression):
    path = _write_sparse(
        tmp_path / "area1.tif", _label_rgb(), tiled=False, missing=(1, 3), compression=compression
    )
    with tifffile.TiffFile(path) as tif:  # tifffile itself reads the holes as zeros
        assert (tif.pages[0].asarray()[64:128] == 0).all()
    expected = f"label file {path} has missing strips .* at rows 64-127, 192-255: "
    with pytest.raises(InputError, match=expected + ".*class 0"):
        read_label(path)
    with pytest.raises(InputError, match=expected):
        Raster(path, role="label")


def test_missing_tiles_named_by_rows_and_cols(tmp_path):
    path = _write_sparse(tmp_path / "area1.tif", _label_rgb(), tiled=True, missing=(1, 4))
    # 32 x 32 tiles, 2 across: tile 1 is rows 0-31, cols 32-63; tile 4 is rows 64-95, cols 0-31
    expected = "missing tiles .* at rows 0-31, cols 32-63; rows 64-95, cols 0-31: "
    for read in (read_label, lambda p: Raster(p, role="label")):
        with pytest.raises(InputError, match=f"label file {path} has " + expected):
            read(path)


def test_image_with_missing_strips_refused(tmp_path):
    image = np.random.default_rng(1).integers(1, 256, (H, W, 3), dtype=np.uint8)
    path = _write_sparse(tmp_path / "area1.tif", image, tiled=False, missing=(0,))
    for read in (read_image, lambda p: Raster(p, role="image")):
        with pytest.raises(InputError, match=f"image file {path} has missing strips .* rows 0-63"):
            read(path)


@pytest.mark.parametrize("dask", [False, True], ids=["in-memory", "dask"])
def test_cli_run_refuses_sparse_label_and_image(tmp_path, dask):
    (tmp_path / "gts").mkdir()
    label = _write_sparse(tmp_path / "gts" / "area1.tif", _label_rgb(), tiled=False, missing=(2,))
    extra = DASK if dask else []
    res = CliRunner().invoke(main, ["run", str(label), "--out", str(tmp_path / "s1"), *RUN, *extra])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
    assert f"label file {label} has missing strips" in res.output
    assert "rows 128-191" in res.output
    assert not (tmp_path / "s1" / "tiles" / "area1").exists()

    good = write_isprs_tile(tmp_path / "gts2", "area1.tif", np.zeros((H, W), int))
    (tmp_path / "top").mkdir()
    image = np.full((H, W, 3), 200, dtype=np.uint8)
    img = _write_sparse(tmp_path / "top" / "area1.tif", image, tiled=False, missing=(3,))
    res = CliRunner().invoke(
        main,
        ["run", str(good), "--images", str(img), "--out", str(tmp_path / "s2"), *RUN, *extra],
    )
    assert res.exit_code != 0
    assert f"image file {img} has missing strips" in res.output and "rows 192-255" in res.output


# ---- item 4: corrupt compressed data ---------------------------------------------------

CODECS = [("lzw", "LZW"), ("deflate", "Deflate"), ("zstd", "ZSTD")]


@pytest.mark.parametrize("compression, codec", CODECS)
def test_corrupt_compressed_strip_named(tmp_path, compression, codec):
    path = _write_corrupt(tmp_path / "area1.tif", _label_rgb(), compression)
    expected = rf"cannot read label file {path}: corrupt {codec} data \(\w+Error: "
    with pytest.raises(InputError, match=expected):
        read_label(path)
    raster = Raster(path, role="label")  # opening decodes nothing; the window read fails
    assert raster.windowed
    np.testing.assert_array_equal(raster.read(slice(0, 64), slice(0, W)), _label_rgb()[:64])
    with pytest.raises(InputError, match=expected):
        raster.read(slice(60, 70), slice(0, W))
    with pytest.raises(InputError, match=rf"cannot read image file {path}: corrupt {codec}"):
        read_image(path)


@pytest.mark.parametrize("dask", [False, True], ids=["in-memory", "dask"])
def test_cli_run_reports_corrupt_data(tmp_path, dask):
    (tmp_path / "gts").mkdir()
    path = _write_corrupt(tmp_path / "gts" / "area1.tif", _label_rgb(), "deflate")
    extra = DASK if dask else []
    res = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "s"), *RUN, *extra])
    assert res.exit_code != 0
    assert f"cannot read label file {path}: corrupt Deflate data (DeflateError: " in res.output
    assert "Traceback" not in res.output


# ---- item 8: links to missing files ----------------------------------------------------


def _annex_like(folder, good: int = 1):
    """A folder of ``good`` real label files and two links into a missing annex object."""
    for i in range(good):
        write_isprs_tile(folder, f"area{i}.tif", np.zeros((16, 16), int))
    targets = {}
    for name in ("area7.tif", "area9.tif"):
        target = f"../.git/annex/objects/Xk/7q/SHA256E-s1--{name}/SHA256E-s1--{name}"
        os.symlink(target, folder / name)
        targets[folder / name] = target
    return targets


def test_dangling_links_refused_naming_link_and_target(tmp_path):
    targets = _annex_like(tmp_path / "gts")
    with pytest.raises(InputError) as err:
        discover_tiles([str(tmp_path / "gts")], None, preset="isprs")
    msg = str(err.value)
    assert msg.startswith("LABELS: 2 link(s) whose target is missing")
    for link, target in targets.items():
        assert f"{link} -> {target}" in msg
    # a link named directly, or matched by a glob, is refused the same way
    for item in (str(tmp_path / "gts" / "area7.tif"), str(tmp_path / "gts" / "area[79].tif")):
        with pytest.raises(InputError, match="link.* whose target is missing: .*area7.tif -> "):
            discover_tiles([item], None, preset="isprs")
    # a folder of images is checked as well
    write_isprs_tile(tmp_path / "lab", "area0.tif", np.zeros((16, 16), int))
    with pytest.raises(InputError, match=r"--images: 2 link\(s\) whose target is missing"):
        discover_tiles([str(tmp_path / "lab")], [str(tmp_path / "gts")], preset="isprs")


def test_cli_run_refuses_dangling_links(tmp_path):
    targets = _annex_like(tmp_path / "gts")
    res = CliRunner().invoke(main, ["run", str(tmp_path / "gts"), "--out", str(tmp_path / "s")])
    assert res.exit_code != 0
    assert "2 link(s) whose target is missing" in res.output
    assert all(f"{link} -> {target}" in res.output for link, target in targets.items())
    assert not (tmp_path / "s" / "tiles").exists()
