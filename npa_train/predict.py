"""Sliding-window inference over whole tiles, and ``npa-train predict`` for new images.

The paper's inference (Feng et al. 2020, §4.2): overlapping windows slide over the
tile and the overlapping predictions are averaged, here as softmax probabilities.

Window placement (:func:`window_starts`): along an axis of length ``L`` with window
``w`` and stride ``s = max(1, floor(w * (1 - overlap)))``, windows start at
``0, s, 2s, ...`` while they fit, and one more window is clamped to the far border
(``L - w``), so every pixel is covered whatever ``L``. An axis shorter than the window
is padded up to the window (with the image mean, i.e. 0 after normalization, as in
training) and the prediction cropped back.

:func:`predict` writes, per image, the label map (``<stem>_label.png``, 8-bit
grey values = class indices, or ``.tif``, a GeoTIFF with the image's CRS and transform
when the image is one) and a colour-coded ``<stem>_color.png``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from npa_precompute.errors import ParameterError
from npa_precompute.params import check_amp, check_choice, check_int, parse_size
from npa_train.checkpoint import CheckpointError, ModelInfo, load_model
from npa_train.choices import FORMATS, INFERENCE_BATCH, WINDOW, WINDOW_OVERLAP
from npa_train.device import resolve_device
from npa_train.model import logits_of

if TYPE_CHECKING:  # pragma: no cover
    from npa_precompute.store import StoreInfo, TileMeta

__all__ = [
    "FORMATS",
    "check_image_dtype",
    "coverage_count",
    "normalization",
    "palette_for",
    "parse_overlap",
    "predict",
    "progress_bar",
    "sliding_window_probs",
    "window_grid",
    "window_starts",
    "window_stride",
    "write_label_maps",
    "write_legend",
]


# -- window geometry ----------------------------------------------------------------------------


def parse_overlap(overlap: float | str | Fraction) -> Fraction:
    """Overlap of neighbouring windows as an exact fraction in ``[0, 1)``.

    Parameters
    ----------
    overlap : float, str or Fraction
        ``"1/3"``, ``"0.5"``, ``"0"``, ``0.25``, ``Fraction(1, 3)``.

    Returns
    -------
    Fraction

    Raises
    ------
    TypeError
        Not a number or a string.
    ValueError
        Unparsable, or outside ``[0, 1)``.
    """
    if isinstance(overlap, bool):
        raise TypeError(f"`overlap` must be a number or a string like '1/3', got {overlap!r}")
    if isinstance(overlap, Fraction):
        value = overlap
    elif isinstance(overlap, (int, np.integer)):
        value = Fraction(int(overlap))
    elif isinstance(overlap, (float, np.floating)):
        if not math.isfinite(overlap):
            raise ParameterError("overlap", f"must be in [0, 1), got {overlap!r}")
        value = Fraction(repr(float(overlap)))
    elif isinstance(overlap, str):
        try:
            value = Fraction(overlap.strip())
        except (ValueError, ZeroDivisionError) as exc:
            raise ParameterError(
                "overlap", f"must be a fraction like '1/3', '0.5' or '0', got {overlap!r}"
            ) from exc
    else:
        raise TypeError(f"`overlap` must be a number or a string like '1/3', got {overlap!r}")
    if not 0 <= value < 1:
        raise ParameterError("overlap", f"must be in [0, 1), got {overlap!r}")
    return value


def window_stride(window: int | Sequence[int], overlap: float | str | Fraction) -> tuple[int, int]:
    """Stride ``max(1, floor(window * (1 - overlap)))`` per axis.

    ``window=513, overlap="1/3"`` gives 342; ``window=64, overlap=0.5`` gives 32.

    Raises
    ------
    TypeError, ValueError
        See :func:`npa_precompute.params.parse_size`, :func:`parse_overlap`.
    """
    wh, ww = parse_size(window, name="window")
    keep = 1 - parse_overlap(overlap)
    return max(1, math.floor(wh * keep)), max(1, math.floor(ww * keep))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis.

    ``0, stride, 2 stride, ...`` below ``length - window``, then ``length - window``:
    the last window is clamped to the border so that it ends at ``length``. An axis no
    longer than the window has the single start 0 (the caller pads it).

    Parameters
    ----------
    length, window, stride : int >= 1

    Returns
    -------
    list of int, increasing

    Raises
    ------
    ValueError
        An argument below 1.

    Examples
    --------
    >>> window_starts(144, 64, 32)
    [0, 32, 64, 80]
    >>> window_starts(300, 256, 170)
    [0, 44]
    >>> window_starts(40, 64, 32)
    [0]
    """
    for name, v in (("length", length), ("window", window), ("stride", stride)):
        check_int(name, v, minimum=1)
    last = int(length) - int(window)
    if last <= 0:
        return [0]
    return [*range(0, last, int(stride)), last]


