"""Inputs as real tools write them: compressed (Geo)TIFFs from rasterio, multi-page TIFFs,
datasets that are folders of symlinks to content-addressed files (git-annex, DVC, datalad)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import tifffile
from helpers import SHARED_DATA
from PIL import Image

from npa_precompute.blockwise import DaskOptions
from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import get_preset
from npa_precompute.readers import InputError, Raster, discover_tiles, read_image, read_label
from npa_precompute.store import list_tiles, open_store, open_tile

rasterio = pytest.importorskip("rasterio")
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

VAIHINGEN = SHARED_DATA / "vaihingen_crop"
LABEL = VAIHINGEN / "gts_eroded_for_participants/top_mosaic_09cm_area1_noBoundary.tif"
IMAGE = VAIHINGEN / "top/top_mosaic_09cm_area1.tif"

#: (compression, predictor) as GDAL writes them; it writes PackBits and LZMA without one.
LOSSLESS = [
    ("lzw", 1), ("lzw", 2), ("deflate", 1), ("deflate", 2), ("zstd", 1), ("zstd", 2),
    ("packbits", 1), ("lzma", 1),
]  # fmt: skip
LAYOUTS = ["tiled", "striped", "bigtiff"]


@pytest.fixture(scope="module")
def real():
    """The real Vaihingen crop: RGB-coded label, the same label decoded to indices, image."""
    if not LABEL.is_file():
        pytest.skip(f"real data crops not found at {SHARED_DATA}")
    rgb = tifffile.imread(LABEL)
    return {
        "rgb": rgb,
        "index": get_preset("isprs").decode(rgb),
        "image": tifffile.imread(IMAGE),
    }


def write_gdal(path, arr: np.ndarray, compression: str, predictor: int, layout: str, **kw):
    """Write ``arr`` ((H, W) or (H, W, C)) with rasterio/GDAL, as GIS tools do."""
    bands = np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr[None]
    opts = {"compress": compression.upper(), **kw}
    if compression not in ("packbits", "jpeg"):
        opts["predictor"] = predictor
    if layout in ("tiled", "bigtiff"):
        opts.update(tiled=True, blockxsize=128, blockysize=128)
    else:
        opts["blockysize"] = 32  # 16 strips of 32 rows
    if layout == "bigtiff":
        opts["BIGTIFF"] = "YES"
    with rasterio.open(
        path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=len(bands),
        dtype=arr.dtype.name, **opts,
    ) as ds:  # fmt: skip
        ds.write(bands)
    return path


def _check_written(path, compression: str, predictor: int, layout: str) -> None:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        name = "ADOBE_DEFLATE" if compression == "deflate" else compression.upper()
        assert page.compression.name == name
        assert int(page.predictor) == predictor
        assert page.is_tiled == (layout != "striped")
        assert tif.is_bigtiff == (layout == "bigtiff")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("compression", "predictor"), LOSSLESS)
@pytest.mark.parametrize("kind", ["rgb", "index"])
def test_compressed_labels_read_whole_and_by_windows(real, tmp_path, kind, compression,
                                                     predictor, layout):  # fmt: skip
    src = real[kind]
    path = write_gdal(tmp_path / "gt.tif", src, compression, predictor, layout)
    _check_written(path, compression, predictor, layout)
    np.testing.assert_array_equal(read_label(path), src)
    r = Raster(path, role="label")
    assert r.windowed and r.shape == src.shape and r.dtype == src.dtype
    for rows, cols in [(slice(0, 512), slice(0, 512)), (slice(100, 300), slice(250, 511))]:
        np.testing.assert_array_equal(r.read(rows, cols), src[rows, cols])


@pytest.mark.parametrize(("compression", "predictor"), LOSSLESS)
def test_compressed_images_read_whole_and_by_windows(real, tmp_path, compression, predictor):
    src = real["image"]
    path = write_gdal(tmp_path / "top.tif", src, compression, predictor, "tiled")
    np.testing.assert_array_equal(read_image(path), src)
    wide = (src.astype(np.uint16) * 257)[..., :2]  # a 16-bit two-band image
    path16 = write_gdal(tmp_path / "top16.tif", wide, compression, predictor, "striped")
    np.testing.assert_array_equal(read_image(path16), wide)
    r = Raster(path16, role="image")
    np.testing.assert_array_equal(r.read(slice(30, 200), slice(0, 77)), wide[30:200, :77])


@pytest.mark.parametrize("dask", [False, True], ids=["in-memory", "dask"])
def test_precompute_on_compressed_geotiffs_equals_uncompressed(real, tmp_path, dask):
    """A whole run on LZW+predictor labels and ZSTD images (tiled) gives the same store as on
    uncompressed files, in memory and blockwise."""
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    for d in (plain, packed):
        (d / "gts").mkdir(parents=True)
        (d / "top").mkdir()
    name = "top_mosaic_09cm_area1"
    tifffile.imwrite(plain / "gts" / f"{name}_noBoundary.tif", real["rgb"])
    tifffile.imwrite(plain / "top" / f"{name}.tif", real["image"])
    write_gdal(packed / "gts" / f"{name}_noBoundary.tif", real["rgb"], "lzw", 2, "tiled")
    write_gdal(packed / "top" / f"{name}.tif", real["image"], "zstd", 2, "striped")
    kw = {"ks": (8, 32), "transforms": ("log10:L=0.5", "norm:L=0.5")}
    if dask:
        kw["dask"] = DaskOptions(block=256, scheduler="synchronous")
    for d in (plain, packed):
        run_precompute([str(d / "gts")], d / "s.zarr", images=[str(d / "top")], **kw)
    a = open_tile(open_store(plain / "s.zarr"), name)
    b = open_tile(open_store(packed / "s.zarr"), name)
    for arr in ["label", "image", "affinity/k8", "affinity/k32", "weights/k32_log10_L0.5",
                "weights/k8_norm_L0.5"]:  # fmt: skip
        np.testing.assert_array_equal(a.group[arr][...], b.group[arr][...])
    assert a.attrs["image_mean"] == b.attrs["image_mean"]


def test_jpeg_compressed_tiff_labels_refused_with_the_reason(real, tmp_path):
    path = write_gdal(tmp_path / "gt.tif", real["rgb"], "jpeg", 1, "tiled")
    for read in (read_label, lambda p: Raster(p, role="label")):
        with pytest.raises(InputError, match=r"gt\.tif: JPEG-compressed TIFF labels are lossy"
                           r".*(colours|classes).*boundar"):  # fmt: skip
            read(path)
    # a JPEG-compressed image is fine (lossy images are a data choice, not a label error)
    image = write_gdal(tmp_path / "top.tif", real["image"], "jpeg", 1, "tiled")
    assert read_image(image).shape == (512, 512, 3)
    assert Raster(image, role="image").read(slice(0, 10), slice(0, 10)).shape == (10, 10, 3)


# -------------------------------------------------------------------------- multi-page TIFFs


def test_two_band_array_written_by_tifffile_is_read_as_one_raster(tmp_path):
    """tifffile stores an (H, W, 2) array as H pages of (W, 2): read the series, not page 0."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (300, 200, 2), dtype=np.uint8)
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, arr)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 300  # the layout that misled: page 0 is (200, 2)
    np.testing.assert_array_equal(read_image(path), arr)
    r = Raster(path, role="image")
    assert r.shape == (300, 200, 2)
    np.testing.assert_array_equal(r.read(slice(10, 250), slice(5, 150)), arr[10:250, 5:150])
    # as a label it is refused for what it is, an (H, W, 2) array, not "(200, 2)"
    raw = read_label(path)
    assert raw.shape == (300, 200, 2)
    with pytest.raises(InputError, match=r"shape \(300, 200, 2\)"):
        run_precompute([str(path)], tmp_path / "s.zarr", preset="index", num_classes=6)
    assert not (tmp_path / "s.zarr").exists()


