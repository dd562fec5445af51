"""Looking into a weight store: per-array layout, storage and weight statistics.

:func:`inspect_store` reports, per tile, every array's shape, dtype, chunking, k,
transformation, bytes on disk and compression ratio, and for each weights array the
distribution of its weights (min, max, mean, percentiles, the share of pixels at
the minimum weight) and the mean weight per class and at class boundaries, so the
emphasis NPALoss puts on cars and boundaries is a number. :func:`format_inspect`
renders the report as text tables (``npa-precompute inspect``).

Also here, shared by ``show`` and ``export``: :func:`resolve_array` (array names
and shorthands), :func:`parse_window` / :func:`check_window` (``x0,y0,w,h`` crops),
and :func:`consolidate_store` (zarr consolidated metadata for other readers).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr
import zarr.errors

from npa_precompute.names import parse_counts_name
from npa_precompute.params import parse_window
from npa_precompute.regions import format_region, region_attr, region_order
from npa_precompute.store import (
    ArrayRef,
    StoreError,
    Tile,
    array_params,
    consolidate_store,
    leftover_arrays,
    list_tiles,
    open_store,
    open_tile,
    store_info,
    tile_meta,
)

__all__ = [
    "PERCENTILES",
    "ArrayRef",
    "check_window",
    "consolidate_store",
    "format_inspect",
    "inspect_store",
    "parse_window",
    "resolve_array",
    "weight_stats",
]

#: Percentiles reported for every weights array.
PERCENTILES = (50, 90, 99)


# -- array names and windows ----------------------------------------------------------------


def resolve_array(tile: Tile, name: str) -> ArrayRef:
    """Find the array ``name`` of a tile: :meth:`npa_precompute.store.Tile.ref`.

    Parameters
    ----------
    tile : Tile
        From :func:`npa_precompute.store.open_tile`.
    name : str
        ``"label"``, ``"image"``, ``"affinity/k32"`` (or the shorthand ``"k32"``), a
        weights name such as ``"k32_log10_L0.5"`` (or ``"weights/k32_log10_L0.5"``): stored,
        or derived from the counts (any transformation of a stored k, ``ms_k8-16-32_...``).

    Returns
    -------
    ArrayRef

    Raises
    ------
    TypeError
        If ``name`` is not a string.
    StoreError
        If the tile has no such array (the message lists the arrays it has), or weights of
        a k whose counts it lacks (the message says how to add them).
    """
    return tile.ref(name)


def check_window(
    window: tuple[int, int, int, int] | None, shape: tuple[int, ...], *, tile_id: str = "tile"
) -> tuple[slice, slice]:
    """Row and column slices of ``window`` after checking it lies inside ``shape``.

    Parameters
    ----------
    window : (x0, y0, w, h) from :func:`parse_window`, or None for the whole tile
    shape : (H, W, ...) the tile's shape
    tile_id : str, keyword-only
        Named in the error message.

    Returns
    -------
    (rows, cols) : tuple of slice

    Raises
    ------
    ValueError
        If the window reaches outside the tile (the message gives the tile's shape).
    """
    h_tile, w_tile = int(shape[0]), int(shape[1])
    if window is None:
        return slice(0, h_tile), slice(0, w_tile)
    x0, y0, w, h = window
    if x0 + w > w_tile or y0 + h > h_tile:
        raise ValueError(
            f"window x0,y0,w,h = {x0},{y0},{w},{h} reaches outside tile {tile_id!r} of shape "
            f"(H, W) = ({h_tile}, {w_tile}): need x0 + w <= {w_tile} and y0 + h <= {h_tile}"
        )
    return slice(y0, y0 + h), slice(x0, x0 + w)


# -- statistics -----------------------------------------------------------------------------


def _boundary_mask(label: np.ndarray) -> np.ndarray:
    """True where a pixel has an 8-neighbour (a voxel a 26-neighbour) of another label value
    (tile border excluded)."""
    import itertools

    padded = np.pad(label, 1, mode="edge")
    out = np.zeros(label.shape, dtype=bool)
    for offset in itertools.product((0, 1, 2), repeat=label.ndim):
        if all(d == 1 for d in offset):
            continue
        window = tuple(slice(d, d + n) for d, n in zip(offset, label.shape, strict=True))
        out |= padded[window] != label
    return out


def weight_stats(
    weights: np.ndarray,
    label: np.ndarray,
    *,
    classes: list[str] | tuple[str, ...],
    ignore_index: int,
    percentiles: tuple[int, ...] = PERCENTILES,
) -> dict | None:
    """Distribution of one weight map over the tile's non-ignore pixels.

    Ignore pixels carry weight 0 by construction and are left out of every number.

    Parameters
    ----------
    weights : (H, W) float array, or (D, H, W) of a volume
    label : integer array of the same shape, the tile's decoded labels
    classes : class names in index order
    ignore_index : label value of ignored pixels, keyword-only
    percentiles : percentiles to report (numpy's default linear interpolation),
        default (50, 90, 99)

    Returns
    -------
    dict or None
        None when every pixel is ignored, else ``{"pixels", "min", "max", "mean",
        "p50", "p90", "p99", "share_at_min", "class_mean": {name: float or None},
        "boundary_mean", "interior_mean"}``. ``share_at_min`` is the fraction of
        pixels whose weight equals the minimum (one-class windows: weight ``L``).
        ``class_mean`` is None for a class absent from the tile. Boundary pixels
        have an 8-neighbour of another label value (an ignore band counts, the
        tile border does not; in a volume a 26-neighbour); ``boundary_mean`` /
        ``interior_mean`` are None when there are none of that kind.

    Raises
    ------
    ValueError
        If ``weights`` and ``label`` differ in shape.
    """
    weights = np.asarray(weights)
    label = np.asarray(label)
    if weights.shape != label.shape:
        raise ValueError(
            f"`weights` shape {weights.shape} differs from `label` shape {label.shape}"
        )
    valid = label != ignore_index
    vals = weights[valid]
    if vals.size == 0:
        return None
    vals64 = vals.astype(np.float64)
    lo = float(vals64.min())
    out = {
        "pixels": int(vals.size),
        "min": lo,
        "max": float(vals64.max()),
        "mean": float(vals64.mean()),
    }
    for p, v in zip(percentiles, np.percentile(vals64, percentiles), strict=True):
        out[f"p{p}"] = float(v)
    out["share_at_min"] = float(np.count_nonzero(vals64 == lo) / vals.size)
    n = len(classes)
    lab = label[valid].astype(np.int64)
    in_range = lab < n
    sums = np.bincount(lab[in_range], weights=vals64[in_range], minlength=n)
    counts = np.bincount(lab[in_range], minlength=n)
    out["class_mean"] = {
        name: (float(sums[i] / counts[i]) if counts[i] else None) for i, name in enumerate(classes)
    }
    edge = _boundary_mask(label)[valid]
    n_edge = int(edge.sum())
    out["boundary_mean"] = float(vals64[edge].mean()) if n_edge else None
    out["interior_mean"] = float(vals64[~edge].mean()) if n_edge < vals.size else None
    return out


def _stored_bytes(folder: Path) -> int:
    """Sum of the chunk (or shard) files of an array: every file under its folder but
    its ``zarr.json`` (chunks of fill values only are not written and count 0)."""
    top = folder / "zarr.json"
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f != top)


def _array_entry(store_path: Path, arr: zarr.Array, path: str, kind: str) -> dict:
    nbytes = int(np.prod(arr.shape, dtype=np.int64)) * arr.dtype.itemsize
    stored = _stored_bytes(store_path / arr.path)
    k, transform, _ = array_params(arr)
    return {
        "path": path,
        "kind": kind,
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "chunks": list(arr.chunks),
        "dimension_names": list(arr.metadata.dimension_names or []),
        "k": None if k is None else region_attr(k),
        "transform": transform,
        "nbytes": nbytes,
        "stored_bytes": stored,
        "compression_ratio": nbytes / stored if stored else None,
    }


def _derived_entry(ref: ArrayRef) -> dict:
    arr = ref.array
    return {
        "path": ref.path,
        "kind": "weights",
        "derived": True,
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "chunks": [],
        "dimension_names": ["z", "y", "x"] if len(arr.shape) == 3 else ["y", "x"],
        "k": None if ref.k is None else region_attr(ref.k),
        "transform": ref.transform,
        "nbytes": int(np.prod(arr.shape, dtype=np.int64)) * arr.dtype.itemsize,
        "stored_bytes": 0,
        "compression_ratio": None,
    }


def _transform_k(arr) -> tuple:
    k, transform, _ = array_params(arr)
    return transform or "", region_order(k or 0)


def _tile_arrays(store_path: Path, group: zarr.Group) -> list[tuple[str, str, zarr.Array]]:
    out = []
    for name in ("label", "image"):
        if name in group:
            out.append((name, name, group[name]))
    for sub, kind in (("affinity", "affinity"), ("weights", "weights")):
        if sub in group:
            g = group[sub]
            names = list(g.array_keys())
            if kind == "affinity":
                names.sort(key=lambda s: region_order(parse_counts_name(s) or (1 << 62)))
            else:
                names.sort(key=lambda s: _transform_k(g[s]))
            out += [(f"{sub}/{n}", kind, g[n]) for n in names]
    return out


def inspect_store(
    path: str | os.PathLike,
    tile: str | None = None,
    *,
    percentiles: tuple[int, ...] = PERCENTILES,
    weights: list[str] | tuple[str, ...] = (),
) -> dict:
    """Layout, storage and weight statistics of a weight store, as a JSON-ready dict.

    Arrays are read whole, one at a time (a tile's arrays fit in memory).

    Parameters
    ----------
    path : str or os.PathLike
        Store folder.
    tile : str, optional
        Only this tile (default: every tile).
    percentiles : tuple of int, keyword-only
        Default :data:`PERCENTILES` (50, 90, 99).
    weights : weights names, keyword-only
        Also report these (any transformation of a stored k, multi-scale names), derived
        from the counts where not stored. Each tile's named weights that are not stored
        are always reported, derived.

    Returns
    -------
    dict
        ``{"store", "preset", "classes", "ignore_index", "foreground_classes", "tiles":
        [...]}``. Each tile: ``{"tile", "complete", "shape", "arrays"}``; a complete tile
        adds ``"class_pixels"`` ({name: int}) and ``"ignore_pixels"``; ``"k_physical"`` is
        the physical radii the tile's k were resolved from (``--k-metres``, ``--k-mm``:
        radii, spacing, k used), or None; ``"spacing"`` a volume's voxel spacing from its
        file (:class:`~npa_precompute.store.TileMeta`), or None. Each array: ``{"path",
        "kind", "shape", "dtype", "chunks", "dimension_names", "k", "transform", "nbytes",
        "stored_bytes", "compression_ratio"}`` (bytes of the chunk files on disk; ratio
        None when no chunk was written), and weights arrays of complete tiles ``"stats"`` from
        :func:`weight_stats`. Derived weights have ``"derived": True`` and 0 bytes; arrays
        left by an interrupted grow (not part of the tile) have kind ``"leftover"``.
        Incomplete tiles list their arrays without stats.

    Raises
    ------
    StoreError
        Not a weight store, an unknown ``tile`` (the message lists the tiles), or a name
        of ``weights`` that a tile cannot give (a k without counts).
    """
    store_path = Path(path)
    root = open_store(store_path)
    info = store_info(root)
    classes = list(info.classes)
    ignore = info.ignore_index
    names = list_tiles(root)
    if tile is not None:
        if tile not in names:
            raise StoreError(f"no tile {tile!r} in the store; tiles: {', '.join(names) or 'none'}")
        names = [tile]
    tiles = []
    for tid in names:
        g = root["tiles"][tid]
        meta = tile_meta(g)
        complete = meta.complete
        arrays = _tile_arrays(store_path, g)
        if complete:
            leftovers = set(leftover_arrays(g))
            arrays = [(p, "leftover" if p in leftovers else kind, a) for p, kind, a in arrays]
        entry = {
            "tile": tid,
            "complete": complete,
            "shape": list(meta.shape or (g["label"].shape if "label" in g else ())) or None,
            "arrays": [_array_entry(store_path, a, p, kind) for p, kind, a in arrays],
            "k_physical": (meta.params or {}).get("k_physical"),
            "spacing": meta.spacing,
        }
        if complete:
            t = open_tile(root, tid)
            stored = set(t.stored_weight_names)
            extra = [n for n in t.weight_names if n not in stored]
            extra += [n for n in weights if n not in extra]
            for name in extra:
                ref = t.ref(name)
                if ref.derived and ref.path not in [e["path"] for e in entry["arrays"]]:
                    arrays.append((ref.path, "weights", ref.array))
                    entry["arrays"].append(_derived_entry(ref))
            label = g["label"][...]
            valid = label != ignore
            counts = np.bincount(label[valid].astype(np.int64).ravel(), minlength=len(classes))
            entry["class_pixels"] = {c: int(counts[i]) for i, c in enumerate(classes)}
            entry["ignore_pixels"] = int(label.size - valid.sum())
            for (_, kind, a), e in zip(arrays, entry["arrays"], strict=True):
                if kind == "weights":
                    e["stats"] = weight_stats(
                        a[...], label, classes=classes, ignore_index=ignore,
                        percentiles=percentiles,
                    )  # fmt: skip
        tiles.append(entry)
    return {
        "store": str(store_path),
        "preset": info.preset,
        "classes": classes,
        "ignore_index": ignore,
        "foreground_classes": (
            None if info.foreground_classes is None else list(info.foreground_classes)
        ),
        "tiles": tiles,
    }


# -- text rendering -------------------------------------------------------------------------


def _fmt_bytes(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def _fmt_num(v: float | None, width: int = 8) -> str:
    if v is None:
        return "-".rjust(width)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.2e}".rjust(width)
    return f"{v:.4g}".rjust(width)


def wrap_header(name: str, width: int = 10) -> list[str]:
    """Split a long column name in two lines at the space or slash nearest its middle."""
    if len(name) <= width:
        return [name]
    cuts = [i for i, ch in enumerate(name) if ch in " /"]
    if not cuts:
        return [name]
    i = min(cuts, key=lambda c: abs(c - len(name) / 2))
    head = name[: i + 1] if name[i] == "/" else name[:i]
    return [head, name[i + 1 :]]


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    heads = [wrap_header(h) for h in header]
    depth = max(len(h) for h in heads)
    heads = [[""] * (depth - len(h)) + h for h in heads]
    cells = [[h[j] for h in heads] for j in range(depth)] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        parts = [
            c.ljust(w) if a == "l" else c.rjust(w)
            for c, w, a in zip(row, widths, align, strict=True)
        ]
        return "  " + "  ".join(parts).rstrip()

    return [line(r) for r in cells]


def format_inspect(report: dict) -> str:
    """Render a report of :func:`inspect_store` as text tables.

    Per tile: an array table (shape, dtype, chunks, k, transform, stored bytes,
    compression ratio), a weights table (min, percentiles, max, mean, share at the
    minimum) and a table of the mean weight per class, at boundaries and inside
    regions. Incomplete tiles are listed as such, without statistics.

    Parameters
    ----------
    report : dict from :func:`inspect_store`

    Returns
    -------
    str
    """
    classes = report["classes"]
    lines = [
        f"store {report['store']}: preset {report['preset']}, {len(classes)} classes, "
        f"ignore {report['ignore_index']}, {len(report['tiles'])} tile(s)"
    ]
    for t in report["tiles"]:
        shape = "x".join(str(s) for s in t["shape"]) if t["shape"] else "?"
        state = (
            "complete"
            if t["complete"]
            else "INCOMPLETE (not finished: interrupted or stopped by an error; no statistics)"
        )
        lines += ["", f"tile {t['tile']}  {shape}  {state}"]
        phys = t.get("k_physical")
        if phys:
            unit = phys["unit"]
            spacing = " x ".join(f"{v:g}" for v in phys["spacing"])
            pairs = ", ".join(
                f"{r:g} {unit} -> k = {format_region(k)}"
                for r, k in zip(phys["radii"], phys["ks"], strict=True)
            )
            lines.append(
                f"  k from physical radii at {spacing} {unit}/"
                f"{'voxel' if len(phys['spacing']) == 3 else 'pixel'} ({phys['spacing_source']}, "
                f"rounded half up): {pairs}"
            )
        voxel = t.get("spacing")
        if voxel:
            sizes = " x ".join(f"{v:g}" for v in voxel["values"])
            axes = ", ".join(voxel.get("axes") or ())
            lines.append(
                f"  voxel spacing {sizes} {voxel['unit']} along {axes} ({voxel['source']})"
            )
        rows = []
        for a in t["arrays"]:
            ratio = a["compression_ratio"]
            leftover = " (leftover of an interrupted grow)" if a["kind"] == "leftover" else ""
            rows.append(
                [
                    a["path"] + leftover,
                    "x".join(map(str, a["shape"])),
                    a["dtype"],
                    "x".join(map(str, a["chunks"])) or "-",
                    "-" if a["k"] is None else format_region(a["k"]),
                    a["transform"] or "-",
                    "derived" if a.get("derived") else _fmt_bytes(a["stored_bytes"]),
                    "-" if ratio is None else f"{ratio:.1f}",
                ]
            )
        if rows:
            header = ["array", "shape", "dtype", "chunks", "k", "transform", "stored", "ratio"]
            lines += _table(header, rows, "llllrlrr")
        if not t["complete"]:
            continue
        pix = ", ".join(f"{c} {n}" for c, n in t["class_pixels"].items())
        lines.append(f"  pixels per class: {pix}; ignore {t['ignore_pixels']}")
        weights = [a for a in t["arrays"] if a["kind"] == "weights" and a.get("stats")]
        if not weights:
            continue
        pcts = [key for key in weights[0]["stats"] if key[0] == "p" and key[1:].isdigit()]
        header = ["weights (non-ignore px)", "min", *pcts, "max", "mean", "at min"]
        rows = []
        for a in weights:
            s = a["stats"]
            rows.append(
                [
                    a["path"].removeprefix("weights/"),
                    *(_fmt_num(s[key]) for key in ("min", *pcts, "max", "mean")),
                    f"{100 * s['share_at_min']:.1f}%",
                ]
            )
        lines += ["", *_table(header, rows, "l" + "r" * (len(header) - 1))]
        lines.append(
            "  mean: the loss scale, NPALoss (reduction 'mean', Eq. 4) ~ mean weight x plain CE "
            "on whole tiles; reduction 'weighted_mean' divides it out"
        )
        header = ["mean weight per class", *classes, "boundary", "interior"]
        rows = []
        for a in weights:
            s = a["stats"]
            rows.append(
                [
                    a["path"].removeprefix("weights/"),
                    *(_fmt_num(s["class_mean"][c]) for c in classes),
                    _fmt_num(s["boundary_mean"]),
                    _fmt_num(s["interior_mean"]),
                ]
            )
        lines += ["", *_table(header, rows, "l" + "r" * (len(header) - 1))]
    return "\n".join(lines)
