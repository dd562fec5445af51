"""Evaluate a checkpoint on whole store tiles: ``npa-train evaluate``.

Each tile is predicted with the overlapping sliding window of
:func:`npa_train.predict.sliding_window_probs` (softmax probabilities averaged, the
paper's inference, §4.2) and scored against the store's label
(:mod:`npa_train.metrics`): one confusion matrix over all evaluated tiles gives
per-class precision, recall, F1 and IoU, mF1 and mIoU over the foreground classes
(the ``isprs`` preset leaves clutter out, as Table 1 does) and OA; boundary
precision/recall/F1 and the F1 of small objects (``isprs``: car) come with them.

The output folder receives ``metrics.json``, ``metrics.md`` (a table laid out like
Feng et al. 2020, Table 1) and per tile ``<tile>_label.png`` (class indices),
``<tile>_color.png`` (colour-coded prediction) and ``<tile>_error.png`` (white
right, red wrong, black ignore).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from npa_precompute.errors import ParameterError
from npa_precompute.params import check_amp, check_int, parse_size, parse_tiles
from npa_precompute.store import (
    StoreError,
    StoreInfo,
    list_tiles,
    open_store,
    open_tile,
    store_info,
)
from npa_train.checkpoint import CheckpointError, ModelInfo, load_model
from npa_train.choices import INFERENCE_BATCH, WINDOW, WINDOW_OVERLAP
from npa_train.metrics import SegmentationMetrics, clutter_classes, means_by_clutter
from npa_train.predict import (
    check_image_dtype,
    normalization,
    palette_for,
    parse_overlap,
    progress_bar,
    sliding_window_probs,
    window_grid,
    window_stride,
    write_label_maps,
    write_legend,
)

__all__ = [
    "SMALL_OBJECT_CLASSES",
    "check_compatible",
    "evaluate",
    "evaluate_model",
    "format_conventions",
    "format_table",
    "parse_class_list",
]

#: Class names reported as small objects by default (the ISPRS car).
SMALL_OBJECT_CLASSES = ("car",)


def parse_class_list(
    value: str | Sequence[str | int] | None, classes: Sequence[str], *, name: str
) -> list[int] | None:
    """Class names or indices -> sorted unique indices; None stays None.

    ``"0,1,2"``, ``"building,car"``, ``["car", 1]``.

    Raises
    ------
    ValueError
        An unknown name or an index outside the classes (the message lists them);
        an empty list.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    out = []
    lowered = [c.lower() for c in classes]
    for v in value:
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            idx = int(v)
        elif isinstance(v, str) and v.lstrip("-").isdigit():
            idx = int(v)
        elif isinstance(v, str) and v.lower() in lowered:
            idx = lowered.index(v.lower())
        else:
            listed = ", ".join(f"{i} {c}" for i, c in enumerate(classes))
            reason = f"unknown class {v!r}; classes: {listed}"
            raise ParameterError(name, reason, message=f"`{name}`: {reason}")
        if not 0 <= idx < len(classes):
            reason = f"class index {idx} outside 0..{len(classes) - 1}"
            raise ParameterError(name, reason, message=f"`{name}`: {reason}")
        out.append(idx)
    if not out:
        raise ParameterError(name, "must name at least one class")
    return sorted(set(out))


def check_compatible(
    info: ModelInfo, store: StoreInfo, *, bands: int | None, store_path: str
) -> None:
    """Refuse a checkpoint whose classes or input bands differ from the store's.

    Raises
    ------
    CheckpointError
        ``num_classes``, class names or ``in_channels`` differ (both values named).
    """
    n_store = store.num_classes
    if info.num_classes != n_store:
        raise CheckpointError(
            f"checkpoint {info.path} predicts num_classes {info.num_classes} "
            f"({', '.join(info.classes)}) but store {store_path} has num_classes {n_store} "
            f"({', '.join(store.classes)})"
        )
    if [c.lower() for c in info.classes] != [str(c).lower() for c in store.classes]:
        raise CheckpointError(
            f"checkpoint {info.path} classes ({', '.join(info.classes)}) differ from store "
            f"{store_path} classes ({', '.join(store.classes)})"
        )
    if bands is not None and bands != info.in_channels:
        raise CheckpointError(
            f"checkpoint {info.path} expects in_channels {info.in_channels}, but the images of "
            f"store {store_path} have {bands} band(s)"
        )


