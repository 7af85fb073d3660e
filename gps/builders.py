"""Build the pieces of a run from its configuration: device, data, model, mask, optimizer."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm.data
import torch
from torch import nn

from gps.config import RunConfig, default_data_dir
from gps.data import (
    ImageListDataset,
    TaskData,
    TwoViewTransform,
    build_eval_transform,
    build_loader,
    build_train_transform,
    get_task,
    load_task_data,
)
from gps.distributed import (
    BatchShardSampler,
    DistContext,
    ShardedShuffleSampler,
    ShardSampler,
    average_gradients,
)

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def task_folder_name(dataset: str) -> str:
    """Return the run-folder name of a task ('vtab/cifar100' -> 'vtab-cifar100')."""
    return get_task(dataset).name.replace("/", "-")


def run_dir_for(cfg: RunConfig) -> Path:
    """Return ``<output>/<experiment>/<task>/<run_name>`` for a configuration."""
    experiment = cfg.experiment
    if experiment is None:
        experiment = f"gps_k{cfg.k}" if cfg.method == "gps" else cfg.method
    run_name = cfg.run_name or f"seed{cfg.seed}"
    return Path(cfg.output) / experiment / task_folder_name(cfg.dataset) / run_name


def load_data(cfg: RunConfig) -> TaskData:
    """Resolve and verify the task's data (without decoding); raise DatasetError on problems."""
    data_dir = cfg.data_dir or default_data_dir(get_task(cfg.dataset).benchmark)
    return load_task_data(cfg.dataset, data_dir, protocol=cfg.protocol,
                          num_classes=cfg.num_classes)


def build_model(cfg: RunConfig, num_classes: int):
    """Create the timm model of ``cfg`` with a new head; return (model, weights info).

    The random initialisation (the new head, or the whole model without pretrained weights)
    is drawn from ``cfg.seed`` alone, so merging a run's delta rebuilds the same base model.
    """
    from gps.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return create_model(cfg.model, num_classes=num_classes, pretrained=cfg.pretrained,
                            img_size=cfg.img_size, drop_path_rate=cfg.drop_path,
                            model_kwargs=dict(cfg.model_kwargs))


def data_config_of(model: nn.Module, img_size: int | None = None) -> dict:
    """Return timm's data config (input size, interpolation, mean, std, crop) of ``model``.

    timm reads the input size from the pretrained config, so a model built at another
    resolution passes ``img_size`` to override it.
    """
    overrides = {"input_size": (3, img_size, img_size)} if img_size else {}
    return timm.data.resolve_data_config(overrides, model=model)


@dataclass
class Loaders:
    """Training and evaluation loaders of a run."""

    train: torch.utils.data.DataLoader
    eval: torch.utils.data.DataLoader


def build_loaders(cfg: RunConfig, data: TaskData, data_config: dict,
                  dist_ctx: DistContext | None = None) -> Loaders:
    """Create the training and evaluation loaders of the protocol's splits.

    Each process gets its shard: training batches of ``batch_size`` from a permutation seeded
    per epoch, evaluation images without padding so that each is counted once.
    """
    dist_ctx = dist_ctx or DistContext()
    world, rank = dist_ctx.world_size, dist_ctx.rank
    benchmark = data.task.benchmark
    train_set = ImageListDataset(data.train.samples, build_train_transform(data_config, benchmark),
                                 seed=cfg.seed)
    eval_set = ImageListDataset(data.eval.samples, build_eval_transform(data_config, benchmark))
    train_sampler = ShardedShuffleSampler(len(train_set), world, rank, cfg.seed)
    train = build_loader(train_set, cfg.batch_size, train=True, seed=cfg.seed + rank,
                         num_workers=cfg.num_workers, sampler=train_sampler)
    evaluation = build_loader(eval_set, cfg.batch_size, train=False, seed=cfg.seed,
                              num_workers=cfg.num_workers,
                              sampler=ShardSampler(len(eval_set), world, rank))
    return Loaders(train, evaluation)


def build_selection_loader(cfg: RunConfig, data: TaskData, data_config: dict,
                           dist_ctx: DistContext | None = None):
    """Create the two-view loader of the gradient pass over this process's training shard.

    The views of an image are drawn from (seed, image index), so neither the number of
    processes nor of loader workers changes them, and processes take whole batches in turn.
    """
    dist_ctx = dist_ctx or DistContext()
    samples = data.train.samples
    if cfg.selection.max_images is not None:
        samples = samples[: cfg.selection.max_images]
    dataset = ImageListDataset(samples, TwoViewTransform(data_config), seed=cfg.seed)
    batch_size = cfg.selection.batch_size or cfg.batch_size
    sampler = BatchShardSampler(len(dataset), batch_size, dist_ctx.world_size, dist_ctx.rank)
    return build_loader(dataset, batch_size, train=False, seed=cfg.seed,
                        num_workers=cfg.num_workers, sampler=sampler)


