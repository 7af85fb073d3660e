"""VTAB-1k list files: ``<relative image path> <integer label>`` per line.

The same layout serves the VTAB-1k tasks, the bundled demo task and custom list-file datasets.
"""

from __future__ import annotations

from pathlib import Path

from gps.data.datasets import Entry, Findings, SplitListing, TaskListing

LIST_FILES = ("train800", "val200", "train800val200", "test")

# Protocol -> (training split, evaluation split).
PROTOCOL_SPLITS = {"final": ("train800val200", "test"), "tune": ("train800", "val200")}

VTAB_LAYOUT_HELP = (
    "A VTAB-1k task folder contains train800.txt, val200.txt, train800val200.txt and test.txt, "
    "one '<relative image path> <label>' per line, next to the images/ folder they list. The "
    "list files come from the common VTAB-1k distribution used by NOAH and VPT-lineage code, "
    "built from TensorFlow Datasets; see data/README.md."
)
DEMO_LAYOUT_HELP = (
    "The demo task ships with this repository in data/demo/digits; restore it from git or "
    "regenerate it with data/prepare_demo.py (see data/README.md)."
)
CUSTOM_LIST_HELP = (
    "A custom list-file dataset uses the VTAB-1k file names: train800.txt, val200.txt, "
    "train800val200.txt and test.txt, one '<image path relative to the folder> <label>' per "
    "line; see data/README.md."
)


def list_file_path(task_dir: Path, split: str) -> Path:
    return task_dir / f"{split}.txt"


def parse_list_file(path: Path, split: str, task_dir: Path, findings: Findings) -> SplitListing:
    """Read one list file; malformed lines and non-integer labels become problems.

    Returns:
        The listing of the lines that parsed, with paths relative to ``task_dir``.
    """
    listing = SplitListing(split, [path], task_dir)
    malformed: list[str] = []
    not_integer: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        findings.problems.append(f"cannot read split file {path}: {error}")
        return listing

    for lineno, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        origin = f"{path}:{lineno}"
        fields = text.rsplit(None, 1)
        if len(fields) != 2:
            malformed.append(
                f"{origin}: malformed line {text!r}; expected '<relative image path> <label>'"
            )
            continue
        relpath, label_text = fields
        try:
            label = int(label_text)
        except ValueError:
            not_integer.append(f"{origin}: label {label_text!r} is not an integer (line {text!r})")
            continue
        listing.entries.append(Entry(relpath, label, origin))

    findings.add_capped(malformed, f"malformed lines in {path}")
    findings.add_capped(not_integer, f"lines with a non-integer label in {path}")
    return listing


def read_list_layout(
    task_dir: Path, protocol: str, findings: Findings, layout_help: str
) -> TaskListing:
    """Read the list files that ``protocol`` uses, plus the test list for class coverage.

    Under ``tune``, ``test.txt`` is read when present, only to count the classes the folder
    covers. Its own problems are not reported because the protocol does not use it.
    """
    train_name, eval_name = PROTOCOL_SPLITS[protocol]
    listing = TaskListing()
    missing = [
        list_file_path(task_dir, name)
        for name in (train_name, eval_name)
        if not list_file_path(task_dir, name).is_file()
    ]
    if missing:
        findings.problems.append(_missing_files_message(task_dir, missing, layout_help))

    if list_file_path(task_dir, train_name).is_file():
        listing.train = parse_list_file(
            list_file_path(task_dir, train_name), train_name, task_dir, findings
        )
    if list_file_path(task_dir, eval_name).is_file():
        listing.eval = parse_list_file(
            list_file_path(task_dir, eval_name), eval_name, task_dir, findings
        )

    listing.coverage_complete = protocol == "final"
    test_path = list_file_path(task_dir, "test")
    if protocol == "tune" and test_path.is_file():
        listing.others.append(parse_list_file(test_path, "test", task_dir, Findings()))
        listing.coverage_complete = True
    return listing


def has_list_files(folder: Path) -> bool:
    return any(list_file_path(folder, name).is_file() for name in LIST_FILES)


def _missing_files_message(task_dir: Path, missing: list[Path], layout_help: str) -> str:
    names = ", ".join(str(path) for path in missing)
    message = f"split file(s) not found: {names}. {layout_help}"
    if any((task_dir / f"{name}.json").is_file() for name in ("train", "val", "test")):
        message += (
            f" {task_dir} contains train.json/val.json/test.json, the FGVC layout; "
            "pass an FGVC dataset name such as fgvc/cub instead."
        )
    return message
