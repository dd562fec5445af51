"""Doctest collection: ``pytest`` also runs the docstring examples of both packages
(``--doctest-modules`` in pyproject.toml). A module that needs an optional framework is
left out when that framework is not installed, so a core install collects cleanly and an
import error in any other module still fails the run, and when it has no examples."""

from __future__ import annotations

import importlib.util

#: Module file -> the packages it imports at module level (any one of them suffices).
_OPTIONAL = {
    "npa_train/adapters/lightning.py": ("lightning", "pytorch_lightning"),
    "npa_train/adapters/mmseg.py": ("mmseg",),
    "npa_train/adapters/monai.py": ("monai",),
    "npa_train/adapters/torchgeo.py": ("torchgeo",),
}


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-imported module
        return False


def _has_examples(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        return ">>>" in f.read()


# An adapter without docstring examples is left out too: its tests (tests/test_adapters.py,
# tests/test_monai_adapter.py) import it, and collecting it would import its framework in
# every pytest-xdist worker for nothing (lightning, torchgeo, mmseg, monai: ~4 s each time).
collect_ignore = [
    path
    for path, needs in _OPTIONAL.items()
    if not _has_examples(path) or not any(_installed(name) for name in needs)
]
