"""Dense mask enforcement: full gradients, with every unselected entry's gradient zeroed.

Tensors with no trainable entry are frozen (``requires_grad=False``), so they get no gradient and
no optimizer state. Tensors with some trainable entries keep a full gradient. A hook multiplies
it by the mask on every precision path, so gradient clipping, loss-scale unscaling and the
optimizer only see the masked gradient. With a zero gradient, Adam, AdamW and SGD (with or
without momentum) leave an entry bit-identical because its moment buffers stay zero. Weight
decay would still move frozen entries, so partially trained tensors get ``weight_decay=0`` in the
optimizer and the decay is applied here to the trainable entries only.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from gps.tuning.base import TrainableSet, split_decay

logger = logging.getLogger(__name__)


class DenseEngine:
    """Enforce a mask with gradient hooks on the model's own parameters."""

    name = "dense"

    def __init__(self, model: nn.Module, mask: dict[str, torch.Tensor]):
        self.model = model
        self.trainable = TrainableSet(model, mask)
        self.partial: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}
        self._hooks = []
        for name, param in model.named_parameters():
            entries = self.trainable.mask[name]
            if self.trainable.kind[name] == "none":
                param.requires_grad_(False)
                continue
            param.requires_grad_(True)
            if self.trainable.kind[name] == "partial":
                keep = entries.to(device=param.device, dtype=param.dtype)
                self.partial[name] = (param, keep)
                self._hooks.append(param.register_hook(lambda grad, keep=keep: grad * keep))

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Return optimizer parameter groups; partially trained tensors get no optimizer decay."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        full = [(n, p) for n, p in named if n not in self.partial]
        groups = split_decay(full, weight_decay)
        partial = [p for p, _ in self.partial.values()]
        if partial:
            groups.append({"params": partial, "weight_decay": 0.0, "masked_decay": True})
        return [g for g in groups if g["params"]]

    def apply_masked_decay(self, optimizer: torch.optim.Optimizer, weight_decay: float,
                           decoupled: bool) -> None:
        """Apply weight decay to the trainable entries of partially trained tensors.

        Called after the gradients are final (unscaled, clipped) and right before
        ``optimizer.step()``. Coupled decay adds ``wd * w`` to the gradient, as Adam and SGD do;
        decoupled decay scales the weight by ``1 - lr * wd``, as AdamW does before its update.
        """
        if weight_decay == 0.0 or not self.partial:
            return
        lr = next(g["lr"] for g in optimizer.param_groups if g.get("masked_decay"))
        with torch.no_grad():
            for param, keep in self.partial.values():
                if decoupled:
                    param.sub_(param * keep, alpha=lr * weight_decay)
                elif param.grad is not None:
                    param.grad.add_(param * keep, alpha=weight_decay)

    def after_step(self) -> None:
        """Nothing to do: the optimizer updated the model's parameters in place."""

    def after_load(self) -> None:
        """Nothing to do: a checkpoint's values were written into the model's parameters."""

    def trainable_values(self) -> dict[str, torch.Tensor]:
        """Return the trained values: whole tensors, or the flat selected entries of partial ones."""
        return self.trainable.gather(dict(self.model.named_parameters()))

    def remove(self) -> None:
        """Remove the gradient hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
