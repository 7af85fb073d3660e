"""Shared fixtures: small dataset folders of real image files in the on-disk layouts.

Each factory fixture returns a function, so one test can build several folders:

- ``write_image(path, label=0, size=16, mode="RGB")`` writes one image whose colour depends on
  the label.
- ``make_vtab_folder(root, task_folder, num_classes, counts=None)`` writes a VTAB-1k task folder
  (``train800.txt``, ``val200.txt``, ``train800val200.txt``, ``test.txt`` and ``images/``).
- ``make_fgvc_folder(root, task_folder, num_classes, counts=None)`` writes an FGVC task folder
  (``train.json``, ``val.json``, ``test.json`` and the images).
- ``make_class_tree(root, classes, counts=None)`` writes a class-per-folder custom dataset.

Labels cycle through the classes, so a split with at least ``num_classes`` images has every
class.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

VTAB_SPLITS = ("train800", "val200", "test")
FGVC_SPLITS = ("train", "val", "test")


def _write_image(path: Path, label: int = 0, size: int = 16, mode: str = "RGB") -> Path:
    """Write a small image whose colour follows the label, with a little per-pixel noise."""
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.int64)
    pixels = np.clip(base + rng.integers(-20, 21, size=(size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def write_image() -> Callable[..., Path]:
    return _write_image


@pytest.fixture
def make_vtab_folder() -> Callable[..., Path]:
    """Return ``make(root, task_folder, num_classes, counts=None, size=16, ext="jpg")``.

    ``counts`` maps 'train800', 'val200' and 'test' to image counts (default: 2, 1 and 1
    images per class). ``train800val200.txt`` is the concatenation of the first two lists.
    Returns the task folder.
    """

    def make(
        root: Path,
        task_folder: str,
        num_classes: int,
        counts: dict[str, int] | None = None,
        size: int = 16,
        ext: str = "jpg",
    ) -> Path:
        counts = {**_default_counts(VTAB_SPLITS, num_classes, (2, 1, 1)), **(counts or {})}
        task_dir = Path(root) / task_folder
        lines: dict[str, list[str]] = {}
        for split in VTAB_SPLITS:
            lines[split] = []
            for index in range(counts[split]):
                label = index % num_classes
                relpath = f"images/{split}/{index:05d}.{ext}"
                _write_image(task_dir / relpath, label, size)
                lines[split].append(f"{relpath} {label}")
        lines["train800val200"] = lines["train800"] + lines["val200"]
        for split, split_lines in lines.items():
            (task_dir / f"{split}.txt").write_text("".join(f"{line}\n" for line in split_lines))
        return task_dir

    return make


@pytest.fixture
def make_fgvc_folder() -> Callable[..., Path]:
    """Return ``make(root, task_folder, num_classes, counts=None, image_subdir="images",
    first_class_id=1, size=16)``.

    ``counts`` maps 'train', 'val' and 'test' to image counts (default: 2, 1 and 1 per class).
    Images go to ``<task>/<image_subdir>/<class folder>/<name>.jpg``; the JSON keys are
    relative to ``image_subdir`` and the class ids start at ``first_class_id``, as CUB's do.
    Returns the task folder.
    """

    def make(
        root: Path,
        task_folder: str,
        num_classes: int,
        counts: dict[str, int] | None = None,
        image_subdir: str = "images",
        first_class_id: int = 1,
        size: int = 16,
    ) -> Path:
        counts = {**_default_counts(FGVC_SPLITS, num_classes, (2, 1, 1)), **(counts or {})}
        task_dir = Path(root) / task_folder
        image_root = task_dir / image_subdir if image_subdir else task_dir
        task_dir.mkdir(parents=True, exist_ok=True)
        for split in FGVC_SPLITS:
            mapping = {}
            for index in range(counts[split]):
                label = index % num_classes
                relpath = f"{label:03d}.class_{label}/{split}_{index:05d}.jpg"
                _write_image(image_root / relpath, label, size)
                mapping[relpath] = label + first_class_id
            (task_dir / f"{split}.json").write_text(json.dumps(mapping, indent=1))
        return task_dir

    return make


@pytest.fixture
def make_class_tree() -> Callable[..., Path]:
    """Return ``make(root, classes, counts=None, size=16)`` for a class-per-folder dataset.

    ``classes`` is a list of class folder names or a count (names 'class_0', ...). ``counts``
    maps 'train', 'val' and 'test' to images per class (default 2, 0 and 1); a split with 0
    images per class gets no folder. Returns ``root``.
    """

    def make(
        root: Path,
        classes: list[str] | int,
        counts: dict[str, int] | None = None,
        size: int = 16,
    ) -> Path:
        names = [f"class_{i}" for i in range(classes)] if isinstance(classes, int) else classes
        counts = {"train": 2, "val": 0, "test": 1, **(counts or {})}
        for split, per_class in counts.items():
            for label, name in enumerate(names):
                for index in range(per_class):
                    _write_image(Path(root) / split / name / f"{index:03d}.png", label, size)
        return Path(root)

    return make


def _default_counts(
    splits: tuple[str, ...], num_classes: int, per_class: tuple[int, ...]
) -> dict[str, int]:
    return {split: num_classes * n for split, n in zip(splits, per_class, strict=True)}
