"""``pytest`` runs the packages' doctests (pyproject's ``--doctest-modules``); without the
optional frameworks the adapters that import them are left out (conftest.py at the root)
and every other module still imports for collection."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers import ROOT

FRAMEWORKS = ("lightning", "pytorch_lightning", "mmseg", "torchgeo", "monai")


def test_packages_collect_their_doctests_without_optional_frameworks():
    script = textwrap.dedent(
        f"""
        import sys
        for name in {FRAMEWORKS!r}:
            sys.modules[name] = None  # as if not installed: importing it raises ImportError
        import pytest
        sys.exit(pytest.main(["--co", "-q", "-p", "no:cacheprovider", "npa_precompute",
                              "npa_train"]))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    collected = [line for line in res.stdout.splitlines() if "::" in line]
    assert "npa_train/loss.py::npa_train.loss.NPALoss" in collected
    assert "npa_precompute/affinity.py::npa_precompute.affinity.affinity_maps" in collected
    assert not any("adapters" in line for line in collected)
    assert "error" not in res.stdout.lower()
