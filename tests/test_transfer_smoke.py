"""Tests of the transfer demo's data lists and configs, and a one-step run of its pipeline."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import train
from gps.checkpoint import merge_run
from gps.config import build_config
from gps.runlog import close_log_file

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "demo"
SPLITS = ("train800", "val200", "train800val200", "test")
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
TARGET_PER_CLASS = {"train800": 20, "val200": 10, "test": 30}


def read_list(folder: Path, split: str) -> list[tuple[str, int]]:
    lines = (folder / f"{split}.txt").read_text().splitlines()
    return [(line.rsplit(None, 1)[0], int(line.rsplit(None, 1)[1])) for line in lines if line]


def original_labels() -> dict[str, int]:
    """Map each image path, relative to data/demo, to its digit."""
    labels = {}
    for split in ("train800", "val200", "test"):
        for path, label in read_list(DEMO / "digits", split):
            labels[str(Path("digits") / path)] = label
    return labels


@pytest.mark.parametrize("folder, classes", [("digits_0to4", SOURCE_CLASSES),
                                             ("digits_5to9", TARGET_CLASSES)])
def test_lists_remap_digits(folder, classes):
    digits = original_labels()
    for split in SPLITS:
        entries = read_list(DEMO / folder, split)
        for path, label in entries:
            image = (DEMO / folder / path).resolve().relative_to(DEMO.resolve())
            assert (DEMO / image).is_file(), f"{folder}/{split}: {path} not found"
            assert digits[str(image)] == classes[label], f"{folder}/{split}: {path} label {label}"


def test_target_lists_are_low_data():
    for split, per_class in TARGET_PER_CLASS.items():
        counts = Counter(label for _, label in read_list(DEMO / "digits_5to9", split))
        assert counts == {label: per_class for label in range(5)}, split


@pytest.mark.parametrize("folder", ["digits_0to4", "digits_5to9"])
def test_train_val_list_is_union(folder):
    union = read_list(DEMO / folder, "train800") + read_list(DEMO / folder, "val200")
    assert read_list(DEMO / folder, "train800val200") == union


def test_configs_share_architecture():
    source = build_config(ROOT / "configs/transfer/source.yaml")
    target = build_config(ROOT / "configs/transfer/target.yaml")
    assert (source.model, source.model_kwargs, source.img_size) == (
        target.model, target.model_kwargs, target.img_size)
    assert source.pretrained == "none"
    assert target.pretrained == "output/transfer_demo/source.safetensors"
    script = (ROOT / "train_scripts/transfer_demo.sh").read_text()
    assert 'OUTPUT=${OUTPUT:-output/transfer_demo}' in script
    assert 'PRETRAINED="$OUTPUT/source.safetensors"' in script


def test_pipeline_one_step(tmp_path):
    tiny = {"epochs": 1, "warmup_epochs": 0, "max_steps_per_epoch": 1,
            "output": str(tmp_path), "selection": {"max_images": 16}}
    source = build_config(ROOT / "configs/transfer/source.yaml",
                          {**tiny, "data_dir": str(DEMO / "digits_0to4")})
    try:
        train.run(source)
    finally:
        close_log_file()
    source_dir = tmp_path / "source" / "custom" / "seed0"
    weights = merge_run(source_dir, tmp_path / "source.safetensors")

    target = build_config(ROOT / "configs/transfer/target.yaml",
                          {**tiny, "data_dir": str(DEMO / "digits_5to9"),
                           "pretrained": str(weights), "k": 2})
    try:
        results = train.run(target)
    finally:
        close_log_file()
    assert results["weights"]["source"] == "file"
    assert results["weights"]["path"] == str(weights.resolve())
    assert results["num_classes"] == 5
    assert results["eval_split"] == "test"
