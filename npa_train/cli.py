"""``npa-train``: thin click commands over :func:`npa_train.train.fit`."""

from __future__ import annotations

import click

from npa_precompute.store import StoreError
from npa_train.loss import REDUCTIONS
from npa_train.train import LOSSES, TrainingError

_USER_ERRORS = (StoreError, ValueError, TypeError, TrainingError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train a small FCN with NPALoss (Feng et al. 2020) on a weight store from npa-precompute."""


@main.command()
@click.option("--store", required=True, type=click.Path(), help="Weight store (npa-precompute).")
@click.option(
    "--weights",
    default="none",
    show_default=True,
    help="Weights array name (e.g. k32_log10_L0.5), or 'none' for --loss ce.",
)
@click.option(
    "--loss",
    type=click.Choice(LOSSES),
    default="npa",
    show_default=True,
    help="npa: cross-entropy weighted by the stored weights; ce: plain cross-entropy.",
)
@click.option(
    "--reduction",
    type=click.Choice([r for r in REDUCTIONS if r != "none"]),
    default="mean",
    show_default=True,
    help="npa loss reduction: mean over non-ignored pixels, weighted_mean (divide by the "
    "weight sum), batch (Eq. 4 literally: divide by the batch size), sum.",
)
@click.option("--iters", type=int, default=1000, show_default=True, help="Optimizer steps.")
@click.option("--batch", type=int, default=4, show_default=True, help="Crops per step.")
@click.option("--crop", type=int, default=256, show_default=True, help="Crop side in pixels.")
@click.option("--out", required=True, type=click.Path(), help="Run folder.")
@click.option(
    "--tiles", default=None, help="Comma-separated tile ids (default: every complete tile)."
)
@click.option(
    "--lr", type=float, default=0.01, show_default=True, help="Base lr (poly decay, power 0.9)."
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="Default: cuda if available, else cpu.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader workers.")
@click.option(
    "--log-every", type=int, default=1, show_default=True, help="Iterations per log.csv row."
)
@click.option(
    "--checkpoint-every",
    type=int,
    default=500,
    show_default=True,
    help="Save checkpoint.pt every N iterations (0: only at the end).",
)
@click.option("--rotate", is_flag=True, help="Also random transposes (90° rotations).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def fit(store, weights, loss, reduction, iters, batch, crop, out, tiles, lr, device, seed,
        workers, log_every, checkpoint_every, rotate, overwrite, quiet):  # fmt: skip
    """Train on random crops of STORE; write config.json, log.csv and checkpoint.pt to OUT."""
    from npa_train.train import fit as fit_

    try:
        summary = fit_(
            store,
            out,
            weights=weights,
            loss=loss,
            reduction=reduction,
            iters=iters,
            batch=batch,
            crop=crop,
            tiles=tiles,
            lr=lr,
            device=device,
            seed=seed,
            workers=workers,
            log_every=log_every,
            checkpoint_every=checkpoint_every,
            rotate=rotate,
            overwrite=overwrite,
            progress=not quiet,
        )
    except _USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{summary['iterations']} iterations in {summary['seconds']:.1f} s "
        f"({summary['iterations_per_s']:.2f} it/s on {summary['device']}); loss "
        f"{summary['first_loss']:.4f} (first 10) -> {summary['last_loss']:.4f} (last 10); "
        f"run in {summary['out']}"
    )


if __name__ == "__main__":
    main()
