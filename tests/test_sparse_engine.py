"""Sparse update engine: agreement with the dense engine, exact gradients, checkpoints, errors."""

from __future__ import annotations

import copy
import logging

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from gps.engine import Precision, StepContext, train_step
from gps.tuning import DenseEngine, TrainableEma, sparse
from gps.tuning.sparse import SparseEngine

NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
STEPS = 20
LR = 1e-3
WEIGHT_DECAY = 0.05


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run on one thread: tiny models gain nothing from more, and results stay reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(kind: str) -> nn.Module:
    """Create a tiny randomly initialised model; the same ``kind`` gives the same weights."""
    torch.manual_seed(0)
    if kind == "vit":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                 patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5,
                                 init_values=1e-5)
    if kind == "swin":
        return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32,
                                 patch_size=4, window_size=4, embed_dim=16, depths=(1, 1),
                                 num_heads=(1, 2), num_classes=5, drop_path_rate=0.0)
    if kind == "convnext":
        return timm.create_model("convnext_atto", pretrained=False, depths=(1, 1, 1, 1),
                                 dims=(8, 16, 32, 64), num_classes=5)
    raise ValueError(kind)


def random_rows_mask(param: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Select ``k`` random entries in every row of ``param`` viewed as [out, rest]."""
    rows, columns = param.shape[0], param[0].numel()
    scores = torch.rand(rows, columns, generator=generator)
    chosen = scores.topk(min(k, columns), dim=1).indices
    mask = torch.zeros(rows, columns, dtype=torch.bool)
    mask.scatter_(1, chosen, True)
    return mask.view(param.shape)


def gps_like_mask(model: nn.Module, k: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Build a mask with the structure of a GPS selection, choosing entries at random.

    Linear and conv weights get ``k`` entries per output row. The head, biases and other
    one-dimensional parameters outside normalisation layers (layer-scale) train fully, and
    everything else is frozen.
    """
    generator = torch.Generator().manual_seed(seed)
    head = {id(p) for p in model.get_classifier().parameters()}
    mask = {}
    for module_name, module in model.named_modules():
        for short_name, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{short_name}" if module_name else short_name
            is_layer = isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
            if id(param) in head:
                mask[name] = torch.ones_like(param, dtype=torch.bool)
            elif is_layer and short_name == "weight":
                mask[name] = random_rows_mask(param, k, generator)
            elif param.ndim == 1 and not isinstance(module, NORM_LAYERS):
                mask[name] = torch.ones_like(param, dtype=torch.bool)
            else:
                mask[name] = torch.zeros_like(param, dtype=torch.bool)
    return mask


def random_batch(seed: int = 1, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 5, (batch,), generator=generator)
    return images, targets


def train(kind: str, engine_cls, opt: str, use_ema: bool):
    """Train a tiny model for STEPS steps; return (model, initial weights, mask, engine, ema)."""
    model = make_model(kind)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = gps_like_mask(model)
    engine = engine_cls(model, mask)
    optimizer_cls = torch.optim.AdamW if opt == "adamw" else torch.optim.Adam
    # eps above the float32 noise of gradients that are zero in exact arithmetic (for example
    # key biases under softmax), which Adam would otherwise blow up into lr-sized steps.
    optimizer = optimizer_cls(engine.param_groups(WEIGHT_DECAY), lr=LR, eps=1e-6)
    ema = TrainableEma(engine.trainable_values(), decay=0.9) if use_ema else None
    ctx = StepContext(optimizer=optimizer, engine=engine, precision=Precision("cpu", None),
                      ema=ema, weight_decay=WEIGHT_DECAY, decoupled_decay=opt == "adamw")
    batches = [random_batch(seed) for seed in (1, 2)]
    for step in range(STEPS):
        images, targets = batches[step % 2]
        train_step(model, images, targets, ctx)
    return model, initial, mask, engine, ema


def tolerance(initial: torch.Tensor) -> float:
    """Return 1e-5 of the tensor's scale: its initial size or the distance Adam can move it."""
    return 1e-5 * max(float(initial.abs().max()), LR * STEPS)


@pytest.mark.parametrize("kind", ["vit", "swin", "convnext"])
@pytest.mark.parametrize("opt", ["adam", "adamw"])
@pytest.mark.parametrize("use_ema", [False, True])
def test_sparse_matches_dense(kind, opt, use_ema):
    dense_model, initial, mask, _, dense_ema = train(kind, DenseEngine, opt, use_ema)
    sparse_model, _, _, sparse_engine, sparse_ema = train(kind, SparseEngine, opt, use_ema)
    dense_params = dict(dense_model.named_parameters())
    moved = 0
    for name, sparse_param in sparse_model.named_parameters():
        dense_param, start, frozen = dense_params[name], initial[name], ~mask[name]
        assert torch.equal(sparse_param[frozen], start[frozen]), name
        assert torch.equal(dense_param[frozen], start[frozen]), name
        difference = float((sparse_param - dense_param).detach().abs().max())
        assert difference <= tolerance(start), (name, difference)
        moved += int((sparse_param != start).sum())
    assert moved > 0.5 * sparse_engine.trainable.count()
    if use_ema:
        for name, average in sparse_ema.values.items():
            difference = float((average - dense_ema.values[name]).abs().max())
            assert difference <= tolerance(initial[name]), (name, difference)


def test_model_parameters_unchanged():
    model = make_model("vit")
    names = [n for n, _ in model.named_parameters()]
    keys = list(model.state_dict())
    mask = gps_like_mask(model)
    engine = SparseEngine(model, mask)
    assert [n for n, _ in model.named_parameters()] == names
    assert list(model.state_dict()) == keys
    params = dict(model.named_parameters())
    assert not params["blocks.0.attn.qkv.weight"].requires_grad
    assert params["blocks.0.attn.qkv.bias"].requires_grad
    assert params["blocks.0.ls1.gamma"].requires_grad
    assert not params["pos_embed"].requires_grad
    assert not params["norm.weight"].requires_grad
    model_ids = {id(p) for p in model.parameters()}
    compact = engine.compact_parameters()
    assert len(compact) == sum(kind == "partial" for kind in engine.trainable.kind.values())
    assert all(id(p) not in model_ids for p in compact)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in compact)


