"""Gradient-based parameter selection: the gradient pass and per-neuron top-K selection.

What trains is decided by module structure, never by parameter names:

* Selectable weights: the `weight` of every `nn.Linear` and `nn.Conv1d/2d/3d` module (timm's
  subclasses included) outside the classifier head. A conv weight is viewed as the matrix
  [out_channels, in_channels / groups * kh * kw], one row per output neuron.
* Always trainable: every parameter of the classifier head (`model.get_classifier()`), the `bias`
  of every linear/conv module, and layer-scale factors.
* Layer-scale factors: the parameters of timm `LayerScale`/`LayerScale2d` modules. Also any
  parameter with at most one dimension that is registered directly on a module which is neither a
  linear/conv layer nor a normalisation layer (ConvNeXt `gamma`, CaiT `gamma_1`, XCiT `gamma1`,
  MetaFormer `Scale.scale`).
* Frozen: normalisation layers (weight and bias), position embeddings, class/register tokens,
  relative position tables and every other parameter.

A normalisation layer is a PyTorch batch/instance/layer/group/RMS norm, or any module whose class
name contains "Norm" (timm's RmsNorm, LayerNorm2d, BatchNormAct2d, GroupNorm1, EvoNorm, ...).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.layers import LayerScale, LayerScale2d
from torch import Tensor, nn

from gps.losses import supcon_loss
from gps.models import features, head_parameter_names

logger = logging.getLogger(__name__)

WEIGHT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
LAYER_SCALE_MODULES = (LayerScale, LayerScale2d)

# Parameter roles, as returned by `parameter_roles`.
ROLE_WEIGHT = "weight"
ROLE_BIAS = "bias"
ROLE_LAYER_SCALE = "layer_scale"
ROLE_HEAD = "head"
ROLE_NORM = "norm"
ROLE_OTHER = "other"
ALWAYS_TRAINABLE_ROLES = frozenset({ROLE_BIAS, ROLE_LAYER_SCALE, ROLE_HEAD})

GRANULARITIES = ("neuron", "layer", "network")
SCORE_TYPES = ("gradient", "random")
METHODS = ("gps", "full", "linear", "bitfit")
LOSSES = ("supcon", "ce")


def is_norm_layer(module: nn.Module) -> bool:
    """Return whether `module` is a normalisation layer (see the module docstring)."""
    return isinstance(module, NORM_MODULES) or "Norm" in type(module).__name__


def _parameter_role(head_ids: set[int], module: nn.Module, param: nn.Parameter) -> str:
    if id(param) in head_ids:
        return ROLE_HEAD
    if isinstance(module, WEIGHT_MODULES):
        if param is module.weight:
            return ROLE_WEIGHT
        # NOTE: other parameters of a conv subclass (ScaledStdConv2d `gain`) stay frozen.
        return ROLE_BIAS if param is module.bias else ROLE_OTHER
    if is_norm_layer(module):
        return ROLE_NORM
    if isinstance(module, LAYER_SCALE_MODULES) or param.dim() <= 1:
        # NOTE: this also makes other 1-D vectors of such modules trainable: BEiT's `q_bias` and
        # `v_bias`, and nn.MultiheadAttention's `in_proj_bias` (its 2-D `in_proj_weight` is
        # frozen, not selected, because the module is not an nn.Linear).
        return ROLE_LAYER_SCALE
    return ROLE_OTHER


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """Return the role of every named parameter: weight, bias, layer_scale, head, norm, other.

    Only 'weight' entries are subject to top-K selection; 'bias', 'layer_scale' and 'head' are
    always trainable; 'norm' and 'other' are frozen.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    head_names = head_parameter_names(model)
    head_ids = {id(p) for name, p in model.named_parameters() if name in head_names}
    roles: dict[str, str] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            name = names[id(param)]
            roles.setdefault(name, _parameter_role(head_ids, module, param))
    return {name: roles[name] for name in names.values()}


