"""Reading label and image files, and pairing labels with images into tiles.

TIFF files are read with tifffile (multi-band, 16-bit and float TIFFs that Pillow
cannot open; every lossless compression GDAL writes, through imagecodecs), everything
else with Pillow. Multi-page TIFFs are refused; GDAL's overviews and masks are skipped.
Palette-mode ('P') PNGs are read as their indices, never converted to RGB.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

__all__ = [
    "InputError",
    "Raster",
    "TileSource",
    "discover_tiles",
    "expand_paths",
    "file_sha256",
    "read_image",
    "read_label",
]

_TIFF = (".tif", ".tiff")
_LOSSY = (".jpg", ".jpeg", ".jfif", ".webp")
_FILE_TYPES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".webp", ".jfif")


class InputError(ValueError):
    """An input file or path list does not hold what was expected."""


#: TIFF compressions that are lossy, or may be (their lossless modes are rare): refused for
#: labels, whose every boundary pixel they would change.
_LOSSY_TIFF = ("JPEG", "JP2000", "WEBP", "LERC")
#: NewSubfileType bits of pages that are not the raster: reduced-resolution overviews, masks.
_NOT_RASTER = 1 | 4
#: Most bands of an (H, W, C) array that tifffile stored as H pages of (W, C).
_MAX_SHAPED_BANDS = 16


def _refuse_lossy_tiff(page, path: Path) -> None:
    name = getattr(page.compression, "name", str(page.compression)).upper()
    if any(tag in name for tag in _LOSSY_TIFF):
        certain = "JPEG" in name and "2000" not in name and "XL" not in name
        label, lossy = ("JPEG", "lossy") if certain else (name, "lossy (or may be)")
        raise InputError(
            f"{path}: {label}-compressed TIFF labels are {lossy} and refused: compression "
            "artefacts invent colours/classes at every boundary; rewrite the label with a "
            "lossless compression (e.g. gdal_translate -co COMPRESS=DEFLATE)"
        )


def _tiff_raster(tif: tifffile.TiffFile, path: Path) -> tuple[str, int]:
    """Which part of a TIFF holds the raster: ``("page", index)`` or ``("series", 0)``.

    One page, or one full-resolution page beside GDAL's overviews and mask: that page.
    An (H, W, C) array that tifffile stored as H pages of (W, C) (its default for C not
    3 or 4): the series. Several full-resolution pages otherwise: refused.

    Raises
    ------
    InputError
        A multi-page TIFF (several images, or a stack).
    """
    pages = tif.pages
    if len(pages) == 1:
        return "page", 0
    series = tif.series[0] if tif.series else None
    if (
        series is not None
        and series.kind == "shaped"
        and len(series.shape) == 3
        and len(series.pages) == len(pages)
        and series.shape[2] <= _MAX_SHAPED_BANDS
    ):
        return "series", 0
    main = [i for i, p in enumerate(pages) if not int(getattr(p, "subfiletype", 0)) & _NOT_RASTER]
    if len(main) == 1:
        return "page", main[0]
    shapes = [tuple(pages[i].shape) for i in main]
    if len(set(shapes)) == 1:
        what = f"{len(main)} pages of {shapes[0]}"
    else:
        what = f"{len(main)} pages of shapes {', '.join(map(str, shapes[:4]))}"
        what += ", ..." if len(shapes) > 4 else ""
    if series is not None and tuple(series.shape) not in shapes:
        what += f", stored as an array of shape {tuple(series.shape)}"
    raise InputError(
        f"{path}: multi-page TIFF ({what}); npaloss reads one raster per file: save each "
        "page as a file of its own, or an image's bands as one (H, W, C) page"
    )


def _read_raw(path: Path, role: str) -> tuple[np.ndarray, str]:
    if path.suffix.lower() in _TIFF:
        with tifffile.TiffFile(path) as tif:
            kind, index = _tiff_raster(tif, path)
            if kind == "series":
                page = tif.pages[0]
                if role == "label":
                    _refuse_lossy_tiff(page, path)
                return tif.series[0].asarray(), "TIFF"
            page = tif.pages[index]
            if role == "label":
                _refuse_lossy_tiff(page, path)
            arr = page.asarray()
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
        if planar and arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)
        return arr, "TIFF"
    with Image.open(path) as im:
        fmt = im.format
        if role == "label" and fmt == "JPEG":
            raise InputError(f"{path}: JPEG data in a label file is lossy and refused")
        if im.mode in ("P", "L", "I;16", "I;16B", "I;16L", "I", "1"):
            arr = np.asarray(im)
            if im.mode == "1":
                arr = arr.astype(np.uint8)
        elif im.mode in ("LA", "PA"):
            arr = np.asarray(im)[..., 0]
        else:
            arr = np.asarray(im.convert("RGBA" if "A" in im.mode else "RGB"))
    return arr, fmt


#: What reading a file can raise besides InputError (a codec missing raises ImportError).
_READ_ERRORS = (OSError, ValueError, ImportError, tifffile.TiffFileError)


def _cannot_read(path: Path, what: str, exc: BaseException) -> InputError:
    hint = ""
    if "imagecodecs" in str(exc) or isinstance(exc, ImportError):
        hint = "; the TIFF codecs come with the imagecodecs package: pip install imagecodecs"
    return InputError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc}{hint})")


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label file as stored: (H, W) indices or (H, W, 3|4) colours.

    Palette PNGs give their indices, grey+alpha PNGs their grey band, 16-bit PNGs
    and TIFFs keep 16 bits. TIFFs may use any lossless compression (LZW, Deflate,
    ZSTD, LZMA, PackBits, with or without predictor), tiled or striped, BigTIFF.

    Raises
    ------
    InputError
        Missing file, lossy format (JPEG/WebP labels, JPEG-compressed TIFF), a multi-page
        TIFF, or a file that cannot be decoded.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() in _LOSSY:
        raise InputError(
            f"{path}: lossy {path.suffix} labels are refused: compression artefacts invent "
            "colours/classes at every boundary; use a lossless PNG or TIFF"
        )
    return _read_file(path, "label")


def _read_file(path: Path, kind: str) -> np.ndarray:
    """The raw array of a ``kind`` ("label" or "image") file; InputError naming the file."""
    if not path.is_file():
        raise InputError(f"{kind} file not found: {path}")
    try:
        arr, _ = _read_raw(path, kind)
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise _cannot_read(path, f"{kind} file", exc) from exc
    return arr


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, C) uint8 or uint16 (C = 1, 3 or 4, e.g. Potsdam RGBIR).

    Raises
    ------
    InputError
        Missing or unreadable file, or a dtype other than uint8/uint16.
    """
    arr = _read_file(Path(path), "image")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise InputError(f"{path}: expected an (H, W, C) image, got shape {arr.shape}")
    if arr.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: images must be uint8 or uint16, got {arr.dtype}")
    return arr


