"""Transforms built from timm data configs."""

from __future__ import annotations

import pytest
import timm
import torch
from PIL import Image
from timm.data import resolve_data_config
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from gps.data import TwoViewTransform, build_eval_transform, build_train_transform

CONFIG = {
    "input_size": (3, 32, 24),
    "interpolation": "bilinear",
    "mean": (0.5, 0.4, 0.3),
    "std": (0.2, 0.25, 0.5),
    "crop_pct": 0.8,
}


def _steps(transform: T.Compose, kind: type) -> list:
    return [step for step in transform.transforms if isinstance(step, kind)]


def _image(width: int = 60, height: int = 40) -> Image.Image:
    return Image.new("RGB", (width, height), (128, 64, 32))


@pytest.mark.parametrize("benchmark_name", ["vtab", "demo"])
def test_direct_resize_for_vtab(benchmark_name):
    train = build_train_transform(CONFIG, benchmark_name)
    evaluation = build_eval_transform(CONFIG, benchmark_name)
    assert [type(s) for s in train.transforms] == [T.Resize, T.ToTensor, T.Normalize]
    assert repr(train) == repr(evaluation)
    resize = train.transforms[0]
    assert tuple(resize.size) == (32, 24)
    assert resize.interpolation == InterpolationMode.BILINEAR
    assert train(_image()).shape == (3, 32, 24)


def test_normalize_from_config():
    normalize = _steps(build_eval_transform(CONFIG, "vtab"), T.Normalize)[0]
    assert tuple(normalize.mean) == CONFIG["mean"]
    assert tuple(normalize.std) == CONFIG["std"]
    output = build_eval_transform(CONFIG, "vtab")(_image())
    expected_red = (128 / 255 - 0.5) / 0.2
    assert torch.allclose(output[0], torch.full_like(output[0], expected_red), atol=1e-5)


@pytest.mark.parametrize("benchmark_name", ["fgvc", "custom"])
def test_crop_transforms_for_fgvc(benchmark_name):
    train = build_train_transform(CONFIG, benchmark_name)
    evaluation = build_eval_transform(CONFIG, benchmark_name)
    crop = _steps(train, T.RandomResizedCrop)[0]
    assert crop.size == (32, 24)
    assert crop.interpolation == InterpolationMode.BILINEAR
    assert _steps(train, T.RandomHorizontalFlip)
    resize = _steps(evaluation, T.Resize)[0]
    assert tuple(resize.size) == (40, 30)
    assert _steps(evaluation, T.CenterCrop)[0].size == (32, 24)
    assert train(_image()).shape == (3, 32, 24)
    assert evaluation(_image()).shape == (3, 32, 24)


def test_square_eval_resizes_shorter_side():
    config = {**CONFIG, "input_size": (3, 224, 224), "crop_pct": 0.875}
    resize = _steps(build_eval_transform(config, "fgvc"), T.Resize)[0]
    assert resize.size == 256


def test_timm_data_config_accepted():
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        num_classes=3,
    )
    config = resolve_data_config(model=model)
    transform = build_eval_transform(config, "vtab")
    assert transform(_image()).shape == tuple(config["input_size"])
    assert _steps(transform, T.Resize)[0].interpolation == InterpolationMode.BICUBIC


def test_two_view_transform():
    transform = TwoViewTransform(CONFIG)
    steps = [type(s) for s in transform.transform.transforms]
    assert steps == [
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.RandomApply,
        T.RandomGrayscale,
        T.ToTensor,
        T.Normalize,
    ]
    jitter = transform.transform.transforms[2]
    assert jitter.p == 0.8
    assert isinstance(jitter.transforms[0], T.ColorJitter)
    assert transform.transform.transforms[3].p == 0.2
    torch.manual_seed(0)
    image = Image.frombytes("RGB", (60, 40), bytes(range(256)) * 28 + bytes(32))
    first, second = transform(image)
    assert first.shape == second.shape == (3, 32, 24)
    assert not torch.equal(first, second)


def test_missing_config_key_raises():
    config = {k: v for k, v in CONFIG.items() if k != "mean"}
    with pytest.raises(ValueError, match="missing mean"):
        build_train_transform(config, "vtab")


def test_unknown_interpolation_raises():
    with pytest.raises(ValueError, match="interpolation 'lanczos5'"):
        build_eval_transform({**CONFIG, "interpolation": "lanczos5"}, "fgvc")


def test_unknown_benchmark_raises():
    with pytest.raises(ValueError, match="unknown benchmark 'imagenet'"):
        build_eval_transform(CONFIG, "imagenet")
