"""Tests of gps.models: weights from local files, hub failures offline, features."""

from __future__ import annotations

import hashlib
import logging
import socket

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from gps.models import (
    PretrainedWeightsError,
    create_model,
    features,
    head_parameter_names,
    pretrained_kind,
)

ARCH = "vit_tiny_patch16_224"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _tiny_vit(num_classes: int = 5, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(ARCH, pretrained=False, num_classes=num_classes, **{**TINY, **overrides})


def _assert_backbone_equal(model, source) -> None:
    source_state = source.state_dict()
    head = head_parameter_names(model)
    for name, value in model.state_dict().items():
        if name not in head:
            assert torch.equal(value, source_state[name]), name


def _vit_to_npz(model, path) -> None:
    """Write a tiny timm ViT in the layout of the original Google ViT .npz checkpoints."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    head_dim = dim // heads
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    for i in range(len(model.blocks)):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        attn = p + "MultiHeadDotProductAttention_1/"
        w[p + "LayerNorm_0/scale"] = sd[b + "norm1.weight"]
        w[p + "LayerNorm_0/bias"] = sd[b + "norm1.bias"]
        w[p + "LayerNorm_2/scale"] = sd[b + "norm2.weight"]
        w[p + "LayerNorm_2/bias"] = sd[b + "norm2.bias"]
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, part in enumerate(("query", "key", "value")):
            rows = slice(j * dim, (j + 1) * dim)
            w[attn + f"{part}/kernel"] = qkv_w[rows].T.reshape(dim, heads, head_dim)
            w[attn + f"{part}/bias"] = qkv_b[rows].reshape(heads, head_dim)
        w[attn + "out/kernel"] = sd[b + "attn.proj.weight"].reshape(dim, heads, head_dim).transpose(1, 2, 0)
        w[attn + "out/bias"] = sd[b + "attn.proj.bias"]
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


def test_safetensors_round_trip(tmp_path, caplog):
    source = _tiny_vit(num_classes=5)
    path = tmp_path / "tiny.safetensors"
    save_file(source.state_dict(), str(path))
    caplog.set_level(logging.INFO, logger="gps.models")

    model, info = create_model(ARCH, num_classes=3, pretrained=str(path), model_kwargs=TINY)

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.source == "file"
    assert info.path == str(path)
    assert info.sha256 == digest
    assert digest in caplog.text
    assert info.missing_keys == ["head.bias", "head.weight"]
    assert info.unexpected_keys == []
    assert model.get_classifier().weight.shape == (3, 32)
    _assert_backbone_equal(model, source)


def test_pth_nested_state_dict(tmp_path):
    source = _tiny_vit(num_classes=5)
    path = tmp_path / "tiny.pth"
    nested = {"module." + k: v for k, v in source.state_dict().items()}
    torch.save({"state_dict": nested, "epoch": 3}, path)

    model, info = create_model(ARCH, num_classes=7, pretrained=str(path), model_kwargs=TINY)

    assert info.source == "file"
    assert model.get_classifier().weight.shape == (7, 32)
    _assert_backbone_equal(model, source)


def test_checkpoint_head_never_loaded(tmp_path):
    source = _tiny_vit(num_classes=3)
    path = tmp_path / "same_classes.pth"
    torch.save({"model": source.state_dict()}, path)

    model, _ = create_model(ARCH, num_classes=3, pretrained=str(path), model_kwargs=TINY)

    assert not torch.equal(model.head.weight, source.head.weight)


def test_checkpoint_unexpected_key_rejected(tmp_path):
    state = _tiny_vit().state_dict()
    state["blocks.0.attn.extra_scale"] = torch.ones(3)
    path = tmp_path / "extra.pth"
    torch.save(state, path)

    with pytest.raises(ValueError, match=r"unexpected keys \[blocks\.0\.attn\.extra_scale\]"):
        create_model(ARCH, num_classes=3, pretrained=str(path), model_kwargs=TINY)


def test_checkpoint_missing_key_rejected(tmp_path):
    state = _tiny_vit().state_dict()
    del state["blocks.1.mlp.fc2.weight"]
    path = tmp_path / "missing.safetensors"
    save_file(state, str(path))

    with pytest.raises(ValueError, match=r"missing keys \[blocks\.1\.mlp\.fc2\.weight\]"):
        create_model(ARCH, num_classes=3, pretrained=str(path), model_kwargs=TINY)


def test_checkpoint_shape_mismatch_rejected(tmp_path):
    path = tmp_path / "wider.pth"
    torch.save(_tiny_vit(embed_dim=48, num_heads=3).state_dict(), path)

    with pytest.raises(ValueError, match="does not fit the model"):
        create_model(ARCH, num_classes=3, pretrained=str(path), model_kwargs=TINY)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(ValueError, match="absent.safetensors"):
        create_model(ARCH, num_classes=3, pretrained=str(path), model_kwargs=TINY)


def test_position_embedding_resampled(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(_tiny_vit().state_dict(), str(path))

    model, _ = create_model(
        ARCH, num_classes=3, pretrained=str(path), img_size=48,
        model_kwargs={k: v for k, v in TINY.items() if k != "img_size"},
    )

    # 48 / 8 = 6 patches per side, plus the class token.
    assert model.pos_embed.shape == (1, 37, 32)


def test_npz_google_checkpoint(tmp_path):
    source = _tiny_vit(num_classes=5)
    path = tmp_path / "ViT-tiny.npz"
    _vit_to_npz(source, path)

    model, info = create_model(ARCH, num_classes=5, pretrained=str(path), model_kwargs=TINY)

    assert info.source == "file"
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # The npz head has the same shape but must not be loaded: the head stays new.
    assert not torch.equal(model.head.weight, source.head.weight)
    for name, value in model.state_dict().items():
        if not name.startswith("head."):
            assert torch.allclose(value, source.state_dict()[name], atol=1e-6), name


def test_npz_missing_entry_rejected(tmp_path):
    path = tmp_path / "broken.npz"
    _vit_to_npz(_tiny_vit(), path)
    entries = dict(np.load(path))
    del entries["Transformer/encoderblock_1/LayerNorm_2/scale"]
    np.savez(path, **entries)

    with pytest.raises(ValueError, match="LayerNorm_2/scale"):
        create_model(ARCH, num_classes=3, pretrained=str(path), model_kwargs=TINY)


def test_random_init_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="gps.models"):
        _, info = create_model(ARCH, num_classes=3, pretrained="none", model_kwargs=TINY)

    assert info.source == "none"
    assert "not comparable" in caplog.text


def test_hub_offline_clean_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    connections = []

    def record_connection(*args, **kwargs):
        connections.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", record_connection)
    monkeypatch.setattr(socket.socket, "connect", record_connection)

    with pytest.raises(PretrainedWeightsError) as caught:
        create_model(ARCH, num_classes=3, pretrained="vit_tiny_patch16_224.augreg_in21k",
                     model_kwargs=TINY)

    message = str(caught.value)
    assert connections == []
    assert "vit_tiny_patch16_224.augreg_in21k" in message
    assert "--pretrained" in message
    assert "HF_HUB_OFFLINE" in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_hub_tag_of_other_architecture_rejected():
    with pytest.raises(ValueError, match="do not belong to model"):
        create_model("vit_small_patch16_224", num_classes=3,
                     pretrained="vit_base_patch16_224.augreg_in21k")


def test_unknown_hub_tag_rejected():
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        create_model(ARCH, num_classes=3, pretrained="vit_tiny_patch16_224.no_such_tag")


def test_unknown_model_rejected():
    with pytest.raises(ValueError, match="unknown timm model"):
        create_model("no_such_model_xyz", num_classes=3, pretrained=None)


def test_pretrained_kind(tmp_path):
    existing = tmp_path / "weights_without_suffix"
    existing.write_bytes(b"")
    assert pretrained_kind(None) == "none"
    assert pretrained_kind("None") == "none"
    assert pretrained_kind("/missing/ViT-B_16.npz") == "file"
    assert pretrained_kind(str(existing)) == "file"
    assert pretrained_kind("vit_base_patch16_224.augreg_in21k") == "hub"


def test_features_are_pre_logits():
    model = _tiny_vit(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)

    pooled = features(model, x)

    assert pooled.shape == (2, 32)
    assert torch.allclose(model.head(pooled), model(x), atol=1e-6)


def test_rejected_model_argument():
    with pytest.raises(ValueError, match="rejected its arguments"):
        create_model("resnet10t", num_classes=3, pretrained=None, img_size=64)
