"""Shared fixtures and the xdist grouping; plain helpers are in ``helpers.py``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from helpers import SHARED_DATA


def pytest_configure(config):
    """Give the tests Ctrl-C as a terminal delivers it, however pytest was started.

    A shell starts background jobs (``make test &``, ``nohup``, some CI runners) with SIGINT
    ignored; Python then keeps it ignored and so do the processes it spawns, and the tests
    that send SIGINT to a training run (``test_train_cli.py``) would see nothing arrive. The
    library itself respects an ignored SIGINT; only the test session restores the default
    (which processes started from here inherit as SIG_DFL, i.e. ``KeyboardInterrupt``).
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _one_core_per_xdist_worker()


def _one_core_per_xdist_worker():
    """Pin pytest-xdist worker ``gwN`` to core N (mod the usable cores) when there are at
    least as many cores as workers.

    Each worker's torch and numba then choose their threads from one core (the library's
    default, :func:`npa_train.device.choose_threads`), instead of two workers each running
    two spinning torch threads on two shared cores: that oversubscription made single
    tests 5-9 times slower from one run to the next. Processes a test starts inherit the pin.
    """
    worker, count = (
        os.environ.get("PYTEST_XDIST_WORKER", ""),
        os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"),
    )
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < int(count) or len(cores) < 2:
        return
    os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a test module: small models and tensor ops on a
    shared 2-core machine run faster and steadier that way (``pytestmark`` uses it)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data crops not found at {SHARED_DATA}")
    return SHARED_DATA


#: Modules whose tests time, signal or kill processes, or start clusters and torchrun:
#: under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) they run one after
#: another on one worker, so two of them never compete for the cores and their timeouts
#: stay those measured on one busy worker.
SERIAL_MODULES = frozenset(
    {
        "test_store_safety",
        "test_store_workers",
        "test_train_ddp",
        "test_train_kill",
        "test_blockwise",
        "test_paper_gpu_script",
    }
)


#: Modules that share one worker because their first tests compile the same numba
#: kernel variants (the 3-D box sums take 10-16 s each): two workers starting on them at
#: once would both compile the same variant before either had cached it.
SHARED_COMPILE_GROUPS = {"test_volumes": "volumes", "test_volume_store": "volumes"}

#: module -> the pytest-xdist group its tests run in
XDIST_GROUPS = {**dict.fromkeys(SERIAL_MODULES, "serial"), **SHARED_COMPILE_GROUPS}


# tryfirst: pytest-xdist's own hook turns the mark into the ``@serial`` suffix of the node id
# that ``--dist loadgroup`` schedules by; marks added after it are ignored
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)  # doctest items have none
        group = XDIST_GROUPS.get(module.__name__.rsplit(".", 1)[-1]) if module else None
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
