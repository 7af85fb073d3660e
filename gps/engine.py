"""One training epoch and one evaluation pass."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gps.distributed import DistContext, all_reduce_sum

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"loss is {value} at epoch {epoch}, step {step}; the run stopped and the "
                         "last checkpoint is the one from the end of the previous epoch. Lower the "
                         "learning rate, enable --clip-grad, or use --amp bf16 instead of fp16")


@dataclass
class Precision:
    """Autocast settings of a run: ``dtype`` None means float32 without autocast."""

    device_type: str
    dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Return the autocast context for forward passes."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def label(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).replace("torch.", "")


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """Map the ``amp`` option to autocast settings: bf16 on CUDA by default, float32 on CPU."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError("amp: fp16 with loss scaling needs a CUDA device; use --amp bf16 or none")
    return Precision(device.type, dtype)


@dataclass
class StepContext:
    """Everything a training step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    engine: object
    precision: Precision
    scaler: torch.amp.GradScaler | None = None
    ema: object | None = None
    clip_grad: float | None = None
    weight_decay: float = 0.0
    decoupled_decay: bool = False
    log_interval: int = 20
    max_steps: int | None = None
    after_backward: Callable[[], None] | None = None


def train_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
               ctx: StepContext) -> float:
    """Run one optimisation step and return the loss."""
    with ctx.precision.autocast():
        loss = F.cross_entropy(model(images), targets)
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()
    if ctx.after_backward is not None:
        ctx.after_backward()
    if ctx.clip_grad is not None:
        params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
        nn.utils.clip_grad_norm_(params, ctx.clip_grad)
    ctx.engine.apply_masked_decay(ctx.optimizer, ctx.weight_decay, ctx.decoupled_decay)
    if ctx.scaler is not None:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    ctx.engine.after_step()
    if ctx.ema is not None:
        ctx.ema.update(ctx.engine.trainable_values())
    return loss.detach()


def train_one_epoch(model: nn.Module, loader, ctx: StepContext, epoch: int,
                    device: torch.device) -> dict:
    """Train for one epoch; return mean loss, images/s, data time and step count."""
    model.train()
    total_loss, images_seen, steps, data_time = 0.0, 0, 0, 0.0
    interval_loss, interval_steps, interval_images = 0.0, 0, 0
    interval_start = time.perf_counter()
    start = time.perf_counter()
    data_start = start
    steps_per_epoch = len(loader) if ctx.max_steps is None else min(len(loader), ctx.max_steps)
    for images, targets in loader:
        data_time += time.perf_counter() - data_start
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        loss = float(train_step(model, images, targets, ctx))
        steps += 1
        if not math.isfinite(loss):
            raise NonFiniteLossError(epoch, steps, loss)
        total_loss += loss * images.shape[0]
        interval_loss += loss
        interval_steps += 1
        images_seen += images.shape[0]
        interval_images += images.shape[0]
        if steps % ctx.log_interval == 0 or steps == steps_per_epoch:
            elapsed = time.perf_counter() - interval_start
            logger.info("epoch %d step %d/%d  loss %.4f  lr %.3g  %.1f img/s  data %.3fs",
                        epoch, steps, steps_per_epoch, interval_loss / interval_steps,
                        ctx.optimizer.param_groups[0]["lr"], interval_images / max(elapsed, 1e-9),
                        data_time)
            interval_loss, interval_steps, interval_images = 0.0, 0, 0
            interval_start = time.perf_counter()
        if ctx.max_steps is not None and steps >= ctx.max_steps:
            break
        data_start = time.perf_counter()
    seconds = time.perf_counter() - start
    return {"train_loss": total_loss / max(images_seen, 1), "train_images": images_seen,
            "train_steps": steps, "train_seconds": seconds,
            "train_images_per_s": images_seen / max(seconds, 1e-9), "data_seconds": data_time,
            "lr": ctx.optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, precision: Precision,
             dist_ctx: DistContext | None = None) -> dict:
    """Return top-1 and top-5 accuracy (percent), mean loss and the number of images.

    Under several processes each one evaluates its shard and the counts are summed, so every
    image of the split counts exactly once.
    """
    model.eval()
    correct1 = correct5 = 0
    total_loss, count = 0.0, 0
    start = time.perf_counter()
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(images)
        logits = logits.float()
        total_loss += float(F.cross_entropy(logits, targets, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(targets[:, None])
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        count += targets.shape[0]
    if dist_ctx is not None:
        correct1, correct5, total_loss, count = all_reduce_sum(
            [correct1, correct5, total_loss, count], dist_ctx)
        count = int(count)
    seconds = time.perf_counter() - start
    return {"top1": 100.0 * correct1 / max(count, 1), "top5": 100.0 * correct5 / max(count, 1),
            "loss": total_loss / max(count, 1), "images": count, "seconds": seconds}
