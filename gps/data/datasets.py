"""Dataset types: split lists, a task's loaded data, and what the readers and checks collect.

This module imports neither torch nor torchvision, so verification runs without them loading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from gps.data.registry import TaskSpec


class DatasetError(ValueError):
    """Dataset files failed verification.

    Attributes:
        problems: Every problem found, one message each.
    """

    def __init__(self, problems: list[str], header: str = "dataset verification failed"):
        self.problems = list(problems)
        self.header = header
        lines = [f"{header} ({len(self.problems)} problem(s)):"]
        lines += [f"- {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


@dataclass
class Split:
    """A list of labelled images.

    Attributes:
        name: Split name, e.g. ``'train800val200'``, ``'test'``, ``'train+val'``.
        samples: ``(absolute image path, label)`` pairs with labels in ``0..num_classes-1``.
    """

    name: str
    samples: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class TaskData:
    """A task's training and evaluation splits for one protocol, after verification.

    Attributes:
        task: The task; for ``'custom'`` its ``num_classes`` is the verified count.
        root: The resolved task folder.
        num_classes: Number of classes of the classification head.
        train: Split to train on (``train800val200``/``train+val`` under ``final``).
        eval: Split to evaluate on (``test`` under ``final``, ``val200``/``val`` under ``tune``).
        protocol: ``'final'`` or ``'tune'``.
        warnings: Non-fatal findings of the verification.
        class_names: Class folder names of a class-per-folder custom tree, in label order;
            None for list-file datasets.
    """

    task: TaskSpec
    root: Path
    num_classes: int
    train: Split
    eval: Split
    protocol: str
    warnings: list[str] = field(default_factory=list)
    class_names: list[str] | None = None


class Entry(NamedTuple):
    """One listed image: path relative to the split's image root, label, and where it was read."""

    relpath: str
    label: int
    origin: str


@dataclass
class SplitListing:
    """A split as read from its files, before the checks.

    Attributes:
        name: Split name.
        files: The list files (or folder) the split was read from.
        image_root: Folder that ``Entry.relpath`` is relative to.
        entries: Listed images in file order.
    """

    name: str
    files: list[Path]
    image_root: Path
    entries: list[Entry] = field(default_factory=list)

    def path(self, entry: Entry) -> str:
        return os.path.abspath(os.path.join(self.image_root, entry.relpath))

    def samples(self) -> list[tuple[str, int]]:
        return [(self.path(entry), entry.label) for entry in self.entries]

    def describe(self) -> str:
        names = ", ".join(f.name for f in self.files)
        return f"{self.name} ({names})" if names and names != self.name else self.name


def concatenate_listings(name: str, parts: list[SplitListing]) -> SplitListing:
    """Join listings that share an image root into one split named ``name``."""
    assert parts and len({part.image_root for part in parts}) == 1
    listing = SplitListing(name, [f for part in parts for f in part.files], parts[0].image_root)
    for part in parts:
        listing.entries.extend(part.entries)
    return listing


@dataclass
class TaskListing:
    """Everything read from a task folder for one protocol, before the checks.

    Attributes:
        train: Split to train on, or None when its files could not be read.
        eval: Split to evaluate on, or None when its files could not be read.
        others: Splits the protocol does not use, read only to count the classes the task
            folder covers (e.g. ``test.txt`` under ``tune``).
        coverage_complete: Whether train, eval and others together include every split of
            the task, so that a class missing from all of them is missing from the data.
        labels_mapped: Whether labels were made contiguous from the files' ids (FGVC), so
            the range check does not apply.
        raw_class_count: Number of distinct class ids in the files before any mapping.
        class_names: Class names in label order, where the layout has them.
    """

    train: SplitListing | None = None
    eval: SplitListing | None = None
    others: list[SplitListing] = field(default_factory=list)
    coverage_complete: bool = False
    labels_mapped: bool = False
    raw_class_count: int | None = None
    class_names: list[str] | None = None

    def read_splits(self) -> list[SplitListing]:
        return [s for s in (self.train, self.eval, *self.others) if s is not None]


@dataclass
class Findings:
    """Problems (verification fails) and warnings (it passes) collected by the readers and checks."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add_capped(self, messages: list[str], summary: str, limit: int = 5) -> None:
        """Add the first ``limit`` messages as problems and one line counting the rest."""
        self.problems.extend(messages[:limit])
        if len(messages) > limit:
            self.problems.append(f"{len(messages) - limit} more {summary}")