def window_grid(
    shape: Sequence[int], window: int | Sequence[int], overlap: float | str | Fraction
) -> list[tuple[int, int]]:
    """Top-left corners ``(y0, x0)`` of every window over a ``shape = (H, W)`` tile, row-major.

    Raises
    ------
    TypeError, ValueError
        Bad ``window`` or ``overlap``, or a side of ``shape`` below 1.
    """
    h, w = (int(s) for s in shape)
    wh, ww = parse_size(window, name="window")
    sh, sw = window_stride((wh, ww), overlap)
    return [(y, x) for y in window_starts(h, wh, sh) for x in window_starts(w, ww, sw)]


def coverage_count(
    shape: Sequence[int], window: int | Sequence[int], overlap: float | str | Fraction
) -> np.ndarray:
    """How many windows of :func:`window_grid` cover each pixel of a ``(H, W)`` tile.

    Returns
    -------
    (H, W) int64, >= 1 everywhere
    """
    h, w = (int(s) for s in shape)
    wh, ww = parse_size(window, name="window")
    count = np.zeros((max(h, wh), max(w, ww)), dtype=np.int64)
    for y, x in window_grid((h, w), (wh, ww), overlap):
        count[y : y + wh, x : x + ww] += 1
    return count[:h, :w]


# -- checkpoints against data ------------------------------------------------------------------


def check_image_dtype(info: ModelInfo, dtype, what: str, *, max_value: int | None = None) -> None:
    """Refuse images whose dtype differs from the checkpoint's training images.

    A checkpoint normalizing with its training statistics (``normalize="store"``)
    needs images of its training dtype: uint8 values normalized with uint16 statistics
    (or the reverse) give garbage. The one exception is 8-bit data in a 16-bit file: a
    uint16 image for a uint8 checkpoint whose ``max_value`` is below 256 is used as it
    is, with a warning. Checkpoints that do not record the dtype are checked by their
    mean: above 255 it cannot come from uint8 images. ``normalize="tile"`` checkpoints
    normalize each image by its own statistics and take either dtype.

    Parameters
    ----------
    info : ModelInfo
    dtype : the image's numpy dtype
    what : the image, for the messages (a path, or "the images of store S")
    max_value : int, optional, keyword-only
        The image's largest value, when known.

    Raises
    ------
    CheckpointError
        The dtypes differ (both named).
    """
    if info.normalize != "store":
        return
    have = np.dtype(dtype).name
    want = info.image_dtype
    if want is None and have == "uint8" and max(info.image_mean) > 255:
        want = "uint16"
    if want is None or have == want:
        return
    if have == "uint16" and want == "uint8" and max_value is not None and max_value < 256:
        warnings.warn(
            f"{what} is uint16 and checkpoint {info.path} was trained on uint8 images: its "
            f"values are all below 256 (max {max_value}), so they are taken as 8-bit values",
            stacklevel=3,
        )
        return
    values = f" with values up to {max_value}" if max_value is not None else ""
    raise CheckpointError(
        f"{what} is {have}{values}, but checkpoint {info.path} was trained on {want} images "
        f"and normalizes with their mean/std ({', '.join(f'{m:.4g}' for m in info.image_mean)})"
        f": {have} values would be scaled wrongly. Convert the image to {want} with its real "
        f"value range, or use a checkpoint trained on {have} images"
    )


def normalization(
    info: ModelInfo, image: np.ndarray | None = None, *, tile_meta: TileMeta | None = None
) -> dict[str, tuple[float, ...]]:
    """Per-band ``mean`` and ``std`` to normalize an image with, as the model was trained.

    Parameters
    ----------
    info : ModelInfo
    image : (H, W, C) uint8/uint16 array, optional
        For ``info.normalize == "tile"`` without ``tile_meta``: its own statistics.
    tile_meta : TileMeta, optional
        A store tile's attrs (``image_mean``, ``image_std``), for ``"tile"``.

    Returns
    -------
    dict
        ``{"mean": (C,) floats, "std": (C,) floats}`` (a std below 1e-6 becomes 1).

    Raises
    ------
    ValueError
        ``"tile"`` normalization with neither ``image`` nor usable ``tile_meta``.
    """
    if info.normalize != "tile":
        return {"mean": info.image_mean, "std": info.image_std}
    if tile_meta is not None and tile_meta.image_mean and tile_meta.image_std:
        mean, std = tile_meta.image_mean, tile_meta.image_std
    elif image is not None:
        from npa_precompute.imagestats import image_stats

        stats = image_stats(np.asarray(image))
        mean, std = stats["image_mean"], stats["image_std"]
    else:
        raise ValueError(
            "the checkpoint normalizes per tile: an image or its statistics are needed"
        )
    return {
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(v) if float(v) > 1e-6 else 1.0 for v in std),
    }


