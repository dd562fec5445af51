"""Stopping a training run: Ctrl-C and SIGTERM as requests, and the errors :func:`fit` raises.

The first stop signal only asks to stop: :class:`~npa_train.train.Trainer` finishes the
current iteration, saves the checkpoint and raises :class:`TrainingInterrupted`. A second
one, at least :data:`REPEAT_S` later, aborts at once (see :mod:`npa_train.train`).
Imported by :mod:`npa_train.train`, which re-exports :class:`TrainingError` and
:class:`TrainingInterrupted`.
"""

from __future__ import annotations

import os
import signal
import threading
import time

__all__ = ["REPEAT_S", "StopSignals", "TrainingError", "TrainingInterrupted"]


class TrainingError(RuntimeError):
    """Training stopped (a non-finite loss); the message names the iteration and tiles."""


class TrainingInterrupted(KeyboardInterrupt):
    """:func:`~npa_train.train.fit` was stopped by Ctrl-C (SIGINT) or SIGTERM.

    Attributes
    ----------
    signum : int, ``signal.SIGINT`` or ``signal.SIGTERM``
    checkpoint_iteration : int or None
        The iteration ``checkpoint.pt`` holds now (None: none was saved).
    partial : bool
        False: stopped after a completed iteration, which was saved; True: aborted
        inside an iteration (a second Ctrl-C), which was not.
    """

    def __init__(self, signum: int, checkpoint_iteration: int | None = None, partial=True):
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        super().__init__(f"training stopped by {name}")
        self.signum = signum
        self.checkpoint_iteration = checkpoint_iteration
        self.partial = partial

    @property
    def terminated(self) -> bool:
        """True for SIGTERM, False for Ctrl-C."""
        return self.signum == signal.SIGTERM


#: A second stop signal within this many seconds of the first is taken for the same
#: request relayed (a wrapper that forwards the terminal's Ctrl-C), not a request to abort.
REPEAT_S = 1.0


class StopSignals:
    """SIGINT and SIGTERM while a run trains (a context manager; main thread only).

    The first signal only records the request (``signum``): the loop stops at the next
    iteration boundary, so a checkpoint never holds part of an iteration (BatchNorm
    statistics of a forward pass, an optimizer step without its bookkeeping). A later
    one, at least :data:`REPEAT_S` after it, aborts at once with
    :class:`TrainingInterrupted` (``partial``). A SIGINT that is ignored (a background
    job) stays ignored; outside the main thread nothing is installed.
    """

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._at = 0.0
        self._old: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                if s == signal.SIGINT and signal.getsignal(s) is signal.SIG_IGN:
                    continue
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, signal.SIG_DFL if old is None else old)
        self._old.clear()

    def requested(self, signum: int) -> bool:
        return self.signum == signum

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._at = signum, now
            if self.announce:  # os.write: no buffered stream is re-entered from a handler
                name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
                os.write(
                    2,
                    f"\n{name}: stopping after the current iteration, then saving the "
                    "checkpoint; press Ctrl-C again to abort without saving\n".encode(),
                )
            return
        if now - self._at < REPEAT_S:
            return
        raise TrainingInterrupted(signum, partial=True)