def build_optimizer(cfg: RunConfig, engine) -> torch.optim.Optimizer:
    """Create the optimizer over the engine's parameter groups."""
    groups = engine.param_groups(cfg.weight_decay)
    if cfg.opt == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def build_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer):
    """Linear warm-up from ``warmup_lr`` then cosine decay to ``min_lr``, stepped per epoch."""
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(optimizer, t_initial=cfg.epochs, lr_min=cfg.min_lr,
                             warmup_t=cfg.warmup_epochs, warmup_lr_init=cfg.warmup_lr,
                             t_in_epochs=True)


def obtain_mask(cfg: RunConfig, model: nn.Module, data: TaskData, data_config: dict,
                device: torch.device, precision, keep_scores: bool = False,
                dist_ctx: DistContext | None = None):
    """Return (mask, metadata[, scores]) for the run: a baseline rule, a mask file or selection.

    For GPS without ``--mask`` this runs the gradient pass over the training split. The model
    leaves the pass as it entered it (no gradients, same modes and buffers).
    """
    from gps.mask import load_mask, load_mask_meta
    from gps.selection import accumulate_gradients, build_mask, method_mask

    meta = {"method": cfg.method, "dataset": data.task.name, "protocol": cfg.protocol,
            "seed": cfg.seed, "architecture": cfg.model, "pretrained": cfg.pretrained}
    scores = None
    if cfg.method != "gps":
        mask = method_mask(model, cfg.method)
    elif cfg.mask is not None:
        mask = load_mask(cfg.mask, model)
        file_meta = load_mask_meta(cfg.mask)
        if file_meta.get("k") not in (None, cfg.k):
            raise ValueError(f"mask {cfg.mask} selects K={file_meta['k']} entries per row but the "
                             f"run has --k {cfg.k}; pass --k {file_meta['k']} so that the run "
                             "folder and results name the K the mask has")
        meta.update(file_meta)
        meta["mask_file"] = str(cfg.mask)
        logger.info("using mask %s", cfg.mask)
    else:
        selection = cfg.selection
        generator = torch.Generator().manual_seed(cfg.seed)
        gradient = None
        if selection.scores == "gradient":
            loader = build_selection_loader(cfg, data, data_config, dist_ctx)
            logger.info("gradient pass: %s loss over %d training images, batch %d",
                        selection.loss, len(loader.dataset), loader.batch_size)
            # The loader already holds only the first max_images images; under several
            # processes the pass sums the gradients of all shards.
            gradient = accumulate_gradients(
                model, loader, loss=selection.loss, temperature=selection.temperature,
                device=device, amp_dtype=precision.dtype,
                num_classes=data.num_classes, log_interval=cfg.log_interval)
            scores = gradient.scores
            meta.update(gradient.metadata())
        mask = build_mask(model, gradient, cfg.k, granularity=selection.granularity,
                          score_type=selection.scores, generator=generator)
        meta.update({"k": cfg.k, "loss": selection.loss, "scores": selection.scores,
                     "granularity": selection.granularity})
    result = (mask, meta, scores) if keep_scores else (mask, meta)
    return result


def start_epoch(cfg: RunConfig, loader: torch.utils.data.DataLoader, epoch: int,
                dist_ctx: DistContext | None = None) -> None:
    """Seed everything random in an epoch from (seed, epoch, rank) alone.

    Data order, augmentations, dropout and drop-path then depend only on the epoch, so a run
    resumed at an epoch boundary continues exactly as the uninterrupted run would.
    """
    rank = dist_ctx.rank if dist_ctx is not None else 0
    epoch_seed = cfg.seed * 1000 + epoch
    seed_everything(epoch_seed + 1_000_003 * rank)
    loader.dataset.set_epoch(epoch)
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(epoch_seed)


def wrap_distributed(model: nn.Module, dist_ctx: DistContext) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel under several processes, else return it.

    DDP synchronises the gradients of the model's trainable parameters. With the dense engine the
    mask hooks run when a gradient is computed, before DDP's all-reduce of it.
    """
    if not dist_ctx.enabled:
        return model
    device_ids = [dist_ctx.device.index] if dist_ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def gradient_sync(engine, dist_ctx: DistContext):
    """Return a callable averaging the gradients DDP does not see (sparse compact values)."""
    compact = list(engine.compact_parameters()) if hasattr(engine, "compact_parameters") else []
    if not dist_ctx.enabled or not compact:
        return None
    return lambda: average_gradients(compact, dist_ctx)
