"""Label volumes: NIfTI files (through nibabel, the ``nifti`` extra) and multi-page TIFF
stacks, read as ``(D, H, W)`` integer arrays with their voxel spacing.

* NIfTI (``.nii``, ``.nii.gz``): always a volume. nibabel gives the data in the file's
  ``(i, j, k)`` voxel order; it is transposed to ``(D, H, W) = (k, j, i)``, the order
  SimpleITK and most NumPy code use, and the header's zooms (``pixdim``, in the units
  of ``xyzt_units``, mm by default) are reversed alike to ``(d_k, d_j, d_i)``. A 4-D
  file with one volume (``(i, j, k, 1)``) is read as its 3-D volume; more is refused.
  Labels stored as floats are accepted when every value is an integer (a common
  export), and cast to the narrowest unsigned integer dtype that holds them.
* Multi-page TIFF stacks (one page per slice, ``D`` pages of ``(H, W)``): only when
  asked for (``npa-precompute run --volume``), since a multi-page TIFF is otherwise
  refused (:mod:`npa_precompute.readers`). A TIFF carries no spacing here (``None``).

No numba, zarr or torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npa_precompute.errors import ParameterError
from npa_precompute.readers import InputError

__all__ = [
    "NIFTI_SUFFIXES",
    "Volume",
    "is_nifti",
    "read_volume",
    "volume_run",
    "volume_spacing",
]

#: Suffixes of NIfTI label files (matched case-insensitively on the whole name).
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Length units of the NIfTI header (``xyzt_units``) and their size in mm.
_UNIT_MM = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3}


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


@dataclass(frozen=True)
class Volume:
    """A label volume as read from its file.

    Attributes
    ----------
    labels : (D, H, W) integer array
    spacing : (d_D, d_H, d_W) float in mm, or None (a TIFF stack)
    source : str, where the spacing came from (``"NIfTI header"``) or ``"none"``
    """

    labels: np.ndarray
    spacing: tuple[float, float, float] | None
    source: str

    def attrs(self) -> dict | None:
        """What a tile records of the spacing (tile attr ``spacing``), None without one."""
        if self.spacing is None:
            return None
        return {"values": list(self.spacing), "unit": "mm", "axes": ["z", "y", "x"],
                "source": self.source}  # fmt: skip


def _integer_labels(data: np.ndarray, path: Path) -> np.ndarray:
    """``data`` as integers; float data must hold integers only (InputError naming ``path``)."""
    if np.issubdtype(data.dtype, np.integer):
        return data
    if data.dtype == bool:
        return data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.floating):
        raise InputError(f"label file {path}: labels must be integers, got dtype {data.dtype}")
    finite = np.isfinite(data)
    frac = ~finite | (data != np.floor(np.where(finite, data, 0)))
    if frac.any():
        bad = np.unique(data[frac])[:5].tolist()
        raise InputError(
            f"label file {path}: labels must be integer class indices, but {int(frac.sum())} "
            f"voxel(s) hold non-integer values (e.g. {bad}); a label volume was resampled "
            "with linear interpolation? Resample labels with nearest neighbour"
        )
    lo = float(data.min()) if data.size else 0.0
    hi = float(data.max()) if data.size else 0.0
    if lo < 0 or hi > np.iinfo(np.uint16).max:
        return data.astype(np.int64)
    return data.astype(np.uint8 if hi <= 255 else np.uint16)


def _load_nifti(path: Path):
    """nibabel's image of ``path`` (its data not read yet)."""
    try:
        import nibabel as nib
    except ImportError:
        raise InputError(
            f"label file {path}: reading NIfTI needs nibabel: pip install npaloss[nifti]"
        ) from None
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, zlib errors
        raise InputError(f"cannot read label file {path}: {type(exc).__name__}: {exc}") from exc


