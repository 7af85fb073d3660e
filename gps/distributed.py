"""Multi-process runs under torchrun: process group, data sharding, reductions.

``torchrun --nproc_per_node N train.py ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous variables; :func:`setup` reads them. Without them a run is a single process and every
helper here is a no-op. The NCCL backend is used on CUDA devices and gloo on the CPU.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank, number of processes and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, checkpoints and results."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_name: str, timeout_minutes: float = 30.0) -> DistContext:
    """Initialise the process group when launched by torchrun and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {device_name!r} requested but CUDA is not available; use --device cpu")
    if use_cuda:
        device = torch.device("cuda", local_rank if world_size > 1 else _cuda_index(device_name))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        logger.info("process group: rank %d of %d, backend %s, device %s", rank, world_size,
                    backend, device)
    return DistContext(rank, world_size, local_rank, device)


def _cuda_index(device_name: str) -> int:
    return int(device_name.split(":", 1)[1]) if ":" in device_name else 0


def cleanup() -> None:
    """Destroy the process group if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op for a single process)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Return the element-wise sum of ``values`` over all processes."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_reduce_device(ctx))
    dist.all_reduce(tensor)
    return tensor.tolist()


def _reduce_device(ctx: DistContext) -> torch.device:
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients(params: list[torch.nn.Parameter], ctx: DistContext) -> None:
    """Average the gradients of ``params`` over all processes in one flat all-reduce.

    Used for the sparse engine's compact values, which are not model parameters and so are not
    synchronised by DistributedDataParallel. The bytes sent scale with the trainable entries.
    """
    if not ctx.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def check_same_everywhere(tensors: dict[str, torch.Tensor], description: str, ctx: DistContext) -> str:
    """Hash ``tensors`` and stop the run if any process has a different hash; return the hash."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    value = digest.hexdigest()
    if ctx.enabled:
        hashes: list[str | None] = [None] * ctx.world_size
        dist.all_gather_object(hashes, value)
        if len(set(hashes)) != 1:
            raise RuntimeError(f"the {description} differs between processes (sha256 per rank: "
                               f"{hashes}); the run stopped")
    return value


class ShardedShuffleSampler(Sampler[int]):
    """Shuffle with a generator seeded from (seed, epoch) and give rank r every world-th index.

    With one process it yields the whole permutation, so N processes with batch B see, step by
    step, the same images as one process with batch N*B. The permutation is padded with its own
    first indices to a multiple of the number of processes, as DistributedSampler pads.
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        self.size, self.num_replicas, self.rank, self.seed = size, num_replicas, rank, seed
        self.epoch = 0
        self.per_rank = math.ceil(size / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the permutation."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        order += order[: self.per_rank * self.num_replicas - self.size]
        return iter(order[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.per_rank


class ShardSampler(Sampler[int]):
    """Give rank r the indices r, r + N, r + 2N, ... in order, without padding.

    Every index is visited by exactly one process, so summed counts over processes count each
    image once (DistributedSampler pads the last shard with repeated images).
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0):
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class BatchShardSampler(Sampler[int]):
    """Deal whole batches of an in-order pass to processes: rank r gets batches r, r + N, ...

    Each batch contains the same images as in a single-process pass with the same batch size.
    A loss that depends on the batch composition (SupCon contrasts the images of a batch) then
    gives the same per-batch gradients, so their sum over processes equals the single-process sum.
    Loaders must use the same ``batch_size`` and keep the order.
    """

    def __init__(self, size: int, batch_size: int, num_replicas: int = 1, rank: int = 0):
        starts = range(0, size, batch_size)
        self.indices = [i for start in list(starts)[rank::num_replicas]
                        for i in range(start, min(start + batch_size, size))]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
