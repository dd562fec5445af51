"""``npa-train``: thin click commands over :func:`npa_train.train.fit`,
:func:`npa_train.data.write_preview` and (from :mod:`npa_train.cli_eval`) the
sliding-window ``evaluate`` and ``predict``.

torch and the library modules are imported inside the commands, so ``npa-train --help``
(and each command's ``--help``) starts without them.
"""

from __future__ import annotations

import warnings

import click

from npa_precompute import __version__
from npa_precompute.cli_options import (
    announce_start,
    device_option,
    echo_warning,
    out_option,
    quiet_option,
    reports_user_errors,
    store_option,
    tiles_option,
    user_error,
)
from npa_precompute.params import parse_weights_option
from npa_train.choices import (
    DEFAULT_WEIGHTS,
    LOSSES,
    MODELS,
    REDUCTIONS,
    SPLITS,
    VAL_METRICS,
    WARP_ON,
)
from npa_train.cli_eval import evaluate_cmd, predict_cmd, threads_option
from npa_train.cli_report import compare_cmd, plot_cmd
from npa_train.config import TrainConfig

_TRAIN_DEFAULTS = TrainConfig.defaults()

#: Library arguments set by options of another name.
_ALIASES = {"blur_p": "blur", "transpose": "rotate", "gamma": "focal_gamma",
            "smooth": "dice_smooth"}  # fmt: skip


def _areas(part: str) -> str:
    return ", ".join(str(n) for n in SPLITS["vaihingen-paper"][part])


def _user_errors() -> tuple[type[BaseException], ...]:
    from npa_precompute.store import StoreError
    from npa_train.train import TrainingError

    return (StoreError, ValueError, TypeError, TrainingError, ImportError, OSError)


def _floats(text: str, name: str, count: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise click.BadParameter(f"expected {count} comma-separated numbers, got {text!r}",
                                 param_hint=name)  # fmt: skip
    return values


def _scale(ctx, param, value):
    if value is None:
        return None
    vals = _floats(value, "--scale", 2) if "," in value else _floats(value, "--scale", 1) * 2
    return vals


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="npa-train")
def main() -> None:
    """Train segmentation models with NPALoss (Feng et al. 2020) on an npa-precompute store."""
    warnings.showwarning = echo_warning
    announce_start("npa-train", "torch")


def _augment_options(f):
    options = [
        click.option("--no-augment", "no_augment", is_flag=True,
                     help="Only random crop positions: no resize, rotation, mirror or blur."),
        click.option("--scale", default=",".join(map(str, _TRAIN_DEFAULTS["scale"])),
                     show_default=True, callback=_scale,
                     help="Random resize range LOW,HIGH (1,1 disables)."),
        click.option("--rotation", type=float, default=_TRAIN_DEFAULTS["rotation"],
                     show_default=True,
                     help="Random rotation in [-DEG, DEG] degrees (0 disables)."),
        click.option("--flip/--no-flip", default=_TRAIN_DEFAULTS["flip"], show_default=True,
                     help="Random left-right and top-bottom mirrors."),
        click.option("--rotate", is_flag=True, help="Also random transposes (90° rotations)."),
        click.option("--blur", type=float, default=_TRAIN_DEFAULTS["blur"], show_default=True,
                     help="Probability of a Gaussian blur of the image (never of labels or "
                          "weights)."),
        click.option("--normalize", type=click.Choice(["store", "tile"]),
                     default=_TRAIN_DEFAULTS["normalize"],
                     show_default=True,
                     help="Image mean/std: pooled over the training tiles, or per tile."),
    ]  # fmt: skip
    for opt in reversed(options):
        f = opt(f)
    return f


