"""FGVC split files: ``train.json``, ``val.json``, ``test.json`` mapping image path to class id.

Class ids are made contiguous (0..C-1) from the sorted union of the ids in all three files, so
the labels agree between protocols whatever ids the files use (CUB's start at 1, for example).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gps.data.datasets import Entry, Findings, SplitListing, TaskListing, concatenate_listings
from gps.data.registry import FGVC_IMAGE_SUBFOLDER, TaskSpec

JSON_SPLITS = ("train", "val", "test")

# Protocol -> (training splits, evaluation split).
PROTOCOL_SPLITS = {"final": (("train", "val"), "test"), "tune": (("train",), "val")}

_ROOT_SAMPLE_SIZE = 20


def fgvc_layout_help(spec: TaskSpec) -> str:
    subfolder = FGVC_IMAGE_SUBFOLDER.get(spec.name, "")
    images = f"the {subfolder}/ folder" if subfolder else "the task folder"
    return (
        f"An FGVC task folder ({spec.folder}/) contains train.json, val.json and test.json, each "
        f"mapping image paths relative to {images} to class ids. The JSON files are the FGVC "
        "split files distributed with VPT; the images come from the official dataset site. "
        "See data/README.md."
    )


def has_json_files(folder: Path) -> bool:
    return any((folder / f"{name}.json").is_file() for name in JSON_SPLITS)


def read_fgvc_layout(
    spec: TaskSpec, task_dir: Path, protocol: str, findings: Findings
) -> TaskListing:
    """Read all three JSON files, map class ids, and build the protocol's splits."""
    listing = TaskListing()
    missing = [
        task_dir / f"{n}.json" for n in JSON_SPLITS if not (task_dir / f"{n}.json").is_file()
    ]
    if missing:
        names = ", ".join(str(path) for path in missing)
        findings.problems.append(
            f"split file(s) not found: {names}. All three are needed because the class ids "
            f"are numbered from their union. {fgvc_layout_help(spec)}"
        )

    raw: dict[str, list[Entry]] = {}
    for name in JSON_SPLITS:
        path = task_dir / f"{name}.json"
        if path.is_file():
            raw[name] = _parse_json_file(path, findings)

    class_ids = sorted({entry.label for entries in raw.values() for entry in entries})
    contiguous = {class_id: index for index, class_id in enumerate(class_ids)}
    image_root = _choose_image_root(spec, task_dir, raw, findings)
    splits = {
        name: SplitListing(
            name,
            [task_dir / f"{name}.json"],
            image_root,
            [e._replace(label=contiguous[e.label]) for e in entries],
        )
        for name, entries in raw.items()
    }

    train_names, eval_name = PROTOCOL_SPLITS[protocol]
    if all(name in splits for name in train_names):
        listing.train = concatenate_listings(
            "+".join(train_names), [splits[n] for n in train_names]
        )
    listing.eval = splits.get(eval_name)
    used = {*train_names, eval_name}
    listing.others = [split for name, split in splits.items() if name not in used]
    listing.coverage_complete = len(splits) == len(JSON_SPLITS)
    listing.labels_mapped = True
    listing.raw_class_count = len(class_ids)
    return listing


def _parse_json_file(path: Path, findings: Findings) -> list[Entry]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        findings.problems.append(f"cannot read split file {path}: {error}")
        return []

    duplicate_keys: list[str] = []

    def collect_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen: dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                duplicate_keys.append(key)
            seen[key] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=collect_pairs)
    except json.JSONDecodeError as error:
        line = text.splitlines()[error.lineno - 1] if text.strip() else ""
        findings.problems.append(
            f"{path}:{error.lineno}: invalid JSON ({error.msg}, column {error.colno}): "
            f"{line.strip()[:200]!r}"
        )
        return []
    if not isinstance(data, dict):
        findings.problems.append(
            f"{path}: expected a JSON object mapping image paths to class ids, "
            f"found a {type(data).__name__}"
        )
        return []

    if duplicate_keys:
        examples = ", ".join(repr(key) for key in duplicate_keys[:3])
        findings.problems.append(
            f"{path}: {len(duplicate_keys)} duplicate entries, e.g. {examples}"
        )

    entries: list[Entry] = []
    not_integer: list[str] = []
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int):
            # Line numbers are looked up only for bad entries: a search per entry would be
            # quadratic in the file size.
            line = _line_of_key(text, key)
            not_integer.append(f"{path}:{line}: label {value!r} of entry {key!r} is not an integer")
            continue
        entries.append(Entry(key, value, f"{path} entry {key!r}"))
    findings.add_capped(not_integer, f"entries with a non-integer label in {path}")
    return entries


def _line_of_key(text: str, key: str) -> int:
    position = text.find(json.dumps(key))
    return text.count("\n", 0, position) + 1 if position >= 0 else 0


def _choose_image_root(
    spec: TaskSpec, task_dir: Path, raw: dict[str, list[Entry]], findings: Findings
) -> Path:
    # The documented subfolder is tried first, then the task folder itself, because
    # copies of these datasets differ in whether the JSON paths include the subfolder.
    subfolder = FGVC_IMAGE_SUBFOLDER.get(spec.name, "")
    candidates = [task_dir / subfolder, task_dir] if subfolder else [task_dir]
    sample = [e.relpath for entries in raw.values() for e in entries[:_ROOT_SAMPLE_SIZE]]
    if len(candidates) == 1 or not sample:
        return candidates[0]

    def hits(root: Path) -> int:
        return sum(os.path.exists(os.path.join(root, rel)) for rel in sample)

    best = max(candidates, key=hits)
    if best != candidates[0] and hits(best) > hits(candidates[0]):
        findings.warnings.append(
            f"the image paths in the {spec.name} JSON files are relative to {best}, "
            f"not to {candidates[0]} as in the usual layout; using {best}"
        )
        return best
    return candidates[0]
