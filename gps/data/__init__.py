"""Datasets for GPS: VTAB-1k, FGVC, custom data and the bundled demo.

Typical use::

    data = load_task_data("vtab/cifar100", "data/vtab-1k", protocol="final")
    train_set = ImageListDataset(data.train.samples, build_train_transform(cfg, "vtab"), seed=0)
    loader = build_loader(train_set, 32, train=True, seed=0)

``python -m gps.data verify --dataset vtab/cifar100 --data-dir data/vtab-1k`` checks a copy of
the data and prints a report.
"""

from gps.data.datasets import DatasetError, ImageListDataset, Split, TaskData
from gps.data.images import load_rgb
from gps.data.loaders import build_loader
from gps.data.registry import TaskSpec, get_task, list_tasks
from gps.data.transforms import TwoViewTransform, build_eval_transform, build_train_transform
from gps.data.verify import PROTOCOLS, SplitStats, VerifyReport, load_task_data, verify_task

__all__ = [
    "PROTOCOLS",
    "DatasetError",
    "ImageListDataset",
    "Split",
    "SplitStats",
    "TaskData",
    "TaskSpec",
    "TwoViewTransform",
    "VerifyReport",
    "build_eval_transform",
    "build_loader",
    "build_train_transform",
    "get_task",
    "list_tasks",
    "load_rgb",
    "load_task_data",
    "verify_task",
]
