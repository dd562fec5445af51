"""Start-up of the tile worker processes of ``npa-precompute run --workers N``.

Imports nothing beyond the standard library: a spawned worker unpickles
:func:`init_worker` before anything else it runs, so the parent-death signal is set
within milliseconds of the worker's start instead of after numpy, numba and zarr have
loaded (seconds on a busy machine), during which a killed run's worker used to be
orphaned for good.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["exit_if_orphaned", "in_worker", "init_worker"]


def init_worker(threads: int, parent: int) -> None:
    """Initializer of a tile worker: die with the run (pid ``parent``), size numba's pool.

    A killed ``npa-precompute run`` must not leave workers behind: their unfinished tile
    stays incomplete and the next run redoes it. The parent-death signal covers a parent
    that dies after it is set; one that died earlier (while this worker was starting) is
    caught by the check that follows.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    exit_if_orphaned(parent)
    import numba

    numba.set_num_threads(threads)


def exit_if_orphaned(parent: int) -> None:
    """End this worker process at once when the run that started it (``parent``) has ended."""
    if os.getppid() != parent:
        os._exit(1)


def in_worker(parent: int, fn: Callable, *args) -> dict:
    """Run one tile job in a worker, which ends with its run (``parent``) also when that
    happens between two jobs. (Each write of the job also checks the run's lock:
    :class:`npa_precompute.store.LockGuard`.)"""
    exit_if_orphaned(parent)
    try:
        return fn(*args)
    finally:
        exit_if_orphaned(parent)
