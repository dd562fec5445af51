"""Label decoding, file reading and tile pairing, including every bad-input case."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from helpers import ISPRS_PALETTE, write_isprs_tile
from PIL import Image

from npa_precompute.presets import LabelError, get_preset
from npa_precompute.readers import InputError, discover_tiles, read_image, read_label

ISPRS = get_preset("isprs")


def test_isprs_decodes_palette_and_black_to_ignore():
    idx = np.array([[0, 1, 2], [3, 4, 5]])
    rgb = ISPRS_PALETTE[idx]
    rgb[1, 2] = 0
    out = ISPRS.decode(rgb)
    np.testing.assert_array_equal(out, [[0, 1, 2], [3, 4, 255]])
    assert out.dtype == np.uint8


def test_isprs_unknown_colours_named_with_counts():
    rgb = ISPRS_PALETTE[np.zeros((4, 5), int)]
    rgb[0, :3] = (250, 250, 250)  # JPEG-like artefact near white
    rgb[3, 4] = (1, 2, 3)
    with pytest.raises(LabelError, match=r"\(250, 250, 250\): 3 px, \(1, 2, 3\): 1 px"):
        ISPRS.decode(rgb, source="gt.png")
    out = ISPRS.decode(rgb, unknown_colors="ignore")
    assert (out == 255).sum() == 4 and (out == 0).sum() == 16


def test_isprs_refuses_index_and_16bit():
    with pytest.raises(LabelError, match="expects RGB colour-coded labels.*try --preset index"):
        ISPRS.decode(np.zeros((4, 4), np.uint8))
    with pytest.raises(LabelError, match="must be uint8"):
        ISPRS.decode(np.zeros((4, 4, 3), np.uint16))


def test_loveda_remap_once_and_refuses_remapped_input():
    raw = np.array([[0, 1, 2], [5, 6, 7]], np.uint8)
    lov = get_preset("loveda")
    np.testing.assert_array_equal(lov.decode(raw), [[255, 0, 1], [4, 5, 6]])
    with pytest.raises(LabelError, match="already remapped"):
        lov.decode(lov.decode(raw))  # applying the remap twice is refused
    assert lov.to_attrs()["label_remap"] == {str(i): (255 if i == 0 else i - 1) for i in range(8)}


def test_index_preset_checks_classes_and_ignore():
    p = get_preset("index", num_classes=6, ignore_index=255)
    np.testing.assert_array_equal(p.decode(np.array([[0, 5, 255]])), [[0, 5, 255]])
    with pytest.raises(LabelError, match=r"values outside classes 0..5 and ignore 255: 6: 2 px"):
        p.decode(np.array([[0, 6, 6]], np.uint8))
    with pytest.raises(ValueError, match="collides with class index 0"):
        get_preset("index", num_classes=6, ignore_index=0)
    with pytest.raises(ValueError, match="needs `num_classes`"):
        get_preset("index")
    with pytest.raises(ValueError, match="applies to --preset index only"):
        get_preset("isprs", ignore_index=0)
    wide = get_preset("index", num_classes=300, ignore_index=65535)
    assert wide.decode(np.array([[299, 65535]], np.uint16)).dtype == np.uint16


def test_palette_png_reads_indices_not_rgb(tmp_path):
    im = Image.fromarray(np.array([[0, 1], [2, 5]], np.uint8), mode="P")
    im.putpalette([255, 255, 255, 0, 0, 255, 0, 255, 255, 0, 255, 0, 255, 255, 0, 255, 0, 0])
    im.save(tmp_path / "p.png")
    arr = read_label(tmp_path / "p.png")
    np.testing.assert_array_equal(arr, [[0, 1], [2, 5]])


def test_grey_alpha_and_16bit_png(tmp_path):
    Image.fromarray(np.dstack([np.full((2, 2), 3, np.uint8), np.full((2, 2), 9, np.uint8)]),
                    mode="LA").save(tmp_path / "la.png")  # fmt: skip
    np.testing.assert_array_equal(read_label(tmp_path / "la.png"), 3)
    wide = np.array([[0, 300], [65535, 7]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    got = read_label(tmp_path / "w.png")
    np.testing.assert_array_equal(got, wide)  # not clipped to 8 bits
    tifffile.imwrite(tmp_path / "w.tif", wide)
    np.testing.assert_array_equal(read_label(tmp_path / "w.tif"), wide)


def test_lossy_labels_refused(tmp_path):
    rgb = ISPRS_PALETTE[np.zeros((8, 8), int)]
    Image.fromarray(rgb).save(tmp_path / "gt.jpg")
    with pytest.raises(InputError, match="lossy .jpg labels are refused"):
        read_label(tmp_path / "gt.jpg")


def test_float_label_refused_by_decode(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((3, 3), np.float32))
    raw = read_label(tmp_path / "f.tif")
    with pytest.raises(LabelError, match="must hold integers"):
        get_preset("index", num_classes=3).decode(raw)


def test_four_band_uint16_and_planar_tiff_images(tmp_path):
    img = np.arange(5 * 6 * 4, dtype=np.uint16).reshape(5, 6, 4)
    tifffile.imwrite(tmp_path / "rgbir.tif", img, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(tmp_path / "rgbir.tif"), img)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(img, -1, 0), photometric="minisblack",
                     planarconfig="separate")  # fmt: skip
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), img)
    tifffile.imwrite(tmp_path / "float.tif", img.astype(np.float32), photometric="minisblack")
    with pytest.raises(InputError, match="uint8 or uint16"):
        read_image(tmp_path / "float.tif")


def test_missing_files_named(tmp_path):
    with pytest.raises(InputError, match="label file not found"):
        read_label(tmp_path / "nope.tif")
    with pytest.raises(InputError, match="matches no file"):
        discover_tiles([str(tmp_path / "none*.tif")], None, preset="isprs")


def test_isprs_pairing_vaihingen_and_potsdam(tmp_path):
    idx = np.zeros((4, 4), int)
    gt = tmp_path / "gt"
    write_isprs_tile(gt, "top_mosaic_09cm_area1_noBoundary.tif", idx)
    write_isprs_tile(gt, "top_potsdam_2_10_label_noBoundary.tif", idx)
    top = tmp_path / "top"
    top.mkdir()
    for name in ["top_mosaic_09cm_area1.tif", "top_potsdam_2_10_RGB.tif"]:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(top / name)
    tiles = discover_tiles([str(gt)], [str(top)], preset="isprs")
    assert [(t.tile_id, t.image.name) for t in tiles] == [
        ("top_mosaic_09cm_area1", "top_mosaic_09cm_area1.tif"),
        ("top_potsdam_2_10", "top_potsdam_2_10_RGB.tif"),
    ]
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(top / "top_potsdam_2_10_IRRG.tif")
    with pytest.raises(InputError, match="matches several images"):
        discover_tiles([str(gt)], [str(top)], preset="isprs")


def test_missing_image_lists_the_tiles(tmp_path):
    write_isprs_tile(tmp_path / "gt", "a_noBoundary.tif", np.zeros((4, 4), int))
    write_isprs_tile(tmp_path / "gt", "b_noBoundary.tif", np.zeros((4, 4), int))
    (tmp_path / "top").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "top" / "a.tif")
    with pytest.raises(InputError, match=r"no image found for 1 label tile\(s\): b"):
        discover_tiles([str(tmp_path / "gt")], [str(tmp_path / "top")], preset="isprs")


def test_loveda_pairing(shared_data):
    root = shared_data / "loveda_crop/Train/Rural"
    tiles = discover_tiles([str(root / "masks_png")], [str(root / "images_png")], preset="loveda")
    assert [t.tile_id for t in tiles] == ["Train_Rural_0", "Train_Rural_1"]
    assert all(t.image.parent.name == "images_png" and t.image.name == t.label.name for t in tiles)
