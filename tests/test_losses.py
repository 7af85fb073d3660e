"""Tests of gps.losses: SupCon against a loop-based reference and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from gps.losses import SupConLoss, supcon_loss


def _reference_supcon(views: list[torch.Tensor], labels: list[int], temperature: float) -> float:
    """L_out of Khosla et al. (2020), written as explicit loops over anchors and positives."""
    samples = []
    for view in views:
        for i, label in enumerate(labels):
            vector = view[i].double()
            samples.append((vector / vector.norm(), label))
    anchor_losses = []
    for i, (z_i, label_i) in enumerate(samples):
        others = [j for j in range(len(samples)) if j != i]
        denominator = sum(math.exp(float(z_i @ samples[a][0]) / temperature) for a in others)
        positives = [p for p in others if samples[p][1] == label_i]
        if not positives:
            continue
        total = 0.0
        for p in positives:
            total += math.log(math.exp(float(z_i @ samples[p][0]) / temperature) / denominator)
        anchor_losses.append(-total / len(positives))
    return sum(anchor_losses) / len(anchor_losses)


@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
@pytest.mark.parametrize("labels", [[0, 1, 0], [2, 2, 2], [0, 1, 2, 3], [1, 0]])
def test_supcon_matches_reference(temperature, labels):
    generator = torch.Generator().manual_seed(len(labels))
    v1 = torch.randn(len(labels), 6, generator=generator)
    v2 = torch.randn(len(labels), 6, generator=generator)

    value = supcon_loss(torch.cat([v1, v2]), torch.tensor(labels), temperature)

    expected = _reference_supcon([v1, v2], labels, temperature)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_supcon_orthogonal_different_labels():
    # Two images with orthogonal features e1, e2; both views of an image are identical.
    # Each anchor has one positive (its other view, similarity 1) and two negatives
    # (similarity 0), so at t = 1: loss = -log(e / (e + 2)) = log(1 + 2/e) = 0.5514447139...
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    view = torch.stack([e1, e2])

    value = supcon_loss((view, view.clone()), torch.tensor([0, 1]), temperature=1.0)

    assert value.item() == pytest.approx(0.5514447139320511, abs=1e-6)


def test_supcon_orthogonal_same_label():
    # Same features as above, but both images share a label: every anchor has three positives
    # with similarities 1, 0, 0 and the same denominator e + 2, so at t = 1:
    # loss = log(e + 2) - 1/3 = 1.5514447139... - 0.3333333333... = 1.2181113806...
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    view = torch.stack([e1, e2])

    value = supcon_loss((view, view.clone()), torch.tensor([4, 4]), temperature=1.0)

    assert value.item() == pytest.approx(1.2181113806, abs=1e-6)


def test_supcon_scale_invariant():
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(8, 5, generator=generator)
    labels = torch.tensor([0, 1, 1, 2])

    assert supcon_loss(feats * 7.5, labels).item() == pytest.approx(
        supcon_loss(feats, labels).item(), rel=1e-5
    )


def test_supcon_tuple_equals_concatenation():
    generator = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    labels = torch.tensor([0, 1, 0])

    assert torch.equal(supcon_loss((v1, v2), labels), supcon_loss(torch.cat([v1, v2]), labels))


def test_supcon_gradient_finite_at_low_temperature():
    feats = torch.randn(8, 16, requires_grad=True)
    value = supcon_loss(feats, torch.tensor([0, 1, 2, 3]), temperature=0.01)

    value.backward()

    assert torch.isfinite(value)
    assert torch.isfinite(feats.grad).all()


def test_supcon_module_matches_function():
    feats = torch.randn(6, 4)
    labels = torch.tensor([1, 0, 1])

    assert torch.equal(SupConLoss(0.2)(feats, labels), supcon_loss(feats, labels, 0.2))


def test_supcon_single_view_with_repeated_labels():
    feats = torch.randn(3, 4)
    labels = [0, 0, 1]

    value = supcon_loss(feats, torch.tensor(labels), 0.5)

    assert value.item() == pytest.approx(_reference_supcon([feats], labels, 0.5), rel=1e-5)


def test_supcon_rejects_invalid_input():
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(torch.randn(4, 3), torch.tensor([0, 1]), temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        supcon_loss(torch.randn(5, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no anchor has a positive"):
        supcon_loss(torch.randn(2, 3), torch.tensor([0, 1]))