def test_multi_page_tiff_is_refused_saying_so(tmp_path):
    pages = [Image.fromarray(np.full((64, 64), i, np.uint8)) for i in range(3)]
    path = tmp_path / "gt.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    for read in (read_label, lambda p: Raster(p, role="label"), read_image,
                 lambda p: Raster(p, role="image")):  # fmt: skip
        with pytest.raises(InputError, match=r"gt\.tif: multi-page TIFF \(3 pages of \(64, 64\)"):
            read(path)


def test_geotiff_overviews_and_mask_are_not_pages_of_the_raster(real, tmp_path):
    """GDAL's internal overviews (reduced pages) and mask page do not make a file multi-page."""
    from rasterio.enums import Resampling

    path = write_gdal(tmp_path / "gt.tif", real["rgb"], "deflate", 2, "tiled")
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.nearest)
        ds.write_mask(np.full((512, 512), 255, np.uint8))
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 4
    np.testing.assert_array_equal(read_label(path), real["rgb"])
    r = Raster(path, role="label")
    np.testing.assert_array_equal(r.read(slice(0, 512), slice(0, 512)), real["rgb"])


# ------------------------------------------------------------------------- symlinked datasets


def _annex(objects, path, data: bytes, *, keep_ext: bool = True) -> None:
    """Put ``data`` under a content-addressed name in ``objects`` and link ``path`` to it."""
    digest = hashlib.sha256(data).hexdigest()
    name = f"SHA256E-s{len(data)}--{digest}{path.suffix if keep_ext else ''}"
    target = objects / digest[:2] / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, path.parent), path)


