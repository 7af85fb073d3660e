"""Hyper-parameter sweeps: tune on the validation split, then run the best point on test.

    python -m gps.sweep --config configs/vtab/dtd.yaml --grid lr=1e-3,2e-3,5e-3 k=1,2 \\
        [--seeds 0,1,2] [--final-seeds 0,1,2] [--output DIR] [--experiment NAME] [--dry-run] \\
        [-- --epochs 2 ...]

Every grid point runs under the ``tune`` protocol (VTAB-1k: train800 -> val200; FGVC: train ->
val; custom data: train -> val), each seed in its own run folder
``<output>/<experiment>/<task>/<point>_seed<seed>``. The experiment defaults to
``sweep_<config file stem>``, and ``<output>/<experiment>/<task>`` is the sweep folder, with
``sweep.csv`` (one row per point and seed) and ``best.yaml``.

The score of a point is its validation top-1: the last-epoch ``top1`` of each run, or
``ema_top1`` when ``model_ema`` is on, averaged over the seeds. The best point is written to
``best.yaml`` with protocol ``final`` and then run for every final seed in
``<output>/<experiment>_final/<task>/seed<seed>``. That is also the folder that
``python train.py --config best.yaml --seed N`` writes. The choice reads no test-split result.

An interrupted sweep continues where it stopped: a run folder with results.json is reused, one
with a checkpoint resumes from it (``resume: auto``), and the rest run from the start. A run
folder written by another configuration is an error, so changing the sweep's options needs a new
``--output`` or ``--experiment``.

Options after ``--`` (or any option this command does not define) override the config file in
every run, as on the train.py command line. Grid values are split on commas and converted to the
option's type, so options whose values contain commas (``model_kwargs``) cannot be swept.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib
import importlib.util
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gps.builders import run_dir_for
from gps.checkpoint import CHECKPOINT_NAME
from gps.config import (
    FIELDS,
    ConfigError,
    RunConfig,
    _canonical_key,
    build_config,
    config_to_dict,
    parse_cli,
)
from gps.runlog import close_log_file, setup_logging

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_NAME = "results.json"
SWEEP_CSV = "sweep.csv"
BEST_YAML = "best.yaml"

# Options the sweep sets itself for every run.
RESERVED_KEYS = ("protocol", "seed", "run_name", "resume", "eval_only", "experiment", "output")
# Options that would move runs out of one sweep folder, so they cannot be grid axes.
UNSWEEPABLE_KEYS = RESERVED_KEYS + ("dataset", "data_dir")
# Options that change where or how fast a run executes but not what it computes. A reused run
# folder may differ from the sweep in these.
RUNTIME_KEYS = frozenset({"resume", "num_workers", "device", "log_interval"})
# train.py exit status for a non-finite training loss.
NON_FINITE_EXIT_CODE = 3

Runner = Callable[[RunConfig], dict]


class SweepError(RuntimeError):
    """A sweep cannot continue: every point failed, or a results file is not usable."""


@dataclass
class GridAxis:
    """One swept option: its canonical path and its values, converted to the option's type."""

    key: str
    values: list[Any]


@dataclass
class SweepRun:
    """One run of the sweep: a grid point (empty for a final run) with one seed.

    Attributes:
        point: Canonical option path -> value of the grid point.
        seed: The run's seed.
        cfg: The complete configuration of the run.
        run_dir: The run folder.
        status: 'pending', then 'trained', 'resumed', 'reused' or 'failed'.
        accuracy: The run's last-epoch top-1 (EMA top-1 when kept) on its evaluation split.
        results: The run's results.json contents once it has finished.
    """

    point: dict[str, Any]
    seed: int
    cfg: RunConfig
    run_dir: Path
    status: str = "pending"
    accuracy: float | None = None
    results: dict | None = None

    def planned_status(self) -> str:
        """Return what running this entry will do: 'reuse', 'resume' or 'train'."""
        if (self.run_dir / RESULTS_NAME).is_file():
            return "reuse"
        if (self.run_dir / CHECKPOINT_NAME).is_file():
            return "resume"
        return "train"


@dataclass
class SweepPlan:
    """Everything a sweep will run, checked before the first run starts."""

    config_file: Path
    base: RunConfig
    axes: list[GridAxis]
    seeds: list[int]
    final_seeds: list[int]
    experiment: str
    sweep_dir: Path
    tune_runs: list[SweepRun] = field(default_factory=list)

    @property
    def best_yaml(self) -> Path:
        """The file that receives the chosen configuration."""
        return self.sweep_dir / BEST_YAML

    @property
    def csv_path(self) -> Path:
        """The per-run table of the tune runs."""
        return self.sweep_dir / SWEEP_CSV


