"""LightningCLI building npaloss's NPASegmentationModule from a YAML config.

    python examples/lightning_cli.py --steps 20
    python examples/lightning_cli.py --steps 20 --model.k=16   # any LightningCLI option

Runs ``fit`` with ``examples/lightning_cli.yaml``; ``--steps N`` sets
``trainer.max_steps`` (and validates once, at the end). The module's constructor is
type-hinted, so the model, k, transform and ignore_index come from the config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from npa_train.adapters.lightning import NPASegmentationModule

CONFIG = Path(__file__).with_suffix(".yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="trainer.max_steps (100)")
    args, rest = parser.parse_known_args()
    steps = str(args.steps)
    cli = LightningCLI(
        NPASegmentationModule,
        save_config_callback=None,
        seed_everything_default=0,
        args=["fit", "--config", str(CONFIG), "--trainer.max_steps", steps,
              "--trainer.val_check_interval", str(max(args.steps, 1)), *rest],
    )  # fmt: skip
    loss = float(cli.trainer.callback_metrics["train_loss"])
    print(f"lightning_cli: {cli.trainer.global_step} steps, train_loss {loss:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
