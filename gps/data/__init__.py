"""Datasets for GPS: VTAB-1k, FGVC, custom data and the bundled demo.

Typical use::

    data = load_task_data("vtab/cifar100", "data/vtab-1k", protocol="final")
    train_set = ImageListDataset(data.train.samples, build_train_transform(cfg, "vtab"), seed=0)
    loader = build_loader(train_set, 32, train=True, seed=0)

``python -m gps.data verify --dataset vtab/cifar100 --data-dir data/vtab-1k`` checks a copy of
the data and prints a report.

The names below are imported on first access, so ``import gps.data.registry`` and the verify
command do not load torch, torchvision or timm (several seconds). Only ``ImageListDataset``,
``build_loader`` and the transforms need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DatasetError": "gps.data.datasets",
    "Split": "gps.data.datasets",
    "TaskData": "gps.data.datasets",
    "load_rgb": "gps.data.images",
    "ImageListDataset": "gps.data.loaders",
    "build_loader": "gps.data.loaders",
    "TaskSpec": "gps.data.registry",
    "get_task": "gps.data.registry",
    "list_tasks": "gps.data.registry",
    "TwoViewTransform": "gps.data.transforms",
    "build_eval_transform": "gps.data.transforms",
    "build_train_transform": "gps.data.transforms",
    "PROTOCOLS": "gps.data.verify",
    "SplitStats": "gps.data.verify",
    "VerifyReport": "gps.data.verify",
    "load_task_data": "gps.data.verify",
    "verify_task": "gps.data.verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'gps.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # Static imports of the same names, for type checkers and IDEs.
    from gps.data.datasets import DatasetError, Split, TaskData  # noqa: F401
    from gps.data.images import load_rgb  # noqa: F401
    from gps.data.loaders import ImageListDataset, build_loader  # noqa: F401
    from gps.data.registry import TaskSpec, get_task, list_tasks  # noqa: F401
    from gps.data.transforms import (  # noqa: F401
        TwoViewTransform,
        build_eval_transform,
        build_train_transform,
    )
    from gps.data.verify import (  # noqa: F401
        PROTOCOLS,
        SplitStats,
        VerifyReport,
        load_task_data,
        verify_task,
    )