@dataclass
class SweepOutcome:
    """The result of a sweep: the chosen point, its validation score and the final runs."""

    best_point: dict[str, Any]
    best_accuracy: float
    tune_runs: list[SweepRun]
    final_runs: list[SweepRun]


# ------------------------------------------------------------------------------------------
# Planning


def parse_seeds(text: str, option: str, problems: list[str]) -> list[int]:
    """Parse a comma-separated list of distinct non-negative seeds, appending any problem."""
    seeds = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit():
            problems.append(f"{option}: {item!r} is not a non-negative integer seed; write e.g. "
                            f"{option} 0,1,2")
            continue
        seeds.append(int(item))
    if len(set(seeds)) != len(seeds):
        problems.append(f"{option}: seeds {text!r} repeat a value; list each seed once")
    return seeds


def parse_grid(tokens: Sequence[str], problems: list[str]) -> list[GridAxis]:
    """Parse ``key=v1,v2`` tokens into grid axes, converting values to the option's type.

    Unknown options, options the sweep sets itself, empty or invalid values and values that
    repeat after conversion are appended to ``problems``, all of them.
    """
    axes: list[GridAxis] = []
    seen: set[str] = set()
    for token in tokens:
        key_text, sep, values_text = token.partition("=")
        if not sep or not key_text or not values_text:
            problems.append(f"--grid: {token!r} is not of the form key=value1,value2 "
                            "(e.g. lr=1e-3,2e-3)")
            continue
        key = _canonical_key(key_text)
        if key not in FIELDS:
            problems.append(_unknown_option_problem(key_text))
            continue
        if key in UNSWEEPABLE_KEYS:
            hint = " (use --seeds)" if key == "seed" else ""
            problems.append(f"--grid: {key!r} cannot be swept, because the sweep sets it for "
                            f"every run{hint}")
            continue
        if key in seen:
            problems.append(f"--grid: {key!r} is given twice; list all its values in one "
                            f"{key}=v1,v2 entry")
            continue
        seen.add(key)
        values = _convert_values(key, [v.strip() for v in values_text.split(",")], problems)
        if values is not None:
            axes.append(GridAxis(key, values))
    return axes


def _unknown_option_problem(key_text: str) -> str:
    problems: list[str] = []
    # build_config reports an unknown option with its closest spelling.
    try:
        build_config(overrides={key_text: "0"}, validate=False)
    except ConfigError as error:
        problems = [p for p in error.problems if "unknown option" in p]
    detail = problems[0].replace(" in the command line", "") if problems else repr(key_text)
    return f"--grid: {detail}"


def _convert_values(key: str, texts: list[str], problems: list[str]) -> list[Any] | None:
    """Convert one axis's value texts with the option's type and bounds."""
    values = []
    failed = False
    for text in texts:
        if not text:
            problems.append(f"--grid {key}: empty value in the list; remove the extra comma")
            failed = True
            continue
        try:
            cfg = build_config(overrides={key: text}, validate=False)
        except ConfigError as error:
            problems.extend(f"--grid: {p.replace(' (from the command line)', '')}"
                            for p in error.problems)
            failed = True
            continue
        values.append(_get_option(cfg, key))
    if failed:
        return None
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        problems.append(f"--grid {key}: values {texts} repeat after conversion to "
                        f"{values}; list each value once")
        return None
    return values


