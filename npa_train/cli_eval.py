"""``npa-train evaluate | predict``: thin click commands over the library.

Register them on the ``npa-train`` group (:mod:`npa_train.cli`) with
``main.add_command(evaluate_cmd)`` and ``main.add_command(predict_cmd)``. Each
command calls one library function (:func:`npa_train.evaluate.evaluate`,
:func:`npa_train.predict.predict`) and turns the errors a user can cause (unknown or
incomplete tile, mismatching checkpoint, bad window/overlap, unreadable image) into
a :class:`click.ClickException` without a traceback (a bad option value names the
option). torch and the library are imported inside the commands.
"""

from __future__ import annotations

import click

from npa_precompute.cli_options import (
    device_option,
    out_option,
    quiet_option,
    reports_user_errors,
    store_option,
    tiles_option,
)
from npa_train.choices import FORMATS, INFERENCE_BATCH, WINDOW, WINDOW_OVERLAP

__all__ = ["evaluate_cmd", "predict_cmd", "set_threads", "threads_option"]


#: Library arguments set by options of another name.
_ALIASES = {"save_images": "no_images", "ignore_fill": "boundary_ignore_fill"}


def _user_errors() -> tuple[type[BaseException], ...]:
    from npa_precompute.readers import InputError
    from npa_precompute.store import StoreError
    from npa_train.checkpoint import CheckpointError

    return (StoreError, CheckpointError, InputError, ValueError, TypeError, OSError)


threads_option = click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads of torch's operators (torch.set_num_threads). Default: fit uses the "
    "cores this process may use less one (left to the rest of the machine) and less its "
    "loader workers, never below 1, and prints the choice; evaluate and predict take "
    "torch's choice. The same --threads reproduces a seeded CPU run exactly.",
)


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` unless ``threads`` is None."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _inference_options(f):
    for option in reversed(
        [
            click.option(
                "--window",
                type=int,
                default=WINDOW,
                show_default=True,
                help="Sliding window side in pixels (tiles smaller than it are padded).",
            ),
            click.option(
                "--overlap",
                default=WINDOW_OVERLAP,
                show_default=True,
                help="Overlap of neighbouring windows in [0, 1): '1/3', '0.5', '0'. "
                "Stride = window × (1 − overlap), at least 1.",
            ),
            click.option(
                "--batch",
                type=int,
                default=INFERENCE_BATCH,
                show_default=True,
                help="Windows per forward.",
            ),
            device_option,
            click.option("--amp", is_flag=True, help="Mixed precision (autocast) on CUDA."),
            threads_option,
            quiet_option,
        ]
    ):
        f = option(f)
    return f


@click.command("evaluate")
@store_option
@click.option(
    "--checkpoint", required=True, type=click.Path(), help="checkpoint.pt or its run folder."
)
@out_option("Output folder.")
@tiles_option(
    help="Tile ids, comma-separated or repeated. Default: the checkpoint's validation tiles "
    "(fit --val-tiles) when the store holds them, else every tile (all must be complete).",
    multiple=True,
)
@_inference_options
@click.option(
    "--classes-in-mean",
    default=None,
    help="Class names or indices (comma-separated) averaged into mF1/mIoU. Default: the "
    "store's foreground classes (isprs: all but clutter).",
)
@click.option(
    "--small-classes",
    default=None,
    help="Classes reported as small-object F1 (default: classes named 'car').",
)
@click.option(
    "--boundary-tolerance",
    type=int,
    default=3,
    show_default=True,
    help="Boundary pixels match within this many pixels.",
)
@click.option(
    "--boundary-ignore-fill",
    type=int,
    default=4,
    show_default=True,
    help="Ignore bands of eroded ground truth are filled this many pixels (nearest class) "
    "before its boundaries are drawn; 0: ignore pixels have no boundaries.",
)
@click.option("--no-images", is_flag=True, help="Do not write the per-tile PNGs.")
@click.option(
    "--full-gt",
    type=click.Path(),
    default=None,
    help="A second store precomputed from the full ground truth of the same tiles (e.g. "
    "gts_for_participants when --store holds the eroded noBoundary labels): the same "
    "predictions are also scored against it, side by side.",
)
@reports_user_errors(_user_errors, aliases=_ALIASES)
def evaluate_cmd(store, checkpoint, out, tiles, window, overlap, batch, device, amp, threads,
                 quiet, classes_in_mean, small_classes, boundary_tolerance, boundary_ignore_fill,
                 no_images, full_gt):  # fmt: skip
    """Predict whole tiles of STORE with a sliding window and score them.

    Writes metrics.json, metrics.md (a table laid out like Feng et al. 2020,
    Table 1: F1 per foreground class, mF1, mIoU, OA, boundary F1; then the means with
    clutter in and out, and with --full-gt the scores on the full ground truth) and per tile
    <tile>_label.png (class indices), <tile>_color.png and <tile>_error.png to OUT.
    """
    from npa_train.evaluate import evaluate, format_table

    set_threads(threads)
    result = evaluate(
        store,
        checkpoint,
        out,
        tiles=tiles,
        window=window,
        overlap=overlap,
        batch=batch,
        device=device,
        amp=amp,
        classes_in_mean=classes_in_mean,
        small_classes=small_classes,
        boundary_tolerance=boundary_tolerance,
        boundary_ignore_fill=boundary_ignore_fill,
        save_images=not no_images,
        progress=not quiet,
        full_gt=full_gt,
    )
    if not quiet:  # -q: the scores are in metrics.md and metrics.json; one line here
        click.echo(format_table(result), nl=False)
    which = " (the checkpoint's validation tiles)" if result["tiles_from"] == "val_tiles" else ""
    click.echo(
        f"{len(result['tiles'])} tile(s){which}, {result['windows']} windows in "
        f"{result['seconds']:.1f} s on {result['device']}; results in {out}"
    )


@click.command("predict")
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--checkpoint", required=True, type=click.Path(), help="checkpoint.pt or its run folder."
)
@out_option("Output folder.")
@_inference_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="png",
    show_default=True,
    help="Label map format (values = class indices).",
)
@reports_user_errors(_user_errors, aliases=_ALIASES)
def predict_cmd(images, checkpoint, out, window, overlap, batch, device, amp, threads, quiet,
                fmt):  # fmt: skip
    """Label maps for IMAGES (files, folders or globs) with a sliding window.

    Images must have as many bands as the checkpoint was trained on (3 or 4; uint8
    or uint16). Writes <stem>_label.png|tif (class indices) and <stem>_color.png
    to OUT.
    """
    from npa_train.predict import predict

    set_threads(threads)
    results = predict(
        checkpoint,
        list(images),
        out,
        window=window,
        overlap=overlap,
        batch=batch,
        device=device,
        amp=amp,
        fmt=fmt,
        progress=not quiet,
    )
    seconds = sum(r["seconds"] for r in results)
    click.echo(f"{len(results)} image(s) labelled in {seconds:.1f} s; label maps in {out}")