@pytest.mark.parametrize("dask", [False, True], ids=["in-memory", "dask"])
def test_symlinked_dataset_pairs_by_link_names(real, tmp_path, dask):
    """git-annex/DVC-style links: tile ids and pairing come from the links; two tiles whose
    labels have the same content (one object) stay two tiles."""
    objects = tmp_path / "annex" / "objects"
    gts, top = tmp_path / "data" / "gts", tmp_path / "data" / "top"
    for d in (gts, top):
        d.mkdir(parents=True)
    tifffile.imwrite(tmp_path / "l.tif", real["rgb"])
    label = (tmp_path / "l.tif").read_bytes()
    for i, area in enumerate(["area1", "area2"]):
        _annex(objects, gts / f"top_mosaic_09cm_{area}_noBoundary.tif", label)
        tifffile.imwrite(tmp_path / "i.tif", (real["image"] // (i + 1)).astype(np.uint8))
        # DVC's cache keeps no extension: only the link's name says it is a TIFF
        _annex(objects, top / f"top_mosaic_09cm_{area}.tif", (tmp_path / "i.tif").read_bytes(),
               keep_ext=i == 0)  # fmt: skip
    tiles = discover_tiles([str(gts)], [str(top)], preset="isprs")
    assert [(t.tile_id, t.label.name, t.image.name) for t in tiles] == [
        ("top_mosaic_09cm_area1", "top_mosaic_09cm_area1_noBoundary.tif",
         "top_mosaic_09cm_area1.tif"),
        ("top_mosaic_09cm_area2", "top_mosaic_09cm_area2_noBoundary.tif",
         "top_mosaic_09cm_area2.tif"),
    ]  # fmt: skip
    assert all(t.label.is_symlink() and t.image.is_symlink() for t in tiles)
    kw = {"dask": DaskOptions(block=256, scheduler="synchronous")} if dask else {}
    out = tmp_path / "s.zarr"
    s = run_precompute([str(gts)], out, images=[str(top)], ks=(8,), **kw)
    assert s.written == ["top_mosaic_09cm_area1", "top_mosaic_09cm_area2"]
    root = open_store(out)
    assert list_tiles(root, complete_only=True) == s.written
    t2 = open_tile(root, "top_mosaic_09cm_area2")
    assert t2.attrs["source"]["label_path"] == str(gts / "top_mosaic_09cm_area2_noBoundary.tif")
    np.testing.assert_array_equal(t2.image[...], real["image"] // 2)
    np.testing.assert_array_equal(t2.label[...], real["index"])
    # a re-run through the links finds everything current
    s2 = run_precompute([str(gts)], out, images=[str(top)], ks=(8,), **kw)
    assert s2.written == [] and len(s2.skipped) == 2