def _get_option(cfg: RunConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def reserved_overrides(overrides: Sequence[str]) -> list[str]:
    """Return the problems of extra overrides that set an option the sweep sets itself."""
    problems = []
    for token in overrides:
        if not token.startswith("--") or token == "--":
            continue
        key = _canonical_key(token[2:].split("=", 1)[0])
        if key in RESERVED_KEYS:
            replacement = {"seed": "--seeds", "output": "the sweep's --output",
                           "experiment": "the sweep's --experiment"}.get(key)
            hint = f"; use {replacement}" if replacement else ""
            problems.append(f"override {token!r}: the sweep sets {key!r} for every run{hint}")
    return problems


def format_point(point: dict[str, Any]) -> str:
    """Return a readable ``key=value`` label of a grid point."""
    return " ".join(f"{key}={value}" for key, value in point.items()) or "(no grid)"


def point_run_name(point: dict[str, Any], seed: int) -> str:
    """Return the run-folder name of a point and seed, e.g. ``lr0.001_k1_seed0``."""
    parts = []
    for key, value in point.items():
        text = str(value).replace("/", "-").replace(" ", "")
        parts.append(f"{key}{text}")
    parts.append(f"seed{seed}")
    return "_".join(parts)


def plan_sweep(config_file: str | Path, grid: Sequence[str], seeds: str | None = None,
               final_seeds: str | None = None, output: str | None = None,
               experiment: str | None = None, overrides: Sequence[str] = ()) -> SweepPlan:
    """Check every option of a sweep and build the configuration of every tune run.

    Raises:
        ConfigError: listing every problem (unknown grid options, invalid values, a point whose
            configuration is inconsistent, a run folder written by another configuration).
    """
    problems: list[str] = []
    config_file = Path(config_file)
    argv = ["--config", str(config_file), *[t for t in overrides if t != "--"]]
    if output is not None:
        argv += ["--output", output]
    problems += reserved_overrides(overrides)
    base = None
    try:
        base, _ = parse_cli(argv, prog="python -m gps.sweep", description=__doc__)
    except ConfigError as error:
        problems += error.problems
    axes = parse_grid(grid, problems)
    seed_list = parse_seeds(seeds, "--seeds", problems) if seeds else None
    final_list = parse_seeds(final_seeds, "--final-seeds", problems) if final_seeds else None
    if problems:
        raise ConfigError(_unique(problems))

    seed_list = seed_list or [base.seed]
    experiment = experiment or f"sweep_{config_file.stem}"
    plan = SweepPlan(config_file, base, axes, seed_list, final_list or seed_list, experiment,
                     sweep_dir=Path())
    for point in grid_points(axes):
        for seed in seed_list:
            run = _plan_run(base, point, seed, experiment, problems)
            if run is not None:
                plan.tune_runs.append(run)
    problems += check_run_folders(plan.tune_runs)
    if problems:
        raise ConfigError(_unique(problems))
    plan.sweep_dir = plan.tune_runs[0].run_dir.parent
    return plan


def grid_points(axes: Sequence[GridAxis]) -> list[dict[str, Any]]:
    """Return every combination of the axes' values, the last axis varying fastest."""
    combos = itertools.product(*(axis.values for axis in axes))
    return [dict(zip((axis.key for axis in axes), combo, strict=True)) for combo in combos]


def _plan_run(base: RunConfig, point: dict[str, Any], seed: int, experiment: str,
              problems: list[str]) -> SweepRun | None:
    values = {**config_to_dict(base), **point, "seed": seed, "protocol": "tune",
              "experiment": experiment, "run_name": point_run_name(point, seed),
              "resume": "auto", "eval_only": False}
    try:
        cfg = build_config(overrides=values)
    except ConfigError as error:
        label = format_point(point)
        problems.extend(f"grid point {label}: {p.replace(' (from the command line)', '')}"
                        for p in error.problems)
        return None
    return SweepRun(point, seed, cfg, run_dir_for(cfg))


def check_run_folders(runs: Sequence[SweepRun]) -> list[str]:
    """Return one problem naming the run folders that hold runs of another configuration."""
    stale = [(run, differences) for run in runs if (differences := folder_differences(run))]
    if not stale:
        return []
    first, differences = stale[0]
    examples = "; ".join(differences[:5])
    return [f"{len(stale)} run folder(s) contain a run of another configuration, e.g. "
            f"{first.run_dir} ({examples}); pass another --output or --experiment, or delete "
            "the folder(s)"]


def folder_differences(run: SweepRun) -> list[str]:
    """List how the configuration saved in a run folder differs from the run's."""
    saved = None
    results_file = run.run_dir / RESULTS_NAME
    config_file = run.run_dir / "config.yaml"
    if results_file.is_file():
        saved = read_results(results_file).get("config")
    elif config_file.is_file():
        saved = yaml.safe_load(config_file.read_text())
    if not isinstance(saved, dict):
        return []
    return config_differences(saved, config_to_dict(run.cfg))


def config_differences(saved: dict, current: dict) -> list[str]:
    """List the options (other than runtime ones) whose values differ between two configs."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    keys = sorted((set(flat_saved) | set(flat_current)) - RUNTIME_KEYS)
    return [f"{key}: {flat_saved.get(key)!r} in the folder, {flat_current.get(key)!r} now"
            for key in keys if flat_saved.get(key) != flat_current.get(key)]


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        path = prefix + str(key)
        # Nested sections (selection, tuning) are compared per option; dict options such as
        # model_kwargs are compared whole.
        if isinstance(value, dict) and path not in FIELDS:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ------------------------------------------------------------------------------------------
# Running


def read_results(path: Path) -> dict:
    """Read a run's results.json; an unreadable file raises SweepError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SweepError(f"cannot read {path}: {error}; delete the run folder to run it again") \
            from None
    if not isinstance(data, dict):
        raise SweepError(f"{path} does not contain a JSON object; delete the run folder")
    return data


def run_accuracy(results: dict) -> float:
    """Return a run's last-epoch top-1, or the EMA top-1 when the run kept an EMA."""
    uses_ema = bool((results.get("config") or {}).get("model_ema"))
    value = results.get("ema_top1") if uses_ema else results.get("top1")
    if not isinstance(value, (int, float)):
        name = "ema_top1" if uses_ema else "top1"
        raise SweepError(f"results of {results.get('task')} seed {results.get('seed')} have no "
                         f"numeric {name} (got {value!r})")
    return float(value)


def validation_accuracy(results: dict) -> float:
    """Return the selection score of a tune-protocol run; raise SweepError for any other run.

    The sweep chooses its point with this function alone, so a run that was evaluated on the
    test split can never take part in the choice.
    """
    protocol, split = results.get("protocol"), results.get("eval_split")
    if protocol != "tune" or split == "test":
        raise SweepError(f"cannot select on a run of protocol {protocol!r} evaluated on "
                         f"{split!r}: the choice uses tune-protocol runs (validation split) only")
    return run_accuracy(results)


def run_in_process(cfg: RunConfig) -> dict:
    """Run train.py's ``run`` in this process, closing the run's log file afterwards."""
    train = _import_train()
    try:
        return train.run(cfg)
    finally:
        close_log_file()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _import_train():
    """Import train.py from the repository root, also when it is not on sys.path."""
    try:
        return importlib.import_module("train")
    except ModuleNotFoundError as error:
        if error.name != "train":
            raise
    spec = importlib.util.spec_from_file_location("train", REPO_ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    return module


def execute_runs(runs: Sequence[SweepRun], runner: Runner | None = None,
                 on_finish: Callable[[SweepRun], None] | None = None) -> None:
    """Run (or reuse) every entry, one after another, or one per GPU when several are visible.

    ``runner`` replaces the in-process runner; with it, runs are always sequential. A run whose
    loss became non-finite is marked 'failed' and the others continue.
    """
    pending = []
    for run in runs:
        if run.planned_status() == "reuse":
            _finish(run, "reused", read_results(run.run_dir / RESULTS_NAME))
            if on_finish is not None:
                on_finish(run)
        else:
            pending.append(run)
    gpus = _visible_gpu_count()
    if runner is None and gpus > 1 and all(r.cfg.device == "auto" for r in pending):
        _execute_on_gpus(pending, gpus, on_finish)
        return
    for run in pending:
        _execute_one(run, runner or run_in_process)
        if on_finish is not None:
            on_finish(run)


def _finish(run: SweepRun, status: str, results: dict | None) -> None:
    run.status = status
    run.results = results
    run.accuracy = run_accuracy(results) if results is not None else None


def _execute_one(run: SweepRun, runner: Runner) -> None:
    from gps.engine import NonFiniteLossError

    status = "resumed" if run.planned_status() == "resume" else "trained"
    logger.info("%s %s seed %d (%s protocol) in %s", "resuming" if status == "resumed" else
                "starting", format_point(run.point), run.seed, run.cfg.protocol, run.run_dir)
    try:
        results = runner(run.cfg)
    except NonFiniteLossError as error:
        logger.error("run %s failed: %s", run.run_dir, error)
        _finish(run, "failed", None)
        return
    _finish(run, status, results)


def _visible_gpu_count() -> int:
    torch = sys.modules.get("torch")
    if torch is None:
        import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _execute_on_gpus(runs: Sequence[SweepRun], gpus: int,
                     on_finish: Callable[[SweepRun], None] | None) -> None:
    """Run each entry as a train.py subprocess, one per GPU, until all have finished.

    NOTE: this path has not been run on GPUs. It was checked only on a CPU machine, with the
    GPU count forced to 2.
    """
    queue = list(runs)
    active: dict[int, tuple[subprocess.Popen, SweepRun, str, Any]] = {}
    while queue or active:
        for gpu in range(gpus):
            if gpu not in active and queue:
                run = queue.pop(0)
                active[gpu] = _launch(run, gpu)
        time.sleep(1.0)
        for gpu, (process, run, status, console) in list(active.items()):
            if process.poll() is None:
                continue
            console.close()
            del active[gpu]
            results_file = run.run_dir / RESULTS_NAME
            if process.returncode == 0 and results_file.is_file():
                _finish(run, status, read_results(results_file))
            elif process.returncode == NON_FINITE_EXIT_CODE:
                logger.error("run %s failed: non-finite loss (see its log.txt)", run.run_dir)
                _finish(run, "failed", None)
            else:
                for other_process, *_ in active.values():
                    other_process.terminate()
                raise SweepError(f"train.py exited with status {process.returncode} for "
                                 f"{run.run_dir}; see {run.run_dir / 'console.txt'}")
            if on_finish is not None:
                on_finish(run)


def _launch(run: SweepRun, gpu: int):
    status = "resumed" if run.planned_status() == "resume" else "trained"
    run.run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run.run_dir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_to_dict(run.cfg), sort_keys=False))
    console = open(run.run_dir / "console.txt", "a")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
    command = [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config_file)]
    logger.info("GPU %d: %s %s seed %d in %s", gpu,
                "resuming" if status == "resumed" else "starting", format_point(run.point),
                run.seed, run.run_dir)
    process = subprocess.Popen(command, env=env, stdout=console, stderr=subprocess.STDOUT)
    return process, run, status, console