def _resolve_tiles(
    root, tiles: str | Sequence[str] | None, store_path: str, info: ModelInfo | None = None
) -> tuple[list[str], str]:
    """The tiles to evaluate and where they come from: ``"given"``, ``"val_tiles"`` (the
    checkpoint's validation tiles, when the store holds them all) or ``"store"`` (every
    tile)."""
    tiles = parse_tiles(tiles)
    if tiles is not None:
        return tiles, "given"
    if info is not None and info.val_tiles:
        present = set(list_tiles(root))
        missing = [t for t in info.val_tiles if t not in present]
        if not missing:
            return list(info.val_tiles), "val_tiles"
        warnings.warn(
            f"checkpoint {info.path} was validated on tile(s) {', '.join(info.val_tiles)}, "
            f"but store {store_path} lacks {', '.join(missing)}: evaluating every tile of it",
            stacklevel=3,
        )
    if tiles is None:
        every = list_tiles(root)
        complete = list_tiles(root, complete_only=True)
        incomplete = [t for t in every if t not in complete]
        if incomplete:
            raise StoreError(
                f"store {store_path} has incomplete tiles ({', '.join(incomplete)}); re-run "
                "`npa-precompute run` to complete them, or pass --tiles with complete ones"
            )
        if not complete:
            raise StoreError(f"store {store_path} holds no tile")
        tiles = complete
    return tiles, "store"


