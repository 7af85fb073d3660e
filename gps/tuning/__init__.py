"""Update engines: how a mask is enforced while fine-tuning.

An engine takes a model and a mask (parameter name to boolean tensor, True where the entry
trains) and offers the same interface whatever its strategy:

- ``param_groups(weight_decay)``: optimizer parameter groups;
- ``apply_masked_decay(optimizer, weight_decay, decoupled)``: right before ``optimizer.step()``;
- ``after_step()``: right after ``optimizer.step()``;
- ``trainable_values()``: the trained values, compact;
- ``trainable``: the :class:`TrainableSet` of the mask.
"""

from __future__ import annotations

import torch
from torch import nn

from gps.tuning.base import TrainableSet, split_decay
from gps.tuning.dense import DenseEngine
from gps.tuning.ema import TrainableEma, swapped_in

__all__ = ["DenseEngine", "TrainableEma", "TrainableSet", "build_engine", "split_decay",
           "swapped_in"]


def build_engine(name: str, model: nn.Module, mask: dict[str, torch.Tensor]):
    """Create the update engine ``name`` ('dense' or 'sparse') for ``model`` under ``mask``."""
    if name == "dense":
        return DenseEngine(model, mask)
    if name == "sparse":
        from gps.tuning.sparse import SparseEngine

        return SparseEngine(model, mask)
    raise ValueError(f"unknown update engine {name!r}; expected 'dense' or 'sparse'")