# ------------------------------------------------------------------------------------------
# Choosing and the final runs


def select_best(runs: Sequence[SweepRun]) -> tuple[dict[str, Any], float]:
    """Return the grid point with the highest mean validation top-1 over its seeds.

    Scores come from :func:`validation_accuracy`, so only tune-protocol results count. A point
    with a failed seed is left out. Ties go to the point listed first in the grid.
    """
    scores: dict[str, list[float]] = {}
    points: dict[str, dict[str, Any]] = {}
    failed: set[str] = set()
    for run in runs:
        label = format_point(run.point)
        points.setdefault(label, run.point)
        if run.results is None:
            failed.add(label)
            continue
        scores.setdefault(label, []).append(validation_accuracy(run.results))
    candidates = [(label, sum(v) / len(v)) for label, v in scores.items() if label not in failed]
    if not candidates:
        raise SweepError("no grid point finished on every seed; see the runs' log.txt files")
    best_label, best_score = max(candidates, key=lambda item: item[1])
    return points[best_label], best_score


def write_sweep_csv(path: Path, axes: Sequence[GridAxis], runs: Sequence[SweepRun]) -> None:
    """Write one row per tune run: grid values, seed, validation top-1, run folder, status."""
    columns = [axis.key for axis in axes] + ["seed", "val_top1", "run_dir", "status"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for run in runs:
            accuracy = "" if run.accuracy is None else f"{run.accuracy:.4f}"
            writer.writerow([run.point[axis.key] for axis in axes]
                            + [run.seed, accuracy, str(run.run_dir), run.status])


def write_best_yaml(plan: SweepPlan, point: dict[str, Any], score: float) -> Path:
    """Write the chosen configuration, protocol final, as a config file for train.py."""
    values = config_to_dict(plan.base)
    best_run = next(r for r in plan.tune_runs if r.point == point)
    values.update(config_to_dict(best_run.cfg))
    values.update({"protocol": "final", "seed": plan.final_seeds[0],
                   "experiment": f"{plan.experiment}_final", "run_name": None, "resume": None,
                   "eval_only": False})
    header = [
        f"# Chosen by python -m gps.sweep from {plan.config_file} over "
        f"{len(grid_points(plan.axes))} grid point(s) and seeds {plan.seeds}.",
        f"# Best point: {format_point(point)}, mean validation top-1 {score:.2f}% "
        "(tune protocol, last epoch).",
        f"# Final runs: python train.py --config {plan.best_yaml} --seed N",
    ]
    text = "\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False)
    plan.best_yaml.write_text(text)
    return plan.best_yaml


def plan_final_runs(plan: SweepPlan, point: dict[str, Any]) -> list[SweepRun]:
    """Build the final-protocol runs from best.yaml, one per final seed."""
    runs = []
    for seed in plan.final_seeds:
        cfg = build_config(plan.best_yaml, {"seed": seed, "resume": "auto"})
        runs.append(SweepRun(point, seed, cfg, run_dir_for(cfg)))
    problems = check_run_folders(runs)
    if problems:
        raise ConfigError(problems)
    return runs


def run_sweep(plan: SweepPlan, runner: Runner | None = None) -> SweepOutcome:
    """Run the tune runs, choose the best point, write best.yaml and run it under ``final``."""
    logger.info("sweep folder %s: %d tune run(s)", plan.sweep_dir, len(plan.tune_runs))

    def record(_: SweepRun) -> None:
        write_sweep_csv(plan.csv_path, plan.axes, plan.tune_runs)

    execute_runs(plan.tune_runs, runner, on_finish=record)
    write_sweep_csv(plan.csv_path, plan.axes, plan.tune_runs)
    assert all(r.cfg.protocol == "tune" for r in plan.tune_runs)
    point, score = select_best(plan.tune_runs)
    logger.info("best point %s: mean validation top-1 %.2f%%", format_point(point), score)
    write_best_yaml(plan, point, score)

    final_runs = plan_final_runs(plan, point)
    execute_runs(final_runs, runner)
    failed = [run.run_dir for run in final_runs if run.results is None]
    if failed:
        raise SweepError(f"final run(s) failed: {', '.join(map(str, failed))}")
    return SweepOutcome(point, score, plan.tune_runs, final_runs)


# ------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``python -m gps.sweep``."""
    parser = argparse.ArgumentParser(
        prog="python -m gps.sweep", allow_abbrev=False,
        description="Run a grid of configurations under the tune protocol, choose the best by "
                    "validation top-1 and run it under the final protocol.",
        epilog="Options after -- (or unknown to this command) are train.py options applied to "
               "every run, e.g. -- --epochs 2 --batch-size 16.")
    parser.add_argument("--config", required=True, help="YAML config file of the task")
    parser.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                        help="swept options, e.g. lr=1e-3,2e-3 k=1,2 (any train.py option)")
    parser.add_argument("--seeds", help="comma-separated seeds of every point [default: the "
                                        "config's seed]")
    parser.add_argument("--final-seeds", help="seeds of the final runs [default: --seeds]")
    parser.add_argument("--output", help="root folder of run folders [default: the config's "
                                         "output]")
    parser.add_argument("--experiment", help="experiment folder name of the tune runs [default: "
                                             "sweep_<config file stem>]")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the options and list the runs without running them")
    return parser


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the command line at the first bare ``--`` into sweep options and overrides."""
    argv = list(argv)
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def print_plan(plan: SweepPlan) -> None:
    """Print the runs of a plan and what running it would do."""
    print(f"sweep folder: {plan.sweep_dir}")
    print(f"{len(plan.tune_runs)} tune run(s), then the best point under protocol final with "
          f"seeds {plan.final_seeds}:")
    for run in plan.tune_runs:
        print(f"  {run.planned_status():<7} {format_point(run.point)} seed {run.seed}: "
              f"{run.run_dir}")


def print_outcome(plan: SweepPlan, outcome: SweepOutcome) -> None:
    """Print the validation scores, the chosen point and the final test accuracies."""
    print(f"sweep folder: {plan.sweep_dir}")
    for run in outcome.tune_runs:
        accuracy = "failed" if run.accuracy is None else f"{run.accuracy:6.2f}%"
        print(f"  val top-1 {accuracy}  {format_point(run.point)} seed {run.seed} ({run.status})")
    print(f"best: {format_point(outcome.best_point)} (mean validation top-1 "
          f"{outcome.best_accuracy:.2f}%), written to {plan.best_yaml}")
    for run in outcome.final_runs:
        split = run.results.get("eval_split")
        print(f"  final seed {run.seed}: {split} top-1 {run.accuracy:.2f}% ({run.status}) "
              f"in {run.run_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the sweep and print its report; return the exit status."""
    from gps.data import DatasetError

    own, overrides = split_argv(sys.argv[1:] if argv is None else argv)
    args, unknown = build_parser().parse_known_args(own)
    setup_logging()
    try:
        plan = plan_sweep(args.config, args.grid, seeds=args.seeds, final_seeds=args.final_seeds,
                          output=args.output, experiment=args.experiment,
                          overrides=[*unknown, *overrides])
        if args.dry_run:
            print_plan(plan)
            return 0
        outcome = run_sweep(plan)
    except (ConfigError, DatasetError) as error:
        logger.error("%s", error)
        return 2
    except SweepError as error:
        logger.error("%s", error)
        return 1
    print_outcome(plan, outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
