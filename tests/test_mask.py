"""Tests of gps.mask: file round trip, validation against a model, and the summary."""

from __future__ import annotations

import json
import os

import pytest
import timm
import torch

from gps.mask import format_summary, load_mask, load_mask_meta, mask_summary, save_mask
from gps.selection import build_mask, method_mask

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, init_values=1e-5)
META = {"k": 2, "loss": "supcon", "dataset": "vtab/dtd", "images": 800, "seed": 0}


def _tiny_vit(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5,
                             **{**TINY, **overrides})


def _gps_mask(model, k: int = 2) -> dict[str, torch.Tensor]:
    return build_mask(model, None, k, score_type="random", generator=torch.Generator().manual_seed(0))


def test_mask_file_round_trip(tmp_path):
    model = _tiny_vit()
    mask = _gps_mask(model)
    path = tmp_path / "masks" / "dtd.pth"

    save_mask(path, mask, model, META)
    loaded = load_mask(path, model)

    assert list(loaded) == list(mask)
    for name, value in mask.items():
        assert loaded[name].dtype == torch.bool
        assert torch.equal(loaded[name], value), name


def test_mask_file_without_model():
    model = _tiny_vit()
    mask = method_mask(model, "bitfit")

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bitfit.pth")
        save_mask(path, mask, model, {"method": "bitfit"})
        loaded = load_mask(path)

    assert all(torch.equal(loaded[n], mask[n]) for n in mask)


def test_mask_file_stores_metadata(tmp_path):
    model = _tiny_vit()
    path = tmp_path / "m.pth"

    save_mask(path, _gps_mask(model), model, META)
    meta = load_mask_meta(path)

    assert meta["k"] == 2
    assert meta["loss"] == "supcon"
    assert meta["dataset"] == "vtab/dtd"
    assert meta["images"] == 800
    assert meta["seed"] == 0
    assert meta["architecture"] == "vit_tiny_patch16_224"
    assert meta["torch_version"] == torch.__version__
    assert meta["timm_version"] == timm.__version__
    assert "created" in meta
    assert meta["num_params"] == sum(p.numel() for p in model.parameters())


def test_mask_file_is_compact(tmp_path):
    model = _tiny_vit(embed_dim=384, num_heads=6)
    mask = _gps_mask(model, k=1)
    path = tmp_path / "small.pth"

    save_mask(path, mask, model, META)

    dense_bytes = sum(m.numel() for m in mask.values())
    # 1 selected weight per row stored as int32: about 4 bytes per output neuron, not per weight.
    assert path.stat().st_size < dense_bytes / 50
    assert [p.name for p in tmp_path.iterdir()] == ["small.pth"]


def test_load_mask_shape_mismatch_named(tmp_path):
    path = tmp_path / "m.pth"
    save_mask(path, _gps_mask(_tiny_vit()), _tiny_vit(), META)
    other = _tiny_vit(embed_dim=48, num_heads=3)

    with pytest.raises(ValueError, match=r"'cls_token' has shape \[1, 1, 32\] there but \[1, 1, 48\]"):
        load_mask(path, other)


def test_load_mask_missing_parameter_named(tmp_path):
    path = tmp_path / "m.pth"
    save_mask(path, _gps_mask(_tiny_vit()), _tiny_vit(), META)
    deeper = _tiny_vit(depth=3)

    with pytest.raises(ValueError, match=r"parameter 'blocks\.2\.norm1\.weight' is missing"):
        load_mask(path, deeper)


def test_load_mask_extra_parameter_named(tmp_path):
    path = tmp_path / "m.pth"
    save_mask(path, _gps_mask(_tiny_vit(depth=3)), _tiny_vit(depth=3), META)

    with pytest.raises(ValueError, match=r"it has parameter 'blocks\.2\.norm1\.weight'"):
        load_mask(path, _tiny_vit())


def test_save_mask_rejects_incomplete_mask(tmp_path):
    model = _tiny_vit()
    mask = _gps_mask(model)
    del mask["head.bias"]

    with pytest.raises(ValueError, match=r"'head\.bias' is missing"):
        save_mask(tmp_path / "m.pth", mask, model, META)


def test_save_mask_rejects_non_json_meta(tmp_path):
    model = _tiny_vit()

    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_mask(tmp_path / "m.pth", _gps_mask(model), model, {"k": torch.tensor(1)})
    assert list(tmp_path.iterdir()) == []


def test_load_mask_rejects_other_files(tmp_path):
    other = tmp_path / "weights.pth"
    torch.save({"weight": torch.zeros(2)}, other)

    with pytest.raises(ValueError, match="not a GPS mask file"):
        load_mask(other)
    with pytest.raises(ValueError, match="mask file not found"):
        load_mask(tmp_path / "absent.pth")


def test_summary_counts_tiny_vit():
    model = _tiny_vit()
    mask = _gps_mask(model, k=2)

    summary = mask_summary(model, mask)

    # Rows: patch_embed 32 + 2 blocks * (qkv 96 + proj 32 + fc1 128 + fc2 32) = 608.
    assert summary["rows"] == {"count": 608, "min_selected": 2, "max_selected": 2}
    assert summary["selected_weights"] == 2 * 608
    assert summary["biases"] == 608
    assert summary["layer_scale"] == 4 * 32
    assert summary["head"] == 5 * 33
    assert summary["trainable"] == 1216 + 608 + 128 + 165
    assert summary["trainable_without_head"] == 1216 + 608 + 128
    assert summary["roles"]["norm"]["trainable"] == 0
    assert summary["layer_types"]["blocks.attn.qkv [Linear]"]["selected_weights"] == 2 * 2 * 96
    assert summary["blocks"]["blocks.1"]["trainable"] == 2 * 288 + 288 + 64
    assert summary["trainable_pct"] == pytest.approx(
        100 * summary["trainable"] / summary["total_params"])
    json.dumps(summary)


def test_format_summary_lists_sections():
    model = _tiny_vit()
    text = format_summary(mask_summary(model, _gps_mask(model)))

    assert "selected weights" in text
    assert "layer scale" in text
    assert "blocks.mlp.fc1 [Linear]" in text
    assert "blocks.0" in text
    assert "total without head:" in text
