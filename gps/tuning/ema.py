"""Exponential moving average of the trainable values only.

Frozen entries never change, so their average is the pretrained value itself: storing it would
only cost memory. The average lives as compact values (as returned by an engine's
``trainable_values``) and is swapped into the model for evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from gps.tuning.base import TrainableSet


class TrainableEma:
    """EMA with a fixed decay per step: ``avg = decay * avg + (1 - decay) * value``."""

    def __init__(self, values: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.values = {name: value.detach().clone().float() for name, value in values.items()}

    @torch.no_grad()
    def update(self, values: dict[str, torch.Tensor]) -> None:
        """Move the average towards the current trainable values."""
        for name, average in self.values.items():
            average.lerp_(values[name].to(average.device, average.dtype), 1.0 - self.decay)

    def state_dict(self) -> dict:
        """Return the decay and the averaged values."""
        return {"decay": self.decay, "values": self.values}

    def load_state_dict(self, state: dict) -> None:
        """Restore the decay and the averaged values."""
        self.decay = state["decay"]
        self.values = {name: value.clone() for name, value in state["values"].items()}


@contextlib.contextmanager
def swapped_in(model: nn.Module, trainable: TrainableSet,
               values: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Temporarily write ``values`` into the model's trainable entries, restoring them on exit."""
    params = dict(model.named_parameters())
    saved = trainable.gather(params)
    trainable.scatter(params, values)
    try:
        yield model
    finally:
        trainable.scatter(params, saved)
