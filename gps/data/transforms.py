"""Image transforms built from a timm data config.

``data_config`` is the dict that ``timm.data.resolve_data_config(model=...)`` returns, with
``input_size`` (3, H, W), ``interpolation``, ``mean``, ``std`` and ``crop_pct``.

- VTAB-1k and the demo: train and eval are the same direct resize to (H, W) with no crop and no
  augmentation, as in the VTAB-1k protocol of the GPS launch scripts.
- FGVC and custom data: train uses RandomResizedCrop and a horizontal flip. Eval resizes the
  shorter side to H / crop_pct and takes a centre crop of H.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.data.transforms import str_to_interp_mode
from torchvision import transforms as T

DIRECT_RESIZE_BENCHMARKS = ("vtab", "demo")
CROP_BENCHMARKS = ("fgvc", "custom")


def build_train_transform(data_config: Mapping[str, Any], benchmark: str) -> T.Compose:
    """Build the fine-tuning transform of ``benchmark`` from a timm data config."""
    size, interpolation, normalize = _parse_config(data_config)
    if _uses_direct_resize(benchmark):
        return _direct_resize(size, interpolation, normalize)
    return T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=interpolation),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            normalize,
        ]
    )


def build_eval_transform(data_config: Mapping[str, Any], benchmark: str) -> T.Compose:
    """Build the evaluation transform of ``benchmark`` from a timm data config."""
    size, interpolation, normalize = _parse_config(data_config)
    if _uses_direct_resize(benchmark):
        return _direct_resize(size, interpolation, normalize)
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"data_config crop_pct must be in (0, 1], got {crop_pct}")
    height, width = size
    if height == width:
        # An int resizes the shorter side, keeping the aspect ratio, as timm does for squares.
        resize_to: int | tuple[int, int] = int(math.floor(height / crop_pct))
    else:
        resize_to = (int(height / crop_pct), int(width / crop_pct))
    return T.Compose(
        [
            T.Resize(resize_to, interpolation=interpolation),
            T.CenterCrop(size),
            T.ToTensor(),
            normalize,
        ]
    )


class TwoViewTransform:
    """Two independently augmented views of an image, for the SupCon selection pass.

    Each view: RandomResizedCrop, horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with
    probability 0.8, grayscale with probability 0.2, then ToTensor and Normalize, as in the
    contrastive augmentation of the GPS reference code.

    Args:
        data_config: timm data config (``input_size``, ``interpolation``, ``mean``, ``std``).
        scale: Area range of RandomResizedCrop; the default is torchvision's and timm's.
    """

    def __init__(self, data_config: Mapping[str, Any], scale: tuple[float, float] = (0.08, 1.0)):
        size, interpolation, normalize = _parse_config(data_config)
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(size, scale=scale, interpolation=interpolation),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.ToTensor(),
                normalize,
            ]
        )

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(image), self.transform(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


def _uses_direct_resize(benchmark: str) -> bool:
    if benchmark in DIRECT_RESIZE_BENCHMARKS:
        return True
    if benchmark in CROP_BENCHMARKS:
        return False
    known = ", ".join(DIRECT_RESIZE_BENCHMARKS + CROP_BENCHMARKS)
    raise ValueError(f"unknown benchmark '{benchmark}' for transforms; expected one of {known}")


def _direct_resize(size: tuple[int, int], interpolation: Any, normalize: T.Normalize) -> T.Compose:
    return T.Compose([T.Resize(size, interpolation=interpolation), T.ToTensor(), normalize])


def _parse_config(data_config: Mapping[str, Any]) -> tuple[tuple[int, int], Any, T.Normalize]:
    missing = [k for k in ("input_size", "interpolation", "mean", "std") if k not in data_config]
    if missing:
        raise ValueError(
            f"data_config is missing {', '.join(missing)}; pass the dict returned by "
            "timm.data.resolve_data_config(model=model)"
        )
    input_size = tuple(data_config["input_size"])
    if len(input_size) != 3:
        raise ValueError(
            f"data_config input_size must be (channels, height, width), got {input_size}"
        )
    size = (int(input_size[1]), int(input_size[2]))

    name = data_config["interpolation"]
    if name == "random":
        # timm's 'random' picks a mode per image; deterministic transforms need one.
        name = "bicubic"
    try:
        interpolation = str_to_interp_mode(name)
    except KeyError as error:
        raise ValueError(
            f"data_config interpolation '{name}' is not supported; use 'bicubic', 'bilinear' "
            "or 'nearest'"
        ) from error

    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    if len(mean) != input_size[0] or len(std) != input_size[0]:
        raise ValueError(
            f"data_config mean {mean} and std {std} need one value per channel "
            f"({input_size[0]} channels)"
        )
    return size, interpolation, T.Normalize(mean, std)
