"""examples/: each framework's example runs as a file for a few steps on the CPU, and the
README's excerpts of them are the files' text.

The examples need their frameworks (the ``adapters`` extra, which ``make test``
installs); one whose framework is missing is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# example -> modules it needs
RUNS = {
    "smp_lightning.py": ("lightning", "segmentation_models_pytorch"),
    "lightning_cli.py": ("lightning", "segmentation_models_pytorch", "jsonargparse"),
    "torchgeo_loveda.py": ("lightning", "torchgeo", "kornia"),
    "mmseg_config.py": ("lightning", "mmseg", "mmengine"),
}
# (file, excerpt name) shown in the README
EXCERPTS = [
    ("smp_lightning.py", "module"),
    ("lightning_cli.yaml", "config"),
    ("torchgeo_loveda.py", "task"),
    ("mmseg_config.py", "config"),
]


def excerpt(path: Path, name: str) -> str:
    """The lines between ``--8<-- [start:name]`` and ``--8<-- [end:name]``, dedented."""
    text = path.read_text()
    m = re.search(rf"--8<-- \[start:{name}\][^\n]*\n(.*?)\n[^\n]*--8<-- \[end:{name}\]", text, re.S)
    assert m, f"{path.name} has no excerpt {name!r}"
    return textwrap.dedent(m.group(1))


@pytest.mark.parametrize("name", list(RUNS))
def test_example_runs_a_few_steps(name, shared_data):
    missing = [m for m in RUNS[name] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{name} needs {missing}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--data.init_args.crop=64"] if name == "lightning_cli.py" else ["--crop", "64"]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--steps", "2", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(rf"{name[:-3]}: (\d+) steps, train_loss (\S+)", line)
    assert m, proc.stdout[-2000:]
    assert int(m.group(1)) == 2 and math.isfinite(float(m.group(2))) and float(m.group(2)) > 0


@pytest.mark.parametrize(("name", "part"), EXCERPTS)
def test_readme_excerpts_are_the_files(name, part):
    readme = (ROOT / "README.md").read_text()
    text = excerpt(EXAMPLES / name, part)
    assert text.strip() in readme, f"README's excerpt of examples/{name} [{part}] differs"