def test_param_groups_cover_trainable_entries():
    model = make_model("vit")
    engine = SparseEngine(model, gps_like_mask(model))
    groups = engine.param_groups(0.1)
    total = sum(p.numel() for group in groups for p in group["params"])
    assert total == engine.trainable.count()
    compact_ids = {id(p) for p in engine.compact_parameters()}
    for group in groups:
        for param in group["params"]:
            if id(param) in compact_ids or param.ndim > 1:
                assert group["weight_decay"] == 0.1
            else:
                assert group["weight_decay"] == 0.0


class Wrapper(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def compact_gradient_check(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor,
                           linear_path: str = "auto") -> SparseEngine:
    """Compare the sparse engine's gradients with autograd's dense ones for one layer."""
    torch.manual_seed(3)
    reference = Wrapper(layer)
    sparse_model = Wrapper(copy.deepcopy(layer))
    full_mask = {"layer.weight": mask}
    if layer.bias is not None:
        full_mask["layer.bias"] = torch.ones_like(layer.bias, dtype=torch.bool)
    engine = SparseEngine(sparse_model, full_mask, linear_path=linear_path)
    cotangent = torch.randn_like(layer(x))
    x_reference = x.clone().requires_grad_(True)
    x_sparse = x.clone().requires_grad_(True)
    (reference(x_reference) * cotangent).sum().backward()
    output = sparse_model(x_sparse)
    (output * cotangent).sum().backward()
    assert torch.allclose(output, reference(x), atol=1e-6)
    state = engine.layers["layer.weight"]
    expected = reference.layer.weight.grad.reshape(-1)[state.index]
    assert torch.allclose(state.values.grad, expected, rtol=1e-4, atol=1e-5)
    assert torch.allclose(x_sparse.grad, x_reference.grad, rtol=1e-4, atol=1e-5)
    if layer.bias is not None:
        assert torch.allclose(sparse_model.layer.bias.grad, reference.layer.bias.grad,
                              rtol=1e-4, atol=1e-5)
    return engine


def irregular_mask(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Select a varying number of entries per row, including an empty row and a full row."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=generator) < 0.2
    mask[0] = False
    mask[1] = True
    return mask


@pytest.mark.parametrize("path", ["gather", "product"])
@pytest.mark.parametrize("input_shape", [(6, 40), (2, 5, 40), (2, 3, 2, 40)])
@pytest.mark.parametrize("regular", [True, False])
def test_linear_compact_gradient(path, input_shape, regular):
    torch.manual_seed(0)
    layer = nn.Linear(40, 12)
    if regular:
        mask = random_rows_mask(layer.weight, 2, torch.Generator().manual_seed(1))
    else:
        mask = irregular_mask(tuple(layer.weight.shape))
    engine = compact_gradient_check(layer, torch.randn(input_shape), mask, linear_path=path)
    state = engine.layers["layer.weight"]
    assert state.path == path
    if regular:
        assert state.per_row == 2
        assert state.saved_cols is not None
    else:
        assert state.per_row is None
        assert state.saved_cols is None


@pytest.mark.parametrize("regular", [True, False])
def test_gather_path_in_chunks(monkeypatch, regular):
    monkeypatch.setattr(sparse, "CHUNK_ELEMENTS", 30)
    torch.manual_seed(0)
    layer = nn.Linear(40, 12)
    if regular:
        mask = random_rows_mask(layer.weight, 2, torch.Generator().manual_seed(1))
    else:
        mask = irregular_mask(tuple(layer.weight.shape))
    compact_gradient_check(layer, torch.randn(3, 7, 40), mask, linear_path="gather")


def test_linear_saves_selected_columns_only():
    torch.manual_seed(0)
    layer = nn.Linear(64, 4, bias=False)
    mask = random_rows_mask(layer.weight, 1, torch.Generator().manual_seed(1))
    engine = compact_gradient_check(layer, torch.randn(5, 64), mask)
    state = engine.layers["layer.weight"]
    assert state.saved_cols is not None
    assert state.saved_cols.numel() <= 4


@pytest.mark.parametrize("k, expected", [(1, "gather"), (64, "product")])
def test_linear_path_choice_by_cost(k, expected):
    model = Wrapper(nn.Linear(768, 3072))
    mask = {"layer.weight": random_rows_mask(model.layer.weight, k, torch.Generator()),
            "layer.bias": torch.ones(3072, dtype=torch.bool)}
    engine = SparseEngine(model, mask)
    assert engine.layers["layer.weight"].path == expected


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("make_layer, input_shape", [
    (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9, 9)),
    (lambda: nn.Conv2d(4, 6, 3, dilation=2, padding=2, bias=False), (2, 4, 9, 9)),
    (lambda: nn.Conv2d(4, 6, 4, padding="same"), (2, 4, 8, 8)),
    (lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), (2, 4, 7, 7)),
    (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (2, 4, 11)),
    (lambda: nn.Conv3d(2, 4, 3, padding=1, groups=2), (1, 2, 5, 5, 5)),
])
def test_conv_compact_gradient(make_layer, input_shape):
    torch.manual_seed(0)
    layer = make_layer()
    mask = random_rows_mask(layer.weight, 3, torch.Generator().manual_seed(1))
    engine = compact_gradient_check(layer, torch.randn(input_shape), mask)
    assert engine.layers["layer.weight"].path == "product"