# -- inference -----------------------------------------------------------------------------------


def _amp_context(amp: bool):
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def sliding_window_probs(
    model: Callable[[torch.Tensor], torch.Tensor | dict],
    image: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    window: int | Sequence[int] = WINDOW,
    overlap: float | str | Fraction = WINDOW_OVERLAP,
    batch: int = INFERENCE_BATCH,
    device: str | torch.device = "cpu",
    amp: bool = False,
    num_classes: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Class probabilities of a whole tile, averaged over overlapping windows.

    Each window of :func:`window_grid` is normalized (``(x - mean) / std`` per band),
    run through ``model`` in batches of ``batch``, turned into softmax probabilities
    (float32), and added into the tile; each pixel's sum is divided by the number of
    windows covering it (:func:`coverage_count`). A tile smaller than the window
    along an axis is padded with 0 after normalization (the mean) and cropped back.

    Parameters
    ----------
    model : callable
        ``(N, C_in, h, w)`` float32 -> ``(N, num_classes, h, w)`` logits, or a dict
        with the logits under ``"out"`` (torchvision segmentation models). Called
        under ``torch.inference_mode``; put it in eval mode and on ``device`` first.
    image : (H, W, C_in) uint8, uint16 or float array
    mean, std : per-band normalization, length ``C_in``
    window : int or (h, w), default 513
    overlap : fraction in [0, 1), default "1/3" (see :func:`parse_overlap`)
    batch : int, default 4, windows per forward pass
    device : default "cpu"
    amp : bool, default False
        Autocast (bfloat16 where supported, else float16) on CUDA; the softmax and
        the average stay float32.
    num_classes : int, optional
        Checked against the model's output when given.
    on_batch : callable, optional
        Called with the number of windows after each batch (progress bars).

    Returns
    -------
    (num_classes, H, W) float32 numpy array; sums to 1 over classes at each pixel.

    Raises
    ------
    TypeError, ValueError
        Bad ``window``/``overlap``/``batch``, an image that is not (H, W, C) with
        ``len(mean)`` bands, ``amp`` off CUDA, or model outputs of the wrong shape.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"`image` must be (H, W, C), got shape {image.shape}")
    h, w, c = image.shape
    if len(mean) != c or len(std) != c:
        raise ValueError(f"`image` has {c} bands, `mean`/`std` have {len(mean)}/{len(std)}")
    wh, ww = parse_size(window, name="window")
    check_int("batch", batch, minimum=1)
    dev = torch.device(device)
    check_amp(amp, dev)
    grid = window_grid((h, w), (wh, ww), overlap)
    ph, pw = max(h, wh), max(w, ww)

    if image.dtype == np.uint16:
        image = image.astype(np.int32)
    elif not image.flags.writeable:
        # torch.from_numpy warns about read-only arrays (e.g. numpy views of PIL images);
        # the tile is only read, but a copy keeps the tensor honest
        image = image.copy()
    x = torch.from_numpy(np.ascontiguousarray(image)).to(dev).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(-1, 1, 1)
    x = (x - m) / s
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h))  # zeros after normalization = the mean
    acc: torch.Tensor | None = None
    with torch.inference_mode():
        for i in range(0, len(grid), batch):
            corners = grid[i : i + batch]
            xb = torch.stack([x[:, y : y + wh, x0 : x0 + ww] for y, x0 in corners])
            with _amp_context(amp):
                logits = logits_of(model(xb))
            if logits.ndim != 4 or logits.shape[0] != len(corners) or logits.shape[2:] != (wh, ww):
                raise ValueError(
                    f"the model returned logits of shape {tuple(logits.shape)} for input "
                    f"{tuple(xb.shape)}; expected (N, num_classes, {wh}, {ww})"
                )
            if num_classes is not None and logits.shape[1] != num_classes:
                raise ValueError(
                    f"the model returned {logits.shape[1]} classes, expected {num_classes}"
                )
            probs = torch.softmax(logits.float(), dim=1)
            if acc is None:
                acc = torch.zeros((probs.shape[1], ph, pw), dtype=torch.float32, device=dev)
            for (y, x0), p in zip(corners, probs, strict=True):
                acc[:, y : y + wh, x0 : x0 + ww] += p
            if on_batch is not None:
                on_batch(len(corners))
    count = coverage_count((h, w), (wh, ww), overlap)
    out = acc[:, :h, :w].cpu().numpy()
    out /= count[None].astype(np.float32)
    return out


