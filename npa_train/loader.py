"""The training DataLoader: which samples each step draws, and how many workers load them.

Sample ``i`` of :class:`~npa_train.data.StoreCropDataset` is a function of the seed and
``i`` only, so the loader of a resumed run (``start`` > 0) continues where the
interrupted one stopped; under DDP rank ``r`` takes the ``r``-th slice of each step
(:class:`~npa_train.distributed.RankSampler`).
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from npa_train.distributed import RankSampler, distributed_env, step_seed, worker_init

__all__ = ["default_workers", "step_loader"]


def default_workers(dev: torch.device) -> int:
    """0 on the CPU; with CUDA ``min(8, cores - 1)`` of the cores this rank shares."""
    if dev.type != "cuda":
        return 0
    cores = os.cpu_count() or 1
    if distributed_env()[2] > 1:  # the node's cores are shared by its ranks
        local = os.environ.get("LOCAL_WORLD_SIZE", "1")
        cores //= max(int(local), 1) if local.isdigit() else 1
    return min(8, max(cores - 1, 0))


def step_loader(dataset, *, batch: int, iters: int, start: int, seed: int, workers: int,
                device: torch.device, ddp) -> DataLoader:  # fmt: skip
    """Batches of steps ``start .. iters - 1`` of ``dataset``.

    Parameters
    ----------
    dataset : StoreCropDataset
        Its ``collate`` builds the batches.
    batch, iters, start : crops per step and rank, total steps, first step to load
    seed : the run's seed; the loader's generator is seeded from it and ``start``
    workers : DataLoader worker processes (0: load in this process)
    device : pinned memory when CUDA
    ddp : DistributedContext
        Its ``rank`` and ``world_size``.

    Returns
    -------
    DataLoader
        ``iters - start`` batches of ``batch`` samples (``drop_last``).
    """
    if ddp.world_size == 1:
        sampler = range(start * batch, iters * batch)
        loader_seed = seed * 1_000_003 + start
    else:
        sampler = RankSampler(start, iters, batch, ddp.rank, ddp.world_size)
        loader_seed = step_seed(seed * 1_000_003 + start, ddp.rank, 0)
    return DataLoader(
        dataset, batch_size=batch, sampler=sampler, num_workers=workers,
        collate_fn=dataset.collate, drop_last=True, pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if workers else None,
        generator=torch.Generator().manual_seed(loader_seed),
        prefetch_factor=4 if workers else None, persistent_workers=False,
    )  # fmt: skip
