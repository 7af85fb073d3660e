"""Supervised contrastive loss (SupCon) of Khosla et al., "Supervised Contrastive Learning",
NeurIPS 2020, in its L_out form.

For anchors i over all N = V * B views, positives P(i) = other views with the same label, and
A(i) = all views except i:

    L = 1/N * sum_i  -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a in A(i)} exp(z_i.z_a / t) )

with z the L2-normalised features and t the temperature. The authors' code
(github.com/HobbitLong/SupContrast, losses.py) also multiplies the loss by t / base_temperature,
with base_temperature = 0.07 by default. That factor is 1 at t = 0.07, and a constant factor
cannot change a ranking of gradient magnitudes, so it is left out here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def supcon_loss(
    features: Tensor | tuple[Tensor, ...] | list[Tensor],
    labels: Tensor,
    temperature: float = 0.07,
) -> Tensor:
    """Compute the SupCon loss over all views as anchors.

    Args:
        features: Either a tensor [V * B, D] whose rows are ordered view by view
            (rows i, i + B, i + 2B, ... are the views of image i, as `torch.cat([f1, f2])`
            gives), or a tuple/list of V tensors [B, D], one per view. Features are
            L2-normalised here and computed in float32.
        labels: Integer class labels [B], one per image.
        temperature: Softmax temperature t (> 0).

    Returns:
        The scalar loss, averaged over anchors that have at least one positive.

    Raises:
        ValueError: Inconsistent shapes, a non-positive temperature, or no anchor with a
            positive (one view and all labels distinct).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if isinstance(features, (tuple, list)):
        features = torch.cat(list(features), dim=0)
    labels = labels.reshape(-1)
    batch = labels.numel()
    if features.dim() != 2 or batch == 0 or features.shape[0] % batch != 0:
        raise ValueError(
            f"features must have shape [views * {batch}, dim] for {batch} labels, "
            f"got {tuple(features.shape)}"
        )
    views = features.shape[0] // batch

    z = F.normalize(features.float(), dim=1)
    logits = z @ z.T / temperature
    all_labels = labels.repeat(views)
    self_mask = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    positives = (all_labels[:, None] == all_labels[None, :]) & ~self_mask

    # log-softmax over A(i): the anchor itself is excluded from the denominator.
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive_counts = positives.sum(dim=1)
    has_positive = positive_counts > 0
    if not bool(has_positive.any()):
        raise ValueError("no anchor has a positive: pass at least two views or repeated labels")
    positive_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    per_anchor = -positive_log_prob[has_positive] / positive_counts[has_positive]
    return per_anchor.mean()


class SupConLoss(nn.Module):
    """Module wrapper of `supcon_loss` with a fixed temperature."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, features: Tensor | tuple[Tensor, ...], labels: Tensor) -> Tensor:
        """Compute the loss; see `supcon_loss` for the accepted shapes."""
        return supcon_loss(features, labels, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