def _finite_or_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _pct(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


def format_table(metrics: dict) -> str:
    """Markdown table of :func:`evaluate`'s metrics, laid out like Feng et al. 2020, Table 1.

    Columns: the F1 of each class in the mean (%), mF1, mIoU, OA and boundary F1 (%);
    one row, named after the model. NaN (or null) prints as "–". A note under the
    table states the tiles, window, what the means cover and the boundary tolerance.
    """
    in_mean = metrics["classes_in_mean"]
    per_class = metrics["per_class"]
    header = ["Method", *in_mean, "mF1", "mIoU", "OA", "Boundary F1"]
    row = [
        metrics.get("model", "model"),
        *(_pct(per_class[c]["f1"]) for c in in_mean),
        _pct(metrics["mF1"]),
        _pct(metrics["mIoU"]),
        _pct(metrics["OA"]),
        _pct(metrics["boundary"]["f1"]),
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        "| " + " | ".join(row) + " |",
    ]
    b = metrics["boundary"]
    small = ", ".join(f"{c} {_pct(v)}" for c, v in metrics.get("small_objects", {}).items())
    out_of_mean = [c for c in per_class if c not in in_mean]
    tiles_note = {"val_tiles": " (the checkpoint's validation tiles)"}.get(
        metrics.get("tiles_from"), ""
    )
    if metrics.get("training_tiles"):
        tiles_note += f" (training tiles of the model: {', '.join(metrics['training_tiles'])})"
    notes = [
        f"Tiles: {', '.join(metrics['tiles'])}{tiles_note}; window {metrics['window'][0]}×"
        f"{metrics['window'][1]}, overlap {metrics['overlap']} (stride "
        f"{metrics['stride'][0]}×{metrics['stride'][1]}), softmax averaged.",
        f"Per-class F1, mF1 and mIoU in %, means over {len(in_mean)} classes"
        + (f" ({', '.join(out_of_mean)} left out)" if out_of_mean else "")
        + "; OA over all non-ignore pixels; a class absent from ground truth and "
        "prediction is '–' and left out of the means.",
        f"Boundary F1: boundary pixels (a 4-neighbour of another class) matched within "
        f"{b['tolerance']} px (precision {_pct(b['precision'])}, recall {_pct(b['recall'])}; "
        f"ignore bands filled {b['ignore_fill']} px).",
    ]
    if small:
        notes.append(f"Small objects F1: {small}.")
    text = "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    return text + ("\n" + format_conventions(metrics) if "means" in metrics else "")


def _convention_rows(metrics: dict, label: str) -> list[str]:
    total = metrics["pixels"] + metrics["ignored_pixels"]
    share = 100 * metrics["ignored_pixels"] / total if total else math.nan
    rows = []
    for key, clutter in (("without_clutter", "out"), ("with_clutter", "in")):
        m = metrics["means"][key]
        rows.append(
            f"| {label} | {metrics['ignored_pixels']:,} ({share:.1f} %) | {clutter} "
            f"({len(m['classes'])}) | {_pct(m['mF1'])} | {_pct(m['mIoU'])} | "
            f"{_pct(metrics['OA'])} |"
        )
    return rows


def format_conventions(metrics: dict) -> str:
    """Markdown section comparing scoring conventions: ground truth of the store and, with
    ``full_gt``, the full ground truth; means with clutter in and out.

    Published ISPRS numbers differ by about 5 mIoU in these alone (eroded ``noBoundary``
    vs full ground truth; 5 or 6 classes averaged), so each row is labelled. With
    ``full_gt`` a second table in the layout of :func:`format_table` follows, scored on
    the full ground truth (same predictions).
    """
    store = Path(str(metrics.get("store", "store"))).name
    lines = [
        "Scoring conventions (same predictions; F1/IoU means in %; ignored: pixels of the "
        "tiles left out of the scores, e.g. the boundary band of eroded ground truth):",
        "",
        "| Ground truth | Ignored pixels | Clutter in means | mF1 | mIoU | OA |",
        "|---|---:|---|---:|---:|---:|",
        *_convention_rows(metrics, f"store {store}"),
    ]
    clutter = ", ".join(metrics["means"]["clutter"]) or "none"
    full = metrics.get("full_gt")
    if full is not None:
        lines += _convention_rows(full, f"full GT {Path(full['store']).name} (--full-gt)")
    lines += ["", f"Clutter classes: {clutter}."]
    if full is not None:
        in_mean = full["classes_in_mean"]
        header = ["Method", *in_mean, "mF1", "mIoU", "OA", "Boundary F1"]
        row = [metrics.get("model", "model"), *(_pct(full["per_class"][c]["f1"]) for c in in_mean),
               _pct(full["mF1"]), _pct(full["mIoU"]), _pct(full["OA"]),
               _pct(full["boundary"]["f1"])]  # fmt: skip
        lines += [
            "",
            f"Full ground truth (--full-gt {full['store']}), the same predictions:",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
            "| " + " | ".join(row) + " |",
        ]
    return "\n".join(lines) + "\n"


def _open_full_gt(full_gt, opened: list, classes: list[str]) -> tuple[str, dict, dict]:
    """Open the ``full_gt`` store and check it holds the evaluated tiles, same shapes and
    classes; return its path, info and ``{tile id: tile}``."""
    path = str(full_gt)
    try:
        root = open_store(full_gt)
        info = store_info(root)
    except StoreError as exc:
        raise ParameterError("full_gt", f"cannot read store {path}: {exc}") from exc
    theirs = [str(c) for c in info.classes]
    if [c.lower() for c in theirs] != [c.lower() for c in classes]:
        raise ParameterError(
            "full_gt", f"store {path} has classes ({', '.join(theirs)}), the evaluated store "
            f"({', '.join(classes)}): it must hold the same tiles labelled with the same classes",
        )  # fmt: skip
    tiles = {}
    for t in opened:
        try:
            full = open_tile(root, t.tile_id)
        except StoreError as exc:
            raise ParameterError("full_gt", f"store {path}: tile {t.tile_id}: {exc}") from exc
        if tuple(full.shape) != tuple(t.shape):
            raise ParameterError(
                "full_gt", f"tile {t.tile_id} is {full.shape[0]}×{full.shape[1]} in store "
                f"{path} but {t.shape[0]}×{t.shape[1]} in the evaluated store",
            )  # fmt: skip
        tiles[t.tile_id] = full
    return path, info, tiles


def _like(metrics: SegmentationMetrics, ignore_index: int) -> SegmentationMetrics:
    """Empty metrics with the settings of ``metrics`` and another ignore value."""
    return SegmentationMetrics(
        metrics.num_classes,
        classes=metrics.classes,
        ignore_index=ignore_index,
        classes_in_mean=metrics.classes_in_mean,
        small_classes=metrics.small_classes,
        boundary_tolerance=metrics.boundary_tolerance,
        ignore_fill=metrics.ignore_fill,
    )


def _conventions(metrics, clutter: list[int], tile_pixels: int, full=None) -> dict:
    """``means`` (clutter in and out), ``ignored_pixels`` and, with ``full`` = (path,
    metrics), ``full_gt``: the scores on the full ground truth."""
    scores = metrics.compute()
    out = {
        "means": means_by_clutter(metrics.cm, clutter, classes=metrics.classes),
        "ignored_pixels": tile_pixels - scores["pixels"],
    }
    if full is not None:
        path, fm = full
        fs = fm.compute()
        out["full_gt"] = {
            "store": str(Path(path).resolve()),
            "ignore_index": fm.ignore_index,
            **fs,
            "means": means_by_clutter(fm.cm, clutter, classes=fm.classes),
            "ignored_pixels": tile_pixels - fs["pixels"],
        }
    return out


def evaluate_model(
    store: str | os.PathLike,
    model: torch.nn.Module,
    info: ModelInfo,
    out: str | os.PathLike | None,
    *,
    tiles: str | Sequence[str] | None = None,
    window: int | Sequence[int] = WINDOW,
    overlap: float | str | Fraction = WINDOW_OVERLAP,
    batch: int = INFERENCE_BATCH,
    device: str | torch.device = "cpu",
    amp: bool = False,
    classes_in_mean: str | Sequence[str | int] | None = None,
    small_classes: str | Sequence[str | int] | None = None,
    boundary_tolerance: int = 3,
    boundary_ignore_fill: int = 4,
    save_images: bool = True,
    progress: bool = True,
    full_gt: str | os.PathLike | None = None,
) -> dict:
    """Evaluate an already loaded model on store tiles (what :func:`evaluate` runs).

    ``model`` must be in eval mode on ``device``; ``info`` describes it (classes,
    bands, normalization). Parameters and results as in :func:`evaluate`; with
    ``out=None`` nothing is written.
    """
    win = parse_size(window, name="window")
    overlap = parse_overlap(overlap)
    stride = window_stride(win, overlap)
    check_int("batch", batch, minimum=1)
    dev = torch.device(device)
    check_amp(amp, dev)
    store_path = str(store)
    root = open_store(store)
    sinfo = store_info(root)
    classes = list(sinfo.classes)
    metrics = _new_metrics(sinfo, classes_in_mean, small_classes, boundary_tolerance,
                           boundary_ignore_fill)  # fmt: skip
    tile_ids, tiles_from = _resolve_tiles(root, tiles, store_path, info)
    opened = _open_tiles(root, tile_ids, store_path, info, sinfo)
    trained = _warn_training_tiles(tile_ids, store_path, info)
    full = None
    if full_gt is not None:
        full_path, full_info, full_tiles = _open_full_gt(full_gt, opened, classes)
        full = (full_path, _like(metrics, int(full_info.ignore_index)), full_tiles)
    out_dir = _out_folder(out)
    total = sum(len(window_grid(t.shape, win, overlap)) for t in opened)
    per_tile: dict[str, dict] = {}
    if out_dir and save_images:
        write_legend(out_dir, sinfo.classes, palette_for(sinfo), errors=True)
    t_start = time.perf_counter()
    with progress_bar(total, "evaluate", progress) as bar:
        for t in opened:
            bar.set_postfix_str(t.tile_id, refresh=False)
            per_tile[t.tile_id] = _score_tile(
                t, model, info, metrics, full, win=win, overlap=overlap, batch=batch,
                device=dev, amp=amp, on_batch=bar.update,
                images=(out_dir, palette_for(sinfo)) if out_dir and save_images else None,
            )  # fmt: skip
    result = {
        "model": info.name,
        "checkpoint": info.path,
        "store": str(Path(store_path).resolve()),
        "tiles": tile_ids,
        "tiles_from": tiles_from,
        "training_tiles": trained,
        "window": list(win),
        "overlap": str(overlap),
        "stride": list(stride),
        "device": str(dev),
        "amp": bool(amp),
        "classes": classes,
        "ignore_index": sinfo.ignore_index,
        **metrics.compute(),
        "per_tile": per_tile,
        "windows": total,
        "seconds": time.perf_counter() - t_start,
    }
    clutter = clutter_classes(classes, sinfo.foreground)
    pixels = sum(int(t.shape[0]) * int(t.shape[1]) for t in opened)
    result.update(_conventions(metrics, clutter, pixels, None if full is None else full[:2]))
    if out_dir is not None:
        _write_results(out_dir, result)
    return result


def _new_metrics(sinfo, classes_in_mean, small_classes, tolerance, ignore_fill):
    """Empty :class:`SegmentationMetrics` for the store's classes: the means over
    ``classes_in_mean`` (default the foreground classes), small objects ``small_classes``
    (default those named in :data:`SMALL_OBJECT_CLASSES`)."""
    classes = list(sinfo.classes)
    in_mean = parse_class_list(classes_in_mean, classes, name="classes_in_mean")
    if in_mean is None:
        in_mean = list(sinfo.foreground)
    small = parse_class_list(small_classes, classes, name="small_classes")
    if small is None:
        small = [i for i, c in enumerate(classes) if c.lower() in SMALL_OBJECT_CLASSES]
    return SegmentationMetrics(
        len(classes), classes=classes, ignore_index=sinfo.ignore_index,
        classes_in_mean=in_mean, small_classes=small, boundary_tolerance=tolerance,
        ignore_fill=ignore_fill,
    )  # fmt: skip


def _open_tiles(root, tile_ids: list[str], store_path: str, info: ModelInfo, sinfo) -> list:
    """The tiles, checked: complete, with an image whose bands and dtype fit the model."""
    opened = [open_tile(root, t) for t in tile_ids]  # StoreError / IncompleteTileError
    no_image = [t.tile_id for t in opened if t.image is None]
    if no_image:
        raise StoreError(
            f"tile(s) {', '.join(no_image)} of {store_path} have no image; re-run "
            "`npa-precompute run ... --images <image files>`"
        )
    for b in sorted({int(t.image.shape[2]) for t in opened}):
        check_compatible(info, sinfo, bands=b, store_path=store_path)
    for dtype in sorted({np.dtype(t.image.dtype).name for t in opened}):
        check_image_dtype(info, dtype, f"the images of store {store_path}")
    return opened


def _warn_training_tiles(tile_ids: list[str], store_path: str, info: ModelInfo) -> list[str]:
    """The evaluated tiles the model was trained on, with a warning when there are any."""
    trained = [t for t in tile_ids if t in set(info.train_tiles)]
    if trained:
        hint = (
            f"its validation tiles are {', '.join(info.val_tiles)}"
            if info.val_tiles
            else "train with --val-tiles to keep tiles for evaluation"
        )
        warnings.warn(
            f"tile(s) {', '.join(trained)} of {store_path} are training tiles of checkpoint "
            f"{info.path}: their scores show how well it fits its training data, not how it "
            f"does on new data ({hint})",
            stacklevel=3,
        )
    return trained


def _out_folder(out) -> Path | None:
    if out is None:
        return None
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ParameterError("out", f"{out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _score_tile(t, model, info, metrics, full, *, win, overlap, batch, device, amp, on_batch,
                images) -> dict:  # fmt: skip
    """Predict one whole tile with the sliding window, score it (and against the full
    ground truth), write its PNGs when ``images`` = (folder, palette); its per-tile entry."""
    t0 = time.perf_counter()
    image = t.read_window("image", 0, t.shape[0], 0, t.shape[1])
    probs = sliding_window_probs(
        model, image, **normalization(info, image, tile_meta=t.meta), window=win,
        overlap=overlap, batch=batch, device=device, amp=amp, num_classes=info.num_classes,
        on_batch=on_batch,
    )  # fmt: skip
    pred = probs.argmax(axis=0).astype(np.uint8 if metrics.num_classes <= 256 else np.uint16)
    del probs, image
    label = t.read_window("label", 0, t.shape[0], 0, t.shape[1])
    scores = metrics.update(label, pred)
    if full is not None:
        full[1].update(np.asarray(full[2][t.tile_id].label[...]), pred)
    files = {}
    if images is not None:
        files = write_label_maps(pred, images[0], t.tile_id, images[1], target=label,
                                 ignore_index=metrics.ignore_index)  # fmt: skip
    return {
        "shape": list(t.shape),
        "windows": len(window_grid(t.shape, win, overlap)),
        "seconds": time.perf_counter() - t0,
        "mF1": scores["mF1"],
        "mIoU": scores["mIoU"],
        "OA": scores["OA"],
        "boundary_f1": scores["boundary"]["f1"],
        "f1": {c: v["f1"] for c, v in scores["per_class"].items()},
        "files": files,
    }


def _write_results(out_dir: Path, result: dict) -> None:
    """``metrics.json`` (NaN as null) and ``metrics.md``; their paths into ``result``."""
    (out_dir / "metrics.json").write_text(
        json.dumps(_finite_or_none(result), indent=2, allow_nan=False) + "\n"
    )
    (out_dir / "metrics.md").write_text(format_table(result))
    result["files"] = {
        "metrics_json": str(out_dir / "metrics.json"),
        "metrics_md": str(out_dir / "metrics.md"),
    }


def evaluate(
    store: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike | None,
    *,
    tiles: str | Sequence[str] | None = None,
    window: int | Sequence[int] = WINDOW,
    overlap: float | str | Fraction = WINDOW_OVERLAP,
    batch: int = INFERENCE_BATCH,
    device: str | None = None,
    amp: bool = False,
    classes_in_mean: str | Sequence[str | int] | None = None,
    small_classes: str | Sequence[str | int] | None = None,
    boundary_tolerance: int = 3,
    boundary_ignore_fill: int = 4,
    save_images: bool = True,
    progress: bool = True,
    full_gt: str | os.PathLike | None = None,
) -> dict:
    """Predict whole store tiles with a checkpoint and score them; write the results.

    Parameters
    ----------
    store : weight store written by ``npa-precompute run --images ...``
    checkpoint : ``checkpoint.pt`` or its run folder (``npa-train fit``)
    out : output folder (created; files of an earlier evaluation are replaced), or None
        to write nothing
    tiles : tile ids (list or comma-separated); default the checkpoint's validation tiles
        (``fit --val-tiles``) when it recorded some and the store holds them all, else
        every tile of the store (all must be complete). Evaluating tiles the model was
        trained on warns; a tile given twice is an error
        (:func:`npa_precompute.params.parse_tiles`).
    window : int or (h, w), default 513 (the paper's crop size)
    overlap : fraction in [0, 1), default "1/3"; ``"1/3"``, ``"0.5"``, ``0``...
        Stride ``max(1, floor(window * (1 - overlap)))``.
    batch : windows per forward pass, default 4
    device : {"cpu", "cuda"} or None (cuda if available)
    amp : autocast on CUDA (bfloat16 where supported, else float16), default False
    classes_in_mean : class names or indices averaged into mF1 and mIoU; default the
        store's ``foreground_classes`` (``isprs``: all but clutter)
    small_classes : class names or indices reported as small-object F1; default the
        classes named "car"
    boundary_tolerance : px within which boundary pixels match, default 3
    boundary_ignore_fill : px of ignore band filled before drawing ground-truth
        boundaries, default 4 (see :func:`npa_train.metrics.boundary_counts`)
    save_images : write the per-tile PNGs, default True
    progress : tqdm bar over windows
    full_gt : a second store precomputed from the full ground truth of the same tiles
        (same tile ids, shapes and classes), optional: the same predictions are also
        scored against its labels (``full_gt`` in the result). Scoring on eroded
        (``noBoundary``) and on full ground truth differs by several mIoU points.

    Returns
    -------
    dict
        ``model``, ``checkpoint``, ``store``, ``tiles``, ``tiles_from`` (``"given"``,
        ``"val_tiles"`` or ``"store"``), ``training_tiles`` (those of ``tiles`` the model was
        trained on), ``window``, ``overlap``,
        ``stride``, ``device``, ``amp``, ``classes``, ``ignore_index``; the scores of
        :meth:`npa_train.metrics.SegmentationMetrics.compute` over all tiles
        (``per_class``, ``mF1``, ``mIoU``, ``OA``, ``boundary``, ``small_objects``,
        ``confusion_matrix``...); ``per_tile`` (scores, windows, seconds and files per
        tile); ``windows``, ``seconds``; ``means`` (:func:`npa_train.metrics.
        means_by_clutter`: mF1/mIoU with clutter in and out of the means, labelled),
        ``ignored_pixels`` (tile pixels left out: ignore band); with ``full_gt`` a
        ``full_gt`` dict holding the same scores (and ``store``, ``ignore_index``,
        ``means``, ``ignored_pixels``) on the full ground truth; ``files`` when written.
        Undefined scores are NaN here and null in ``metrics.json``.

    Raises
    ------
    StoreError
        Missing store, unknown tile (the message lists the tiles), incomplete tile,
        a tile without an image.
    CheckpointError
        Unreadable checkpoint, or one whose classes, input bands or image dtype differ
        from the store's (both named).
    TypeError, ValueError
        Bad ``window`` (< 1), ``overlap`` (outside [0, 1)), ``batch``, class lists,
        tolerance, an unavailable device or ``amp`` off CUDA; a ``full_gt`` store that
        cannot be read, lacks a tile or has other classes or tile shapes
        (:class:`~npa_precompute.errors.ParameterError` naming ``full_gt``).
    """
    from npa_train.device import resolve_device

    parse_size(window, name="window")
    parse_overlap(overlap)
    dev = resolve_device(device)
    check_amp(amp, dev)
    open_store(store)  # a missing store before loading the model
    model, info = load_model(checkpoint, device=dev)
    return evaluate_model(
        store,
        model,
        info,
        out,
        tiles=tiles,
        window=window,
        overlap=overlap,
        batch=batch,
        device=dev,
        amp=amp,
        classes_in_mean=classes_in_mean,
        small_classes=small_classes,
        boundary_tolerance=boundary_tolerance,
        boundary_ignore_fill=boundary_ignore_fill,
        save_images=save_images,
        progress=progress,
        full_gt=full_gt,
    )
