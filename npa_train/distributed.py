"""Distributed data parallel (torchrun) and the training sample stream.

Sample ``i`` of a run is a function of the seed and ``i`` only; step ``it`` of a run on
``world_size`` processes trains on the samples a single process with the effective batch
would draw at that step, each rank on its own slice (:func:`rank_sample_indices`), so
runs resume and scale without changing what they see.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import torch

from npa_precompute.params import check_int

__all__ = [
    "DistributedContext",
    "RankSampler",
    "all_reduce_mean",
    "distributed_env",
    "rank_sample_indices",
    "start_distributed",
    "step_seed",
    "worker_init",
]


def distributed_env() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the environment torchrun sets.

    Outside torchrun (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) this is ``(0, 0, 1)``.

    Returns
    -------
    (rank, local_rank, world_size) : tuple of int

    Raises
    ------
    ValueError
        ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` not a non-negative integer, ``RANK`` or
        ``LOCAL_RANK`` missing while ``WORLD_SIZE`` > 1, or ``RANK`` >= ``WORLD_SIZE`` (the
        message names the variable).
    """

    def read(name: str, default: str | None) -> int:
        text = os.environ.get(name, default)
        if text is None:
            raise ValueError(f"`{name}` is not set but WORLD_SIZE is {world}; start with torchrun")
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"`{name}` must be a non-negative integer, got {text!r}")
        return value

    world = read("WORLD_SIZE", "1")
    if world <= 1:
        return 0, 0, 1
    rank, local_rank = read("RANK", None), read("LOCAL_RANK", None)
    if rank >= world:
        raise ValueError(f"`RANK` must be < WORLD_SIZE {world}, got {rank}")
    return rank, local_rank, world


class DistributedContext:
    """This process's place in a DDP run (``world_size`` 1: a plain single-process run).

    ``main`` is rank 0 (which writes the run folder); ``barrier()`` waits for every rank;
    ``close()`` destroys a process group this run created.
    """

    def __init__(self, rank=0, local_rank=0, world_size=1, backend=None, owned=False, device=None):
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.backend, self.owned, self.device = backend, owned, device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            if self.backend == "nccl":
                torch.distributed.barrier(device_ids=[self.device.index])
            else:
                torch.distributed.barrier()

    def close(self) -> None:
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owned = False


def start_distributed(dev: torch.device) -> DistributedContext:
    """Join (or, under torchrun, create) the default process group; pick this rank's device."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        backend, owned = dist.get_backend(), False
    else:
        rank, local_rank, world = distributed_env()
        backend, owned = ("nccl" if dev.type == "cuda" else "gloo"), True
    if world == 1:
        return DistributedContext(device=dev)
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE is {world} but this torch build has no torch.distributed")
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"`LOCAL_RANK` {local_rank} needs device cuda:{local_rank} but only {count} CUDA "
                f"device(s) are present; start at most {count} processes per node "
                "(torchrun --nproc-per-node)"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if owned:
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistributedContext(rank, local_rank, world, backend, owned, dev)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ranks of the default process group.

    Parameters
    ----------
    values : Tensor, any shape, floating dtype (float64 recommended: the mean of float32
        values is then exact for two ranks); on the CPU for gloo, on the rank's GPU for NCCL

    Returns
    -------
    Tensor
        A new tensor of the same shape and dtype: the elementwise sum over the ranks divided
        by the world size; a copy of ``values`` outside a process group (or with one rank).
        A collective: every rank must call it.

    Raises
    ------
    TypeError
        ``values`` not a floating-point tensor.
    """
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise TypeError(f"`values` must be a floating-point Tensor, got {values!r}")
    out = values.detach().clone()
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return out
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def rank_sample_indices(iteration: int, batch: int, rank: int = 0, world_size: int = 1) -> range:
    """Dataset indices rank ``rank`` trains on at step ``iteration`` (counted from 0).

    Step ``iteration`` of a run on ``world_size`` processes with ``batch`` crops per rank
    uses the global batch of samples ``iteration * world_size * batch`` up to (excluding)
    ``(iteration + 1) * world_size * batch``, which is the batch a single process with
    ``batch * world_size`` crops per step draws; rank ``r`` takes the ``r``-th slice of it.
    So the ranks' crops are disjoint, depend on (seed, index) only and a resumed run
    continues every rank's stream. With ``world_size=1`` this is ``fit``'s stream.

    Parameters
    ----------
    iteration : int >= 0
    batch : int >= 1, crops per rank and step
    rank : int, 0 <= rank < world_size
    world_size : int >= 1

    Returns
    -------
    range of ``batch`` ints

    Raises
    ------
    ValueError
        An argument out of range (named).
    """
    iteration = check_int("iteration", iteration, minimum=0)
    batch = check_int("batch", batch, minimum=1)
    world_size = check_int("world_size", world_size, minimum=1)
    rank = check_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"`rank` must be < world_size {world_size}, got {rank}")
    first = (iteration * world_size + rank) * batch
    return range(first, first + batch)


class RankSampler:
    """Indices of steps ``start .. iters - 1`` for one rank (:func:`rank_sample_indices`)."""

    def __init__(self, start: int, iters: int, batch: int, rank: int, world_size: int) -> None:
        self.start, self.iters, self.batch = start, iters, batch
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        for it in range(self.start, self.iters):
            yield from rank_sample_indices(it, self.batch, self.rank, self.world_size)

    def __len__(self) -> int:
        return (self.iters - self.start) * self.batch


def step_seed(seed: int, rank: int, iteration: int) -> int:
    """Torch seed of one rank's step in a DDP run (dropout etc.; not the crops)."""
    return int(np.random.SeedSequence([seed, rank, iteration]).generate_state(1, np.uint64)[0])


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoader: one thread, signals ignored, seeds."""
    # Crops are a function of (seed, index), not of worker RNG state; the workers' own
    # generators are still seeded distinctly (torch gives each worker base_seed + id,
    # base_seed drawn from the loader's seeded generator) for any other randomness.
    import random

    torch.set_num_threads(1)
    # the main process handles Ctrl-C and SIGTERM (at an iteration boundary) and then shuts
    # the workers down; the terminal's Ctrl-C and torchrun's killpg reach the workers too
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)  # noqa: NPY002 - seeds the legacy global state other code may use
