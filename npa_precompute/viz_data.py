"""What a figure of a tile shows: :class:`ShowData`, read from the store for one window.

:func:`load_show_data` reads it; the renderers (:mod:`npa_precompute.viz_mpl`, the
Pillow one in :mod:`npa_precompute.viz`) share the helpers here: panel titles, colour
ranges per row, the classes present, and the lazy matplotlib check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from npa_precompute.colors import class_palette, stretch_image
from npa_precompute.errors import ParameterError
from npa_precompute.regions import format_region, region_order
from npa_precompute.store import ArrayRef, open_store, open_tile, store_info
from npa_precompute.summary import check_window, parse_window

__all__ = ["COLOR_SCALES", "MissingDependencyError", "ShowData", "load_show_data"]

#: Colour ranges of the maps of :func:`show_figure`: ``shared`` by all maps of a row
#: (one transformation, every k: colours compare across k), or one per ``panel``.
COLOR_SCALES = ("shared", "panel")


class MissingDependencyError(ImportError):
    """An optional dependency (matplotlib, the ``viz`` extra) is not installed."""


@dataclass
class ShowData:
    """What a figure shows, read from the store for one window.

    Attributes
    ----------
    tile_id : str
    window : (x0, y0, w, h)
    image : (h, w, 3) float32 in [0, 1] (stretched) or None
    label : (h, w) integer array
    classes : list of str
    palette : (num_classes, 3) uint8
    ignore_index : int
    rows : list of (row title, list of (ArrayRef, (h, w) float64 values)); one row per
        transformation, panels ordered by k
    depth : int or None
        Of a volume tile: the slice (index along D) shown; None for a 2-D tile.
    """

    tile_id: str
    window: tuple[int, int, int, int]
    image: np.ndarray | None
    label: np.ndarray
    classes: list[str]
    palette: np.ndarray
    ignore_index: int
    rows: list[tuple[str, list[tuple[ArrayRef, np.ndarray]]]] = field(default_factory=list)
    depth: int | None = None

    @property
    def title(self) -> str:
        """The tile id, and the slice of a volume (``case1, slice z = 6``)."""
        return self.tile_id if self.depth is None else f"{self.tile_id}, slice z = {self.depth}"

    @property
    def ignore_mask(self) -> np.ndarray:
        return self.label == self.ignore_index

    @property
    def n_maps(self) -> int:
        return sum(len(panels) for _, panels in self.rows)


def _default_arrays(tile) -> list[str]:
    names = tile.weight_names
    if not names:
        return []
    specs = tile.meta.transform_specs
    first = specs[0] if specs else tile.ref(names[0]).transform
    return [n for n in names if tile.ref(n).transform == first]


def load_show_data(
    path: str | os.PathLike,
    tile: str,
    *,
    arrays: list[str] | tuple[str, ...] | None = None,
    window: str | tuple[int, int, int, int] | None = None,
    depth: int | None = None,
) -> ShowData:
    """Read the image, labels and chosen maps of one tile window.

    Parameters
    ----------
    path : store folder
    tile : tile id
    arrays : weights names (``"k32_log10_L0.5"``) or affinity arrays (``"affinity/k32"``,
        ``"k32"``), keyword-only; default every k of the tile's first transformation
    window : ``"x0,y0,w,h"`` or a tuple (:func:`~npa_precompute.summary.parse_window`),
        keyword-only; default the whole tile
    depth : int, keyword-only
        Of a volume tile: the slice (index along D) to show; default the middle one
        (``D // 2``). A 2-D tile takes none.

    Returns
    -------
    ShowData

    Raises
    ------
    StoreError
        Unknown tile or array (the message lists what exists).
    IncompleteTileError
        The tile's writing did not finish.
    ValueError
        A malformed window, one reaching outside the tile, or ``label`` / ``image``
        among ``arrays`` (they are always shown).
    ParameterError
        ``depth`` outside ``0 .. D - 1``, or given for a 2-D tile.
    """
    root = open_store(path)
    info = store_info(root)
    t = open_tile(root, tile)
    win = parse_window(window)
    if t.is_volume and depth is None:
        depth = t.shape[0] // 2
    rows_sl, cols_sl = check_window(win, t.shape[-2:] if t.is_volume else t.shape, tile_id=tile)
    win = (cols_sl.start, rows_sl.start, cols_sl.stop - cols_sl.start, rows_sl.stop - rows_sl.start)
    names = list(arrays) if arrays else _default_arrays(t)
    refs: list[ArrayRef] = []
    for name in names:
        ref = t.ref(name)
        if ref.kind in ("label", "image"):
            raise ValueError(
                f"{ref.kind!r} is always shown; `arrays` takes weights or affinity arrays"
            )
        if ref.path not in [r.path for r in refs]:
            refs.append(ref)
    groups: dict[str, list[ArrayRef]] = {}
    for ref in refs:
        key = ref.transform if ref.kind == "weights" else "raw counts (Eq. 1)"
        groups.setdefault(key or ref.name, []).append(ref)
    box = (rows_sl.start, rows_sl.stop, cols_sl.start, cols_sl.stop)
    rows = []
    for key, group in groups.items():
        group.sort(key=lambda r: (r.k is None, region_order(r.k or 0), r.name))
        maps = [(r, t.read_window(r.path, *box, depth=depth).astype(np.float64)) for r in group]
        rows.append((key, maps))
    image = None
    if t.image is not None:
        image = stretch_image(t.read_window("image", *box))
    return ShowData(
        tile_id=tile,
        window=win,
        image=image,
        label=t.read_window("label", *box, depth=depth),
        classes=list(info.classes),
        palette=class_palette(info),
        ignore_index=info.ignore_index,
        rows=rows,
        depth=depth,
    )


def _panel_title(ref: ArrayRef) -> str:
    if ref.k is not None:
        return f"k = {format_region(ref.k)}"
    ks = ref.ks if ref.kind == "weights" else None
    return f"mean of k = {', '.join(map(str, ks))}" if ks else ref.name


def _hist_panel(panels: list[tuple[ArrayRef, np.ndarray]]) -> tuple[ArrayRef, np.ndarray]:
    """The panel whose k is closest to 32 (the paper's best search region)."""

    def key(p):
        k = region_order(p[0].k or 0)[0]  # a region: its largest k
        return (p[0].k is None, abs(k - 32), region_order(p[0].k or 0))

    return min(panels, key=key)


def _row_ranges(
    panels: list[tuple[ArrayRef, np.ndarray]], valid: np.ndarray, color_scale: str
) -> list[tuple[float, float]]:
    """``(vmin, vmax)`` per panel over the valid pixels: the row's range when ``shared``."""
    if color_scale not in COLOR_SCALES:
        raise ParameterError("color_scale", f"must be one of {COLOR_SCALES}, got {color_scale!r}")
    ranges = []
    for _, values in panels:
        v = values[valid & np.isfinite(values)]
        ranges.append((float(v.min()), float(v.max())) if v.size else (0.0, 1.0))
    if color_scale == "shared":
        row = (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
        ranges = [row] * len(ranges)
    return ranges


def _present_classes(data: ShowData) -> tuple[list[int], bool]:
    present = np.unique(data.label)
    ids = [int(c) for c in present if int(c) < len(data.classes)]
    return ids, bool((present == data.ignore_index).any())


def _luminance(rgb) -> float:
    r, g, b = (float(v) / 255.0 for v in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError(
            "this figure needs matplotlib: pip install npaloss[viz] "
            "(or use the Pillow renderer: --backend pillow)"
        ) from exc
    return matplotlib