def test_channels_last_conv_write_back():
    layer = nn.Conv2d(4, 6, 3).to(memory_format=torch.channels_last)
    model = Wrapper(layer)
    mask = random_rows_mask(layer.weight, 2, torch.Generator().manual_seed(1))
    engine = SparseEngine(model, {"layer.weight": mask,
                                  "layer.bias": torch.ones(6, dtype=torch.bool)})
    values = engine.layers["layer.weight"].values
    with torch.no_grad():
        values.copy_(torch.arange(values.numel(), dtype=torch.float32))
    engine.after_step()
    assert torch.equal(layer.weight.detach()[mask], values.detach())
    assert layer.weight.is_contiguous(memory_format=torch.channels_last)


def compact_gradients(model: nn.Module, engine: SparseEngine) -> dict[str, torch.Tensor]:
    images, targets = random_batch()
    model.zero_grad(set_to_none=True)
    for param in engine.compact_parameters():
        param.grad = None
    F.cross_entropy(model(images), targets).backward()
    grads = {name: layer.values.grad.clone() for name, layer in engine.layers.items()}
    grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    return grads


def test_gradient_checkpointing_same_gradients():
    model = make_model("vit")
    mask = gps_like_mask(model)
    for name in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
        mask[name] = torch.zeros_like(mask[name])
    engine = SparseEngine(model, mask)
    plain = compact_gradients(model, engine)
    model.set_grad_checkpointing(True)
    checkpointed = compact_gradients(model, engine)
    assert set(plain) == set(checkpointed)
    assert "blocks.0.attn.qkv.weight" in checkpointed
    for name, grad in plain.items():
        assert torch.allclose(checkpointed[name], grad, rtol=1e-5, atol=1e-7), name
        assert bool(grad.abs().sum() > 0), name


def test_reentrant_checkpointing_warns(caplog):
    from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt

    previous = use_reentrant_ckpt()
    set_reentrant_ckpt(True)
    try:
        model = make_model("vit")
        with caplog.at_level(logging.WARNING, logger="gps.tuning.sparse"):
            SparseEngine(model, gps_like_mask(model))
    finally:
        set_reentrant_ckpt(previous)
    assert "reentrant" in caplog.text


