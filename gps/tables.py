"""Results tables: collect run results and set them beside the GPS paper's numbers.

Usage::

    python -m gps.tables RUNS_DIR [--format markdown|csv|latex] [--protocol final|tune]
                                  [--metric last|max] [--table fgvc|vtab|other] [--no-paper]

Every ``results.json`` below ``RUNS_DIR`` (any depth, normally
``<experiment>/<task>/<run>/results.json``) is one run. Runs of the requested protocol are
grouped into rows and tasks into columns, one table per benchmark: FGVC, VTAB-1k, and "other
tasks" for the demo, custom data and unknown task names.

Rules the tables follow:

- **Rows.** One row per method, K, selection variant (scores, granularity, loss), model,
  pretrained weights and schedule (epochs, steps per epoch). A run of another schedule is a
  different experiment, so it gets its own row. When the GPS runs of one variant use several K
  values and some of them match the per-task K of the official GPS launch scripts, those runs
  also form a row ``gps K=paper``; a ``K=`` row whose runs all belong to it is not shown again.
- **Cells.** The mean over a task's runs (normally one per seed), with the sample standard
  deviation (ddof=1) when there are several. Runs of one cell whose other settings differ (lr,
  batch size, drop-path, EMA, ...) are still averaged, but the cell is marked with a dagger and a
  note lists the differing settings and their seeds.
- **Accuracy.** The last-epoch ``top1``, or ``ema_top1`` for runs with ``config.model_ema``
  true, since the official FGVC settings evaluate the EMA weights. ``--metric max`` shows the
  maximum over epochs instead, labelled as selecting on the evaluation split.
- **Means.** Over the tasks present; a mean over fewer tasks than the table's set is marked with
  an asterisk and a note names the missing tasks. A difference row to the GPS paper compares
  means over the same tasks on both sides.
- **Protocols** are never mixed: runs of another protocol are skipped and counted in a note.
  Paper rows (test-split numbers) appear only under protocol ``final``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from gps.paper import (
    COLUMN_TITLES,
    FGVC_TASKS,
    PAPER_K,
    PAPER_ROWS,
    VTAB_GROUPS,
    VTAB_TASKS,
    PaperRow,
    paper_row,
)

logger = logging.getLogger(__name__)

PROTOCOLS = ("final", "tune")
METRICS = ("last", "max")
FORMATS = ("markdown", "csv", "latex")
TABLE_NAMES = ("fgvc", "vtab", "other")
RESULTS_NAME = "results.json"

METHOD_ORDER = ("full", "linear", "bitfit", "gps")
PAPER_MODEL = "vit_base_patch16_224"
MISSING_MARK = "*"
SETTINGS_MARK = "†"
MAX_METRIC_TEXT = "max over epochs (selects on the evaluation split)"
PARAMS_TITLE = "Params (% with head)"

# Config keys that name, place or schedule the run without changing what it computes.
BOOKKEEPING_KEYS = frozenset({
    "dataset", "data_dir", "protocol", "num_workers", "device", "seed", "output", "experiment",
    "run_name", "resume", "eval_only", "eval_interval", "log_interval", "mask",
    "tuning.grad_checkpointing",
})
# Config keys that are part of the row key, so they cannot differ within a row.
ROW_KEY_CONFIG_KEYS = frozenset({
    "method", "k", "selection.scores", "selection.granularity", "selection.loss", "model",
    "model_kwargs", "pretrained", "epochs", "max_steps_per_epoch",
})
REQUIRED_FIELDS = ("task", "protocol", "method", "model", "epochs", "top1",
                   "trainable_params.percent_with_head")


class ResultsFileError(ValueError):
    """A results.json file cannot be read or lacks a field the tables need."""


class RowKey(NamedTuple):
    """Row identity: the run fields that decide which table row a run belongs to."""

    method: str
    k: int | str | None
    scores: str | None
    granularity: str | None
    loss: str | None
    model: str
    weights: str
    schedule: str


@dataclass
class RunRecord:
    """The fields of one run's results.json that the tables use.

    Attributes:
        path: The results.json file.
        task: Column key: the canonical task name, or ``custom:<data folder name>``.
        table: 'fgvc', 'vtab' or 'other'.
        protocol: 'final' or 'tune'.
        seed: The run's seed (None when the file has none).
        top1: Last-epoch top-1 accuracy in percent.
        ema_top1: Last-epoch top-1 accuracy of the EMA weights, or None.
        uses_ema: True when the run kept an EMA (``config.model_ema``).
        max_top1: Maximum top-1 over epochs of the evaluated weights (EMA when kept), or None.
        params_percent: Trainable parameters in percent of all, including the head.
        key: The row key.
        settings: Flattened config without bookkeeping and row-key entries.
    """

    path: Path
    task: str
    table: str
    protocol: str
    seed: int | None
    top1: float
    ema_top1: float | None
    uses_ema: bool
    max_top1: float | None
    params_percent: float
    key: RowKey
    settings: dict[str, str] = field(default_factory=dict)

    def accuracy(self, metric: str = "last") -> float | None:
        """Return the accuracy that ``metric`` ('last' or 'max') reports for this run."""
        if metric == "max":
            return self.max_top1
        return self.ema_top1 if self.uses_ema else self.top1

    def metric_field(self, metric: str = "last") -> str:
        """Return the results.json field that :meth:`accuracy` reads."""
        if metric == "max":
            return "max_ema_top1_over_epochs" if self.uses_ema else "max_top1_over_epochs"
        return "ema_top1" if self.uses_ema else "top1"


class RunCollection(list):
    """The runs of one protocol found below a folder, with what was left out.

    A list of :class:`RunRecord` with these extra attributes:

    Attributes:
        runs_dir: The folder that was searched.
        protocol: The protocol of the collected runs.
        files_found: Number of results.json files found.
        skipped: Per table name, the number of runs of each other protocol.
        problems: ``(path, reason)`` of every file that could not be used.
    """

    def __init__(self, records: Iterable[RunRecord] = (), *, runs_dir: Path | None = None,
                 protocol: str = "final", files_found: int = 0,
                 skipped: dict[str, Counter] | None = None,
                 problems: list[tuple[Path, str]] | None = None):
        super().__init__(records)
        self.runs_dir = runs_dir
        self.protocol = protocol
        self.files_found = files_found
        self.skipped = skipped if skipped is not None else {}
        self.problems = problems if problems is not None else []


@dataclass
class Column:
    """A table column. ``kind`` is 'task', 'aggregate', 'params' or 'seeds'."""

    key: str
    title: str
    kind: str


@dataclass
class Cell:
    """One table entry: a number with optional spread, or a fixed text.

    Attributes:
        value: The number, or None for a missing entry (rendered as a dash).
        std: Sample standard deviation over seeds, or None.
        n: Runs averaged (task columns) or tasks averaged (aggregate columns).
        mark: Footnote marks, e.g. '*' for a mean over fewer tasks.
        decimals: Digits after the decimal point.
        signed: Render with an explicit sign (difference rows).
        show_n: Append ``(n=...)``, used when the number of seeds varies within a row.
        text: Text shown instead of a number (the GPS paper's Params entries, the seed count).
    """

    value: float | None = None
    std: float | None = None
    n: int = 0
    mark: str = ""
    decimals: int = 2
    signed: bool = False
    show_n: bool = False
    text: str | None = None


@dataclass
class Row:
    """A table row. ``kind`` is 'ours', 'paper' or 'diff', and ``info`` contains the row key."""

    label: str
    kind: str
    cells: dict[str, Cell]
    info: dict[str, object] = field(default_factory=dict)


@dataclass
class Table:
    """A rendered-ready results table with its notes."""

    name: str
    title: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# Reading results.json files


def collect_runs(runs_dir: str | Path, protocol: str = "final") -> RunCollection:
    """Read every results.json below ``runs_dir`` and keep the runs of ``protocol``.

    Files that cannot be read or lack needed fields are logged as warnings and listed in
    ``problems``; runs of other protocols are counted in ``skipped``.

    Raises:
        ValueError: ``protocol`` is not 'final' or 'tune'.
        FileNotFoundError: ``runs_dir`` is not a folder.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder '{root}' does not exist or is not a folder; pass the "
                                "output folder of train.py (default: output)")
    files = sorted(root.rglob(RESULTS_NAME))
    collection = RunCollection(runs_dir=root, protocol=protocol, files_found=len(files))
    for path in files:
        try:
            record = read_run(path)
        except ResultsFileError as error:
            logger.warning("%s: %s", path, error)
            collection.problems.append((path, str(error)))
            continue
        if record.protocol == protocol:
            collection.append(record)
        else:
            collection.skipped.setdefault(record.table, Counter())[record.protocol] += 1
    return collection


