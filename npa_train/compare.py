"""Compare training runs the way Feng et al. (2020) report them: ``npa-train compare``.

The paper reports the **median of 3 runs** (seeds) per method (§4.2, Table 1). This
module reads run folders (``npa-train fit --out RUN``: ``config.json``, ``log.csv`` and,
with validation during training, ``val.csv``) and evaluation folders (``npa-train
evaluate --out EVAL``: ``metrics.json``, whose ``checkpoint`` leads back to the run's
``config.json``), groups them by everything that defines the method except the seed
(:data:`METHOD_KEYS`, plus what they were scored on) and summarizes each group by the
median over seeds with the min–max spread.

Scores come from an evaluation folder when one is given for a run, else from the last
row of the run's ``val.csv`` (the final model, the one ``checkpoint.pt`` holds). Values
are fractions in [0, 1] as in ``metrics.json``; ``None`` means undefined (a class absent
from ground truth and prediction) and is left out of medians.

Everything here is plain Python (csv, json, statistics): no torch, no numpy needed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from npa_precompute.errors import ParameterError
from npa_precompute.names import WeightsSpec
from npa_precompute.params import parse_weights_option
from npa_train.plot import BACKENDS, by_panel, render_panels, validation_panel
from npa_train.runrecord import SCALAR_METRICS, EvalRecord, RunRecord, read_csv_rows

__all__ = [
    "BY_CHOICES",
    "METHOD_KEYS",
    "by_series",
    "compare",
    "format_markdown",
    "group_results",
    "load_result",
    "load_results",
    "method_label",
    "metric_value",
    "read_csv_rows",
    "summarize",
    "write_csv",
]

#: ``config.json`` settings that define a method (the grouping key, with the scoring).
#: Left out: ``seed``, paths (store, pretrained), timings, devices, threads, and values
#: derived from the data (classes, class weights).
METHOD_KEYS = (
    "model", "model_config", "loss", "weights", "reduction", "aux_weight", "iters", "batch",
    "crop", "lr", "momentum", "weight_decay", "poly_power", "tiles", "val_tiles", "augment",
    "normalize", "focal_gamma", "dice_smooth",
)  # fmt: skip
#: What ``--by`` puts on the x axis of Fig. 5.
BY_CHOICES = ("k", "transform")


# -- readers ------------------------------------------------------------------------------------


def load_result(path: str | os.PathLike) -> dict:
    """One run's scores and settings from an evaluation folder or a run folder.

    Parameters
    ----------
    path : an ``npa-train evaluate`` output folder (``metrics.json``) or an ``npa-train
        fit`` run folder (``config.json``; scores from the last row of ``val.csv``).

    Returns
    -------
    dict
        ``source`` (the folder), ``run`` (the run folder), ``config`` (its
        ``config.json``), ``scores`` (``mF1``, ``mIoU``, ``OA``, ``boundary_f1``, ``f1``
        {class: F1}, ``classes_in_mean``; fractions or None; None without ``val.csv``),
        ``scored_on`` (a dict saying what was scored: ``{"kind": "evaluate", "store",
        "tiles", "window", "overlap", "classes_in_mean"}`` or ``{"kind": "val.csv",
        "iteration"}``), ``val`` (rows of ``val.csv`` or None) and ``log`` (rows of
        ``log.csv`` or None).

    Raises
    ------
    ParameterError
        ``path`` is neither kind of folder, or an evaluation's run folder lacks
        ``config.json`` (param ``runs``).
    ValueError
        Unreadable JSON or CSV.
    """
    folder = Path(path)
    try:
        if (folder / "metrics.json").is_file():
            evaluation = EvalRecord.read(folder)
            run, scores, scored_on = evaluation.run, evaluation.scores, evaluation.scored_on()
        elif (folder / "config.json").is_file():
            run, scores, scored_on = folder, None, None
        else:
            raise ParameterError(
                "runs", f"{folder} holds neither metrics.json (npa-train evaluate) nor "
                "config.json (npa-train fit)",
            )  # fmt: skip
        if not (run / "config.json").is_file():
            raise ParameterError(
                "runs", f"{folder}: its checkpoint's run folder {run} has no config.json"
            )
        record = RunRecord.read(run)
    except FileNotFoundError as exc:
        raise ParameterError("runs", f"{folder}: {exc}") from exc
    if scores is None and record.val:
        scores = record.final_scores()
        scored_on = {"kind": "val.csv", "iteration": record.val[-1].get("iteration")}
    return {"source": str(folder), "run": str(run), "config": record.config,
            "scores": None if scores is None else scores.as_dict(), "scored_on": scored_on,
            "val": record.val, "log": record.log}  # fmt: skip


def load_results(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """:func:`load_result` of each path; a run folder whose evaluation is also given is
    dropped (the evaluation's scores supersede its ``val.csv``).

    Raises
    ------
    ParameterError
        No path, or a run folder with neither ``val.csv`` nor an evaluation among
        ``paths`` (param ``runs``); see :func:`load_result`.
    """
    results = [load_result(p) for p in paths]
    if not results:
        raise ParameterError("runs", "give at least one run or evaluation folder")
    evaluated = {Path(r["run"]).resolve() for r in results if r["source"] != r["run"]}
    kept = []
    for r in results:
        own = r["source"] == r["run"]
        if own and Path(r["run"]).resolve() in evaluated:
            continue
        if r["scores"] is None:
            raise ParameterError(
                "runs", f"run {r['run']} has no val.csv (no validation during training): "
                f"score it with `npa-train evaluate --checkpoint {r['run']} --out EVAL` and "
                "pass EVAL",
            )  # fmt: skip
        kept.append(r)
    return kept


# -- grouping -----------------------------------------------------------------------------------


def _frozen(value):
    """A hashable, order-stable stand-in for a JSON value."""
    return json.dumps(value, sort_keys=True)


def method_label(config: dict) -> str:
    """``"<model> <loss>"`` plus ``" (<weights>)"`` when the run used weights.

    E.g. ``"fcn_resnet101 npa (k32_log10_L0.5)"``, ``"fcn_resnet101 ce"``.
    """
    label = f"{config.get('model', 'model')} {config.get('loss', '?')}"
    weights = config.get("weights")
    if weights and str(weights).lower() != "none":
        label += f" ({weights})"
    return label


def _scoring(result: dict) -> dict:
    """What a result was scored on, without what differs between seeds (the iteration)."""
    s = result["scored_on"]
    return {"kind": "val.csv"} if s["kind"] == "val.csv" else s


def _group_key(result: dict) -> tuple:
    config = result["config"]
    return (*(_frozen(config.get(k)) for k in METHOD_KEYS), _frozen(_scoring(result)))


def _short(value) -> str:
    if isinstance(value, list) and len(value) > 3:
        return f"[{value[0]}, …, {value[-1]}] ({len(value)})"
    return value if isinstance(value, str) else json.dumps(value)


def _disambiguate(groups: list[dict]) -> None:
    """Append the settings that tell apart groups of the same label (in place)."""
    by_label: dict[str, list[dict]] = {}
    for g in groups:
        by_label.setdefault(g["label"], []).append(g)
    for same in by_label.values():
        if len(same) < 2:
            continue
        fields = [*METHOD_KEYS, "scored_on"]
        values = [{**g["config"], "scored_on": g["scored_on"]} for g in same]
        differ = [f for f in fields if len({_frozen(v.get(f)) for v in values}) > 1]
        for g, v in zip(same, values, strict=True):
            parts = []
            for f in differ:
                if f == "scored_on":
                    s = v[f]
                    parts.append("val.csv" if s["kind"] == "val.csv" else
                                 f"evaluate {Path(str(s.get('store'))).name} "
                                 f"{_short(s.get('tiles'))}")  # fmt: skip
                else:
                    parts.append(f"{f}={_short(v.get(f))}")
            g["label"] += " [" + ", ".join(parts) + "]"


def group_results(results: Sequence[dict]) -> list[dict]:
    """Group results by method and scoring (all but the seed), in order of appearance.

    Parameters
    ----------
    results : dicts of :func:`load_result` (``config``, ``scores``, ``scored_on``,
        ``source``); hand-made ones need ``config`` (with ``seed``), ``scores`` and
        ``scored_on`` (``{"kind": "val.csv"}`` or an evaluation's).

    Returns
    -------
    list of dict
        ``label`` (:func:`method_label`, made unique by naming the settings that
        differ), ``config`` (of the first run), ``scored_on``, ``runs`` (the results,
        sorted by seed).

    Raises
    ------
    ParameterError
        Two results of one group with the same seed (param ``runs``; both named).
    """
    groups: dict[tuple, dict] = {}
    for r in results:
        key = _group_key(r)
        g = groups.setdefault(key, {"label": method_label(r["config"]), "config": r["config"],
                                    "scored_on": _scoring(r), "runs": []})  # fmt: skip
        seed = r["config"].get("seed")
        twin = next((o for o in g["runs"] if o["config"].get("seed") == seed), None)
        if twin is not None:
            raise ParameterError(
                "runs", f"{twin['source']} and {r['source']} are the same method with the same "
                f"seed {seed}: pass one of them",
            )  # fmt: skip
        g["runs"].append(r)
    out = list(groups.values())
    for g in out:
        g["runs"].sort(key=lambda r: (r["config"].get("seed") is None, r["config"].get("seed")))
    _disambiguate(out)
    return out


# -- summary ------------------------------------------------------------------------------------


def metric_value(scores: dict, metric: str) -> float | None:
    """``scores[metric]`` for ``mF1``, ``mIoU``, ``OA``, ``boundary_f1``; else the F1 of the
    class named ``metric`` (None when the run has no such class or it is undefined)."""
    value = scores.get(metric) if metric in SCALAR_METRICS else scores["f1"].get(metric)
    return None if value is None or not math.isfinite(value) else float(value)


def _spread(values: list[float | None]) -> dict:
    defined = [v for v in values if v is not None]
    if not defined:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(defined), "min": min(defined), "max": max(defined),
            "n": len(defined)}  # fmt: skip


def summarize(groups: Sequence[dict]) -> dict:
    """Median, min and max over seeds of every metric of each group.

    The median of 1 run is its value, of 2 runs their mean, of 3 the middle one. A value
    undefined in some runs (None) is summarized over the others (``n`` per metric).

    Parameters
    ----------
    groups : output of :func:`group_results`

    Returns
    -------
    dict
        ``classes``: the per-class columns (classes averaged into the means of any
        group, in first-seen order); ``small``: the small-object columns (``car`` when a
        group has it); ``rows``: per group ``label``, ``config``, ``scored_on``, ``n``
        (runs), ``seeds``, ``sources`` and ``metrics`` {name: {median, min, max, n}}
        for ``mF1``, ``mIoU``, ``OA``, ``boundary_f1`` and each class (its F1).
    """
    classes: list[str] = []
    every: list[str] = []
    for g in groups:
        for r in g["runs"]:
            classes += [c for c in r["scores"]["classes_in_mean"] if c not in classes]
            every += [c for c in r["scores"]["f1"] if c not in every]
    rows = []
    for g in groups:
        metrics = {m: _spread([metric_value(r["scores"], m) for r in g["runs"]])
                   for m in (*SCALAR_METRICS, *every)}  # fmt: skip
        rows.append({
            "label": g["label"], "config": g["config"], "scored_on": g["scored_on"],
            "n": len(g["runs"]), "seeds": [r["config"].get("seed") for r in g["runs"]],
            "sources": [r["source"] for r in g["runs"]], "metrics": metrics,
        })  # fmt: skip
    small = [c for c in every if c.lower() == "car"]
    return {"classes": classes, "small": small, "rows": rows}


# -- output -------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _range(s: dict) -> str:
    return "–" if s["median"] is None else f"{_pct(s['min'])}–{_pct(s['max'])}"


def format_markdown(summary: dict) -> str:
    """Markdown table of :func:`summarize`, laid out like Feng et al. 2020, Table 1.

    Columns: method, n (runs), seeds, the median F1 of each class in the means, mF1,
    mIoU, OA, boundary F1 (medians over seeds, %), then the min–max over seeds of mF1,
    mIoU, OA and car F1. A note under the table says what was scored.
    """
    classes, small = summary["classes"], summary["small"]
    spread = ["mF1", "mIoU", "OA", *small]
    header = ["Method", "n", "seeds", *classes, "mF1", "mIoU", "OA", "Boundary F1",
              *(f"{m}{'' if m in SCALAR_METRICS else ' F1'} min–max" for m in spread)]  # fmt: skip
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---:", "---"] + ["---:"] * (len(header) - 3)) + "|",
    ]
    for row in summary["rows"]:
        m = row["metrics"]
        cells = [row["label"], str(row["n"]), ",".join(str(s) for s in row["seeds"]),
                 *(_pct(m[c]["median"]) if c in m else "–" for c in classes),
                 *(_pct(m[k]["median"]) for k in ("mF1", "mIoU", "OA", "boundary_f1")),
                 *(_range(m[k]) if k in m else "–" for k in spread)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "Medians over seeds (the paper reports the median of 3 runs; n = runs in the group: "
        "the median of 2 is their mean, of 1 its value), F1 per class, mF1, mIoU, OA and "
        "boundary F1 in %; min–max: the range over seeds.",
    ]
    scored = {json.dumps(r["scored_on"], sort_keys=True): r["scored_on"] for r in summary["rows"]}
    for s in scored.values():
        if s["kind"] == "val.csv":
            notes.append("val.csv: last validation row of each run (validation during training).")
        else:
            notes.append(f"evaluate: store {s.get('store')}, tiles {', '.join(s['tiles'])}; "
                         f"means over {', '.join(s['classes_in_mean'])}.")  # fmt: skip
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_csv(summary: dict, path: str | os.PathLike) -> None:
    """Write :func:`summarize` as CSV: one row per group.

    Columns: ``method``, ``n``, ``seeds`` (space-separated), the :data:`METHOD_KEYS`
    settings (JSON for lists and dicts), ``scored_on`` (JSON), then per metric
    (``mF1``, ``mIoU``, ``OA``, ``boundary_f1``, ``f1:<class>``) three columns: the
    median, ``_min`` and ``_max``, in % rounded to 4 decimals (empty when undefined).
    """
    metrics = [*SCALAR_METRICS]
    for row in summary["rows"]:
        metrics += [f"f1:{c}" for c in row["metrics"] if c not in SCALAR_METRICS
                    and f"f1:{c}" not in metrics]  # fmt: skip
    header = ["method", "n", "seeds", *METHOD_KEYS, "scored_on"]
    for m in metrics:
        header += [m, f"{m}_min", f"{m}_max"]

    def fmt(v):
        return "" if v is None else f"{round(100 * v, 4):g}"

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in summary["rows"]:
            cfg = row["config"]
            cells = [row["label"], row["n"], " ".join(str(s) for s in row["seeds"])]
            cells += [_short_json(cfg.get(k)) for k in METHOD_KEYS]
            cells.append(json.dumps(row["scored_on"], sort_keys=True))
            for m in metrics:
                s = row["metrics"].get(m[3:] if m.startswith("f1:") else m)
                cells += ["", "", ""] if s is None else [fmt(s["median"]), fmt(s["min"]),
                                                         fmt(s["max"])]  # fmt: skip
            writer.writerow(cells)


def _short_json(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# -- Fig. 5: a metric against k or the transform ------------------------------------------------


def _weights_spec(name: str | None) -> WeightsSpec | None:
    """The weights of a run's config (None: no weights, or a name of no known form)."""
    name = parse_weights_option(name)
    try:
        return None if name is None else WeightsSpec.parse(name)
    except ValueError:
        return None


def by_series(summary: dict, by: str, metric: str = "mF1") -> dict:
    """Fig. 5's data: ``metric`` (median, min, max over seeds) against k or the transform.

    Groups that differ only in k (``by="k"``) or only in the transform (``by="transform"``)
    form one series. Groups without a k (ce, focal, dice, multi-scale weights) or without
    a transform become horizontal **reference lines** at their median.

    Parameters
    ----------
    summary : output of :func:`summarize`
    by : ``"k"`` or ``"transform"``
    metric : ``mF1``, ``mIoU``, ``OA``, ``boundary_f1`` or a class name (its F1)

    Returns
    -------
    dict
        ``series``: list of ``{label, x, y, low, high}`` (x sorted: k ascending, or
        transforms in first-seen order; y/low/high in %), ``references``: list of
        ``{label, y}``, ``xlabel``, ``ylabel``.

    Raises
    ------
    ParameterError
        ``by`` or ``metric`` unknown (params ``by``, ``metric``).
    """
    if by not in BY_CHOICES:
        raise ParameterError("by", f"must be one of {', '.join(BY_CHOICES)}, got {by!r}")
    known = set(SCALAR_METRICS) | {c for r in summary["rows"] for c in r["metrics"]}
    if metric not in known:
        raise ParameterError("metric", f"unknown metric {metric!r}; known: "
                             f"{', '.join(sorted(known))}")  # fmt: skip
    other = "transform" if by == "k" else "k"
    series: dict[str, dict] = {}
    references = []
    for row in summary["rows"]:
        s = row["metrics"].get(metric) or {"median": None}
        if s["median"] is None:
            continue
        w = _weights_spec(row["config"].get("weights"))
        axes = {} if w is None else {"k": w.k, "transform": w.transform.slug}
        if axes.get(by) is None:
            references.append({"label": row["label"], "y": 100 * s["median"]})
            continue
        cfg = {**row["config"], "weights": None}
        key = json.dumps([cfg.get(k) for k in METHOD_KEYS] + [w.family, axes[other],
                         row["scored_on"]], sort_keys=True, default=str)  # fmt: skip
        tag = f"{w.family}{'k' + str(w.k) if other == 'k' else axes['transform']}"
        label = f"{cfg.get('model')} {cfg.get('loss')} ({tag})"
        entry = series.setdefault(key, {"label": label, "points": {}})
        entry["points"][axes[by]] = (100 * s["median"], 100 * s["min"], 100 * s["max"])
    out = []
    for e in series.values():
        xs = sorted(e["points"]) if by == "k" else list(e["points"])
        out.append({"label": e["label"], "x": xs, "y": [e["points"][x][0] for x in xs],
                    "low": [e["points"][x][1] for x in xs],
                    "high": [e["points"][x][2] for x in xs]})  # fmt: skip
    ylabel = f"{metric} (%)" if metric in SCALAR_METRICS else f"F1 {metric} (%)"
    return {"series": out, "references": references,
            "xlabel": "search region k" if by == "k" else "weight transform",
            "ylabel": ylabel + ", median over seeds"}  # fmt: skip


# -- the whole comparison -----------------------------------------------------------------------


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def compare(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    by: str | None = None,
    metric: str = "mF1",
    backend: str = "auto",
) -> dict:
    """Group runs, take the median over seeds and write the table and figures.

    Parameters
    ----------
    paths : run folders and/or evaluation folders (see :func:`load_result`)
    out : output folder (created); receives ``compare.md`` (Table 1 layout, see
        :func:`format_markdown`), ``compare.csv`` (:func:`write_csv`), with ``by``
        ``fig5_<metric>_by_<by>.png`` and, when runs have ``val.csv``,
        ``fig6_val_<metric>.png`` (one curve per run)
    by : None, ``"k"`` or ``"transform"``: draw Fig. 5 (``metric`` against it;
        methods without k or transform as dashed reference lines)
    metric : metric of the figures: ``mF1`` (default), ``mIoU``, ``OA``, ``boundary_f1``
        or a class name (its F1)
    backend : figure renderer (:data:`npa_train.plot.BACKENDS`)

    Returns
    -------
    dict
        ``summary`` (:func:`summarize`), ``markdown``, ``files`` {name: path},
        ``backend`` (renderer used, or None without figures).

    Raises
    ------
    ParameterError
        Bad ``by``, ``metric`` or ``backend``; folders that are neither runs nor
        evaluations, duplicate seeds (param ``runs``); ``out`` is a file.
    """
    if by is not None and by not in BY_CHOICES:
        raise ParameterError("by", f"must be one of {', '.join(BY_CHOICES)}, got {by!r}")
    if backend not in BACKENDS:
        raise ParameterError("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ParameterError("out", f"{out} exists and is not a folder")
    groups = group_results(load_results(paths))
    summary = summarize(groups)
    figures = []
    if by is not None:
        panel = by_panel(by_series(summary, by, metric), by, metric)
        figures.append((f"fig5_{_file_part(metric)}_by_{by}.png", panel))
    fig6 = validation_panel(groups, metric)
    if fig6.series:
        figures.append((f"fig6_val_{_file_part(metric)}.png", fig6))
    out.mkdir(parents=True, exist_ok=True)
    markdown = format_markdown(summary)
    (out / "compare.md").write_text(markdown)
    write_csv(summary, out / "compare.csv")
    files = {"compare_md": str(out / "compare.md"), "compare_csv": str(out / "compare.csv")}
    used = None
    for name, panel in figures:
        used = render_panels([panel], out / name, backend=backend)
        files[name.split("_")[0]] = str(out / name)
    return {"summary": summary, "markdown": markdown, "files": files, "backend": used}