def _nifti_spacing(img, path: Path) -> tuple[float, float, float]:
    """Voxel spacing in mm along (D, H, W) = (k, j, i) from a NIfTI header, as written:
    nibabel's loaded header has negative pixdim made positive and zeros made 1."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as f:
            header = type(img.header).from_fileobj(f, check=False)
    except Exception as exc:
        raise InputError(f"cannot read label file {path}: {type(exc).__name__}: {exc}") from exc
    # pixdim is float32: 0.7 is stored as 0.699999988...; the shortest decimal that reads
    # back as the same float32 (0.7) is what was written, and what k = radius / spacing uses
    zooms = tuple(float(str(np.float32(z))) for z in header.get_zooms())
    scale = _UNIT_MM.get(img.header.get_xyzt_units()[0], 1.0)  # "unknown": mm, NIfTI's usual
    spacing = tuple(z * scale for z in (*zooms, 1.0, 1.0, 1.0)[:3])
    for z in spacing:
        if not (math.isfinite(z) and z > 0):
            raise InputError(
                f"label file {path}: the NIfTI header's voxel spacing (pixdim) is "
                f"{zooms[:3]}, which must be positive and finite; fix the header"
            )
    return tuple(reversed(spacing))


def volume_spacing(path: str | os.PathLike) -> tuple[float, float, float] | None:
    """Voxel spacing in mm along (D, H, W) from a volume's header, without reading its
    voxels; None for a TIFF stack (no spacing).

    Raises
    ------
    InputError
        Unreadable NIfTI, or a header spacing that is not positive and finite.
    """
    path = Path(path)
    return _nifti_spacing(_load_nifti(path), path) if is_nifti(path) else None


def _read_nifti(path: Path) -> Volume:
    img = _load_nifti(path)
    spacing = _nifti_spacing(img, path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"cannot read label file {path}: {type(exc).__name__}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise InputError(
            f"label file {path}: expected a 3-D label volume, got an array of shape {data.shape}"
        )
    data = _integer_labels(np.asarray(data), path)
    labels = np.ascontiguousarray(data.transpose(2, 1, 0))
    return Volume(labels, spacing, "NIfTI header")


def _read_stack(path: Path) -> Volume:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            pages = [p for p in tif.pages if not int(getattr(p, "subfiletype", 0)) & (1 | 4)]
            arrays = [p.asarray() for p in pages]
    except Exception as exc:
        raise InputError(f"cannot read label file {path}: {type(exc).__name__}: {exc}") from exc
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError(
            f"label file {path}: a TIFF stack must be pages of one (H, W) shape, got "
            f"{sorted(shapes)[:4]}"
        )
    data = _integer_labels(np.stack(arrays), path)
    return Volume(np.ascontiguousarray(data), None, "none")


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a label volume: a NIfTI file or a multi-page TIFF stack (module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        ``.nii``/``.nii.gz`` (needs nibabel), or a ``.tif``/``.tiff`` stack of (H, W) pages.

    Returns
    -------
    Volume
        ``labels`` (D, H, W) integers; ``spacing`` in mm along D, H, W (None for TIFF).

    Raises
    ------
    InputError
        Missing or unreadable file, not 3-D, non-integer labels, a header spacing that is
        not positive and finite, or nibabel missing; each message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label file not found: {path}")
    if is_nifti(path):
        return _read_nifti(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _read_stack(path)
    raise InputError(
        f"label file {path}: volumes are read from NIfTI (.nii, .nii.gz) or multi-page TIFF "
        "stacks (.tif, .tiff)"
    )


def volume_run(sources, volume: bool, images, dask, preset, k_metres, k_mm) -> bool:
    """Whether a run's labels are volumes (NIfTI, or TIFF stacks with ``volume``), and the
    checks of the options volumes do not take
    (:func:`~npa_precompute.pipeline.run_precompute`'s arguments).

    Parameters
    ----------
    sources : list of TileSource
    volume : bool, TIFF labels read as stacks
    images, dask, preset, k_metres, k_mm : the run's (Preset: its palette decides)

    Raises
    ------
    ParameterError
        A run that mixes NIfTI and 2-D labels (argument ``labels``), or volumes with
        ``images``, ``dask``, a colour preset or ``k_metres``; ``k_mm`` for 2-D labels.
    """
    nifti = [is_nifti(src.label) for src in sources]
    if any(nifti) and not all(nifti):
        flat = next(src.label for src, n in zip(sources, nifti, strict=True) if not n)
        raise ParameterError("labels", f"mix NIfTI volumes and 2-D label files ({flat}): "
                             "precompute them into separate stores")  # fmt: skip
    if not (volume or all(nifti)):
        if k_mm is not None:
            raise ParameterError("k_mm", "applies to label volumes (NIfTI, or TIFF stacks "
                                 "with `volume`); 2-D tiles take `k_metres`")  # fmt: skip
        return False
    for name, given in (("images", images), ("dask", dask), ("k_metres", k_metres)):
        if given:
            why = {"images": "volumes are stored without images",
                   "dask": "volumes are computed whole in memory",
                   "k_metres": "is for 2-D tiles; volumes take `k_mm`"}[name]  # fmt: skip
            raise ParameterError(name, f"does not apply to label volumes: {why}")
    if preset.palette is not None:
        raise ParameterError("preset", f"{preset.name!r} decodes RGB label maps; label volumes "
                             "hold class indices: use 'index'")  # fmt: skip
    return True
