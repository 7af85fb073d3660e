"""Benchmark task registry: canonical names, aliases, folder names and class counts.

Class counts follow the GPS paper (Zhang et al., CVPR 2024). Folder names follow the common
VTAB-1k list-file distribution and the FGVC distribution used by VPT-lineage code.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

BENCHMARKS = ("vtab", "fgvc", "demo", "custom")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task.

    Attributes:
        name: Canonical name, e.g. ``'vtab/cifar100'``, ``'fgvc/cars'``, ``'demo/digits'``.
        benchmark: One of ``'vtab'``, ``'fgvc'``, ``'demo'``, ``'custom'``.
        folder: Task folder name under the benchmark root (empty for ``'custom'``).
        num_classes: Number of classes; 0 for ``'custom'``, whose count comes from the data.
        group: VTAB-1k group (``'natural'``, ``'specialized'``, ``'structured'``), else None.
    """

    name: str
    benchmark: str
    folder: str
    num_classes: int
    group: str | None


# (task, folder, classes, group, extra aliases)
_VTAB = [
    ("cifar100", "cifar", 100, "natural", ("cifar", "cifar_100")),
    ("caltech101", "caltech101", 102, "natural", ("caltech",)),
    ("dtd", "dtd", 47, "natural", ()),
    ("flowers102", "oxford_flowers102", 102, "natural", ("oxford_flowers_102",)),
    ("pets", "oxford_iiit_pet", 37, "natural", ("oxford_pets", "oxford_iiit_pets", "oxford_pet")),
    ("svhn", "svhn", 10, "natural", ("svhn_cropped",)),
    ("sun397", "sun397", 397, "natural", ("sun",)),
    ("patch_camelyon", "patch_camelyon", 2, "specialized", ("camelyon", "pcam")),
    ("eurosat", "eurosat", 10, "specialized", ()),
    ("resisc45", "resisc45", 45, "specialized", ("resisc",)),
    ("diabetic_retinopathy", "diabetic_retinopathy", 5, "specialized", ("retinopathy",)),
    ("clevr_count", "clevr_count", 8, "structured", ()),
    ("clevr_dist", "clevr_dist", 6, "structured", ("clevr_distance",)),
    ("dmlab", "dmlab", 6, "structured", ()),
    ("kitti", "kitti", 4, "structured", ("kitti_dist", "kitti_distance")),
    ("dsprites_loc", "dsprites_loc", 16, "structured", ("dsprites_location",)),
    ("dsprites_ori", "dsprites_ori", 16, "structured", ("dsprites_orientation",)),
    ("smallnorb_azi", "smallnorb_azi", 18, "structured", ("smallnorb_azimuth",)),
    ("smallnorb_ele", "smallnorb_ele", 9, "structured", ("smallnorb_elevation",)),
]

_FGVC = [
    ("cub", "CUB_200_2011", 200, ("cub200", "cub_200", "cub_2011", "cub_200_2011", "cub2011")),
    ("nabirds", "nabirds", 555, ("na_birds",)),
    ("flowers", "OxfordFlower", 102, ("oxford_flowers", "oxfordflower", "oxfordflowers")),
    ("dogs", "Stanford-dogs", 120, ("stanford_dogs", "stanforddogs")),
    ("cars", "Stanford-cars", 196, ("stanford_cars", "stanfordcars")),
]

# Folder, relative to the FGVC task folder, that the JSON image paths are relative to.
FGVC_IMAGE_SUBFOLDER = {
    "fgvc/cub": "images",
    "fgvc/nabirds": "images",
    "fgvc/dogs": "Images",
    "fgvc/flowers": "",
    "fgvc/cars": "",
}


def _build_registry() -> tuple[dict[str, TaskSpec], dict[str, str]]:
    tasks: dict[str, TaskSpec] = {}
    aliases: dict[str, str] = {}

    def add(spec: TaskSpec, extra: tuple[str, ...]) -> None:
        tasks[spec.name] = spec
        short = spec.name.split("/", 1)[1]
        for alias in (spec.name, short, spec.folder, *extra):
            key = _normalize(alias)
            # Bare names resolve to one task only; the qualified form stays unambiguous.
            assert aliases.get(key, spec.name) == spec.name, f"alias clash: {alias}"
            aliases[key] = spec.name
            aliases[_normalize(f"{spec.benchmark}/{alias}")] = spec.name

    for task, folder, classes, group, extra in _VTAB:
        add(TaskSpec(f"vtab/{task}", "vtab", folder, classes, group), extra)
    for task, folder, classes, extra in _FGVC:
        add(TaskSpec(f"fgvc/{task}", "fgvc", folder, classes, None), extra)
    add(TaskSpec("demo/digits", "demo", "digits", 10, None), ("demo",))
    custom = TaskSpec("custom", "custom", "", 0, None)
    tasks[custom.name] = custom
    aliases["custom"] = custom.name
    return tasks, aliases


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace("vtab_1k/", "vtab/")


_TASKS, _ALIASES = _build_registry()


def get_task(name: str) -> TaskSpec:
    """Look up a task by canonical name or alias (case-insensitive, '-' and '_' alike).

    Raises:
        ValueError: ``name`` is unknown; the message lists the known names and the closest one.
    """
    key = _normalize(name)
    if key in _ALIASES:
        return _TASKS[_ALIASES[key]]
    close = difflib.get_close_matches(key, list(_ALIASES), n=1, cutoff=0.6)
    hint = f" Did you mean '{_ALIASES[close[0]]}'?" if close else ""
    known = ", ".join(_TASKS)
    raise ValueError(
        f"unknown dataset '{name}'.{hint} Known datasets: {known}. Bare task names such as "
        "'cars' or 'cifar100' and the VTAB-1k folder names are accepted too."
    )


def list_tasks(benchmark: str | None = None) -> list[TaskSpec]:
    """List registered tasks in registry order.

    Args:
        benchmark: ``'vtab'``, ``'fgvc'``, ``'demo'`` or ``'custom'``. None lists every task
            with a fixed class count (VTAB-1k, FGVC and the demo), without ``'custom'``.
    """
    if benchmark is None:
        return [spec for spec in _TASKS.values() if spec.benchmark != "custom"]
    if benchmark not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark '{benchmark}'; expected one of {', '.join(BENCHMARKS)}"
        )
    return [spec for spec in _TASKS.values() if spec.benchmark == benchmark]


def tasks_with_folder(folder: str) -> list[TaskSpec]:
    """Return the registered tasks whose task folder is named ``folder``."""
    return [spec for spec in _TASKS.values() if spec.folder and spec.folder == folder]


def tasks_with_classes(benchmark: str, num_classes: int) -> list[TaskSpec]:
    """Return the tasks of ``benchmark`` that have ``num_classes`` classes."""
    return [s for s in list_tasks(benchmark) if s.num_classes == num_classes]
