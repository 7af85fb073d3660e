"""ImageListDataset seeding and build_loader on real image files."""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler

from gps.data import ImageListDataset, TwoViewTransform, build_loader, build_train_transform

CONFIG = {
    "input_size": (3, 16, 16),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.9,
}


def _samples(tmp_path, write_image, count: int = 8) -> list[tuple[str, int]]:
    return [(str(write_image(tmp_path / f"{i}.png", i % 3, 24)), i % 3) for i in range(count)]


def _collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def test_same_augmentation_any_num_workers(tmp_path, write_image):
    dataset = ImageListDataset(
        _samples(tmp_path, write_image), build_train_transform(CONFIG, "fgvc"), seed=7
    )
    single = build_loader(dataset, 3, train=True, seed=1, num_workers=0)
    multi = build_loader(dataset, 3, train=True, seed=1, num_workers=2)
    expected_images, expected_labels = _collect(single)
    images, labels = _collect(multi)
    assert torch.equal(labels, expected_labels)
    assert torch.equal(images, expected_images)

    # Persistent workers must see the new epoch, and the new epoch must change the crops.
    dataset.set_epoch(1)
    next_images, _ = _collect(multi)
    next_expected, _ = _collect(single)
    assert torch.equal(next_images, next_expected)
    assert not torch.equal(next_images, images)


def test_item_augmentation_independent_of_order(tmp_path, write_image):
    dataset = ImageListDataset(_samples(tmp_path, write_image, 4), TwoViewTransform(CONFIG), seed=3)
    forward = [dataset[i][0][0] for i in range(4)]
    backward = [dataset[i][0][0] for i in reversed(range(4))][::-1]
    for first, second in zip(forward, backward, strict=True):
        assert torch.equal(first, second)


def test_seeded_item_leaves_global_rng(tmp_path, write_image):
    dataset = ImageListDataset(
        _samples(tmp_path, write_image, 2), build_train_transform(CONFIG, "fgvc"), seed=0
    )
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    dataset[0]
    assert torch.equal(torch.rand(3), expected)


def test_unseeded_dataset_uses_global_rng(tmp_path, write_image):
    dataset = ImageListDataset(
        _samples(tmp_path, write_image, 1), build_train_transform(CONFIG, "fgvc")
    )
    torch.manual_seed(5)
    first = dataset[0][0]
    torch.manual_seed(5)
    assert torch.equal(dataset[0][0], first)
    assert not torch.equal(dataset[0][0], first)


def test_no_transform_returns_rgb_image(tmp_path, write_image):
    path = write_image(tmp_path / "gray.png", 1, 8, mode="L")
    image, label = ImageListDataset([(str(path), 4)])[0]
    assert image.mode == "RGB"
    assert label == 4


def test_train_loader_shuffle_reproducible(tmp_path, write_image):
    dataset = ImageListDataset(
        _samples(tmp_path, write_image), build_train_transform(CONFIG, "vtab")
    )
    first = _collect(build_loader(dataset, 4, train=True, seed=11))[1]
    second = _collect(build_loader(dataset, 4, train=True, seed=11))[1]
    other = _collect(build_loader(dataset, 4, train=True, seed=12))[1]
    in_order = _collect(build_loader(dataset, 4, train=False, seed=11))[1]
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert in_order.tolist() == [i % 3 for i in range(8)]


def test_loader_keeps_last_batch_by_default(tmp_path, write_image):
    dataset = ImageListDataset(
        _samples(tmp_path, write_image, 7), build_train_transform(CONFIG, "vtab")
    )
    assert len(build_loader(dataset, 4, train=True, seed=0)) == 2
    assert len(build_loader(dataset, 4, train=True, seed=0, drop_last=True)) == 1


def test_loader_uses_given_sampler(tmp_path, write_image):
    dataset = ImageListDataset(
        _samples(tmp_path, write_image), build_train_transform(CONFIG, "vtab")
    )
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=False)
    labels = _collect(build_loader(dataset, 2, train=True, seed=0, sampler=sampler))[1]
    assert labels.tolist() == [i % 3 for i in range(1, 8, 2)]