class Raster:
    """A label or image file opened for window reads, without reading it whole.

    Tiled or striped TIFF/BigTIFF files (GeoTIFFs included) are read through
    tifffile's zarr interface, which decodes only the tiles or strips a window
    touches; uncompressed contiguous TIFFs are memory-mapped. Other formats (PNG,
    BMP) have no windowed access and are read whole on first use. A ``Raster``
    holds only its path, so it pickles cheaply to Dask workers; each process opens
    the file on its first read.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    role : {"label", "image"}
        Decides the checks: labels refuse lossy formats, images must be uint8/uint16.

    Attributes
    ----------
    shape : (H, W) or (H, W, C)
        As :func:`read_label` / :func:`read_image` would return (images always 3-D).
    dtype : numpy.dtype
    windowed : bool
        False when the file has no windowed access (PNG, a TIFF stored as one strip):
        it is then read whole once per process and kept (the last such file per role).

    Raises
    ------
    InputError
        Missing, lossy (labels) or undecodable file, or an image dtype other than
        uint8/uint16.
    """

    def __init__(self, path: str | os.PathLike, *, role: str = "label") -> None:
        if role not in ("label", "image"):
            raise ValueError(f"`role` must be 'label' or 'image', got {role!r}")
        self.path = Path(path)
        self.role = role
        self._arr = None
        self._planar = False
        self.windowed = True
        arr = self._open()
        shape = tuple(arr.shape)
        if self._planar:
            shape = (*shape[1:], shape[0])
        if role == "image" and len(shape) == 2:
            shape = (*shape, 1)
        if role == "image" and arr.dtype not in (np.uint8, np.uint16):
            raise InputError(f"{self.path}: images must be uint8 or uint16, got {arr.dtype}")
        if role == "image" and len(shape) != 3:
            raise InputError(f"{self.path}: expected an (H, W, C) image, got shape {shape}")
        self.shape = shape
        self.dtype = np.dtype(arr.dtype)

    def __getstate__(self) -> dict:
        return {
            "path": self.path,
            "role": self.role,
            "shape": self.shape,
            "dtype": self.dtype,
            "windowed": self.windowed,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._arr = None
        self._planar = False

    def _open(self):
        if self._arr is not None:
            return self._arr
        path = self.path
        what = f"{self.role} file"
        if not path.is_file():
            raise InputError(f"{what} not found: {path}")
        if path.suffix.lower() not in _TIFF:
            self._arr, self.windowed = _read_whole(path, self.role), False
            return self._arr
        tif = None
        try:
            tif = tifffile.TiffFile(path)
            kind, index = _tiff_raster(tif, path)
            page = tif.pages[index]
            if self.role == "label":
                _refuse_lossy_tiff(page, path)
            import zarr

            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and len(page.shape) == 3
            if kind == "series":  # (H, W, C) stored as H pages of (W, C): chunks of rows
                arr = zarr.open_array(tif.series[0].aszarr(), mode="r")
            elif page.is_memmappable:
                self._planar = planar
                arr = tif.asarray(out="memmap", key=index)
            else:
                self._planar = planar
                arr = zarr.open_array(page.aszarr(), mode="r")
                yx = arr.chunks[1:3] if self._planar else arr.chunks[:2]
                if tuple(yx) == tuple(page.shape[1:3] if self._planar else page.shape[:2]):
                    # one strip for the whole raster: every window would decode all of it
                    tif.close()
                    self._planar = False
                    self._arr, self.windowed = _read_whole(path, self.role), False
                    return self._arr
        except InputError:
            if tif is not None:
                tif.close()
            raise
        except _READ_ERRORS as exc:
            if tif is not None:
                tif.close()
            raise _cannot_read(path, what, exc) from exc
        self._arr, self.windowed = arr, True
        return arr

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """The window ``[rows, cols]`` as an in-memory array ((h, w) or (h, w, C))."""
        arr = self._open()
        if self._planar:
            win = np.moveaxis(np.asarray(arr[:, rows, cols]), 0, -1)
        else:
            win = np.asarray(arr[rows, cols])
        if self.role == "image" and win.ndim == 2:
            win = win[..., None]
        return np.ascontiguousarray(win)


_WHOLE: dict[str, tuple[tuple, np.ndarray]] = {}


def _read_whole(path: Path, role: str) -> np.ndarray:
    """The whole file, read once per process and kept (one file per role)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if role not in _WHOLE or _WHOLE[role][0] != key:
        _WHOLE.pop(role, None)
        _WHOLE[role] = (key, read_label(path) if role == "label" else read_image(path))
    return _WHOLE[role][1]


def file_sha256(path: str | os.PathLike, *, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (content hash recorded per tile)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def expand_paths(items: list[str] | tuple[str, ...], *, what: str) -> list[Path]:
    """Expand files, folders (searched recursively for image files) and glob patterns.

    Paths are made absolute without resolving symlinks: a link keeps its own name.

    Raises
    ------
    InputError
        If an item matches nothing.
    """
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _FILE_TYPES
            )
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
        if not found:
            raise InputError(f"{what} {item!r} matches no file")
        out.extend(found)
    # Absolute, but symlinks kept: in git-annex, DVC or datalad datasets (folders of links
    # to content-addressed files) the tile id and the label/image pairing come from the
    # link's name, and two links to one object (two identical files) stay two files.
    return list(dict.fromkeys(Path(os.path.abspath(f)) for f in out))


@dataclass(frozen=True)
class TileSource:
    """One tile: its id, label file and optional image file."""

    tile_id: str
    label: Path
    image: Path | None = None


_ISPRS_LABEL_SUFFIX = re.compile(r"(_label)?(_noBoundary)?$", re.IGNORECASE)
_ISPRS_IMAGE_SUFFIX = re.compile(r"_(RGBIR|IRRG|RGB)$", re.IGNORECASE)
_INDEX_LABEL_SUFFIX = re.compile(r"(_(label|labels|mask|gt))?(_noBoundary)?$", re.IGNORECASE)


def _tile_id(path: Path, preset: str, role: str) -> str:
    stem = path.stem
    if preset == "isprs":
        pattern = _ISPRS_LABEL_SUFFIX if role == "label" else _ISPRS_IMAGE_SUFFIX
        return pattern.sub("", stem)
    if preset == "loveda":
        # .../{Train,Val}/{Urban,Rural}/{images_png,masks_png}/N.png -> Train_Rural_N
        parts = path.parts
        if len(parts) >= 4 and parts[-2] in ("images_png", "masks_png"):
            return f"{parts[-4]}_{parts[-3]}_{stem}"
        return stem
    return _INDEX_LABEL_SUFFIX.sub("", stem) if role == "label" else stem


def discover_tiles(
    labels: list[str] | tuple[str, ...],
    images: list[str] | tuple[str, ...] | None,
    *,
    preset: str,
) -> list[TileSource]:
    """Find label files and pair each with its image by the preset's naming rules.

    Pairing (tile id in brackets):

    * ``isprs``: ``top_mosaic_09cm_area1_noBoundary.tif`` or ``top_mosaic_09cm_area1.tif``
      <-> ``top_mosaic_09cm_area1.tif`` [top_mosaic_09cm_area1];
      ``top_potsdam_2_10_label[_noBoundary].tif`` <-> ``top_potsdam_2_10_{RGB,IRRG,RGBIR}.tif``
      [top_potsdam_2_10].
    * ``loveda``: ``Train/Rural/masks_png/N.png`` <-> ``Train/Rural/images_png/N.png``
      [Train_Rural_N].
    * ``index``: label stem with ``_label``/``_mask``/``_gt``/``_noBoundary`` removed
      equals the image stem.

    Parameters
    ----------
    labels : files, folders or glob patterns of label files
    images : files, folders or glob patterns of image files, or None (weights only)
    preset : {"isprs", "loveda", "index"}

    Returns
    -------
    list of TileSource, sorted by tile id.

    Raises
    ------
    InputError
        Nothing found, two labels with the same tile id, an image that matches several
        tiles' candidates ambiguously, or labels without an image (all listed).
    """
    label_files = expand_paths(labels, what="LABELS")
    by_id: dict[str, Path] = {}
    for f in label_files:
        tid = _tile_id(f, preset, "label")
        if tid in by_id:
            raise InputError(f"labels {by_id[tid]} and {f} both give tile id {tid!r}")
        by_id[tid] = f
    if images is None:
        return [TileSource(t, by_id[t]) for t in sorted(by_id)]
    image_files = [f for f in expand_paths(images, what="--images") if f not in set(label_files)]
    candidates: dict[str, list[Path]] = {}
    for f in image_files:
        candidates.setdefault(_tile_id(f, preset, "image"), []).append(f)
    missing = [t for t in sorted(by_id) if t not in candidates]
    if missing:
        raise InputError(
            f"no image found for {len(missing)} label tile(s): {', '.join(missing)} "
            f"(looked among {len(image_files)} image file(s) with the {preset} naming rules)"
        )
    out = []
    for t in sorted(by_id):
        if len(candidates[t]) > 1:
            names = ", ".join(str(p) for p in candidates[t])
            raise InputError(f"tile {t!r} matches several images ({names}); pass one of them")
        out.append(TileSource(t, by_id[t], candidates[t][0]))
    return out
