"""Reference numbers of GPS and its baselines, as data for the results tables.

Source: Zhang et al., "Gradient-based Parameter Selection for Efficient Fine-Tuning", CVPR 2024,
arXiv 2312.10136, with the numbers as repeated in the V-PETL Bench README. All accuracies are
top-1 in percent on the test split, ViT-B/16 pretrained on ImageNet-21k. The per-task K values
come from the official GPS launch scripts.

Each row stores the per-task accuracies and the mean exactly as printed. ``tests/test_tables.py``
checks that every printed mean agrees with the mean of the printed per-task values.
"""

from __future__ import annotations

from dataclasses import dataclass

FGVC_TASKS: tuple[str, ...] = ("fgvc/cub", "fgvc/nabirds", "fgvc/flowers", "fgvc/dogs", "fgvc/cars")

# The paper's VTAB-1k column order: natural, specialized, structured.
VTAB_GROUPS: dict[str, tuple[str, ...]] = {
    "natural": ("vtab/cifar100", "vtab/caltech101", "vtab/dtd", "vtab/flowers102", "vtab/pets",
                "vtab/svhn", "vtab/sun397"),
    "specialized": ("vtab/patch_camelyon", "vtab/eurosat", "vtab/resisc45",
                    "vtab/diabetic_retinopathy"),
    "structured": ("vtab/clevr_count", "vtab/clevr_dist", "vtab/dmlab", "vtab/kitti",
                   "vtab/dsprites_loc", "vtab/dsprites_ori", "vtab/smallnorb_azi",
                   "vtab/smallnorb_ele"),
}
VTAB_TASKS: tuple[str, ...] = tuple(task for tasks in VTAB_GROUPS.values() for task in tasks)

COLUMN_TITLES: dict[str, str] = {
    "fgvc/cub": "CUB", "fgvc/nabirds": "NABirds", "fgvc/flowers": "Flowers",
    "fgvc/dogs": "Dogs", "fgvc/cars": "Cars",
    "vtab/cifar100": "CIFAR-100", "vtab/caltech101": "Caltech101", "vtab/dtd": "DTD",
    "vtab/flowers102": "Flowers102", "vtab/pets": "Pets", "vtab/svhn": "SVHN",
    "vtab/sun397": "Sun397", "vtab/patch_camelyon": "Camelyon", "vtab/eurosat": "EuroSAT",
    "vtab/resisc45": "Resisc45", "vtab/diabetic_retinopathy": "Retinopathy",
    "vtab/clevr_count": "Clevr-Count", "vtab/clevr_dist": "Clevr-Dist", "vtab/dmlab": "DMLab",
    "vtab/kitti": "KITTI-Dist", "vtab/dsprites_loc": "dSpr-Loc", "vtab/dsprites_ori": "dSpr-Ori",
    "vtab/smallnorb_azi": "sNORB-Azim", "vtab/smallnorb_ele": "sNORB-Ele",
}

# K (selected input connections per output neuron) of the official GPS launch scripts.
PAPER_K: dict[str, int] = {
    "fgvc/cub": 2, "fgvc/nabirds": 20, "fgvc/flowers": 1, "fgvc/dogs": 1, "fgvc/cars": 15,
    **{task: 1 for task in VTAB_TASKS},
    "vtab/patch_camelyon": 2,
}

# Average share of trainable parameters that GPS reports on each benchmark, in percent.
GPS_FGVC_PARAMS_PERCENT = 0.77
GPS_VTAB_PARAMS_PERCENT = 0.25


@dataclass(frozen=True)
class PaperRow:
    """One method's row of a reference table.

    Attributes:
        method: The matching ``method`` of this code ('full', 'linear', 'bitfit' or 'gps').
        name: The method's name in the paper's table, e.g. 'Full fine-tuning'.
        accuracy: Top-1 accuracy in percent per canonical task name.
        mean: The mean over the benchmark's tasks, as printed.
        params: The trainable-parameter entry as printed ('85.8M', '0.77%'), or None.
        params_percent: The same entry in percent of all parameters, when printed as a percentage.
    """

    method: str
    name: str
    accuracy: dict[str, float]
    mean: float
    params: str | None = None
    params_percent: float | None = None


def _row(method: str, name: str, tasks: tuple[str, ...], values: tuple[float, ...], mean: float,
         params: str | None = None, params_percent: float | None = None) -> PaperRow:
    return PaperRow(method, name, dict(zip(tasks, values, strict=True)), mean, params,
                    params_percent)


FGVC_ROWS: tuple[PaperRow, ...] = (
    _row("full", "Full fine-tuning", FGVC_TASKS, (87.3, 82.7, 98.8, 89.4, 84.5), 88.54, "85.8M"),
    _row("linear", "Linear probing", FGVC_TASKS, (85.3, 75.9, 97.9, 86.2, 51.3), 79.32, "0"),
    _row("bitfit", "BitFit", FGVC_TASKS, (87.7, 85.2, 99.2, 86.5, 81.5), 88.02, "0.10M"),
    _row("gps", "GPS", FGVC_TASKS, (89.9, 86.7, 99.7, 92.2, 90.4), 91.78, "0.77%",
         GPS_FGVC_PARAMS_PERCENT),
)

VTAB_ROWS: tuple[PaperRow, ...] = (
    _row("full", "Full fine-tuning", VTAB_TASKS,
         (68.9, 87.7, 64.3, 97.2, 86.9, 87.4, 38.8,
          79.7, 95.7, 84.2, 73.9,
          56.3, 58.6, 41.7, 65.5, 57.5, 46.7, 25.7, 29.1), 65.57),
    _row("linear", "Linear probing", VTAB_TASKS,
         (63.4, 85.0, 63.2, 97.0, 86.3, 36.6, 51.0,
          78.5, 87.5, 68.6, 74.0,
          34.3, 30.6, 33.2, 55.4, 12.5, 20.0, 9.6, 19.2), 52.94),
    _row("bitfit", "BitFit", VTAB_TASKS,
         (72.8, 87.0, 59.2, 97.5, 85.3, 59.9, 51.4,
          78.7, 91.6, 72.9, 69.8,
          61.5, 55.6, 32.4, 55.9, 66.6, 40.0, 15.7, 25.1), 62.05),
    _row("gps", "GPS", VTAB_TASKS,
         (81.1, 94.2, 75.8, 99.4, 91.7, 91.6, 52.4,
          87.9, 96.2, 86.5, 76.5,
          79.9, 62.6, 55.0, 82.4, 84.0, 55.4, 29.7, 46.1), 75.18, "0.25%",
         GPS_VTAB_PARAMS_PERCENT),
)

PAPER_ROWS: dict[str, tuple[PaperRow, ...]] = {"fgvc": FGVC_ROWS, "vtab": VTAB_ROWS}


def paper_row(benchmark: str, method: str) -> PaperRow | None:
    """Return the reference row of ``method`` on ``benchmark`` ('fgvc' or 'vtab'), or None."""
    for row in PAPER_ROWS.get(benchmark, ()):
        if row.method == method:
            return row
    return None