# -- writing label maps --------------------------------------------------------------------------


def palette_for(info: ModelInfo | StoreInfo) -> np.ndarray:
    """Class colours ``(num_classes, 3)`` uint8: a store's info, or a checkpoint's preset."""
    from npa_precompute.colors import class_palette, preset_palette
    from npa_precompute.store import StoreInfo

    if isinstance(info, StoreInfo):
        return class_palette(info)
    return preset_palette(info.preset, info.num_classes)


def write_label_maps(
    pred: np.ndarray,
    out_dir: str | os.PathLike,
    stem: str,
    palette: np.ndarray,
    *,
    fmt: str = "png",
    target: np.ndarray | None = None,
    ignore_index: int | None = None,
    georef: dict | None = None,
) -> dict[str, str]:
    """Write a prediction as an index map and a colour-coded PNG (and an error map).

    Parameters
    ----------
    pred : (H, W) integer array of class indices
    out_dir : folder (must exist)
    stem : file name stem
    palette : (num_classes, 3) uint8 class colours
    fmt : {"png", "tif"}, default "png"
        ``<stem>_label.png``: 8-bit grey (16-bit for more than 256 classes) whose
        values are the class indices; ``<stem>_label.tif``: uint8/uint16 TIFF (zlib).
    target : (H, W) integer array, optional
        Ground truth: also writes ``<stem>_error.png``, white where the prediction is
        right, red where wrong, black at ignore pixels.
    ignore_index : int, optional
        Ignore value of ``target``.
    georef : dict, optional
        Georeferencing of ``pred``'s pixel grid (:func:`npa_precompute.geo.read_georef`,
        or a store tile's ``georef`` attr): written as GeoTIFF tags into the ``.tif``
        label map (PNGs stay plain).

    Returns
    -------
    dict
        ``label``, ``color`` and (with ``target``) ``error``: the written paths.

    Raises
    ------
    ValueError
        Unknown ``fmt``, or a ``georef`` that is not a georeferencing dict.
    """
    from PIL import Image

    from npa_precompute.colors import label_rgb

    check_choice("fmt", fmt, FORMATS)
    out_dir = Path(out_dir)
    dtype = np.uint8 if len(palette) <= 256 else np.uint16
    index = np.ascontiguousarray(pred, dtype=dtype)
    paths = {}
    label_path = out_dir / f"{stem}_label.{fmt}"
    if fmt == "png":
        Image.fromarray(index).save(label_path)
    else:
        from npa_precompute.geo import write_geotiff

        write_geotiff(label_path, index, georef, compression="zlib", photometric="minisblack")
    paths["label"] = str(label_path)
    ignore = len(palette) if ignore_index is None else int(ignore_index)
    color_path = out_dir / f"{stem}_color.png"
    Image.fromarray(label_rgb(index, palette, ignore)).save(color_path)
    paths["color"] = str(color_path)
    if target is not None:
        target = np.asarray(target)
        err = np.zeros((*index.shape, 3), dtype=np.uint8)
        valid = np.ones(index.shape, bool) if ignore_index is None else target != ignore_index
        right = valid & (target == index)
        err[right] = (255, 255, 255)
        err[valid & ~right] = (255, 0, 0)
        error_path = out_dir / f"{stem}_error.png"
        Image.fromarray(err).save(error_path)
        paths["error"] = str(error_path)
    return paths


def write_legend(out_dir, classes, palette: np.ndarray, *, errors: bool = False) -> str:
    """Write ``legend.png``, the key to the colour PNGs, the class-index PNGs (and error
    maps) in ``out_dir`` (:func:`npa_precompute.colors.legend_image`); returns its path."""
    from npa_precompute.colors import legend_image

    path = Path(out_dir) / "legend.png"
    legend_image(classes, palette, errors=errors, indices=True).save(path)
    return str(path)


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over ``total`` sliding windows (a no-op context when not ``enabled``)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="win", disable=not enabled, dynamic_ncols=True)