def selectable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Return the linear/conv weights outside the head, by parameter name, in model order."""
    roles = parameter_roles(model)
    return {name: p for name, p in model.named_parameters() if roles[name] == ROLE_WEIGHT}


def always_trainable(model: nn.Module) -> set[str]:
    """Return the names of the head parameters, linear/conv biases and layer-scale factors."""
    return {name for name, role in parameter_roles(model).items() if role in ALWAYS_TRAINABLE_ROLES}


def bias_parameters(model: nn.Module) -> set[str]:
    """Return the names of every module's `bias` parameter, normalisation layers included."""
    names = {id(p): name for name, p in model.named_parameters()}
    found = set()
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter) and id(bias) in names:
            found.add(names[id(bias)])
    return found


@dataclass
class GradientScores:
    """Result of a gradient pass.

    Attributes:
        scores: |accumulated gradient| per selectable weight, float32 on the CPU.
        loss: The loss of the pass, 'supcon' or 'ce'.
        temperature: The SupCon temperature (unused for 'ce').
        images: Number of images (not views) seen.
        batches: Number of batches.
        mean_loss: Mean of the per-batch losses.
        seconds: Wall time of the pass.
    """

    scores: dict[str, Tensor]
    loss: str
    temperature: float
    images: int
    batches: int
    mean_loss: float
    seconds: float
    batch_losses: list[float] = field(default_factory=list, repr=False)

    def metadata(self) -> dict[str, Any]:
        """Return the pass statistics as a JSON-serialisable dict."""
        return {
            "loss": self.loss,
            "temperature": self.temperature,
            "images": self.images,
            "batches": self.batches,
            "mean_loss": self.mean_loss,
            "seconds": self.seconds,
        }


