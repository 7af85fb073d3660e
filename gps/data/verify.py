"""Verification of a task's files, and loading of its splits after verification passes.

The checks are cheap enough for sets of tens of thousands of images: list files are parsed and
each listed path is tested with ``os.path.exists``. Images are decoded only on request.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from gps.data.datasets import (
    DatasetError,
    Findings,
    Split,
    SplitListing,
    TaskData,
    TaskListing,
)
from gps.data.images import load_rgb
from gps.data.layout import check_folder_identity, read_task_listing, resolve_task_dir
from gps.data.registry import TaskSpec, get_task, tasks_with_classes

logger = logging.getLogger(__name__)

PROTOCOLS = ("final", "tune")

_EXAMPLES = 3
_HINT_SAMPLE = 20
_MAX_SCANNED_SUBFOLDERS = 200


@dataclass
class SplitStats:
    """Counts for one split.

    Attributes:
        name: Split name, e.g. ``'train800val200'``.
        role: ``'train'`` or ``'eval'``.
        files: The split files (or folders) it was read from.
        num_images: Number of listed images.
        num_classes_present: Number of classes with at least one image.
        smallest_class: ``(label, count)`` of the class with the fewest images, or None.
        largest_class: ``(label, count)`` of the class with the most images, or None.
    """

    name: str
    role: str
    files: list[str]
    num_images: int
    num_classes_present: int
    smallest_class: tuple[int, int] | None
    largest_class: tuple[int, int] | None


@dataclass
class VerifyReport:
    """Result of :func:`verify_task`.

    Attributes:
        dataset: The dataset name as given.
        task: The registered task, with the verified class count for ``'custom'``.
        data_dir: The data dir as given.
        task_dir: The resolved task folder, or None when it was not found.
        protocol: ``'final'`` or ``'tune'``.
        num_classes: Class count the splits were checked against, or None if unknown.
        splits: Statistics per split name, training split first.
        problems: Findings that make the data unusable; ``load_task_data`` raises on them.
        warnings: Findings worth knowing that do not stop a run.
    """

    dataset: str
    task: TaskSpec
    data_dir: Path
    protocol: str
    task_dir: Path | None = None
    num_classes: int | None = None
    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """Render the report as the text that ``python -m gps.data verify`` prints."""
        return format_report(self)


def verify_task(
    dataset: str,
    data_dir: str | Path,
    protocol: str = "final",
    num_classes: int | None = None,
    decode: bool = False,
) -> VerifyReport:
    """Run every check on a task's files and return the report.

    Problems in the data, including unreadable files and folders, are collected in
    ``report.problems`` instead of raised.

    Raises:
        ValueError: ``dataset`` is unknown or ``protocol`` is not 'final' or 'tune'.
    """
    report, _ = _inspect(dataset, data_dir, protocol, num_classes, decode)
    return report


def load_task_data(
    dataset: str,
    data_dir: str | Path,
    protocol: str = "final",
    num_classes: int | None = None,
    decode: bool = False,
) -> TaskData:
    """Verify a task's files and return its training and evaluation splits.

    Args:
        dataset: Task name or alias, e.g. ``'vtab/cifar100'``, ``'cars'``, ``'custom'``.
        data_dir: Benchmark root (containing the task folder) or the task folder itself.
        protocol: ``'final'`` (train on train+val, evaluate on test) or ``'tune'`` (train on
            train, evaluate on val).
        num_classes: Expected class count. Optional; for ``'custom'`` it is inferred if None.
        decode: Also decode every image (slow on large sets).

    Raises:
        DatasetError: Verification found problems; the error lists all of them.
        ValueError: ``dataset`` or ``protocol`` is invalid.
    """
    report, listing = _inspect(dataset, data_dir, protocol, num_classes, decode)
    for warning in report.warnings:
        logger.warning("%s: %s", report.task.name, warning)
    if report.problems:
        raise DatasetError(
            report.problems,
            header=f"{report.task.name} in {data_dir} failed verification "
            f"(python -m gps.data verify --dataset {report.task.name} --data-dir {data_dir} "
            "prints the full report)",
        )

    assert listing is not None
    assert listing.train is not None
    assert listing.eval is not None
    assert report.task_dir is not None
    assert report.num_classes is not None
    return TaskData(
        task=report.task,
        root=report.task_dir,
        num_classes=report.num_classes,
        train=Split(listing.train.name, listing.train.samples()),
        eval=Split(listing.eval.name, listing.eval.samples()),
        protocol=protocol,
        warnings=list(report.warnings),
        class_names=listing.class_names,
    )


def _inspect(
    dataset: str,
    data_dir: str | Path,
    protocol: str,
    num_classes: int | None,
    decode: bool,
) -> tuple[VerifyReport, TaskListing | None]:
    spec = get_task(dataset)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; expected 'final' or 'tune'")
    report = VerifyReport(dataset=dataset, task=spec, data_dir=Path(data_dir), protocol=protocol)
    findings = Findings(report.problems, report.warnings)
    try:
        listing = _run_checks(report, num_classes, decode, findings)
    except OSError as error:
        # The readers handle the expected cases. This catches the rest, e.g. an unreadable folder.
        findings.problems.append(
            f"cannot read {error.filename or 'the data'}: {error.strerror or error}"
        )
        listing = None
    return report, listing


def _run_checks(
    report: VerifyReport, num_classes: int | None, decode: bool, findings: Findings
) -> TaskListing | None:
    spec = report.task
    protocol = report.protocol
    _check_num_classes_argument(spec, num_classes, findings)

    task_dir = resolve_task_dir(spec, report.data_dir, findings)
    if task_dir is None:
        return None
    report.task_dir = task_dir
    check_folder_identity(spec, task_dir, findings)
    listing = read_task_listing(spec, task_dir, protocol, findings)
    if listing.train is None or listing.eval is None:
        return listing

    report.num_classes = _class_count(spec, num_classes, listing, findings)
    if spec.benchmark == "custom":
        report.task = replace(spec, num_classes=report.num_classes)
    for role, split in (("train", listing.train), ("eval", listing.eval)):
        _check_split(split, report.task, report.num_classes, listing.labels_mapped, findings)
        report.splits[split.name] = _split_stats(split, role)
    inferred = spec.benchmark == "custom" and num_classes is None and not listing.class_names
    _check_across_splits(report.task, report.num_classes, listing, inferred, findings)
    if decode:
        _check_decoding([listing.train, listing.eval], findings)
    return listing


def _check_num_classes_argument(
    spec: TaskSpec, num_classes: int | None, findings: Findings
) -> None:
    if num_classes is None:
        return
    if num_classes < 1:
        findings.problems.append(f"--num-classes must be positive, got {num_classes}")
    elif spec.benchmark != "custom" and num_classes != spec.num_classes:
        findings.problems.append(
            f"--num-classes {num_classes} does not match {spec.name}, which has "
            f"{spec.num_classes} classes; drop the option or fix the dataset name"
        )


def _class_count(
    spec: TaskSpec, num_classes: int | None, listing: TaskListing, findings: Findings
) -> int:
    if spec.benchmark != "custom":
        return spec.num_classes
    if listing.class_names is not None:
        inferred = len(listing.class_names)
        if num_classes is not None and num_classes != inferred:
            names = ", ".join(listing.class_names[:10])
            findings.problems.append(
                f"found {inferred} class folders ({names}{', ...' if inferred > 10 else ''}), "
                f"but --num-classes is {num_classes}"
            )
        return num_classes or inferred
    labels = [e.label for split in listing.read_splits() for e in split.entries]
    inferred = max(labels, default=-1) + 1
    return num_classes if num_classes is not None and num_classes > 0 else max(inferred, 1)


def _check_split(
    split: SplitListing, task: TaskSpec, num_classes: int, labels_mapped: bool, findings: Findings
) -> None:
    if not split.entries:
        findings.problems.append(f"split {split.describe()} is empty: it lists no images")
        return
    if not labels_mapped:
        out_of_range = [
            f"{e.origin}: label {e.label} is outside 0..{num_classes - 1} "
            f"({task.name} has {num_classes} classes)"
            for e in split.entries
            if not 0 <= e.label < num_classes
        ]
        findings.add_capped(out_of_range, f"labels outside 0..{num_classes - 1} in {split.name}")
    _check_duplicates(split, findings)
    _check_existence(split, findings)


def _check_duplicates(split: SplitListing, findings: Findings) -> None:
    first_origin: dict[str, str] = {}
    duplicates: list[str] = []
    for entry in split.entries:
        key = os.path.normpath(entry.relpath)
        if key in first_origin:
            duplicates.append(f"{entry.relpath} ({first_origin[key]} and {entry.origin})")
        else:
            first_origin[key] = entry.origin
    if duplicates:
        examples = "; ".join(duplicates[:_EXAMPLES])
        findings.problems.append(
            f"split {split.describe()} has {len(duplicates)} duplicate entries, e.g. {examples}"
        )


def _check_existence(split: SplitListing, findings: Findings) -> None:
    missing = [e for e in split.entries if not os.path.exists(split.path(e))]
    if not missing:
        return
    examples = ", ".join(split.path(e) for e in missing[:_EXAMPLES])
    message = (
        f"split {split.describe()}: {len(missing)} of {len(split.entries)} listed images not "
        f"found under {split.image_root}, e.g. {examples}"
    )
    hint = _relocation_hint(split.image_root, [e.relpath for e in missing[:_HINT_SAMPLE]])
    findings.problems.append(f"{message}. {hint}" if hint else message)


def _relocation_hint(image_root: Path, relpaths: list[str]) -> str:
    """Say whether the missing paths exist with one leading folder removed or added."""
    removed: Counter[str] = Counter()
    added: Counter[str] = Counter()
    subfolders = _subfolders(image_root)
    for relpath in relpaths:
        parts = Path(relpath).parts
        if len(parts) > 1 and os.path.exists(os.path.join(image_root, *parts[1:])):
            removed[parts[0]] += 1
            continue
        for folder in subfolders:
            if os.path.exists(os.path.join(image_root, folder, relpath)):
                added[folder] += 1
                break

    hints = []
    if removed:
        folder, count = removed.most_common(1)[0]
        hints.append(
            f"{count} of the first {len(relpaths)} missing paths exist after removing the "
            f"leading folder '{folder}/' from the listed path"
        )
    if added:
        folder, count = added.most_common(1)[0]
        hints.append(
            f"{count} of the first {len(relpaths)} missing paths exist after adding the "
            f"leading folder '{folder}/' (the image is at {image_root}/{folder}/<listed path>)"
        )
    if not hints:
        return ""
    return (
        "; ".join(hints) + ". The folder nesting differs from the split files: some downloads "
        "(Stanford Cars in particular) nest cars_train/ or cars_test/ twice or not at all. "
        "Move the images so that the listed paths exist."
    )


def _subfolders(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    with os.scandir(folder) as items:
        names = sorted(i.name for i in items if i.is_dir())
    return names[:_MAX_SCANNED_SUBFOLDERS]


def _split_stats(split: SplitListing, role: str) -> SplitStats:
    counts = Counter(e.label for e in split.entries)
    # Ties go to the smaller label, so the report is stable.
    smallest = min(counts.items(), key=lambda item: (item[1], item[0]), default=None)
    largest = max(counts.items(), key=lambda item: (item[1], -item[0]), default=None)
    return SplitStats(
        name=split.name,
        role=role,
        files=[str(f) for f in split.files],
        num_images=len(split.entries),
        num_classes_present=len(counts),
        smallest_class=smallest,
        largest_class=largest,
    )


def _check_across_splits(
    task: TaskSpec, num_classes: int, listing: TaskListing, inferred: bool, findings: Findings
) -> None:
    assert listing.train is not None and listing.eval is not None
    train, evaluation = listing.train, listing.eval
    train_labels = {e.label for e in train.entries}
    eval_labels = {e.label for e in evaluation.entries}
    all_labels = {e.label for split in listing.read_splits() for e in split.entries}
    valid = set(range(num_classes))

    _check_coverage(task, num_classes, all_labels & valid, listing, inferred, findings)
    for split, labels in ((train, train_labels), (evaluation, eval_labels)):
        absent = valid - labels
        if split.entries and absent and len(absent) < num_classes:
            findings.warnings.append(
                f"split {split.name} has images of {num_classes - len(absent)} of "
                f"{num_classes} classes; no images of labels {_first_labels(absent)}"
            )

    unseen = (eval_labels & valid) - train_labels
    if unseen and train.entries:
        note = " (the VTAB-1k 800/200 split is not stratified)" if task.benchmark == "vtab" else ""
        findings.warnings.append(
            f"{len(unseen)} classes in {evaluation.name} have no training images in "
            f"{train.name}{note}: labels {_first_labels(unseen)}"
        )

    overlap = {p for p, _ in train.samples()} & {p for p, _ in evaluation.samples()}
    if overlap:
        findings.problems.append(
            f"{len(overlap)} images are listed in both {train.name} and {evaluation.name}, "
            f"e.g. {sorted(overlap)[0]}; evaluation must not use training images"
        )
    _check_task_identity(task, listing, all_labels, findings)


def _check_coverage(
    task: TaskSpec,
    num_classes: int,
    covered: set[int],
    listing: TaskListing,
    inferred: bool,
    findings: Findings,
) -> None:
    if len(covered) >= num_classes or not covered:
        return
    absent = set(range(num_classes)) - covered
    read = ", ".join(f.name for split in listing.read_splits() for f in split.files)
    message = (
        f"the split files together ({read}) have images of {len(covered)} of the "
        f"{num_classes} classes of {task.name}; no images of labels {_first_labels(absent)}"
    )
    if inferred:
        # The count was inferred as max label + 1, so gaps are the user's numbering.
        findings.warnings.append(
            f"{message}. The classification head will still have {num_classes} outputs."
        )
    elif listing.coverage_complete:
        findings.problems.append(message)
    else:
        findings.warnings.append(f"{message}. Not every split file could be read to confirm it.")


def _check_task_identity(
    task: TaskSpec, listing: TaskListing, labels: set[int], findings: Findings
) -> None:
    if task.benchmark == "custom":
        return
    if listing.labels_mapped:
        observed = listing.raw_class_count or 0
    else:
        observed = max(labels, default=-1) + 1
    if observed in (0, task.num_classes):
        return
    others = [t.name for t in tasks_with_classes(task.benchmark, observed) if t.name != task.name]
    if others:
        findings.problems.append(
            f"the labels in the split files span {observed} classes, which matches "
            f"{' and '.join(others)} ({observed} classes) and not {task.name} "
            f"({task.num_classes} classes); check --dataset and --data-dir"
        )


def _check_decoding(splits: list[SplitListing], findings: Findings) -> None:
    paths = sorted(
        {path for split in splits for path, _ in split.samples() if os.path.exists(path)}
    )
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        errors = [message for message in pool.map(_decode_error, paths) if message]
    findings.add_capped(errors, "images that cannot be decoded", limit=10)


def _decode_error(path: str) -> str | None:
    try:
        load_rgb(path)
    except Exception as error:  # noqa: BLE001 - any decoder failure is reported per image
        return f"cannot decode {path}: {type(error).__name__}: {error}"
    return None


def _first_labels(labels: set[int], limit: int = 10) -> str:
    ordered = sorted(labels)
    text = ", ".join(str(label) for label in ordered[:limit])
    return f"{text}, ... ({len(ordered)} in all)" if len(ordered) > limit else text


def format_report(report: VerifyReport) -> str:
    """Render a report: header, one line per split, then warnings, problems and a verdict."""
    task = report.task
    classes = f"{report.num_classes} classes" if report.num_classes else "classes unknown"
    group = f", {task.group}" if task.group else ""
    lines = [
        f"dataset: {task.name} ({task.benchmark}{group}, {classes}), protocol {report.protocol}",
        f"task folder: {report.task_dir if report.task_dir else 'not found'}",
    ]
    for stats in report.splits.values():
        lines.append(_format_split(stats))
    if report.warnings:
        lines.append(f"warnings ({len(report.warnings)}):")
        lines += [f"  - {warning}" for warning in report.warnings]
    if report.problems:
        lines.append(f"problems ({len(report.problems)}):")
        lines += [f"  - {problem}" for problem in report.problems]
        lines.append(f"FAILED: {len(report.problems)} problem(s) found")
    else:
        lines.append("OK: no problems found")
    return "\n".join(lines)


def _format_split(stats: SplitStats) -> str:
    line = (
        f"{stats.role} split {stats.name}: {stats.num_images} images, "
        f"{stats.num_classes_present} classes present"
    )
    if stats.smallest_class and stats.largest_class:
        low_label, low_count = stats.smallest_class
        high_label, high_count = stats.largest_class
        line += (
            f", smallest class {low_label} ({low_count} images), "
            f"largest class {high_label} ({high_count} images)"
        )
    return line