def predict(
    checkpoint: str | os.PathLike,
    images: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    window: int | Sequence[int] = WINDOW,
    overlap: float | str | Fraction = WINDOW_OVERLAP,
    batch: int = INFERENCE_BATCH,
    device: str | None = None,
    amp: bool = False,
    fmt: str = "png",
    progress: bool = True,
) -> list[dict]:
    """Label maps for new image tiles with the sliding window of :func:`sliding_window_probs`.

    Parameters
    ----------
    checkpoint : ``checkpoint.pt`` or its run folder (``npa-train fit``)
    images : image files, folders (searched recursively) or glob patterns; 1-, 3- or
        4-band, uint8 or uint16, with as many bands as the checkpoint's ``in_channels``
    out : output folder (created); per image ``<stem>_label.png|tif`` (class indices)
        and ``<stem>_color.png``; the ``.tif`` of a GeoTIFF image carries the image's
        georeferencing (:mod:`npa_precompute.geo`)
    window : int or (h, w), default 513
    overlap : default "1/3"
    batch : windows per forward pass, default 4
    device : {"cpu", "cuda"} or None (cuda if available)
    amp : autocast on CUDA, default False
    fmt : {"png", "tif"}, default "png"
    progress : tqdm bar over windows

    Returns
    -------
    list of dict
        Per image: ``image``, ``shape`` (H, W), ``windows``, ``seconds``, ``label``,
        ``color`` (paths).

    Raises
    ------
    CheckpointError
        Unreadable checkpoint, or an image whose band count differs from the
        checkpoint's ``in_channels`` (both named), or whose dtype differs from the
        training images' (:func:`check_image_dtype`; both named). A uint16 image whose
        values all lie below 256 is taken for a uint8 checkpoint, with a warning.
    InputError
        A missing or unreadable image (:mod:`npa_precompute.readers`); with ``fmt="tif"``,
        an image with malformed GeoTIFF tags.
    TypeError, ValueError
        Bad ``window``, ``overlap``, ``batch``, ``fmt``, device or ``amp``; two images
        with the same file stem.
    """
    import time

    from npa_precompute.geo import tile_georef
    from npa_precompute.readers import expand_paths, read_image

    wh, ww = parse_size(window, name="window")
    overlap = parse_overlap(overlap)
    check_int("batch", batch, minimum=1)
    check_choice("fmt", fmt, FORMATS)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    files = expand_paths([str(i) for i in images], what="image")
    stems = [f.stem for f in files]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise ValueError(f"images share file stems ({', '.join(dup)}); outputs would collide")
    dev = resolve_device(device)
    check_amp(amp, dev)
    model, info = load_model(checkpoint, device=dev)
    palette = palette_for(info)

    arrays = []
    for f in files:
        img = read_image(f)
        if img.shape[2] != info.in_channels:
            raise CheckpointError(
                f"{f} has {img.shape[2]} band(s), the checkpoint {info.path} expects "
                f"in_channels {info.in_channels}"
            )
        top = int(img.max(initial=0)) if img.dtype == np.uint16 else None
        check_image_dtype(info, img.dtype, str(f), max_value=top)
        # the label map is the image's pixel grid: a GeoTIFF image's georeferencing fits it
        georef = tile_georef(f) if fmt == "tif" else None
        arrays.append((f, img.shape[:2], georef))
    total = sum(len(window_grid(shape, (wh, ww), overlap)) for _, shape, _ in arrays)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_legend(out, info.classes, palette)
    results = []
    with progress_bar(total, "predict", progress) as bar:
        for f, _, georef in arrays:
            t0 = time.perf_counter()
            img = read_image(f)
            probs = sliding_window_probs(
                model,
                img,
                **normalization(info, img),
                window=(wh, ww),
                overlap=overlap,
                batch=batch,
                device=dev,
                amp=amp,
                num_classes=info.num_classes,
                on_batch=bar.update,
            )
            pred = probs.argmax(axis=0)
            paths = write_label_maps(pred, out, f.stem, palette, fmt=fmt, georef=georef)
            results.append(
                {
                    "image": str(f),
                    "shape": list(pred.shape),
                    "windows": len(window_grid(pred.shape, (wh, ww), overlap)),
                    "seconds": time.perf_counter() - t0,
                    **paths,
                }
            )
    return results
