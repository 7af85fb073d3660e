"""Tests of gps.selection: structural rules, top-K selection and the gradient pass."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from gps.data import ImageListDataset, TwoViewTransform, build_loader
from gps.mask import format_summary, mask_summary
from gps.models import features
from gps.selection import (
    accumulate_gradients,
    always_trainable,
    build_mask,
    is_norm_layer,
    method_mask,
    random_scores,
    select,
    select_topk,
    selectable_weights,
)

TINY_MODELS = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                         num_heads=2, init_values=1e-5)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=4, embed_dim=16,
                                                  depths=(1, 1), num_heads=(1, 2), window_size=4)),
    "convnext": ("convnext_tiny", dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))),
    "resnet": ("resnet10t", dict(channels=(8, 16, 32, 64), stem_width=8)),
}
DATA_CONFIG = dict(input_size=(3, 32, 32), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


def _tiny(family: str, num_classes: int = 5) -> nn.Module:
    name, kwargs = TINY_MODELS[family]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def _write_images(folder, count: int = 6) -> list[tuple[str, int]]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
        path = folder / f"image_{i}.png"
        Image.fromarray(pixels).save(path)
        samples.append((str(path), i % 3))
    return samples


def _two_view_loader(samples, batch_size: int = 4):
    dataset = ImageListDataset(samples, TwoViewTransform(DATA_CONFIG), seed=0)
    return build_loader(dataset, batch_size, train=False, seed=0)


def _tensor_loader(batches: int = 2, batch_size: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        v1 = torch.randn(batch_size, 3, 32, 32, generator=generator)
        v2 = torch.randn(batch_size, 3, 32, 32, generator=generator)
        out.append(((v1, v2), torch.arange(batch_size) % 2))
    return out


@pytest.fixture(scope="module")
def vit_base():
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_tiny_models_structural_mask(family):
    model = _tiny(family)
    k = 2
    mask = build_mask(model, None, k, score_type="random", generator=torch.Generator().manual_seed(0))
    head = model.get_classifier()

    assert set(mask) == {name for name, _ in model.named_parameters()}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        own = dict(module.named_parameters(recurse=False))
        if module is head:
            for name in own:
                assert mask[prefix + name].all(), prefix + name
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            rows = mask[prefix + "weight"].reshape(module.weight.shape[0], -1).sum(dim=1)
            assert (rows == k).all(), prefix + "weight"
            if module.bias is not None:
                assert mask[prefix + "bias"].all(), prefix + "bias"
        elif is_norm_layer(module):
            for name in own:
                assert not mask[prefix + name].any(), prefix + name


def test_vit_layer_scale_and_embeddings():
    model = _tiny("vit")
    mask = build_mask(model, None, 1, score_type="random")

    assert mask["blocks.0.ls1.gamma"].all()
    assert mask["blocks.1.ls2.gamma"].all()
    assert not mask["pos_embed"].any()
    assert not mask["cls_token"].any()
    assert not mask["norm.weight"].any()
    assert not mask["norm.bias"].any()
    assert not mask["blocks.0.norm1.bias"].any()


def test_convnext_gamma_trainable_head_norm_frozen():
    model = _tiny("convnext")
    mask = build_mask(model, None, 1, score_type="random")

    assert mask["stages.2.blocks.0.gamma"].all()
    assert mask["head.fc.weight"].all()
    assert not mask["head.norm.weight"].any()
    assert not mask["stem.1.bias"].any()
    assert mask["stages.0.blocks.0.conv_dw.weight"].reshape(8, -1).sum(dim=1).eq(1).all()


def test_swin_relative_position_table_frozen():
    model = _tiny("swin")
    mask = build_mask(model, None, 1, score_type="random")

    assert not mask["layers.0.blocks.0.attn.relative_position_bias_table"].any()
    assert not mask["patch_embed.norm.weight"].any()
    assert mask["layers.1.downsample.reduction.weight"].sum() == 32


def test_selectable_excludes_head_and_norms():
    model = _tiny("vit")
    names = set(selectable_weights(model))

    assert "patch_embed.proj.weight" in names
    assert "blocks.0.attn.qkv.weight" in names
    assert "head.weight" not in names
    assert "blocks.0.norm1.weight" not in names
    assert "head.bias" in always_trainable(model)
    assert "blocks.0.mlp.fc1.bias" in always_trainable(model)
    assert "pos_embed" not in always_trainable(model)


def test_vit_base_k1_counts(vit_base):
    mask = build_mask(vit_base, None, 1, score_type="random",
                      generator=torch.Generator().manual_seed(0))
    summary = mask_summary(vit_base, mask)
    table = format_summary(summary)

    assert summary["selected_weights"] == 83_712
    assert summary["biases"] == 83_712
    assert summary["trainable_without_head"] == 167_424
    assert summary["head"] == 769 * 10
    assert summary["trainable"] == 167_424 + 7_690
    assert summary["rows"] == {"count": 83_712, "min_selected": 1, "max_selected": 1}
    assert summary["backbone_params"] == 85_798_656
    assert "167,424" in table
    assert "83,712" in table
    assert "7,690" in table


def test_k_larger_than_row_width():
    model = _tiny("vit")
    scores = random_scores(model)

    with pytest.raises(ValueError, match=r"row width 32 of 'blocks\.0\.attn\.qkv\.weight'"):
        select_topk(scores, 33)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_invalid_k_rejected(k):
    with pytest.raises(ValueError, match="K must be an integer"):
        select_topk({"w": torch.rand(3, 4)}, k)


def test_topk_matches_sort():
    scores = {"a": torch.randn(7, 3, 2, 2), "b": torch.randn(5, 9)}
    k = 3

    chosen = select_topk(scores, k)

    for name, score in scores.items():
        rows = score.reshape(score.shape[0], -1).abs()
        expected = torch.zeros_like(rows, dtype=torch.bool)
        expected.scatter_(1, torch.argsort(rows, dim=1, descending=True)[:, :k], True)
        assert torch.equal(chosen[name].reshape(rows.shape), expected), name
        assert chosen[name].shape == score.shape


def test_topk_ties_take_lowest_index():
    scores = {"w": torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 2.0, 2.0], [-3.0, 1.0, 3.0, 3.0]])}

    chosen = select_topk(scores, 2)["w"]

    assert chosen[0].tolist() == [True, True, False, False]
    assert chosen[1].tolist() == [False, True, True, False]
    assert chosen[2].tolist() == [True, False, True, False]


def test_layer_and_network_granularity():
    generator = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(4, 6, generator=generator), "b": torch.rand(3, 10, generator=generator) * 2}

    layer = select(scores, 2, granularity="layer")
    network = select(scores, 2, granularity="network")

    assert int(layer["a"].sum()) == 8
    assert int(layer["b"].sum()) == 6
    assert sum(int(m.sum()) for m in network.values()) == 14
    chosen = torch.cat([scores[n][network[n]] for n in scores])
    rest = torch.cat([scores[n][~network[n]] for n in scores])
    assert chosen.min() >= rest.max()


def test_random_scores_same_budget():
    model = _tiny("vit")
    first = build_mask(model, None, 3, score_type="random", generator=torch.Generator().manual_seed(1))
    again = build_mask(model, None, 3, score_type="random", generator=torch.Generator().manual_seed(1))
    other = build_mask(model, None, 3, score_type="random", generator=torch.Generator().manual_seed(2))

    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first["blocks.0.mlp.fc2.weight"], other["blocks.0.mlp.fc2.weight"])
    assert first["blocks.0.mlp.fc2.weight"].sum(dim=1).eq(3).all()


def test_gradient_pass_bit_identical(tmp_path):
    samples = _write_images(tmp_path)
    runs = []
    for _ in range(2):
        model = _tiny("vit")
        scores = accumulate_gradients(model, _two_view_loader(samples), loss="supcon")
        runs.append((scores, build_mask(model, scores, 2)))

    (first, first_mask), (second, second_mask) = runs
    assert first.images == 6
    assert first.batches == 2
    assert first.mean_loss == second.mean_loss
    for name in first.scores:
        assert torch.equal(first.scores[name], second.scores[name]), name
    for name in first_mask:
        assert torch.equal(first_mask[name], second_mask[name]), name
    assert any(bool(s.any()) for s in first.scores.values())


def test_gradient_pass_sums_batches():
    model = _tiny("vit")
    loader = _tensor_loader(batches=3)

    scores = accumulate_gradients(model, loader, loss="supcon", temperature=0.1)

    reference = _tiny("vit")
    reference.train()
    from gps.losses import supcon_loss

    for (v1, v2), labels in loader:
        supcon_loss(features(reference, torch.cat([v1, v2])), labels, 0.1).backward()
    for name, p in selectable_weights(reference).items():
        assert torch.allclose(scores.scores[name], p.grad.abs(), rtol=1e-5, atol=1e-8), name


def test_gradient_pass_restores_model():
    model = _tiny("resnet")
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    scores = accumulate_gradients(model, _tensor_loader(), loss="supcon")

    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert p.requires_grad == flags[name], name
    assert set(scores.scores) == set(selectable_weights(model))


def test_gradient_pass_max_images():
    model = _tiny("vit")

    scores = accumulate_gradients(model, _tensor_loader(batches=3, batch_size=3), max_images=4)

    assert scores.images == 4
    assert scores.batches == 2


def test_cross_entropy_pass():
    model = _tiny("convnext")

    ce = accumulate_gradients(model, _tensor_loader(), loss="ce", num_classes=5)
    supcon = accumulate_gradients(model, _tensor_loader(), loss="supcon")

    assert ce.loss == "ce"
    assert set(ce.scores) == set(supcon.scores)
    assert not torch.equal(ce.scores["stages.3.blocks.0.mlp.fc2.weight"],
                           supcon.scores["stages.3.blocks.0.mlp.fc2.weight"])


def test_gradient_pass_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        accumulate_gradients(_tiny("vit"), _tensor_loader(), num_classes=1)


@pytest.mark.parametrize("family", ["swin", "convnext", "resnet"])
def test_features_of_other_families(family):
    model = _tiny(family).eval()
    pooled = features(model, torch.randn(2, 3, 32, 32))

    assert pooled.shape == (2, model.num_features)


def test_method_masks():
    model = _tiny("vit")
    full = method_mask(model, "full")
    linear = method_mask(model, "linear")
    bitfit = method_mask(model, "bitfit")

    assert all(m.all() for m in full.values())
    assert {n for n, m in linear.items() if m.any()} == {"head.weight", "head.bias"}
    assert bitfit["blocks.0.norm1.bias"].all()
    assert bitfit["blocks.0.attn.qkv.bias"].all()
    assert bitfit["head.weight"].all()
    assert not bitfit["blocks.0.ls1.gamma"].any()
    assert not bitfit["blocks.0.attn.qkv.weight"].any()
    with pytest.raises(ValueError, match="needs K"):
        method_mask(model, "gps")
    with pytest.raises(ValueError, match="unknown method"):
        method_mask(model, "lora")


def test_build_mask_rejects_foreign_scores():
    model = _tiny("vit")
    scores = random_scores(model)
    del scores["blocks.1.mlp.fc1.weight"]

    with pytest.raises(ValueError, match=r"no score for selectable weight 'blocks\.1\.mlp\.fc1\.weight'"):
        build_mask(model, scores, 1)


def test_gradient_pass_sums_over_processes(monkeypatch):
    import torch.distributed as dist

    single = accumulate_gradients(_tiny("vit"), _tensor_loader())

    def all_reduce_two_equal_ranks(tensor, *args, **kwargs):
        # Two processes with identical shards: the sum doubles every value.
        tensor.mul_(2)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *args, **kwargs: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce_two_equal_ranks)
    summed = accumulate_gradients(_tiny("vit"), _tensor_loader())

    assert summed.images == 2 * single.images
    for name, score in single.scores.items():
        assert torch.equal(summed.scores[name], 2 * score), name
