"""Custom datasets: a class-per-folder tree, or list files with the VTAB-1k names.

Tree layout: ``<root>/train/<class>/<image>``, ``<root>/test/<class>/<image>`` and an optional
``<root>/val/<class>/<image>``. Class ids number the sorted union of the class folder names of
all three. Protocol ``final`` trains on train (plus val when present) and evaluates on test;
``tune`` trains on train and evaluates on val.
"""

from __future__ import annotations

import os
from pathlib import Path

from gps.data.datasets import Entry, Findings, SplitListing, TaskListing, concatenate_listings
from gps.data.vtab import CUSTOM_LIST_HELP, has_list_files, read_list_layout

TREE_SPLITS = ("train", "val", "test")

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

CUSTOM_LAYOUT_HELP = (
    "Expected either a class-per-folder tree (train/<class>/<image> and test/<class>/<image>, "
    "optionally val/<class>/<image>) or list files with the VTAB-1k names (train800.txt, "
    "val200.txt, train800val200.txt, test.txt, one '<relative image path> <label>' per line). "
    "See data/README.md."
)


def read_custom_layout(task_dir: Path, protocol: str, findings: Findings) -> TaskListing:
    """Read a custom dataset folder, preferring list files over a class-per-folder tree."""
    if has_list_files(task_dir):
        if (task_dir / "train").is_dir():
            findings.warnings.append(
                f"{task_dir} has both list files and a train/ folder; using the list files"
            )
        return read_list_layout(task_dir, protocol, findings, CUSTOM_LIST_HELP)
    if (task_dir / "train").is_dir():
        return _read_tree(task_dir, protocol, findings)
    findings.problems.append(f"no custom dataset found in {task_dir}. {CUSTOM_LAYOUT_HELP}")
    return TaskListing()


def _read_tree(task_dir: Path, protocol: str, findings: Findings) -> TaskListing:
    present = [name for name in TREE_SPLITS if (task_dir / name).is_dir()]
    classes = sorted({c for split in present for c in _class_folders(task_dir / split)})
    label_of = {name: label for label, name in enumerate(classes)}
    splits = {name: _scan_split(task_dir, name, label_of, findings) for name in present}

    listing = TaskListing(class_names=classes, coverage_complete=True)
    if protocol == "final":
        if "test" not in splits:
            hint = " With only train/ and val/, use protocol 'tune'." if "val" in splits else ""
            findings.problems.append(
                f"{task_dir / 'test'} not found: protocol 'final' evaluates on test/.{hint} "
                f"{CUSTOM_LAYOUT_HELP}"
            )
        train_parts = [splits[n] for n in ("train", "val") if n in splits]
        listing.train = concatenate_listings("+".join(p.name for p in train_parts), train_parts)
        listing.eval = splits.get("test")
    else:
        if "val" not in splits:
            findings.problems.append(
                f"{task_dir / 'val'} not found: protocol 'tune' evaluates on val/<class>/. "
                "Add a val/ folder or use protocol 'final'."
            )
        listing.train = splits["train"]
        listing.eval = splits.get("val")
        listing.others = [splits["test"]] if "test" in splits else []
    return listing


def _class_folders(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as items:
        return [i.name for i in items if i.is_dir() and not i.name.startswith(".")]


def _scan_split(
    task_dir: Path, split: str, label_of: dict[str, int], findings: Findings
) -> SplitListing:
    split_dir = task_dir / split
    listing = SplitListing(split, [split_dir], task_dir)
    skipped: list[str] = []
    with os.scandir(split_dir) as items:
        loose = sorted(i.name for i in items if i.is_file() and not i.name.startswith("."))
    if loose:
        findings.warnings.append(
            f"ignored {len(loose)} file(s) directly in {split_dir} (e.g. {loose[0]}); "
            f"images belong in {split_dir}/<class>/"
        )

    for class_name in sorted(_class_folders(split_dir)):
        class_dir = split_dir / class_name
        for folder, subfolders, files in os.walk(class_dir, followlinks=True):
            subfolders.sort()
            for file_name in sorted(files):
                if file_name.startswith("."):
                    continue
                path = os.path.join(folder, file_name)
                if os.path.splitext(file_name)[1].lower() not in IMAGE_EXTENSIONS:
                    skipped.append(path)
                    continue
                relpath = os.path.relpath(path, task_dir)
                listing.entries.append(Entry(relpath, label_of[class_name], relpath))
    if skipped:
        findings.warnings.append(
            f"ignored {len(skipped)} file(s) without an image extension in {split_dir} "
            f"(e.g. {skipped[0]})"
        )
    return listing
