"""DataLoader construction with seeded shuffling and seeded workers."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    num_workers: int = 0,
    sampler: Sampler | None = None,
    drop_last: bool | None = None,
) -> DataLoader:
    """Build a DataLoader for training (shuffled) or evaluation (in order).

    Args:
        dataset: Map-style dataset, e.g. :class:`gps.data.ImageListDataset`.
        batch_size: Images per batch.
        train: Shuffle with a ``torch.Generator`` seeded from ``seed``; otherwise keep order.
        seed: Seed of the shuffling generator and, through it, of the workers' base seeds.
        num_workers: Loader worker processes; workers persist across epochs when > 0.
        sampler: Sampler to use instead of shuffling, e.g. a ``DistributedSampler``; the
            caller then calls its ``set_epoch``.
        drop_last: Drop the last incomplete batch. Defaults to False because VTAB-1k
            training sets are small (800 or 1000 images).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    if sampler is None and train:
        # The shuffle order gets its own generator. The loader's generator also gives the
        # workers their base seed, once per iterator, and persistent workers keep their
        # iterator, so sharing one generator would make the order depend on num_workers.
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=seed_worker,
        drop_last=bool(drop_last),
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def seed_worker(worker_id: int) -> None:
    """Seed ``random`` and numpy in a loader worker from the worker's torch seed.

    PyTorch gives each worker the seed ``base_seed + worker_id``, with ``base_seed`` drawn from
    the loader's generator, so these seeds follow from the loader's ``seed``.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
