"""``npa-precompute``: thin click commands over :mod:`npa_precompute.pipeline`."""

from __future__ import annotations

import signal
import warnings

import click

from npa_precompute import defaults
from npa_precompute._version import __version__
from npa_precompute.cli_inspect import export_cmd, inspect_cmd, show_cmd
from npa_precompute.cli_options import (
    announce_start,
    echo_warning,
    out_option,
    quiet_option,
    reports_user_errors,
)
from npa_precompute.presets import PRESETS

__all__ = ["main"]


def _user_errors() -> tuple[type[BaseException], ...]:
    from npa_precompute.readers import InputError
    from npa_precompute.store import StoreError

    return (InputError, StoreError, ValueError, TypeError, OSError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="npa-precompute")
def main() -> None:
    """Precompute NPALoss affinity maps and pixel weights (Feng et al. 2020) into a zarr store."""
    warnings.showwarning = echo_warning
    announce_start("npa-precompute", "numba and zarr")


@main.command()
@click.argument("labels", nargs=-1, required=True)
@out_option("Store folder (zarr v3).")
@click.option(
    "--images",
    multiple=True,
    help="Image files, folders or globs, paired with labels by the preset's naming rules. "
    "Repeatable. Without it only labels and weights are stored.",
)
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    default=defaults.PRESET,
    show_default=True,
    help="isprs: RGB colour-coded ISPRS ground truth; loveda: raw LoveDA masks; "
    "index: already-indexed labels.",
)
@click.option(
    "--k",
    "ks",
    default=",".join(map(str, defaults.KS)),
    show_default=True,
    help="Search regions k, comma-separated; one k per axis as KDxKHxKW (volumes) or KHxKW "
    "(e.g. 2x14x14,4), stored as affinity/k2x14x14.",
)
@click.option(
    "--k-metres",
    "k_metres",
    default=None,
    metavar="RADII",
    help="Search radii in metres instead of --k, comma-separated (2-D): k = radius / ground "
    "sampling distance, rounded half up (2.88 at 0.09 m is k = 32).",
)
@click.option(
    "--gsd",
    type=float,
    default=None,
    help="Ground sampling distance in metres per pixel for --k-metres (default: the labels' "
    "GeoTIFF georeferencing; needed for a geographic CRS in degrees).",
)
@click.option(
    "--volume",
    is_flag=True,
    help="Read TIFF labels as (D, H, W) stacks of their pages (NIfTI .nii/.nii.gz labels are "
    "always volumes; needs the nifti extra). Volumes take --preset index, no --images.",
)
@click.option(
    "--k-mm",
    "k_mm",
    default=None,
    metavar="RADII",
    help="Search radii in mm instead of --k, comma-separated (volumes): k = radius / voxel "
    "spacing, rounded half up, per axis (10 at 5,0.7,0.7 mm is k = 2x14x14).",
)
@click.option(
    "--spacing",
    default=None,
    metavar="MM",
    help="Voxel spacing in mm for --k-mm: one value or D,H,W (default: the NIfTI headers).",
)
@click.option(
    "--transform",
    "transforms",
    multiple=True,
    default=defaults.TRANSFORMS,
    show_default=True,
    help="Weight transformation: raw, norm:L=<f>, log10:L=<f>, ln:L=<f>, log:a=<f>,L=<f>. "
    "Repeatable.",
)
@click.option(
    "--dtype",
    "weight_dtype",
    type=click.Choice(["float32", "float16"]),
    default=defaults.WEIGHT_DTYPE,
    show_default=True,
    help="Weights dtype.",
)
@click.option("--num-classes", type=int, default=None, help="Class count (--preset index).")
@click.option(
    "--ignore-index", type=int, default=None, help="Ignore value (--preset index, default 255)."
)
@click.option(
    "--unknown-colors",
    type=click.Choice(["error", "ignore"]),
    default=defaults.UNKNOWN_COLORS,
    show_default=True,
    help="Colours outside the palette: stop with an error, or map them to ignore.",
)
@click.option(
    "--chunk", type=int, default=defaults.CHUNK, show_default=True, help="Chunk side in pixels."
)
@click.option(
    "--workers",
    type=int,
    default=defaults.WORKERS,
    show_default=True,
    help="Tiles processed in parallel; with --dask, worker processes of the local Dask cluster.",
)
@click.option(
    "--dask",
    "use_dask",
    is_flag=True,
    help="Blockwise: read each raster window by window with a halo of max k and process the "
    "blocks on Dask. For rasters larger than memory; bit-identical results.",
)
@click.option(
    "--block",
    type=click.IntRange(min=16),
    default=defaults.BLOCK,
    show_default=True,
    help="With --dask: block side in pixels, >= 16 (one task and one shard per block; a "
    "multiple of --chunk).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="With --dask: address of an existing Dask scheduler (e.g. tcp://host:8786) instead "
    "of a local cluster; 'synchronous' runs the blocks in this process.",
)
@click.option(
    "--memory-limit",
    default=None,
    metavar="SIZE",
    help="With --dask: memory limit per local worker, e.g. 2GB (default: Dask's share); a "
    "limit below what a block needs is refused with the estimate (Dask would pause the worker "
    "for good).",
)
@click.option(
    "--store-weights/--no-store-weights",
    default=True,
    show_default=True,
    help="Write a weights array per k and transform, or only the counts (about a third of the "
    "bytes): readers then derive any transform of a stored k from them, bit for bit.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Recompute tiles that are current or were made with other parameters (replacing "
    "their arrays); recreate a store made with other preset settings.",
)
@quiet_option
@reports_user_errors(_user_errors)
def run(labels, out, images, preset, ks, k_metres, gsd, volume, k_mm, spacing, transforms,
        weight_dtype, num_classes, ignore_index, unknown_colors, chunk, workers, use_dask, block,
        scheduler, memory_limit, store_weights, overwrite, quiet):  # fmt: skip
    """Compute affinity maps and weights for whole label tiles LABELS (files, folders, globs).

    Re-running skips tiles whose files and parameters are unchanged; an interrupted
    tile is recomputed. More k or transforms than a tile holds are added to it in place.
    """
    from tqdm import tqdm

    from npa_precompute.pipeline import run_precompute
    from npa_precompute.transforms import WeightRangeError

    dask = _dask_options(use_dask, block, scheduler, workers, memory_limit)
    ctx = click.get_current_context()
    for flag, radii in (("--k-metres", k_metres), ("--k-mm", k_mm)):
        if radii is not None and ctx.get_parameter_source("ks") not in (
            click.core.ParameterSource.DEFAULT,
            click.core.ParameterSource.DEFAULT_MAP,
        ):
            raise click.UsageError(f"{flag} replaces --k: give one or the other")
    bar = None

    def progress(done: int, total: int, tile: str) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            unit = "block" if dask else "tile"
            bar = tqdm(total=total, unit=unit, desc="precompute")
        bar.set_postfix_str(tile)
        bar.update(1)

    # SIGTERM stops like Ctrl-C: pending tiles are cancelled, the tiles being written
    # finish (workers also die with this process), and a re-run completes the store.
    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = run_precompute(
            labels,
            out,
            images=images or None,
            preset=preset,
            ks=ks,
            transforms=transforms,
            weight_dtype=weight_dtype,
            num_classes=num_classes,
            ignore_index=ignore_index,
            unknown_colors=unknown_colors,
            chunk=chunk,
            workers=workers,
            overwrite=overwrite,
            progress=progress,
            dask=dask,
            store_weights=store_weights,
            notify=None if quiet else lambda message: click.echo(message, err=True),
            k_metres=k_metres,
            gsd=gsd,
            volume=volume,
            k_mm=k_mm,
            spacing=_spacing(spacing),
        )
    except WeightRangeError as exc:
        _weight_range_usage_error(exc, transforms)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if bar is not None:
            bar.close()
    click.echo(summary.text())


def _spacing(text: str | None) -> tuple[float, ...] | str | None:
    """``--spacing`` as numbers (``"2,0.8,0.8"``); text that is not numbers is passed on for
    the library to refuse, naming the option."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        return text
    return values[0] if len(values) == 1 else values


def _weight_range_usage_error(exc, transforms) -> None:
    """The library's refusal of weights that would overflow the dtype, reworded as a usage
    error naming the options (it involves three of them: no one option to report it on):
    the check that failed, with its k, dimensions and dtype, repeated with the options'
    names and the ``--transform`` values as typed."""
    from npa_precompute.transforms import WeightRangeError, check_weight_range

    if exc.check is None:
        return
    names = {"transforms": "--transform", "dtype": "--dtype", "k": "--k"}
    try:
        check_weight_range(**{**exc.check, "transforms": transforms}, names=names)
    except WeightRangeError as named:
        raise click.UsageError(str(named)) from None


def _dask_options(use_dask, block, scheduler, workers, memory_limit):
    """DaskOptions from the ``run`` options; usage errors for options that would be ignored."""
    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (
            click.core.ParameterSource.DEFAULT,
            click.core.ParameterSource.DEFAULT_MAP,
        )

    if not use_dask:
        unused = [f"--{n.replace('_', '-')}" for n in ("block", "scheduler", "memory_limit")
                  if given(n)]  # fmt: skip
        if unused:
            verb = "applies" if len(unused) == 1 else "apply"
            raise click.UsageError(f"{', '.join(unused)} {verb} only with --dask")
        return None
    if scheduler:
        local = [f"--{n.replace('_', '-')}" for n in ("workers", "memory_limit") if given(n)]
        if local:
            verb = "sizes" if len(local) == 1 else "size"
            used = (
                "the blocks run one after another in this process"
                if scheduler == "synchronous"
                else "the existing cluster's workers are used"
            )
            raise click.UsageError(
                f"{', '.join(local)} {verb} the local Dask cluster; with --scheduler "
                f"{scheduler} {used}"
            )
    from npa_precompute.blockwise import DaskOptions

    return DaskOptions(block=block, scheduler=scheduler, workers=workers, memory_limit=memory_limit)


main.add_command(inspect_cmd)
main.add_command(show_cmd)
main.add_command(export_cmd)

if __name__ == "__main__":
    main()
