"""``npa-train compare | plot``: thin click commands over :func:`npa_train.compare.compare`
and :func:`npa_train.plot.plot_runs`.

Register them on the ``npa-train`` group (:mod:`npa_train.cli`) with
``main.add_command(compare_cmd)`` and ``main.add_command(plot_cmd)``. compare and plot
import neither torch nor numpy, so ``--help`` stays light; their choices (``BACKENDS``,
``BY_CHOICES``) are the library's own.
"""

from __future__ import annotations

import click

from npa_precompute.cli_options import out_option, reports_user_errors
from npa_train.compare import BY_CHOICES
from npa_train.plot import BACKENDS

__all__ = ["compare_cmd", "plot_cmd"]


def _user_errors() -> tuple[type[BaseException], ...]:
    return (ValueError, TypeError, ImportError, OSError)


_backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="Figure renderer: matplotlib (the viz extra) or Pillow; auto: matplotlib if installed.",
)


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@out_option("Output folder.")
@click.option(
    "--by",
    type=click.Choice(BY_CHOICES),
    default=None,
    help="Also draw Fig. 5: the metric against the search region k or the weight transform "
    "(parsed from the weights name, e.g. k32_log10_L0.5); methods without one (ce, focal, "
    "dice, multi-scale weights) are dashed horizontal reference lines.",
)
@click.option(
    "--metric",
    default="mF1",
    show_default=True,
    help="Metric of the figures: mF1, mIoU, OA, boundary_f1 or a class name (its F1).",
)
@_backend_option
@reports_user_errors(_user_errors)
def compare_cmd(runs, out, by, metric, backend):
    """Table 1 of RUNS (fit or evaluate folders): medians over seeds.

    Groups the runs by every setting of config.json that defines the method except the
    seed (model, loss, weights, reduction, aux weight, iterations, batch, crop, lr,
    tiles, ...) and by what they were scored on, then writes OUT/compare.md (per-class
    F1, mF1, mIoU, OA, boundary F1: medians over seeds, with n, the seeds and the
    min–max of mF1, mIoU, OA and car F1) and OUT/compare.csv. An evaluate folder
    (metrics.json) supplies the scores of its run; a run folder alone uses the last row
    of its val.csv. Runs with val.csv also give Fig. 6 (the metric along training, one
    curve per run): OUT/fig6_val_METRIC.png.
    """
    from npa_train.compare import compare

    result = compare(list(runs), out, by=by, metric=metric, backend=backend)
    click.echo(result["markdown"], nl=False)
    rows = result["summary"]["rows"]
    figures = [p for k, p in result["files"].items() if k.startswith("fig")]
    drawn = f", figures {', '.join(figures)} ({result['backend']})" if figures else ""
    click.echo(f"{len(rows)} method(s) from {sum(r['n'] for r in rows)} run(s); "
               f"table in {result['files']['compare_md']} and .csv{drawn}")  # fmt: skip


@click.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@out_option("PNG file.", file=True)
@click.option(
    "--metrics",
    default="mF1,mIoU",
    show_default=True,
    help="Validation metrics (val.csv columns, comma-separated: mF1, mIoU, OA, "
    "boundary_f1 or class names for their F1).",
)
@_backend_option
@reports_user_errors(_user_errors)
def plot_cmd(runs, out, metrics, backend):
    """Training curves of RUNS (fit run folders) in one figure.

    Loss and lr (log.csv) and validation metrics (val.csv, when validated during
    training) against iteration, one line per run.
    """
    from npa_train.plot import plot_runs

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    result = plot_runs(list(runs), out, metrics=names, backend=backend)
    click.echo(f"{len(result['runs'])} run(s), panels: {', '.join(result['panels'])}; "
               f"figure in {result['out']} ({result['backend']})")  # fmt: skip