def test_checkpoint_round_trip():
    model, _, mask, engine, _ = train("vit", SparseEngine, "adamw", use_ema=False)
    values = {n: v.clone() for n, v in engine.trainable_values().items()}
    fresh = make_model("vit")
    fresh_engine = SparseEngine(fresh, mask)
    fresh_engine.trainable.scatter(dict(fresh.named_parameters()), values)
    fresh_engine.after_load()
    images, _ = random_batch(seed=5)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))
    for name, layer in fresh_engine.layers.items():
        assert torch.equal(layer.values.detach(), values[name]), name
    with torch.enable_grad():
        assert torch.equal(fresh(images), model(images))


def test_values_interchangeable_with_dense_engine():
    model, _, mask, engine, _ = train("convnext", SparseEngine, "adam", use_ema=False)
    dense_model = make_model("convnext")
    dense_engine = DenseEngine(dense_model, mask)
    dense_engine.trainable.scatter(dict(dense_model.named_parameters()),
                                   engine.trainable_values())
    after = dense_engine.trainable_values()
    for name, value in engine.trainable_values().items():
        assert torch.equal(after[name], value), name
    images, _ = random_batch(seed=5)
    model.eval()
    dense_model.eval()
    with torch.no_grad():
        assert torch.equal(dense_model(images), model(images))


def test_remove_restores_forward():
    model = make_model("vit")
    engine = SparseEngine(model, gps_like_mask(model))
    qkv = model.blocks[0].attn.qkv
    assert "forward" in qkv.__dict__
    with torch.no_grad():
        engine.layers["blocks.0.attn.qkv.weight"].values.add_(1.0)
    engine.remove()
    assert "forward" not in qkv.__dict__
    assert engine.compact_parameters() == []
    assert bool(qkv.weight.detach().abs().max() > 0.5)


def test_unsupported_partial_parameter():
    model = make_model("vit")
    mask = gps_like_mask(model)
    mask["norm.weight"] = torch.zeros_like(mask["norm.weight"])
    mask["norm.weight"][0] = True
    with pytest.raises(ValueError, match=r"'norm\.weight'.*--engine dense"):
        SparseEngine(model, mask)
    assert "forward" not in model.blocks[0].attn.qkv.__dict__


def test_unsupported_module_kinds():
    attention = Wrapper(nn.MultiheadAttention(8, 2))
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in attention.named_parameters()}
    mask["layer.in_proj_weight"][:, 0] = True
    with pytest.raises(ValueError, match="in_proj_weight.*--engine dense"):
        SparseEngine(attention, mask)
    transposed = Wrapper(nn.ConvTranspose2d(4, 4, 3))
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in transposed.named_parameters()}
    mask["layer.weight"][0, 0, 0, 0] = True
    with pytest.raises(ValueError, match="--engine dense"):
        SparseEngine(transposed, mask)


def test_invalid_linear_path():
    model = Wrapper(nn.Linear(4, 4))
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="linear_path"):
        SparseEngine(model, mask, linear_path="fast")


class DirectWeightUse(nn.Module):
    """Uses one layer's weight without calling the layer, which bypasses the engine."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.second = nn.Linear(6, 3)

    def forward(self, x):
        return self.second(F.linear(x, self.first.weight, self.first.bias))


def test_missing_gradient_warns(caplog):
    model = DirectWeightUse()
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for name in ("first.weight", "second.weight"):
        mask[name] = random_rows_mask(model.get_parameter(name), 2, torch.Generator())
    engine = SparseEngine(model, mask)
    model(torch.randn(2, 6)).sum().backward()
    with caplog.at_level(logging.WARNING, logger="gps.tuning.sparse"):
        engine.after_step()
    assert "first.weight" in caplog.text
    assert "second.weight" not in caplog.text


@pytest.mark.parametrize("path", ["gather", "product"])
def test_bf16_autocast_gradients_close_to_dense(path):
    images, targets = random_batch()
    trained = {}
    for engine_name in ("dense", "sparse"):
        model = make_model("vit")
        mask = gps_like_mask(model)
        if engine_name == "dense":
            engine = DenseEngine(model, mask)
        else:
            engine = SparseEngine(model, mask, linear_path=path)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images)
        assert logits.dtype == torch.bfloat16
        F.cross_entropy(logits.float(), targets).backward()
        trained[engine_name] = (model, engine)
    dense_model, _ = trained["dense"]
    _, sparse_engine = trained["sparse"]
    dense_params = dict(dense_model.named_parameters())
    for name, layer in sparse_engine.layers.items():
        expected = dense_params[name].grad.reshape(-1)[layer.index]
        assert layer.values.grad.dtype == torch.float32
        scale = float(expected.abs().max())
        difference = float((layer.values.grad - expected).abs().max())
        assert difference <= 0.05 * scale, (name, difference, scale)
