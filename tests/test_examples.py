"""examples/: each framework's example runs as a file for a few steps on the CPU, and the
README's excerpts of them are the files' text.

The examples need their frameworks (the ``adapters`` extra, which ``make test``
installs); one whose framework is missing is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import SHARED_DATA

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


# Runs the examples one after another in one interpreter, each as `python examples/NAME.py
# ARGS` would (its folder on sys.path, run as __main__, its own globals), and prints what
# each printed and how it ended: the frameworks are imported once (~5 s each time).
_DRIVER = """
import contextlib, io, json, runpy, sys, traceback
examples, runs = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, examples)
results = {}
for name, args in runs.items():
    out = io.StringIO()
    sys.argv = [f"{examples}/{name}", *args]
    code, error = 0, ""
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        code, error = 1, traceback.format_exc()
    results[name] = {"code": code, "stdout": out.getvalue(), "error": error}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def example_runs() -> dict:
    """{example: {"code", "stdout", "error"}} for each example whose modules are installed,
    2 steps on 64-pixel crops of the real data."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data crops not found at {SHARED_DATA}")
    runs = {
        name: ["--data.init_args.crop=64"] if name == "lightning_cli.py" else ["--crop", "64"]
        for name, needs in RUNS.items()
        if all(importlib.util.find_spec(m) is not None for m in needs)
    }
    for args in runs.values():
        args += ["--steps", "2"]
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(EXAMPLES), json.dumps(runs)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(RUNS))
def test_example_runs_a_few_steps(name, example_runs):
    if name not in example_runs:
        missing = [m for m in RUNS[name] if importlib.util.find_spec(m) is None]
        pytest.skip(f"{name} needs {missing}")
    run = example_runs[name]
    assert run["code"] == 0, run["error"][-3000:] or run["stdout"][-3000:]
    line = run["stdout"].strip().splitlines()[-1]
    m = re.fullmatch(rf"{name[:-3]}: (\d+) steps, train_loss (\S+)", line)
    assert m, run["stdout"][-2000:]
    assert int(m.group(1)) == 2 and math.isfinite(float(m.group(2))) and float(m.group(2)) > 0


@pytest.mark.parametrize(("name", "part"), EXCERPTS)
def test_readme_excerpts_are_the_files(name, part):
    readme = (ROOT / "README.md").read_text()
    text = excerpt(EXAMPLES / name, part)
    assert text.strip() in readme, f"README's excerpt of examples/{name} [{part}] differs"