def read_run(path: str | Path) -> RunRecord:
    """Read one results.json file written by ``gps.training.build_results``.

    Raises:
        ResultsFileError: The file is unreadable, not JSON, or misses a needed field.
    """
    path = Path(path)
    data = _load_json(path)
    missing = [name for name in REQUIRED_FIELDS if _lookup(data, name) is None]
    if data.get("method") == "gps" and data.get("k") is None:
        missing.append("k")
    if missing:
        raise ResultsFileError(f"incomplete results: missing {', '.join(missing)}")
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise ResultsFileError(f"invalid 'config' entry: expected an object, got {config!r}")

    uses_ema = bool(config["model_ema"]) if "model_ema" in config else data.get("ema_top1") is not None
    if uses_ema and data.get("ema_top1") is None:
        raise ResultsFileError("incomplete results: config.model_ema is true but ema_top1 is missing")
    planned = config.get("epochs")
    if isinstance(planned, int) and _as_int(data, "epochs") < planned:
        raise ResultsFileError(f"incomplete run: trained {data['epochs']} of {planned} epochs")

    best = data.get("max_ema_top1_over_epochs" if uses_ema else "max_top1_over_epochs")
    task, table = _task_identity(str(data["task"]), config)
    return RunRecord(
        path=path, task=task, table=table, protocol=str(data["protocol"]),
        seed=data.get("seed"),
        top1=_as_number(data, "top1"),
        ema_top1=_as_number(data, "ema_top1") if data.get("ema_top1") is not None else None,
        uses_ema=uses_ema,
        max_top1=_as_number(best, "top1") if isinstance(best, dict) else None,
        params_percent=_as_number(data["trainable_params"], "percent_with_head"),
        key=_row_key(data, config),
        settings=_settings(config),
    )


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ResultsFileError(f"unreadable file ({error})") from error
    except json.JSONDecodeError as error:
        raise ResultsFileError(f"not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ResultsFileError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _lookup(data: dict, dotted: str) -> object:
    value: object = data
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _as_number(data: dict, name: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ResultsFileError(f"invalid value for '{name}': expected a finite number, got {value!r}")
    return float(value)


def _as_int(data: dict, name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ResultsFileError(f"invalid value for '{name}': expected an integer, got {value!r}")
    return value


def _task_identity(name: str, config: dict) -> tuple[str, str]:
    """Return the column key and table name of a task name from results.json."""
    if name in FGVC_TASKS:
        return name, "fgvc"
    if name in VTAB_TASKS:
        return name, "vtab"
    if name == "custom":
        folder = Path(str(config.get("data_dir") or "")).name
        return (f"custom:{folder}" if folder else "custom"), "other"
    if name.startswith("demo/"):
        return name, "other"
    # train.py writes canonical names, so only other spellings reach the registry. It is imported
    # here because the gps.data package imports torch and timm, which take seconds to load.
    from gps.data.registry import get_task

    try:
        spec = get_task(name)
    except ValueError:
        return name, "other"
    if spec.benchmark in ("fgvc", "vtab"):
        return spec.name, spec.benchmark
    return spec.name, "other"


def _row_key(data: dict, config: dict) -> RowKey:
    method = str(data["method"])
    model = str(data["model"])
    kwargs = config.get("model_kwargs") or {}
    if kwargs:
        model += " (" + ", ".join(f"{k}={kwargs[k]}" for k in sorted(kwargs)) + ")"
    schedule = f"{data['epochs']} ep"
    if config.get("max_steps_per_epoch"):
        schedule += f" x {config['max_steps_per_epoch']} steps"
    weights = _weights_identity(data.get("weights"), config)
    if method != "gps":
        return RowKey(method, None, None, None, None, model, weights, schedule)
    selection = data.get("selection") or config.get("selection") or {}
    return RowKey(method, int(data["k"]), selection.get("scores", "gradient"),
                  selection.get("granularity", "neuron"), selection.get("loss", "supcon"),
                  model, weights, schedule)


def _weights_identity(weights: object, config: dict) -> str:
    if not isinstance(weights, dict):
        return str(config.get("pretrained", "unknown"))
    source = weights.get("source")
    if source == "hub" and weights.get("tag"):
        return str(weights["tag"])
    if source == "file" and weights.get("path"):
        name = Path(str(weights["path"])).name
        sha = weights.get("sha256")
        return f"{name} (sha256 {sha[:12]})" if sha else name
    if source == "none":
        return "none (random init)"
    return str(config.get("pretrained", source or "unknown"))


def _settings(config: dict) -> dict[str, str]:
    flat: dict[str, str] = {}

    def visit(prefix: str, value: object) -> None:
        if isinstance(value, dict) and prefix != "model_kwargs":
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = json.dumps(value, sort_keys=True)

    visit("", config)
    return {k: v for k, v in flat.items()
            if k not in BOOKKEEPING_KEYS and k not in ROW_KEY_CONFIG_KEYS}


# ------------------------------------------------------------------------------------------
# Building tables


@dataclass(frozen=True)
class _Aggregate:
    """A mean column: one task group gives a plain mean, several give the mean of group means."""

    key: str
    title: str
    groups: tuple[tuple[str, ...], ...]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(task for group in self.groups for task in group)

    def apply(self, values: dict[str, float]) -> tuple[float | None, bool]:
        """Return the aggregate of ``values`` over the tasks present, and whether all were."""
        means = []
        for group in self.groups:
            present = [values[task] for task in group if task in values]
            if present:
                means.append(statistics.fmean(present))
        complete = all(task in values for task in self.tasks)
        return (statistics.fmean(means) if means else None), complete


@dataclass(frozen=True)
class _TableSpec:
    name: str
    title: str
    tasks: tuple[str, ...]
    aggregates: tuple[_Aggregate, ...] = ()

    def column_title(self, task: str) -> str:
        return COLUMN_TITLES.get(task, task)


FGVC_SPEC = _TableSpec("fgvc", "FGVC", FGVC_TASKS, (_Aggregate("mean", "Mean", (FGVC_TASKS,)),))
VTAB_SPEC = _TableSpec("vtab", "VTAB-1k", VTAB_TASKS, (
    *(_Aggregate(group, f"{group.capitalize()} mean", (tasks,))
      for group, tasks in VTAB_GROUPS.items()),
    _Aggregate("mean", "Mean (19 tasks)", (VTAB_TASKS,)),
    _Aggregate("mean_of_groups", "Mean of group means", tuple(VTAB_GROUPS.values())),
))


def build_tables(records: Sequence[RunRecord], *, metric: str = "last", paper: bool = True,
                 protocol: str | None = None) -> list[Table]:
    """Build the FGVC, VTAB-1k and other-tasks tables of ``records``.

    A table is built when it has runs, or runs skipped for their protocol.

    Args:
        records: Runs of one protocol, normally the :class:`RunCollection` of
            :func:`collect_runs` (its skipped counts become notes).
        metric: 'last' (last-epoch accuracy, EMA when kept) or 'max' (max over epochs).
        paper: Show the GPS paper's rows (gps.paper) and the differences to them, under
            protocol 'final' only.
        protocol: The records' protocol; by default taken from ``records``.

    Raises:
        ValueError: Unknown ``metric``, or records of several protocols.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    protocols = {record.protocol for record in records}
    if len(protocols) > 1:
        raise ValueError(f"records mix protocols {sorted(protocols)}; pass the runs of one "
                         "protocol (collect_runs filters them)")
    protocol = protocol or getattr(records, "protocol", None) or next(iter(protocols), "final")
    skipped = getattr(records, "skipped", {})
    by_table: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_table[record.table].append(record)

    tables = []
    for name in TABLE_NAMES:
        if not by_table.get(name) and not skipped.get(name):
            continue
        spec = {"fgvc": FGVC_SPEC, "vtab": VTAB_SPEC}.get(name) or _other_spec(by_table[name])
        context = _Context(spec, metric, protocol, paper and protocol == "final" and name != "other")
        tables.append(_build_table(context, by_table[name], skipped.get(name, Counter())))
    return tables


def _other_spec(records: list[RunRecord]) -> _TableSpec:
    return _TableSpec("other", "Other tasks", tuple(sorted({r.task for r in records})))


@dataclass
class _Context:
    spec: _TableSpec
    metric: str
    protocol: str
    paper: bool
    notes: list[str] = field(default_factory=list)
    # Accuracy field -> labels of the rows that read only that field.
    metric_rows: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def _build_table(context: _Context, records: list[RunRecord], skipped: Counter) -> Table:
    spec, metric = context.spec, context.metric
    usable = [r for r in records if r.accuracy(metric) is not None]
    if len(usable) < len(records):
        context.notes.append(f"left out {len(records) - len(usable)} run(s) whose results.json "
                             f"has no {MAX_METRIC_TEXT} value")
    groups = _group_rows(context, usable)
    labels = _row_labels(context, list(groups))

    rows: list[Row] = []
    methods = sorted({key.method for key in groups} | _paper_methods(context), key=_method_rank)
    for method in methods:
        reference = paper_row(spec.name, method) if context.paper else None
        if reference is not None:
            rows.append(_paper_table_row(spec, reference))
        for key in sorted((k for k in groups if k.method == method), key=_key_rank):
            row = _our_row(context, labels[key], key, groups[key])
            rows.append(row)
            if reference is not None:
                rows.append(_diff_row(spec, row, reference))

    _add_standard_notes(context, rows, len(usable), skipped)
    notes = list(dict.fromkeys(context.notes))  # one copy of a note repeated per GPS variant
    return Table(spec.name, _title(context), _columns(spec), rows, notes)


def _paper_methods(context: _Context) -> set[str]:
    if not context.paper:
        return set()
    return {row.method for row in PAPER_ROWS.get(context.spec.name, ())}


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _key_rank(key: RowKey) -> tuple:
    k_rank = (0, 0) if key.k == "paper" else (1, key.k or 0)
    granularity = ("neuron", "layer", "network")
    epochs = int(key.schedule.split()[0]) if key.schedule.split()[0].isdigit() else 0
    return (k_rank, key.scores != "gradient", str(key.scores),
            granularity.index(key.granularity) if key.granularity in granularity else 3,
            key.loss != "supcon", str(key.loss), key.model, key.weights, epochs, key.schedule)


def _columns(spec: _TableSpec) -> list[Column]:
    columns = [Column(task, spec.column_title(task), "task") for task in spec.tasks]
    columns += [Column(agg.key, agg.title, "aggregate") for agg in spec.aggregates]
    columns += [Column("params", PARAMS_TITLE, "params"), Column("seeds", "Seeds", "seeds")]
    return columns


def _title(context: _Context) -> str:
    split = "test split" if context.protocol == "final" else "validation split"
    metric = "last epoch" if context.metric == "last" else MAX_METRIC_TEXT
    return (f"{context.spec.title}: top-1 accuracy (%), {metric}, protocol {context.protocol} "
            f"({split})")


def _group_rows(context: _Context, records: list[RunRecord]) -> dict[RowKey, list[RunRecord]]:
    groups: dict[RowKey, list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[record.key].append(record)
    if context.spec.name in PAPER_ROWS:
        _add_paper_k_rows(context, groups)
    return dict(groups)


def _add_paper_k_rows(context: _Context, groups: dict[RowKey, list[RunRecord]]) -> None:
    """Add a ``gps K=paper`` row per GPS variant whose runs use the official per-task K values."""
    variants: dict[RowKey, list[RowKey]] = defaultdict(list)
    for key in groups:
        if key.method == "gps":
            variants[key._replace(k=None)].append(key)
    for variant, keys in variants.items():
        runs = [r for key in keys for r in groups[key] if r.key.k == PAPER_K.get(r.task)]
        if len({r.key.k for r in runs}) < 2:
            continue
        chosen = {r.path for r in runs}
        groups[variant._replace(k="paper")] = runs
        hidden = sorted((key for key in keys if all(r.path in chosen for r in groups[key])),
                        key=lambda key: key.k)
        for key in hidden:
            del groups[key]
        official = _describe_paper_k(context.spec)
        context.notes.append(
            "gps K=paper: per task, the runs whose K is the one of the official GPS launch scripts "
            f"({official})" + (f"; rows {', '.join(f'K={k.k}' for k in hidden)} are merged into "
                               "it" if hidden else "") + ".")


def _describe_paper_k(spec: _TableSpec) -> str:
    """Return e.g. 'K=1 everywhere except Camelyon K=2' for the official per-task K values."""
    counts = Counter(PAPER_K[task] for task in spec.tasks)
    usual, _ = counts.most_common(1)[0]
    if counts[usual] * 2 <= len(spec.tasks):
        return ", ".join(f"{spec.column_title(t)} {PAPER_K[t]}" for t in spec.tasks)
    others = [f"{spec.column_title(t)} K={PAPER_K[t]}" for t in spec.tasks if PAPER_K[t] != usual]
    return f"K={usual} everywhere except " + ", ".join(others)


def _row_labels(context: _Context, keys: list[RowKey]) -> dict[RowKey, str]:
    """Return each key's label, naming model, weights and schedule only where rows differ."""
    extras = ("model", "weights", "schedule")
    varying = [name for name in extras if len({getattr(key, name) for key in keys}) > 1]
    labels = {}
    for key in keys:
        label = key.method
        if key.method == "gps":
            parts = [f"gps K={key.k}"]
            parts += [value for value, default in ((key.scores, "gradient"),
                                                   (key.granularity, "neuron"),
                                                   (key.loss, "supcon")) if value != default]
            label = " ".join(parts)
        if varying:
            label += " [" + ", ".join(str(getattr(key, name)) for name in varying) + "]"
        labels[key] = label
    common = [name for name in extras if name not in varying]
    if keys and common:
        context.notes.append("All rows of this code: " + ", ".join(
            f"{name} {getattr(keys[0], name)}" for name in common) + ".")
    return labels


def _our_row(context: _Context, label: str, key: RowKey, runs: list[RunRecord]) -> Row:
    spec, metric = context.spec, context.metric
    by_task: dict[str, list[RunRecord]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: (r.seed is None, r.seed or 0, str(r.path))):
        by_task[run.task].append(run)

    cells: dict[str, Cell] = {}
    values: dict[str, float] = {}
    for task in spec.tasks:
        if task not in by_task:
            cells[task] = Cell()
            continue
        cells[task] = _task_cell(context, label, task, by_task[task])
        values[task] = cells[task].value
    for agg in spec.aggregates:
        value, complete = agg.apply(values)
        cells[agg.key] = Cell(value, _seed_std(agg, by_task, metric),
                              n=sum(task in values for task in agg.tasks),
                              mark="" if complete else MISSING_MARK)

    counts = [len(by_task[task]) for task in spec.tasks if task in by_task]
    if min(counts) != max(counts):
        for task in by_task:
            cells[task].show_n = True
    seeds = str(counts[0]) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    cells["seeds"] = Cell(text=seeds)
    cells["params"] = Cell(statistics.fmean(r.params_percent for r in runs), decimals=3)

    _note_missing(context, label, values)
    _note_metric(context, label, by_task)
    info = dict(key._asdict(), metric=_metric_summary(by_task, metric), runs=len(runs))
    return Row(label, "ours", cells, info)


def _task_cell(context: _Context, label: str, task: str, runs: list[RunRecord]) -> Cell:
    values = [run.accuracy(context.metric) for run in runs]
    std = statistics.stdev(values) if len(values) > 1 else None
    cell = Cell(statistics.fmean(values), std, n=len(values))
    title = context.spec.column_title(task)

    differing = _differing_settings(runs)
    if differing:
        cell.mark = SETTINGS_MARK
        context.notes.append(
            f"{SETTINGS_MARK} {title} in row '{label}': its {len(runs)} runs differ in "
            + "; ".join(differing) + f"; the cell averages all {len(runs)} runs.")
    seeds = Counter(run.seed for run in runs)
    repeated = sorted((s for s, n in seeds.items() if n > 1), key=str)
    if repeated:
        context.notes.append(f"{title} in row '{label}': seed(s) {', '.join(map(str, repeated))} "
                             "occur in more than one run; each run counts once.")
    return cell


def _differing_settings(runs: list[RunRecord]) -> list[str]:
    keys = sorted({k for run in runs for k in run.settings})
    descriptions = []
    for key in keys:
        by_value: dict[str, list[str]] = defaultdict(list)
        for run in runs:
            by_value[run.settings.get(key, "(absent)")].append(str(run.seed))
        if len(by_value) > 1:
            parts = [f"{value} (seed {', '.join(seeds)})" for value, seeds in by_value.items()]
            descriptions.append(f"{key}: " + " vs ".join(parts))
    return descriptions


def _seed_std(agg: _Aggregate, by_task: dict[str, list[RunRecord]], metric: str) -> float | None:
    """Return the std over seeds of the aggregate, when every task ran the same seeds once each."""
    seed_sets = []
    for task in agg.tasks:
        runs = by_task.get(task, [])
        seeds = [run.seed for run in runs]
        if not runs or len(set(seeds)) != len(seeds) or None in seeds:
            return None
        seed_sets.append(frozenset(seeds))
    if len(set(seed_sets)) != 1 or len(seed_sets[0]) < 2:
        return None
    per_seed = []
    for seed in sorted(seed_sets[0]):
        values = {task: next(r.accuracy(metric) for r in by_task[task] if r.seed == seed)
                  for task in agg.tasks}
        per_seed.append(agg.apply(values)[0])
    return statistics.stdev(per_seed)


def _metric_summary(by_task: dict[str, list[RunRecord]], metric: str) -> str:
    fields = sorted({run.metric_field(metric) for runs in by_task.values() for run in runs})
    return fields[0] if len(fields) == 1 else "mixed: " + ", ".join(fields)


def _note_missing(context: _Context, label: str, values: dict[str, float]) -> None:
    missing = [context.spec.column_title(t) for t in context.spec.tasks if t not in values]
    if missing and context.spec.aggregates:
        context.notes.append(f"{MISSING_MARK} row '{label}' has no runs of {', '.join(missing)}; "
                             f"its means marked {MISSING_MARK} average the tasks present.")


def _note_metric(context: _Context, label: str, by_task: dict[str, list[RunRecord]]) -> None:
    tasks_by_field: dict[str, list[str]] = defaultdict(list)
    for task, runs in by_task.items():
        for name in sorted({run.metric_field(context.metric) for run in runs}):
            tasks_by_field[name].append(context.spec.column_title(task))
    if len(tasks_by_field) == 1:
        context.metric_rows[next(iter(tasks_by_field))].append(label)
        return
    parts = [f"{_describe_field(name)} on {', '.join(tasks)}" for name, tasks in tasks_by_field.items()]
    context.notes.append(f"Accuracy of row '{label}' (mixed): " + "; ".join(parts) + ".")


def _describe_field(name: str) -> str:
    return {
        "top1": "top1 (last epoch)",
        "ema_top1": "ema_top1 (last epoch, EMA weights, as the official FGVC settings evaluate)",
        "max_top1_over_epochs": f"max_top1_over_epochs ({MAX_METRIC_TEXT})",
        "max_ema_top1_over_epochs": f"max_ema_top1_over_epochs (EMA weights, {MAX_METRIC_TEXT})",
    }[name]


def _paper_table_row(spec: _TableSpec, reference: PaperRow) -> Row:
    cells = {task: Cell(reference.accuracy[task], decimals=1) for task in spec.tasks}
    for agg in spec.aggregates:
        cells[agg.key] = Cell(agg.apply(reference.accuracy)[0], n=len(agg.tasks))
    cells["params"] = Cell(reference.params_percent, text=reference.params)
    cells["seeds"] = Cell(text="")
    return Row(f"paper: {reference.name}", "paper", cells,
               {"method": reference.method, "printed_mean": reference.mean})


def _diff_row(spec: _TableSpec, ours: Row, reference: PaperRow) -> Row:
    values = {t: ours.cells[t].value for t in spec.tasks if ours.cells[t].value is not None}
    cells = {}
    for task in spec.tasks:
        value = values[task] - reference.accuracy[task] if task in values else None
        cells[task] = Cell(value, signed=True)
    same_tasks = {task: reference.accuracy[task] for task in values}
    for agg in spec.aggregates:
        ours_value, complete = agg.apply(values)
        paper_value, _ = agg.apply(same_tasks)
        value = ours_value - paper_value if ours_value is not None else None
        cells[agg.key] = Cell(value, n=sum(t in values for t in agg.tasks), signed=True,
                              mark="" if complete or value is None else MISSING_MARK)
    cells["params"] = Cell(text="")
    cells["seeds"] = Cell(text="")
    return Row(f"Δ {ours.label} - paper {reference.name}", "diff", cells,
               dict(ours.info, compared_with=reference.name))


def _add_standard_notes(context: _Context, rows: list[Row], runs: int, skipped: Counter) -> None:
    notes = [f"{runs} run(s) of protocol {context.protocol} in this table."]
    for other, count in sorted(skipped.items()):
        notes.append(f"skipped {count} run{'s' if count != 1 else ''} of protocol {other}; "
                     f"pass --protocol {other}")
    for name, labels in context.metric_rows.items():
        notes.append(f"Accuracy of {', '.join(repr(label) for label in labels)}: "
                     f"{_describe_field(name)}.")
    notes.append("Cells: mean over the task's runs (seeds), ± the sample standard deviation "
                 "(ddof=1) when there are several; Seeds: runs per task; '-': no run.")
    notes.append(f"{PARAMS_TITLE}: trainable parameters (selected weights, biases, layer-scale, "
                 "head) in percent of all parameters, head included, mean over the row's runs "
                 "(trainable_params.percent_with_head).")
    if context.spec.name == "vtab":
        notes.append("Mean (19 tasks) is the mean the GPS paper reports. Mean of group means "
                     "averages the three group means, as some later papers do; it weights the "
                     "groups equally although they have 7, 4 and 8 tasks.")
    if context.paper:
        notes.append("Paper rows: Zhang et al., 'Gradient-based Parameter Selection for Efficient "
                     "Fine-Tuning', CVPR 2024 (arXiv 2312.10136), ViT-B/16 pretrained on "
                     "ImageNet-21k, test split; Params as printed there (M: million parameters). "
                     "Δ rows: this code minus the paper, a mean over the same tasks on both sides.")
        others = sorted({str(r.info["model"]) for r in rows
                         if r.kind == "ours" and r.info["model"] != PAPER_MODEL})
        if others:
            notes.append(f"Model(s) {', '.join(others)} differ from the paper's ViT-B/16 "
                         f"({PAPER_MODEL}); their Δ rows compare different backbones.")
    elif context.protocol != "final" and context.spec.name != "other":
        notes.append("Paper rows are test-split numbers, so they are shown under protocol final only.")
    context.notes[:0] = notes


# ------------------------------------------------------------------------------------------
# Rendering


def render(table: Table, fmt: str = "markdown") -> str:
    """Render ``table`` as 'markdown' (with notes), 'csv' (numbers only) or 'latex' (tabular).

    Raises:
        ValueError: Unknown ``fmt``.
    """
    if fmt == "markdown":
        return _render_markdown(table)
    if fmt == "csv":
        return _render_csv(table)
    if fmt == "latex":
        return _render_latex(table)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def format_cell(cell: Cell, fmt: str = "markdown") -> str:
    """Return the text of ``cell`` in 'markdown' or 'latex'."""
    latex = fmt == "latex"
    if cell.text is not None:
        return _latex_escape(cell.text) if latex else cell.text
    if cell.value is None:
        return "--" if latex else "-"
    text = f"{cell.value:+.{cell.decimals}f}" if cell.signed else f"{cell.value:.{cell.decimals}f}"
    if cell.std is not None:
        text += (r" $\pm$ " if latex else " ± ") + f"{cell.std:.{cell.decimals}f}"
    if cell.show_n:
        text += f" (n={cell.n})"
    if cell.mark:
        marks = cell.mark.replace(SETTINGS_MARK, r"\dagger")
        text += f"$^{{{marks}}}$" if latex else cell.mark
    return text


def _render_markdown(table: Table) -> str:
    header = ["Method"] + [c.title for c in table.columns]
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
             "|:---|" + "---:|" * len(table.columns)]
    for row in table.rows:
        cells = [row.label.replace("|", r"\|")]
        cells += [format_cell(row.cells[c.key]) for c in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    if table.notes:
        lines += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


CSV_META = ("table", "row", "kind", "method", "k", "scores", "granularity", "loss", "model",
            "weights", "schedule", "metric", "runs")


def _render_csv(table: Table) -> str:
    header = list(CSV_META)
    for column in table.columns:
        name = _csv_name(column)
        if column.kind in ("task", "aggregate"):
            header += [name, f"{name}_std", f"{name}_n"]
        elif column.kind == "params":
            header += ["params_percent_with_head", "paper_params"]
        else:
            header.append(name)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        values = [table.name, row.label, row.kind] + [_csv_value(row.info.get(m)) for m in CSV_META[3:]]
        for column in table.columns:
            cell = row.cells[column.key]
            if column.kind in ("task", "aggregate"):
                values += [_csv_value(cell.value), _csv_value(cell.std),
                           _csv_value(cell.n if cell.value is not None and cell.n else None)]
            elif column.kind == "params":
                values += [_csv_value(cell.value), cell.text or ""]
            else:
                values.append(cell.text or "")
        writer.writerow(values)
    return buffer.getvalue()


def _csv_name(column: Column) -> str:
    return column.key.split("/", 1)[1] if column.kind == "task" and "/" in column.key else column.key


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def _render_latex(table: Table) -> str:
    lines = [f"% {table.title}", r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\hline"]
    header = ["Method"] + [_latex_escape(c.title) for c in table.columns]
    lines += [" & ".join(header) + r" \\", r"\hline"]
    for row in table.rows:
        cells = [_latex_escape(row.label)] + [format_cell(row.cells[c.key], "latex")
                                              for c in table.columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    lines += [f"% {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "Δ": r"$\Delta$", "±": r"$\pm$",
                  "†": r"$^\dagger$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


# ------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gps.tables",
        description="Print results tables of the runs below RUNS_DIR beside the GPS paper's numbers.")
    parser.add_argument("runs_dir", metavar="RUNS_DIR",
                        help="folder searched recursively for results.json files (the output "
                             "folder of train.py)")
    parser.add_argument("--format", choices=FORMATS, default="markdown",
                        help="output format (default: markdown); csv prints numbers only, one "
                             "block per table, and its notes go to stderr")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="final",
                        help="protocol of the runs to show; runs of the other one are skipped "
                             "(default: final)")
    parser.add_argument("--metric", choices=METRICS, default="last",
                        help="last: last-epoch top-1 (EMA weights when kept); max: max over "
                             "epochs, which selects on the evaluation split (default: last)")
    parser.add_argument("--table", choices=TABLE_NAMES, default=None,
                        help="print only this table (default: every table with runs)")
    parser.add_argument("--no-paper", action="store_true",
                        help="leave out the paper's rows and the differences to them")
    return parser.parse_args(argv)


def _summary(runs: RunCollection) -> str:
    skipped: Counter = Counter()
    for counts in runs.skipped.values():
        skipped.update(counts)
    text = (f"{runs.files_found} results.json file(s) under {runs.runs_dir}: {len(runs)} run(s) "
            f"of protocol {runs.protocol} used")
    for protocol, count in sorted(skipped.items()):
        text += f", {count} of protocol {protocol} skipped (pass --protocol {protocol})"
    if runs.problems:
        text += f", {len(runs.problems)} not usable (listed as warnings on stderr)"
    return text + "."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    try:
        runs = collect_runs(args.runs_dir, args.protocol)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if runs.files_found == 0:
        print(f"error: no {RESULTS_NAME} found under '{args.runs_dir}' (searched recursively); "
              "pass the output folder of train.py, which writes one per finished run",
              file=sys.stderr)
        return 1
    summary = _summary(runs)
    if not runs:
        print(f"error: {summary} No run to tabulate; see the counts above.", file=sys.stderr)
        return 1

    tables = build_tables(runs, metric=args.metric, paper=not args.no_paper)
    if args.table is not None:
        tables = [t for t in tables if t.name == args.table]
        if not tables:
            print(f"error: no runs for table '{args.table}'. {summary}", file=sys.stderr)
            return 1
    blocks = [render(table, args.format) for table in tables]
    if args.format == "csv":
        print(summary, file=sys.stderr)
        for table in tables:
            for note in table.notes:
                print(f"note ({table.name}): {note}", file=sys.stderr)
    else:
        prefix = "% " if args.format == "latex" else ""
        blocks.insert(0, prefix + summary + "\n")
    print("\n".join(blocks), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