@main.command()
@store_option
@click.option(
    "--weights",
    default=None,
    help="Weights name for --loss npa: stored (e.g. k32_log10_L0.5), any other transform of a "
    "stored k (k16_norm_L0) or multi-scale ms_k8-16-32_log10_L0.5, derived from the counts; "
    "online:k32_log10_L0.5 computes them on the device from each augmented label; "
    f"'none' for the other losses. Default: {DEFAULT_WEIGHTS} with --loss npa when the store "
    "holds it, else none.",
)
@click.option(
    "--loss",
    type=click.Choice(LOSSES),
    default=_TRAIN_DEFAULTS["loss"],
    show_default=True,
    help="npa: cross-entropy weighted by the stored weights (--weights); ce; ce-weighted: "
    "median-frequency class weights from the training tiles' class counts (background classes "
    "such as clutter get the lowest of the others' weights, as in the paper); focal (gamma "
    "--focal-gamma); dice.",
)
@click.option(
    "--reduction",
    type=click.Choice([r for r in REDUCTIONS if r != "none"]),
    default=_TRAIN_DEFAULTS["reduction"],
    show_default=True,
    help="npa/focal reduction: mean over non-ignored pixels, weighted_mean (divide by "
    "the weight sum), batch (Eq. 4 literally: divide by the batch size), sum.",
)
@click.option(
    "--model",
    type=click.Choice(MODELS),
    default=_TRAIN_DEFAULTS["model"],
    show_default=True,
    help="small_fcn (CPU stand-in), or a ResNet model (needs the torchvision extra): the "
    "paper's fcn (output stride 32; Tables 1-2, Figs. 5-6), fcn_dilated, pspnet, deeplabv3 "
    "(output stride 8, auxiliary head; Table 3), on ResNet-101 (_r50: ResNet-50); "
    "torchvision's fcn_resnet*/deeplabv3_resnet* (dilated). See README 'Models'.",
)
@click.option(
    "--width",
    type=int,
    default=_TRAIN_DEFAULTS["width"],
    show_default=True,
    help="small_fcn width.",
)
@click.option(
    "--pretrained",
    type=click.Path(),
    default=None,
    help="Local weights file: a ResNet backbone or a full model state dict (nothing is "
    "downloaded).",
)
@click.option(
    "--aux-weight",
    type=float,
    default=_TRAIN_DEFAULTS["aux_weight"],
    show_default=True,
    help="Weight of the auxiliary (deep supervision) loss of models with an auxiliary head, "
    "with the "
    "same pixel weights (0: no auxiliary head, as the paper's FCN).",
)
@click.option(
    "--iters",
    type=int,
    default=_TRAIN_DEFAULTS["iters"],
    show_default=True,
    help="Optimizer steps.",
)
@click.option(
    "--batch",
    type=int,
    default=_TRAIN_DEFAULTS["batch"],
    show_default=True,
    help="Crops per step and process (under torchrun the effective batch is BATCH x processes).",
)
@click.option(
    "--crop",
    type=int,
    default=_TRAIN_DEFAULTS["crop"],
    show_default=True,
    help="Crop side in pixels.",
)
@out_option("Run folder.")
@tiles_option(
    "--tiles",
    "--train-tiles",
    help="Comma-separated training tile ids (default: every complete tile not in --val-tiles).",
)
@click.option(
    "--val-tiles",
    default=None,
    help="Comma-separated validation tile ids: never trained on, recorded in the run "
    "(npa-train evaluate scores them by default).",
)
@click.option(
    "--split",
    type=click.Choice(list(SPLITS)),
    default=None,
    help="Named split instead of the tile lists. vaihingen-paper: the paper's Vaihingen "
    f"areas, train {_areas('train')}; validation {_areas('val')}.",
)
@click.option(
    "--lr",
    type=float,
    default=_TRAIN_DEFAULTS["lr"],
    show_default=True,
    help="Base lr (poly decay, power 0.9); used as given whatever the number of processes.",
)
@click.option(
    "--momentum",
    type=float,
    default=_TRAIN_DEFAULTS["momentum"],
    show_default=True,
    help="SGD momentum.",
)
@click.option(
    "--weight-decay",
    type=float,
    default=_TRAIN_DEFAULTS["weight_decay"],
    show_default=True,
    help="SGD weight decay.",
)
@click.option(
    "--poly-power",
    type=float,
    default=_TRAIN_DEFAULTS["poly_power"],
    show_default=True,
    help="Power of the poly lr decay.",
)
@_augment_options
@click.option(
    "--focal-gamma",
    type=float,
    default=_TRAIN_DEFAULTS["focal_gamma"],
    show_default=True,
    help="Focal loss gamma.",
)
@click.option(
    "--dice-smooth",
    type=float,
    default=_TRAIN_DEFAULTS["dice_smooth"],
    show_default=True,
    help="Dice loss smoothing.",
)
@device_option
@click.option(
    "--amp/--no-amp",
    default=None,
    help="Mixed precision (CUDA only; default on with CUDA). Loss in float32.",
)
@click.option(
    "--amp-dtype",
    type=click.Choice(["bf16", "fp16"]),
    default=_TRAIN_DEFAULTS["amp_dtype"],
    show_default=True,
    help="Autocast dtype (fp16 adds a gradient scaler).",
)
@click.option(
    "--warp-on",
    type=click.Choice(WARP_ON),
    default=_TRAIN_DEFAULTS["warp_on"],
    show_default=True,
    help="Where resize/rotation run: device (batched on the GPU), loader (CPU "
    "workers), auto (device with CUDA, loader on the CPU).",
)
@click.option(
    "--seed",
    type=int,
    default=_TRAIN_DEFAULTS["seed"],
    show_default=True,
    help="Random seed. On the CPU it reproduces a run exactly for the same --threads.",
)
@threads_option
@click.option(
    "--workers",
    type=int,
    default=None,
    help="DataLoader workers (default: 0 on the CPU, min(8, cores - 1) with CUDA).",
)
@click.option(
    "--log-every",
    type=int,
    default=_TRAIN_DEFAULTS["log_every"],
    show_default=True,
    help="Iterations per log.csv row (iteration, lr, mean loss, aux_loss, seconds).",
)
@click.option(
    "--checkpoint-every",
    type=int,
    default=_TRAIN_DEFAULTS["checkpoint_every"],
    show_default=True,
    help="Save checkpoint.pt every N iterations (0: only at the end).",
)
@click.option(
    "--val-every",
    type=int,
    default=_TRAIN_DEFAULTS["val_every"],
    show_default=True,
    help="Score the validation tiles (--val-tiles or --split) every N iterations and at the "
    "end, as `evaluate` does (windows of the crop size, overlap 1/3): val.csv and best.pt. "
    "0: never.",
)
@click.option(
    "--best-metric",
    type=click.Choice(VAL_METRICS),
    default=_TRAIN_DEFAULTS["best_metric"],
    show_default=True,
    help="The validation metric best.pt is chosen by (higher is better).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its checkpoint exactly (model, optimizer, schedule, "
    "RNG states), with the same options (--iters too: a finished run is not extended).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@quiet_option
def fit(store, weights, loss, reduction, model, width, pretrained, aux_weight, iters, batch,
        crop, out, tiles, val_tiles, split, lr, momentum, weight_decay, poly_power, no_augment,
        scale, rotation, flip, rotate, blur, normalize, focal_gamma, dice_smooth, device, amp,
        amp_dtype, warp_on, seed, threads, workers, log_every, checkpoint_every, val_every,
        best_metric, resume, overwrite, quiet):  # fmt: skip
    """Train on augmented crops of STORE; write config.json, log.csv and checkpoint.pt to OUT.

    Defaults are the paper's recipe (Feng et al. 2020, §4.2): batch 6, 513² crops, 5000
    iterations, SGD with lr 0.01, poly decay (power 0.9), momentum 0.9, weight decay 1e-4,
    random resize 0.5–2, rotation ±10°, mirrors and blur.

    Under torchrun (torchrun --nproc-per-node N -m npa_train fit ...) this trains with
    DistributedDataParallel; rank 0 writes the run folder and prints.

    Ctrl-C (or SIGTERM) finishes the current iteration, saves the checkpoint and stops
    (exit status 130, or 143); press Ctrl-C again to abort without saving.
    """
    from npa_train.distributed import distributed_env
    from npa_train.train import TrainingInterrupted
    from npa_train.train import fit as fit_

    try:
        rank = distributed_env()[0]
    except ValueError:
        rank = 0  # fit_ reports the bad variable
    # under torchrun every rank reports its own errors; ranks other than 0 say which they are
    prefix = f"rank {rank}: " if rank else ""
    try:
        summary = fit_(
            store, out, weights=weights, loss=loss, reduction=reduction, model=model,
            width=width, pretrained=pretrained, aux_weight=aux_weight, iters=iters, batch=batch,
            crop=crop, tiles=tiles, val_tiles=val_tiles, split=split, lr=lr, momentum=momentum,
            weight_decay=weight_decay, poly_power=poly_power, augment=not no_augment,
            scale=scale, rotation=rotation, flip=flip, rotate=rotate, blur=blur,
            normalize=normalize, focal_gamma=focal_gamma, dice_smooth=dice_smooth,
            device=device, amp=amp, amp_dtype=amp_dtype, warp_on=warp_on, seed=seed,
            workers=workers, threads=threads, log_every=log_every,
            checkpoint_every=checkpoint_every, val_every=val_every, best_metric=best_metric,
            resume=resume, overwrite=overwrite, progress=not quiet, notify=_note,
        )  # fmt: skip
    except _user_errors() as exc:
        raise user_error(exc, prefix=prefix, aliases=_ALIASES) from exc
    except KeyboardInterrupt as exc:  # TrainingInterrupted, or a Ctrl-C before training began
        started = isinstance(exc, TrainingInterrupted)
        term = started and exc.terminated
        kind = "terminated" if term else "interrupted"
        if rank == 0:
            if started and not exc.partial:  # stopped at an iteration boundary
                note = (f"{kind}: the checkpoint in {out} is saved; run the same command with "
                        "--resume to continue")  # fmt: skip
            else:  # aborted (a second Ctrl-C) inside an iteration, or before training began
                kept = exc.checkpoint_iteration if started else None
                if kept is not None:
                    note = (f"{kind}: aborted without saving; the checkpoint in {out} (iteration "
                            f"{kept}) is kept: run the same command with --resume to continue "
                            "from it")  # fmt: skip
                elif resume and not started:
                    note = f"{kind}: aborted before training resumed; {out} is unchanged"
                else:
                    note = f"{kind}: aborted before a checkpoint was saved in {out}"
            click.echo(note, err=True)
        raise SystemExit(143 if term else 130) from None
    if summary.get("rank", 0) != 0:
        return
    resumed = summary["resumed_from"]
    note = f" (resumed at iteration {resumed})" if resumed is not None else ""
    world = summary.get("world_size", 1)
    ranks = f" x {world} ranks, effective batch {batch * world}" if world > 1 else ""
    click.echo(
        f"{summary['iterations']} iterations{note}, this session {summary['seconds']:.1f} s "
        f"({summary['iterations_per_s']:.2f} it/s on {summary['device']}{ranks}); loss "
        f"{summary['first_loss']:.4f} (first 10) -> {summary['last_loss']:.4f} (last 10); "
        f"run in {summary['out']}"
    )


def _note(argument: str, note: str) -> None:
    """A default the library chose from the data, named by its option (``--weights ...``)."""
    click.echo(f"--{argument.replace('_', '-')} {note}", err=True)


@main.command()
@store_option
@click.option(
    "--weights",
    default="none",
    show_default=True,
    help="Weights name (e.g. k32_log10_L0.5, k16_norm_L0, ms_k8-16-32_log10_L0.5; derived "
    "from the counts when not stored), online:k32_log10_L0.5 (from the augmented label), or "
    "'none' (weight 1).",
)
@click.option("--n", "n", type=int, default=8, show_default=True, help="Number of samples.")
@out_option("Output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--crop", type=int, default=513, show_default=True, help="Crop side in pixels.")
@tiles_option(help="Comma-separated tile ids (default: all complete).")
@_augment_options
@reports_user_errors(_user_errors, aliases=_ALIASES)
def preview(store, weights, n, out, seed, crop, tiles, no_augment, scale, rotation, flip,
            rotate, blur, normalize):  # fmt: skip
    """Write N augmented (image, label, weight) samples of STORE as PNGs and .npy to OUT.

    The samples are the first crops a fit with the same store, seed and augmentation
    trains on: see that image, label and weights stay aligned. NNN_triplet.png shows
    them side by side with the label over the image; the .npy files hold exactly what
    the model and the loss get.
    """
    from npa_train.augment import AugmentConfig
    from npa_train.data import write_preview

    aug = AugmentConfig.from_options(crop, augment=not no_augment, scale=scale,
                                     rotation=rotation, flip=flip, rotate=rotate,
                                     blur=blur)  # fmt: skip
    records = write_preview(store, parse_weights_option(weights), n, out, seed=seed,
                            augment=aug, tiles=tiles, normalize=normalize)  # fmt: skip
    click.echo(f"{len(records)} samples written to {out} (NNN_triplet.png: image | label | "
               "weight | overlay)")  # fmt: skip


main.add_command(evaluate_cmd)
main.add_command(predict_cmd)
main.add_command(compare_cmd)
main.add_command(plot_cmd)


if __name__ == "__main__":
    main()
