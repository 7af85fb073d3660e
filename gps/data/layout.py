"""Locating a task folder under ``--data-dir`` and reading its split files."""

from __future__ import annotations

from pathlib import Path

from gps.data.custom import read_custom_layout
from gps.data.datasets import Findings, TaskListing
from gps.data.fgvc import fgvc_layout_help, has_json_files, read_fgvc_layout
from gps.data.registry import TaskSpec, get_task, tasks_with_folder
from gps.data.vtab import DEMO_LAYOUT_HELP, VTAB_LAYOUT_HELP, has_list_files, read_list_layout

DEFAULT_ROOTS = {"vtab": "data/vtab-1k", "fgvc": "data/fgvc", "demo": "data/demo"}


def resolve_task_dir(spec: TaskSpec, data_dir: Path, findings: Findings) -> Path | None:
    """Find the task folder: ``data_dir/<folder>``, or ``data_dir`` itself.

    Returns:
        The task folder, or None after adding a problem that describes the expected layout.
    """
    if not data_dir.exists():
        findings.problems.append(f"data dir not found: {data_dir}. {_where_to_point(spec)}")
        return None
    if not data_dir.is_dir():
        findings.problems.append(f"data dir is not a folder: {data_dir}. {_where_to_point(spec)}")
        return None
    if spec.benchmark == "custom":
        return data_dir

    if (data_dir / spec.folder).is_dir():
        return data_dir / spec.folder
    if _has_split_files(spec, data_dir):
        return data_dir
    renamed = _folder_under_other_name(spec, data_dir)
    if renamed is not None and renamed.name != spec.folder:
        findings.warnings.append(
            f"using {renamed} as the task folder of {spec.name}; the usual name is '{spec.folder}'"
        )
    if renamed is not None:
        return renamed

    if not _is_other_task_folder(spec, data_dir, findings):
        found = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
        listed = ", ".join(found[:20]) if found else "no folders"
        findings.problems.append(
            f"task folder '{spec.folder}' of {spec.name} not found under {data_dir} "
            f"(it contains: {listed}).{_other_layout_hint(spec, data_dir)} "
            f"{_where_to_point(spec)}"
        )
    return None


def check_folder_identity(spec: TaskSpec, task_dir: Path, findings: Findings) -> None:
    """Add a problem when ``task_dir`` carries the folder name of another registered task."""
    if spec.benchmark != "custom" and task_dir.name != spec.folder:
        _is_other_task_folder(spec, task_dir, findings)


def read_task_listing(
    spec: TaskSpec, task_dir: Path, protocol: str, findings: Findings
) -> TaskListing:
    """Read the split files of ``spec``'s layout for ``protocol``."""
    if spec.benchmark == "fgvc":
        return read_fgvc_layout(spec, task_dir, protocol, findings)
    if spec.benchmark == "custom":
        return read_custom_layout(task_dir, protocol, findings)
    layout_help = DEMO_LAYOUT_HELP if spec.benchmark == "demo" else VTAB_LAYOUT_HELP
    return read_list_layout(task_dir, protocol, findings, layout_help)


def _other_layout_hint(spec: TaskSpec, folder: Path) -> str:
    if spec.benchmark != "fgvc" and has_json_files(folder):
        return (
            f" {folder} contains train.json/val.json/test.json, the FGVC layout; pass an FGVC "
            "dataset name such as fgvc/flowers if it is one."
        )
    if spec.benchmark == "fgvc" and has_list_files(folder):
        return (
            f" {folder} contains VTAB-1k list files (train800.txt, ...); pass a VTAB-1k or "
            "custom dataset name if it is one."
        )
    return ""


def _has_split_files(spec: TaskSpec, folder: Path) -> bool:
    return has_json_files(folder) if spec.benchmark == "fgvc" else has_list_files(folder)


def _folder_under_other_name(spec: TaskSpec, data_dir: Path) -> Path | None:
    # Accept a task folder named by one of the task's aliases ('cifar100' for 'cifar'),
    # and a benchmark root one level further down ('data/' instead of 'data/vtab-1k/').
    for child in sorted(data_dir.iterdir()):
        if (
            child.is_dir()
            and _alias_target(child.name) == spec.name
            and _has_split_files(spec, child)
        ):
            return child
    default_root = DEFAULT_ROOTS.get(spec.benchmark)
    if default_root is not None:
        nested = data_dir / Path(default_root).name / spec.folder
        if nested.is_dir():
            return nested
    return None


def _alias_target(name: str) -> str | None:
    try:
        return get_task(name).name
    except ValueError:
        return None


def _is_other_task_folder(spec: TaskSpec, folder: Path, findings: Findings) -> bool:
    others = [task for task in tasks_with_folder(folder.name) if task.name != spec.name]
    if not others:
        return False
    other = others[0]
    findings.problems.append(
        f"{folder} is the task folder of {other.name} ('{other.folder}'), but the dataset is "
        f"{spec.name}, whose folder is '{spec.folder}'. Pass --dataset {other.name}, or point "
        f"--data-dir at the benchmark root or at the '{spec.folder}' folder."
    )
    return True


def _where_to_point(spec: TaskSpec) -> str:
    if spec.benchmark == "custom":
        return "Pass the folder of your dataset; see data/README.md for the layouts."
    root = DEFAULT_ROOTS[spec.benchmark]
    if spec.benchmark == "fgvc":
        layout = fgvc_layout_help(spec)
    elif spec.benchmark == "demo":
        layout = DEMO_LAYOUT_HELP
    else:
        layout = VTAB_LAYOUT_HELP
    return (
        f"Pass the benchmark root (default {root}/, containing {spec.folder}/) or the task "
        f"folder itself. {layout}"
    )
