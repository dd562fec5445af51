"""Which device to run on: :func:`resolve_device` (used by fit, evaluate and predict), and
how many CPU threads torch's operators get: :func:`choose_threads` (used by fit)."""

from __future__ import annotations

import os

import torch

from npa_precompute.errors import ParameterError

__all__ = ["choose_threads", "resolve_device", "usable_cores"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device``: ``None`` is cuda if available, else cpu.

    Parameters
    ----------
    device : ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device`` or None

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError (``ParameterError`` naming ``device``)
        Unknown device string, or a CUDA device requested on a machine without one (or
        without that index).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError("device", f"must be 'cpu' or 'cuda', got {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ParameterError("device", f"must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(
                "device",
                "'cuda' was requested but CUDA is not available (torch "
                f"{torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ParameterError(
                "device", f"{device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return dev


def usable_cores() -> int:
    """The CPU cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count``
    where the platform has no affinity), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # macOS, Windows
        return max(os.cpu_count() or 1, 1)


def choose_threads(workers: int, *, ranks: int = 1, cores: int | None = None) -> tuple[int, str]:
    """The default number of torch intra-op threads for training, and why.

    One of the ``cores`` this process may use is left to the rest of the machine (the main
    process's data loading and logging, the shell, other jobs; a single core is used whole),
    the others are shared equally by the ``ranks`` processes on this node, less one core per
    DataLoader worker (each worker runs one thread). torch's threads wait for each other at
    every operation, so one core taken by anything else slows all of them: on 2 cores,
    the demo trained at 2.7 it/s with 2 threads and 4.6 it/s with 1 next to a single
    low-priority job, 0.45 against 1.36 it/s at load 4 (issue 21). The choice does not look
    at the load, so the same command trains with the same threads (and the same arithmetic)
    wherever the cores are the same; ``--threads`` overrides it.

    Parameters
    ----------
    workers : int >= 0
        DataLoader worker processes of this rank.
    ranks : int >= 1
        Training processes on this node (DDP's ``LOCAL_WORLD_SIZE``).
    cores : int or None
        The usable cores (None: :func:`usable_cores`).

    Returns
    -------
    (threads, reason) : int >= 1 and a one-line explanation to print.
    """
    cores = usable_cores() if cores is None else cores
    threads = max((cores - 1) // max(ranks, 1) - workers, 1)
    reason = f"{cores} usable core(s), 1 left free"
    if ranks > 1:
        reason += f" shared by {ranks} ranks"
    reason += f", {workers} loader worker(s)"
    return threads, reason