def _split_batch(batch: Any) -> tuple[list[Tensor], Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("the selection loader must yield (views, labels) pairs")
    views, labels = batch
    views = list(views) if isinstance(views, (tuple, list)) else [views]
    return views, labels


def _batch_loss(
    model: nn.Module, views: list[Tensor], labels: Tensor, loss: str, temperature: float
) -> Tensor:
    inputs = torch.cat(views, dim=0)
    if loss == "supcon":
        return supcon_loss(features(model, inputs), labels, temperature)
    logits = model(inputs)
    return F.cross_entropy(logits.float(), labels.repeat(len(views)))


def accumulate_gradients(
    model: nn.Module,
    loader: Iterable,
    *,
    loss: str = "supcon",
    temperature: float = 0.07,
    max_images: int | None = None,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    num_classes: int | None = None,
    log_interval: int = 10,
) -> GradientScores:
    """Sum the gradient of every selectable weight over one pass of `loader`.

    Each batch is one forward pass of all views concatenated and one backward pass. The
    gradients accumulate in the float32 `.grad` of the weights across batches, with no
    optimizer step and no reset in between. The model runs in train mode, as in fine-tuning,
    so dropout and drop-path are active if configured. Buffers such as BatchNorm running
    statistics are restored afterwards, as are `requires_grad`, `.grad` and the train/eval
    mode, so the model leaves the pass exactly as it entered.

    Under torch.distributed (one process per GPU, each loader yielding its own shard), pass the
    unwrapped model, not the DistributedDataParallel wrapper. The signed gradient sums and
    image counts are then summed over all processes, so every process gets the same scores.
    `max_images` applies per process.

    Args:
        model: A timm model whose parameters are on `device` in float32.
        loader: Yields ((view_1, view_2, ...), labels), or (images, labels) for one view.
        loss: 'supcon' (on L2-normalised pre-logits features; the head plays no part) or
            'ce' (cross-entropy of the head's logits on every view).
        temperature: SupCon temperature.
        max_images: Stop after this many images; the last batch is cut to fit.
        device: Device of the inputs; defaults to the device of the model's parameters.
        amp_dtype: Autocast dtype, or None for float32. Prefer torch.bfloat16: with
            torch.float16 there is no loss scaling, so small gradients may underflow to zero.
        num_classes: If given, labels outside [0, num_classes) raise ValueError.
        log_interval: Log the loss and throughput every this many batches.

    Returns:
        The |accumulated gradient| of every selectable weight, with pass statistics.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown selection loss {loss!r}; choose one of {LOSSES}")
    if log_interval < 1:
        raise ValueError(f"log_interval must be at least 1, got {log_interval}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    model_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else model_device
    if device.type != model_device.type or device.index not in (None, model_device.index):
        raise ValueError(f"the model is on {model_device} but device={device}; move it first")

    weights = selectable_weights(model)
    state = _PassState.capture(model)
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(name in weights)
            p.grad = None
        model.train()
        stats = _run_pass(
            model, loader, loss, temperature, max_images, device, amp_dtype, num_classes,
            log_interval,
        )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            stats["images"] = _all_reduce_sum(weights, stats["images"], device)
        scores = _collect_scores(weights)
    finally:
        state.restore(model)
    return GradientScores(scores=scores, loss=loss, temperature=temperature, **stats)


@dataclass
class _PassState:
    training: bool
    requires_grad: dict[str, bool]
    grads: dict[str, Tensor | None]
    buffers: dict[str, Tensor]

    @classmethod
    def capture(cls, model: nn.Module) -> _PassState:
        params = dict(model.named_parameters())
        return cls(
            training=model.training,
            requires_grad={name: p.requires_grad for name, p in params.items()},
            grads={name: p.grad for name, p in params.items()},
            buffers={name: b.detach().clone() for name, b in model.named_buffers()},
        )

    def restore(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            p.requires_grad_(self.requires_grad[name])
            p.grad = self.grads[name]
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(self.buffers[name])
        model.train(self.training)


def _run_pass(
    model: nn.Module,
    loader: Iterable,
    loss: str,
    temperature: float,
    max_images: int | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    num_classes: int | None,
    log_interval: int,
) -> dict[str, Any]:
    start = time.perf_counter()
    images = 0
    batch_losses: list[float] = []
    total_batches = _expected_batches(loader)
    for batch in loader:
        views, labels = _split_batch(batch)
        if max_images is not None:
            keep = max_images - images
            views, labels = [v[:keep] for v in views], labels[:keep]
        views = [v.to(device, non_blocking=True) for v in views]
        labels = labels.to(device, non_blocking=True)
        _check_labels(labels, num_classes)

        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            value = _batch_loss(model, views, labels, loss, temperature)
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"selection loss is {value.item()} at batch {len(batch_losses)}; the gradient "
                "scores would be invalid (try float32 instead of autocast)"
            )
        value.backward()
        images += labels.numel()
        batch_losses.append(value.item())

        if len(batch_losses) % log_interval == 0 or images == max_images:
            elapsed = time.perf_counter() - start
            logger.info(
                "selection batch %d/%s: loss %.4f, %d images, %.1f images/s",
                len(batch_losses), total_batches or "?", batch_losses[-1], images,
                images / max(elapsed, 1e-9),
            )
        if max_images is not None and images >= max_images:
            break
    if not batch_losses:
        raise ValueError("the selection loader yielded no batches")
    seconds = time.perf_counter() - start
    mean_loss = math.fsum(batch_losses) / len(batch_losses)
    logger.info(
        "selection pass done: %d images in %d batches, mean loss %.4f, %.1f s",
        images, len(batch_losses), mean_loss, seconds,
    )
    return {
        "images": images, "batches": len(batch_losses), "mean_loss": mean_loss,
        "seconds": seconds, "batch_losses": batch_losses,
    }


def _all_reduce_sum(weights: Mapping[str, nn.Parameter], images: int, device: torch.device) -> int:
    """Sum the accumulated gradients and image counts over all processes; return the images."""
    for p in weights.values():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    count = torch.tensor([images], dtype=torch.float64, device=device)
    dist.all_reduce(count)
    return int(count.item())


def _expected_batches(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_labels(labels: Tensor, num_classes: int | None) -> None:
    if num_classes is None or labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values from {low} to {high}; "
            "check the dataset's label mapping and num_classes"
        )


def _collect_scores(weights: Mapping[str, nn.Parameter]) -> dict[str, Tensor]:
    scores = {}
    unused = []
    for name, p in weights.items():
        if p.grad is None:
            unused.append(name)
            scores[name] = torch.zeros(p.shape, dtype=torch.float32)
        else:
            # The pass owns this gradient tensor (the caller's .grad is restored afterwards), so
            # it is turned into the score in place rather than copied.
            scores[name] = p.grad.detach().abs_().to(device="cpu", dtype=torch.float32)
    if unused:
        logger.warning(
            "%d weights received no gradient in the selection pass (unused in the forward "
            "pass); their selection falls back to the lowest indices: %s",
            len(unused), ", ".join(unused[:10]),
        )
    return scores


def random_scores(
    model_or_scores: nn.Module | Mapping[str, Tensor], generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Return uniform random scores shaped like the selectable weights (or given scores)."""
    if isinstance(model_or_scores, nn.Module):
        shapes = {name: p.shape for name, p in selectable_weights(model_or_scores).items()}
    else:
        shapes = {name: s.shape for name, s in model_or_scores.items()}
    return {name: torch.rand(shape, generator=generator) for name, shape in shapes.items()}


def _top_entries(values: Tensor, k: int) -> Tensor:
    """Mark the k largest entries of each row of a 2-D tensor; ties go to the lowest index."""
    kth = torch.topk(values, k, dim=1).values[:, -1:]
    above = values > kth
    ties = values == kth
    needed = k - above.sum(dim=1, keepdim=True)
    return above | (ties & (torch.cumsum(ties, dim=1) <= needed))


def _as_rows(name: str, score: Tensor) -> Tensor:
    if score.dim() < 2:
        raise ValueError(f"score of {name!r} has shape {tuple(score.shape)}; expected a weight")
    rows = score.detach().reshape(score.shape[0], -1).abs().float()
    if not bool(torch.isfinite(rows).all()):
        raise ValueError(f"score of {name!r} contains NaN or infinite values")
    return rows


def select_topk(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Select the K entries with the largest |score| in every row (output neuron).

    Args:
        scores: Score per weight; a weight of shape [out, ...] is viewed as [out, -1].
        k: Entries per row, at least 1 and at most the narrowest row width.

    Returns:
        A boolean mask per weight, of the weight's shape. Ties go to the lowest index.
    """
    _check_k(k)
    widths = {name: math.prod(s.shape[1:]) for name, s in scores.items()}
    for name, width in widths.items():
        if k > width:
            raise ValueError(
                f"K={k} is larger than the row width {width} of {name!r} (shape "
                f"{tuple(scores[name].shape)}); the largest valid K for this model is "
                f"{min(widths.values())}"
            )
    return {
        name: _top_entries(_as_rows(name, s), k).reshape(s.shape) for name, s in scores.items()
    }


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"K must be an integer of at least 1, got {k!r}")


def _select_layer(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Select K * rows entries per weight, anywhere in the weight matrix."""
    out = {}
    for name, s in scores.items():
        rows = _as_rows(name, s)
        budget = k * rows.shape[0]
        if budget > rows.numel():
            raise ValueError(f"K={k} selects {budget} entries of {name!r}, more than {rows.numel()}")
        out[name] = _top_entries(rows.reshape(1, -1), budget).reshape(s.shape)
    return out


def _select_network(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Select K * (all rows) entries over all weights together."""
    flat = [_as_rows(name, s).reshape(-1) for name, s in scores.items()]
    budget = k * sum(s.shape[0] for s in scores.values())
    total = sum(f.numel() for f in flat)
    if budget > total:
        raise ValueError(f"K={k} selects {budget} entries, more than the {total} weights")
    chosen = _top_entries(torch.cat(flat).reshape(1, -1), budget).reshape(-1)
    out, offset = {}, 0
    for name, s in scores.items():
        out[name] = chosen[offset:offset + s.numel()].reshape(s.shape)
        offset += s.numel()
    return out


def select(
    scores: Mapping[str, Tensor] | None,
    k: int,
    granularity: str = "neuron",
    generator: torch.Generator | None = None,
    score_type: str = "gradient",
) -> dict[str, Tensor]:
    """Select weight entries by score, with the ablations of the selection rule.

    Args:
        scores: Score per selectable weight (|accumulated gradient|).
        k: Entries per row; 'layer' and 'network' spend the same total budget.
        granularity: 'neuron' (top-K per row), 'layer' (top K * rows per weight matrix) or
            'network' (top K * all rows over the whole model).
        generator: Random generator for score_type='random'.
        score_type: 'gradient' uses `scores`; 'random' replaces them by uniform random values
            of the same shapes.

    Returns:
        A boolean mask per weight.
    """
    _check_k(k)
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    if score_type not in SCORE_TYPES:
        raise ValueError(f"unknown score type {score_type!r}; choose one of {SCORE_TYPES}")
    if scores is None:
        raise ValueError("scores are required; pass random_scores(model) for random selection")
    if score_type == "random":
        scores = random_scores(scores, generator)
    if granularity == "neuron":
        return select_topk(scores, k)
    if granularity == "layer":
        return _select_layer(scores, k)
    return _select_network(scores, k)


def _scores_dict(scores: GradientScores | Mapping[str, Tensor] | None) -> Mapping[str, Tensor] | None:
    return scores.scores if isinstance(scores, GradientScores) else scores


def build_mask(
    model: nn.Module,
    scores: GradientScores | Mapping[str, Tensor] | None,
    k: int,
    granularity: str = "neuron",
    score_type: str = "gradient",
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Build the GPS mask over all named parameters of `model`.

    Selected entries of selectable weights, all of the always-trainable parameters, nothing
    else. True marks a trained entry. `scores` may be None when score_type='random'.

    Raises:
        ValueError: Scores missing for a selectable weight, extra, or of another shape.
    """
    weights = selectable_weights(model)
    scores = _scores_dict(scores)
    if scores is None and score_type == "random":
        scores = random_scores(model, generator)
        score_type = "gradient"
    elif scores is not None:
        _check_scores(weights, scores)
    selected = select(scores, k, granularity, generator, score_type)
    trainable = always_trainable(model)
    mask = {}
    for name, p in model.named_parameters():
        if name in selected:
            mask[name] = selected[name].to(device="cpu", dtype=torch.bool)
        else:
            mask[name] = torch.full(p.shape, name in trainable, dtype=torch.bool)
    return mask


def _check_scores(weights: Mapping[str, nn.Parameter], scores: Mapping[str, Tensor]) -> None:
    for name, p in weights.items():
        if name not in scores:
            raise ValueError(f"no score for selectable weight {name!r}; were the scores made for this model?")
        if tuple(scores[name].shape) != tuple(p.shape):
            raise ValueError(
                f"score of {name!r} has shape {tuple(scores[name].shape)} but the weight has "
                f"shape {tuple(p.shape)}; were the scores made for this model?"
            )
    extra = [name for name in scores if name not in weights]
    if extra:
        raise ValueError(f"scores for parameters that are not selectable weights: {extra[:5]}")


def method_mask(
    model: nn.Module,
    method: str,
    scores: GradientScores | Mapping[str, Tensor] | None = None,
    k: int | None = None,
    **select_options: Any,
) -> dict[str, Tensor]:
    """Build the mask of a fine-tuning method.

    Args:
        model: The model.
        method: 'gps' (needs `scores` and `k`, see `build_mask`), 'full' (every parameter),
            'linear' (the head only) or 'bitfit'. BitFit (Ben Zaken et al., ACL 2022) trains
            the head and every module's `bias`, normalisation layers included.
        scores: Gradient scores for 'gps'.
        k: Entries per row for 'gps'.
        **select_options: granularity, score_type and generator for 'gps'.

    Returns:
        A boolean mask per named parameter.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "gps":
        if k is None:
            raise ValueError("method 'gps' needs K (entries selected per output neuron)")
        if scores is None and select_options.get("score_type", "gradient") != "random":
            raise ValueError("method 'gps' needs gradient scores; run accumulate_gradients first")
        return build_mask(model, scores, k, **select_options)
    if method == "full":
        trainable = {name for name, _ in model.named_parameters()}
    elif method == "linear":
        trainable = head_parameter_names(model)
    else:
        trainable = head_parameter_names(model) | bias_parameters(model)
    return {
        name: torch.full(p.shape, name in trainable, dtype=torch.bool)
        for name, p in model.named_parameters()
    }
