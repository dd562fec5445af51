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


def _row_ranges(rows: list[tuple[int, int]]) -> str:
    """``"0-63, 128-191"`` from sorted inclusive (first, last) row pairs, neighbours merged."""
    merged: list[list[int]] = []
    for a, b in rows:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in merged)


def _missing_blocks(page, height: int, width: int) -> list[str]:
    """Where a page's strips or tiles are missing (byte count 0): ``["rows 64-127"]``, or
    ``["rows 0-31, cols 32-63", ...]`` for tiles, one entry per missing tile."""
    counts = page.databytecounts
    gone = [i for i, n in enumerate(counts) if n == 0]
    if not gone:
        return []
    separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and page.samplesperpixel > 1
    per_plane = len(counts) // page.samplesperpixel if separate else len(counts)
    gone = sorted({i % per_plane for i in gone})
    if not page.is_tiled:
        step = page.rowsperstrip
        return ["rows " + _row_ranges([(j * step, min((j + 1) * step, height) - 1) for j in gone])]
    th, tw = page.tilelength, page.tilewidth
    across = -(-width // tw)
    out = []
    for j in gone:
        r, c = divmod(j, across)
        rows = _row_ranges([(r * th, min((r + 1) * th, height) - 1)])
        out.append(f"rows {rows}, cols {c * tw}-{min((c + 1) * tw, width) - 1}")
    return out


def _refuse_missing_blocks(tif: tifffile.TiffFile, kind: str, index: int, path, role: str):
    """Refuse a TIFF whose raster has strips or tiles with no data (Strip/TileByteCounts
    of 0: a sparse GDAL file or a partial copy), which tifffile would read as zeros.

    Raises
    ------
    InputError
        Naming the file and the rows (and columns, for tiles) that hold no data.
    """
    if kind == "series":  # one page per row
        pages = tif.series[0].pages
        rows = [(i, i) for i, pg in enumerate(pages) if pg is None or 0 in pg.databytecounts]
        where, what = (["rows " + _row_ranges(rows)] if rows else []), "strips"
    else:
        page = tif.pages[index]
        where = _missing_blocks(page, page.imagelength, page.imagewidth)
        what = "tiles" if page.is_tiled else "strips"
    if not where:
        return
    shown = "; ".join(where[:8]) + (f"; ... ({len(where)} tiles in all)" if len(where) > 8 else "")
    read_as = "class 0" if role == "label" else "black pixels"
    raise InputError(
        f"{role} file {path} has missing {what} ({what[:-1].capitalize()}ByteCounts = 0) at "
        f"{shown}: a sparse or partially copied TIFF, whose missing data would be read as "
        f"{read_as}; refused. Copy the file again, or fill it (e.g. gdal_translate)"
    )


def _read_raw(path: Path, role: str) -> tuple[np.ndarray, str]:
    if path.suffix.lower() in _TIFF:
        with tifffile.TiffFile(path) as tif:
            kind, index = _tiff_raster(tif, path)
            _refuse_missing_blocks(tif, kind, index, path, role)
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
#: Modules whose exceptions mean compressed data that does not decode (imagecodecs'
#: LzwError/ImcdError, DeflateError, ZstdError...; zlib/lzma where tifffile falls back).
_CODEC_MODULES = ("imagecodecs", "zlib", "lzma")
#: Readable names of TIFF compressions, by tifffile.COMPRESSION name.
_CODEC_NAMES = {"ADOBE_DEFLATE": "Deflate", "DEFLATE": "Deflate", "PACKBITS": "PackBits"}


def _is_codec_error(exc: BaseException) -> bool:
    """True when ``exc`` comes from a decompressor: the file's compressed data is corrupt."""
    return type(exc).__module__.split(".")[0] in _CODEC_MODULES


def _tiff_codec(path: Path) -> str:
    """The compression of a TIFF's raster ("LZW", "Deflate", "ZSTD"...); "compressed" when
    the file cannot tell (it is only asked once decoding has already failed)."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[_tiff_raster(tif, path)[1]]
            name = getattr(page.compression, "name", str(page.compression))
    except Exception:  # only naming the codec of a file that already failed to decode
        return "compressed"
    return _CODEC_NAMES.get(name, name)


def _cannot_read(path: Path, what: str, exc: BaseException) -> InputError:
    """The one error for a file that does not decode: ``cannot read <what> <path>: ...``,
    ``corrupt <codec> data (...)`` when a decompressor refused its bytes."""
    detail = f"{type(exc).__name__}: {exc}"
    if _is_codec_error(exc):
        return InputError(f"cannot read {what} {path}: corrupt {_tiff_codec(path)} data ({detail})")
    hint = ""
    if "imagecodecs" in str(exc) or isinstance(exc, ImportError):
        hint = "; the TIFF codecs come with the imagecodecs package: pip install imagecodecs"
    return InputError(f"cannot read {what} {path}: {detail}{hint}")


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label file as stored: (H, W) indices or (H, W, 3|4) colours.

    Palette PNGs give their indices, grey+alpha PNGs their grey band, 16-bit PNGs
    and TIFFs keep 16 bits. TIFFs may use any lossless compression (LZW, Deflate,
    ZSTD, LZMA, PackBits, with or without predictor), tiled or striped, BigTIFF.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF, PNG or BMP file.

    Returns
    -------
    numpy.ndarray
        (H, W) or (H, W, 3|4), the file's dtype (uint8, uint16...); decoded into classes
        by a preset (:mod:`npa_precompute.presets`).

    Raises
    ------
    InputError
        Missing file, lossy format (JPEG/WebP labels, JPEG-compressed TIFF), a multi-page
        TIFF, a TIFF with missing strips or tiles (byte count 0), or a file that cannot be
        decoded (``cannot read label file <path>: corrupt <codec> data (...)`` when its
        compressed data is damaged).
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
    except Exception as exc:
        if not isinstance(exc, _READ_ERRORS) and not _is_codec_error(exc):
            raise
        raise _cannot_read(path, f"{kind} file", exc) from exc
    return arr


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, C) uint8 or uint16 (C = 1, 3 or 4, e.g. Potsdam RGBIR).

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF, PNG, JPEG, BMP or WebP file.

    Returns
    -------
    numpy.ndarray
        (H, W, C) uint8 or uint16; a single-band file gets C = 1.

    Raises
    ------
    InputError
        Missing or unreadable file (corrupt compressed data named as for
        :func:`read_label`), a TIFF with missing strips or tiles, or a dtype other than
        uint8/uint16.
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
            _refuse_missing_blocks(tif, kind, index, path, self.role)
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
        """Read one window of the file.

        Parameters
        ----------
        rows, cols : slice
            The window, in pixels of the full raster.

        Returns
        -------
        numpy.ndarray
            (h, w) or (h, w, C) (images always 3-D), C-contiguous, the file's dtype.

        Raises
        ------
        InputError
            The strips or tiles under the window hold corrupt compressed data
            (``cannot read <role> file <path>: corrupt <codec> data (...)``).
        """
        arr = self._open()
        try:
            win = np.asarray(arr[:, rows, cols] if self._planar else arr[rows, cols])
        except Exception as exc:
            if not _is_codec_error(exc):
                raise
            raise _cannot_read(self.path, f"{self.role} file", exc) from exc
        if self._planar:
            win = np.moveaxis(win, 0, -1)
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
    """Hex SHA-256 of a file's bytes (the content hash recorded per tile).

    Parameters
    ----------
    path : str or os.PathLike
    block : int, default 4 MiB
        Bytes read at a time.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _is_raster_name(path: Path) -> bool:
    """Whether a folder's file is an input by its name: a raster or a NIfTI volume."""
    name = path.name.lower()
    return path.suffix.lower() in _FILE_TYPES or name.endswith((".nii", ".nii.gz"))


def _stem(path: Path) -> str:
    """The name without its suffix, ``.nii.gz`` counted as one."""
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def _is_dangling(path: Path) -> bool:
    """A symlink whose target is missing (an un-fetched git-annex/DataLad file)."""
    return path.is_symlink() and not path.exists()


def _refuse_dangling(links: list[Path], what: str) -> None:
    """Refuse links to missing files, naming each link and its target.

    Raises
    ------
    InputError
        When ``links`` is not empty: skipping them would shrink the dataset without a word.
    """
    if not links:
        return
    shown = "; ".join(f"{f} -> {os.readlink(f)}" for f in links[:8])
    more = f"; ... ({len(links)} in all)" if len(links) > 8 else ""
    raise InputError(
        f"{what}: {len(links)} link(s) whose target is missing: {shown}{more}. Fetch the "
        "content (e.g. git annex get, datalad get) or remove the links"
    )


def expand_paths(items: list[str] | tuple[str, ...], *, what: str) -> list[Path]:
    """Expand files, folders (searched recursively for image files) and glob patterns.

    Paths are made absolute without resolving symlinks: a link keeps its own name.

    Parameters
    ----------
    items : files, folders or glob patterns
    what : str
        The argument or ``--option`` the items came from, named in errors.

    Returns
    -------
    list of pathlib.Path
        Absolute, sorted within each item, duplicates removed.

    Raises
    ------
    InputError
        If an item matches nothing, or a file it names or holds is a symlink whose target
        is missing (every such link is listed with its target).
    """
    out: list[Path] = []
    dangling: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            entries = sorted(f for f in p.rglob("*") if _is_raster_name(f))
        elif p.is_file() or _is_dangling(p):
            entries = [p]
        else:
            entries = sorted(Path(f) for f in glob.glob(item, recursive=True))
        dangling += [f for f in entries if _is_dangling(f)]
        found = [f for f in entries if f.is_file()]
        if not found and not dangling:
            raise InputError(f"{what} {item!r} matches no file")
        out.extend(found)
    _refuse_dangling(list(dict.fromkeys(dangling)), what)
    # Absolute, but symlinks kept: in git-annex, DVC or datalad datasets (folders of links
    # to content-addressed files) the tile id and the label/image pairing come from the
    # link's name, and two links to one object (two identical files) stay two files.
    return list(dict.fromkeys(Path(os.path.abspath(f)) for f in out))


@dataclass(frozen=True)
class TileSource:
    """One tile: its id, label file and optional image file.

    Attributes
    ----------
    tile_id : str
        The id the preset's naming rules give (:func:`discover_tiles`).
    label : pathlib.Path
    image : pathlib.Path or None
        None when the store holds weights only.
    """

    tile_id: str
    label: Path
    image: Path | None = None


_ISPRS_LABEL_SUFFIX = re.compile(r"(_label)?(_noBoundary)?$", re.IGNORECASE)
_ISPRS_IMAGE_SUFFIX = re.compile(r"_(RGBIR|IRRG|RGB)$", re.IGNORECASE)
_INDEX_LABEL_SUFFIX = re.compile(r"(_(label|labels|mask|gt))?(_noBoundary)?$", re.IGNORECASE)


def _tile_id(path: Path, preset: str, role: str) -> str:
    stem = _stem(path)
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
