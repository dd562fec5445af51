"""``npa-precompute inspect | show | export``: thin click commands over the library.

Registered on the main group in :mod:`npa_precompute.cli` with ``main.add_command``.
Each command calls one library function and turns the errors a user can cause
(unknown tile or array, incomplete tile, bad window, missing matplotlib) into a
:class:`click.ClickException` without a traceback.
"""

from __future__ import annotations

import json

import click

from npa_precompute.cli_options import out_option, reports_user_errors, store_argument
from npa_precompute.params import split_list

__all__ = ["export_cmd", "inspect_cmd", "show_cmd"]


def _user_errors() -> tuple[type[BaseException], ...]:
    from npa_precompute.store import StoreError
    from npa_precompute.viz import MissingDependencyError

    return (StoreError, ValueError, TypeError, MissingDependencyError, OSError)


_WINDOW = click.option(
    "--window",
    default=None,
    metavar="X0,Y0,W,H",
    help="Crop in pixels: x0 (column), y0 (row), width, height. Default: the whole tile.",
)

_SLICE = click.option(
    "--slice",
    "depth",
    type=int,
    default=None,
    metavar="Z",
    help="Of a volume tile: the slice (index along D) to use; --window crops it.",
)


@click.command("inspect")
@store_argument
@click.option("--tile", default=None, help="Only this tile (default: every tile).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--weights",
    "weights",
    multiple=True,
    metavar="NAME",
    help="Also report these weights (any transform of a stored k, e.g. k16_norm_L0, or "
    "multi-scale ms_k8-16-32_log10_L0.5), derived from the counts. Repeatable or "
    "comma-separated.",
)
@reports_user_errors(_user_errors)
def inspect_cmd(store: str, tile: str | None, as_json: bool, weights: tuple[str, ...]) -> None:
    """Tiles and arrays of STORE: layout, size on disk and weight statistics.

    Per array: shape, dtype, chunks, k, transformation, bytes of its chunk files
    and compression ratio. Per weights array (non-ignore pixels): min, p50, p90,
    p99, max, mean, share at the minimum, and the mean weight per class, at class
    boundaries and inside regions. Named weights that are not stored are derived from
    the counts ("derived"). Incomplete tiles are listed without statistics.
    """
    from npa_precompute.summary import format_inspect, inspect_store

    report = inspect_store(store, tile, weights=split_list(weights))
    click.echo(json.dumps(report, indent=2) if as_json else format_inspect(report))


@click.command("show")
@store_argument
@click.option("--tile", required=True, help="Tile id (see `npa-precompute inspect`).")
@click.option(
    "--arrays",
    "arrays",
    multiple=True,
    metavar="NAME",
    help="Weights (k32_log10_L0.5; any transform of a stored k, or ms_k8-16-32_log10_L0.5, "
    "derived from the counts when not stored) or affinity (affinity/k32) arrays to show. "
    "Repeatable, or comma-separated. Default: every k of the tile's first transformation.",
)
@_WINDOW
@_SLICE
@out_option("Output PNG of the figure.", file=True)
@click.option(
    "--backend",
    type=click.Choice(["auto", "matplotlib", "pillow"]),
    default="auto",
    show_default=True,
    help="matplotlib (pip install npaloss[viz]) or Pillow only; auto picks matplotlib when "
    "installed.",
)
@click.option(
    "--color-scale",
    type=click.Choice(["shared", "panel"]),
    default="shared",
    show_default=True,
    help="Colour range of the weight maps: one for all k of a transformation (colours "
    "compare across k), or one per map.",
)
@click.option(
    "--dpi",
    type=click.IntRange(min=20),
    default=100,
    show_default=True,
    help="matplotlib resolution (dots per inch of the figure).",
)
@reports_user_errors(_user_errors, aliases={"weights": "arrays"})
def show_cmd(store, tile, arrays, window, depth, out, backend, color_scale, dpi) -> None:
    """Figure of one tile of STORE: image, label, weight maps by k, weights per class.

    Like Feng et al. 2020, Fig. 4: a row per transformation with its maps by k,
    the mean weight per class in the window, and a histogram of the weights per
    class (k closest to 32). Ignore pixels are black and left out of every statistic.
    A volume shows one slice (--slice, default the middle one).
    """
    from npa_precompute.viz import show_figure

    show_figure(store, tile, arrays=split_list(arrays) or None, window=window, out=out,
                backend=backend, dpi=dpi, color_scale=color_scale, depth=depth)  # fmt: skip
    click.echo(f"wrote {out}")


@click.command("export")
@store_argument
@click.option("--tile", required=True, help="Tile id (see `npa-precompute inspect`).")
@click.option(
    "--array",
    "array",
    required=True,
    metavar="NAME",
    help="label, image, affinity/k32 (or k32), or a weights name such as k32_log10_L0.5 "
    "(stored, or derived from the counts: any transform of a stored k, ms_k8-16-32_...).",
)
@_WINDOW
@_SLICE
@out_option(
    "Output file: .npy (exact values), .tif (values, for QGIS/napari) or .png (label "
    "colours, 16-bit counts, weights heat map).",
    file=True,
)
@reports_user_errors(_user_errors, aliases={"weights": "array"})
def export_cmd(store, tile, array, window, depth, out) -> None:
    """Write one array of a tile of STORE (or a window of it) to .npy, .tif or .png.

    A volume tile is written whole (every slice: .npy, or a .tif stack), or one --slice.
    """
    from npa_precompute.export import export_array

    path = export_array(store, tile, array, out, window=window, depth=depth)
    click.echo(f"wrote {path}")
