"""Parts shared by the update engines: the trainable set of a mask and optimizer grouping."""

from __future__ import annotations

import torch
from torch import nn


class TrainableSet:
    """The trainable entries of a model under a mask, per parameter.

    ``kind[name]`` is ``"all"`` (every entry trains), ``"partial"`` (some entries train) or
    ``"none"`` (frozen). For partial tensors ``indices[name]`` contains the flat indices of the
    trainable entries in ascending order.
    """

    def __init__(self, model: nn.Module, mask: dict[str, torch.Tensor]):
        params = dict(model.named_parameters())
        missing = sorted(set(params) - set(mask))
        extra = sorted(set(mask) - set(params))
        if missing or extra:
            raise ValueError(f"mask does not match the model: parameters without a mask entry "
                             f"{missing[:5]}, mask entries without a parameter {extra[:5]}")
        self.mask: dict[str, torch.Tensor] = {}
        self.kind: dict[str, str] = {}
        self.indices: dict[str, torch.Tensor] = {}
        for name, param in params.items():
            entries = mask[name].to(torch.bool).cpu()
            if entries.shape != param.shape:
                raise ValueError(f"mask entry {name!r} has shape {tuple(entries.shape)}, "
                                 f"the parameter has {tuple(param.shape)}")
            self.mask[name] = entries
            count = int(entries.sum())
            if count == 0:
                self.kind[name] = "none"
            elif count == entries.numel():
                self.kind[name] = "all"
            else:
                self.kind[name] = "partial"
                self.indices[name] = entries.flatten().nonzero().squeeze(1)

    def count(self, exclude: set[str] | None = None) -> int:
        """Return the number of trainable entries, leaving out the names in ``exclude``."""
        exclude = exclude or set()
        return sum(int(m.sum()) for n, m in self.mask.items() if n not in exclude)

    def gather(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return copies of the trainable values of ``tensors`` on their device.

        Whole tensors for kind "all", the flat trainable entries for kind "partial".
        """
        values = {}
        for name, kind in self.kind.items():
            if kind == "all":
                values[name] = tensors[name].detach().clone()
            elif kind == "partial":
                flat = tensors[name].detach().reshape(-1)
                values[name] = flat[self.indices[name].to(flat.device)]
        return values

    def scatter(self, tensors: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
        """Write ``values`` (as returned by :meth:`gather`) into ``tensors`` in place."""
        with torch.no_grad():
            for name, value in values.items():
                target = tensors[name]
                if self.kind[name] == "all":
                    target.copy_(value.to(target.device, target.dtype))
                elif self.kind[name] == "partial":
                    flat = target.view(-1)
                    index = self.indices[name].to(target.device)
                    flat.index_copy_(0, index, value.to(target.device, target.dtype))
                else:
                    raise ValueError(f"{name!r} is frozen under this mask and takes no values")


def split_decay(named_params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Split parameters into a decayed group (matrices, kernels) and an undecayed one.

    One-dimensional tensors (biases, layer-scale factors, normalisation) get no decay, following
    the convention of timm's optimizer factory.
    """
    decay = [p for _, p in named_params if p.ndim > 1]
    no_decay = [p for _, p in named_params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
