"""The torch side of the data: an image-list dataset with per-item seeding, and DataLoaders."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from gps.data.images import load_rgb


class ImageListDataset(Dataset):
    """Labelled images from a list of ``(path, label)`` pairs.

    With a ``seed``, the random transforms of item ``i`` in epoch ``e`` draw from RNGs seeded
    from ``(seed, e, i)``, so an image's augmentation does not depend on the number of workers,
    their order or the number of processes. Call :meth:`set_epoch` before iterating over the
    loader of each epoch. The epoch is kept in shared memory, so persistent DataLoader workers
    see the new value.

    Args:
        samples: ``(image path, label)`` pairs.
        transform: Callable applied to the decoded RGB PIL image.
        seed: Base seed of the per-item RNGs; None uses the process's global RNGs.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform: Callable[[Any], Any] | None = None,
        seed: int | None = None,
    ):
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the per-item RNGs."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        try:
            image = load_rgb(path)
        except OSError as error:
            raise OSError(f"failed to load image {path}: {error}") from error
        if self.transform is None:
            return image, label
        if self.seed is None:
            return self.transform(image), label
        with _seeded_rngs(item_seed(self.seed, self.epoch, index)):
            return self.transform(image), label


def item_seed(seed: int, epoch: int, index: int) -> int:
    """Derive a 63-bit seed for one item from the base seed, the epoch and the item index."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextlib.contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    # torchvision v1 transforms draw from the global torch RNG and timm's from `random`. Other
    # transforms may use numpy. All three are seeded here and restored afterwards.
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


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
