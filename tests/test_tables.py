"""Tests of the results tables (gps.tables) on hand-written results.json files.

Every expected mean and difference is written out as literal arithmetic, not computed by the
module under test.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gps.config import RunConfig, config_to_dict
from gps.paper import FGVC_ROWS, FGVC_TASKS, VTAB_GROUPS, VTAB_ROWS, VTAB_TASKS
from gps.tables import build_tables, collect_runs, format_cell, main, render

REPO = Path(__file__).resolve().parents[1]
FGVC_VALUES = {"cub": 90.0, "nabirds": 86.0, "flowers": 99.5, "dogs": 92.0, "cars": 89.0}
FGVC_PERCENTS = {"cub": 0.5, "nabirds": 0.6, "flowers": 0.7, "dogs": 0.8, "cars": 0.9}


def write_run(root: Path, task: str, top1: float, *, seed: int = 0, method: str = "gps", k: int = 1,
              protocol: str = "final", experiment: str | None = None, run: str | None = None,
              ema_top1: float | None = None, max_top1: float | None = None,
              max_ema_top1: float | None = None, percent: float = 0.5, epochs: int = 100,
              **config: object) -> Path:
    """Write a results.json with the fields of gps.training.build_results; return its path."""
    selection = {key: config.pop(key) for key in ("loss", "scores", "granularity") if key in config}
    cfg = RunConfig(dataset=task, protocol=protocol, method=method, k=k, seed=seed,
                    epochs=epochs, **config)
    for key, value in selection.items():
        setattr(cfg.selection, key, value)
    benchmark = task.split("/")[0]
    results = {
        "task": task, "benchmark": benchmark, "group": None, "protocol": protocol,
        "method": method, "k": k if method == "gps" else None,
        "selection": {"loss": cfg.selection.loss, "scores": cfg.selection.scores,
                      "granularity": cfg.selection.granularity},
        "seed": seed, "model": cfg.model, "num_classes": 10, "epochs": epochs,
        "eval_split": "test" if protocol == "final" else "val", "eval_images": 100,
        "top1": top1, "top5": 99.0, "ema_top1": ema_top1, "ema_top5": None,
        "max_top1_over_epochs": {"top1": max_top1 if max_top1 is not None else top1, "epoch": 7},
        "max_ema_top1_over_epochs": (None if ema_top1 is None else
                                     {"top1": max_ema_top1 or ema_top1, "epoch": 9}),
        "trainable_params": {"with_head": 50, "without_head": 40, "total_params": 10000,
                             "percent_with_head": percent, "percent_without_head": 0.4},
        "mask_summary": {}, "engine": "dense", "precision": "float32", "device": "cpu",
        "wall_time_s": 1.0, "train_images_per_s": 10.0, "peak_memory": None,
        "weights": {"source": "hub", "tag": cfg.pretrained, "path": None, "sha256": None},
        "environment": {}, "config": config_to_dict(cfg),
    }
    experiment = experiment or (f"gps_k{k}" if method == "gps" else method)
    path = root / experiment / task.replace("/", "-") / (run or f"seed{seed}") / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path


def write_fgvc_set(root: Path) -> None:
    for task, value in FGVC_VALUES.items():
        write_run(root, f"fgvc/{task}", value, percent=FGVC_PERCENTS[task])


def table_named(tables, name):
    matches = [table for table in tables if table.name == name]
    assert len(matches) == 1, [table.name for table in tables]
    return matches[0]


def row_labelled(table, label):
    matches = [row for row in table.rows if row.label == label]
    assert len(matches) == 1, [row.label for row in table.rows]
    return matches[0]


def markdown_row(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{text}")


def test_fgvc_complete_set_and_paper_difference(tmp_path):
    write_fgvc_set(tmp_path)
    table = table_named(build_tables(collect_runs(tmp_path)), "fgvc")
    row = row_labelled(table, "gps K=1")
    for task, value in FGVC_VALUES.items():
        assert row.cells[f"fgvc/{task}"].value == value
    # (90.0 + 86.0 + 99.5 + 92.0 + 89.0) / 5 = 456.5 / 5
    assert row.cells["mean"].value == pytest.approx(91.3)
    assert row.cells["mean"].mark == ""
    # (0.5 + 0.6 + 0.7 + 0.8 + 0.9) / 5
    assert row.cells["params"].value == pytest.approx(0.7)

    diff = row_labelled(table, "Δ gps K=1 - paper GPS")
    # Paper GPS: CUB 89.9, NABirds 86.7, Flowers 99.7, Dogs 92.2, Cars 90.4, mean 91.78.
    expected = {"cub": 90.0 - 89.9, "nabirds": 86.0 - 86.7, "flowers": 99.5 - 99.7,
                "dogs": 92.0 - 92.2, "cars": 89.0 - 90.4}
    for task, value in expected.items():
        assert diff.cells[f"fgvc/{task}"].value == pytest.approx(value)
    assert diff.cells["mean"].value == pytest.approx(91.3 - 91.78)  # -0.48

    text = render(table)
    assert markdown_row(text, "gps K=1") == ["90.00", "86.00", "99.50", "92.00", "89.00",
                                             "91.30", "0.700", "1"]
    assert markdown_row(text, "Δ gps K=1 - paper GPS") == ["+0.10", "-0.70", "-0.20", "-0.20",
                                                           "-1.40", "-0.48", "", ""]
    assert markdown_row(text, "paper: GPS")[:6] == ["89.9", "86.7", "99.7", "92.2", "90.4", "91.78"]
    assert "Params (% with head)" in text


def test_vtab_group_means(tmp_path):
    natural = [70.0, 72.0, 74.0, 76.0, 78.0, 80.0, 82.0]  # mean 532 / 7 = 76
    specialized = [80.0, 84.0, 88.0, 92.0]  # mean 344 / 4 = 86
    structured = [50.0, 52.0, 54.0, 56.0, 58.0, 60.0, 62.0, 64.0]  # mean 456 / 8 = 57
    for task, value in zip(VTAB_TASKS, natural + specialized + structured, strict=True):
        write_run(tmp_path, task, value)
    table = table_named(build_tables(collect_runs(tmp_path)), "vtab")
    row = row_labelled(table, "gps K=1")
    assert row.cells["natural"].value == pytest.approx(76.0)
    assert row.cells["specialized"].value == pytest.approx(86.0)
    assert row.cells["structured"].value == pytest.approx(57.0)
    # (532 + 344 + 456) / 19 = 1332 / 19
    assert row.cells["mean"].value == pytest.approx(70.10526315789474)
    # (76 + 86 + 57) / 3 = 219 / 3
    assert row.cells["mean_of_groups"].value == pytest.approx(73.0)
    assert all(row.cells[key].mark == "" for key in ("natural", "mean", "mean_of_groups"))

    diff = row_labelled(table, "Δ gps K=1 - paper GPS")
    # Paper GPS natural: (81.1 + 94.2 + 75.8 + 99.4 + 91.7 + 91.6 + 52.4) / 7 = 586.2 / 7
    assert diff.cells["natural"].value == pytest.approx(76.0 - 586.2 / 7)
    # Paper GPS over 19 tasks: (586.2 + 347.1 + 495.1) / 19 = 1428.4 / 19
    assert diff.cells["mean"].value == pytest.approx(1332 / 19 - 1428.4 / 19)
    # Paper group means: 586.2 / 7, 347.1 / 4, 495.1 / 8
    assert diff.cells["mean_of_groups"].value == pytest.approx(
        73.0 - (586.2 / 7 + 347.1 / 4 + 495.1 / 8) / 3)

    text = render(table)
    cells = markdown_row(text, "gps K=1")
    assert cells[19:24] == ["76.00", "86.00", "57.00", "70.11", "73.00"]
    assert "Mean of group means" in text


def test_partial_set_marks_means(tmp_path):
    write_run(tmp_path, "fgvc/cub", 90.0)
    write_run(tmp_path, "fgvc/cars", 88.0)
    table = table_named(build_tables(collect_runs(tmp_path)), "fgvc")
    row = row_labelled(table, "gps K=1")
    assert row.cells["fgvc/nabirds"].value is None
    assert row.cells["mean"].value == pytest.approx(89.0)  # (90 + 88) / 2
    assert row.cells["mean"].mark == "*"

    diff = row_labelled(table, "Δ gps K=1 - paper GPS")
    # Paper GPS over the same tasks: (89.9 + 90.4) / 2 = 90.15
    assert diff.cells["mean"].value == pytest.approx(89.0 - 90.15)
    assert diff.cells["mean"].mark == "*"

    text = render(table)
    assert markdown_row(text, "gps K=1")[:6] == ["90.00", "-", "-", "-", "88.00", "89.00*"]
    assert markdown_row(text, "Δ gps K=1 - paper GPS")[5] == "-1.15*"
    missing_notes = [note for note in table.notes if "'gps K=1' has no runs of" in note]
    assert len(missing_notes) == 1
    assert "NABirds, Flowers, Dogs" in missing_notes[0]


def test_seeds_mean_and_sample_std(tmp_path):
    for seed, value in enumerate([88.0, 89.0, 91.0]):
        write_run(tmp_path, "fgvc/cars", value, seed=seed)
    table = table_named(build_tables(collect_runs(tmp_path)), "fgvc")
    cell = row_labelled(table, "gps K=1").cells["fgvc/cars"]
    assert cell.value == pytest.approx(268.0 / 3)  # 89.333...
    # Sample std (ddof=1): deviations -4/3, -1/3, 5/3; (16 + 1 + 25) / 9 / 2 = 7/3
    assert cell.std == pytest.approx(math.sqrt(7.0 / 3.0))  # 1.5275
    assert cell.n == 3
    text = render(table)
    cells = markdown_row(text, "gps K=1")
    assert cells[4] == "89.33 ± 1.53"
    assert cells[-1] == "3"


def test_seed_counts_differing_per_task(tmp_path):
    for seed, value in enumerate([88.0, 89.0, 91.0]):
        write_run(tmp_path, "fgvc/cars", value, seed=seed)
    write_run(tmp_path, "fgvc/cub", 90.0)
    text = render(table_named(build_tables(collect_runs(tmp_path)), "fgvc"))
    cells = markdown_row(text, "gps K=1")
    assert cells[0] == "90.00 (n=1)"
    assert cells[4] == "89.33 ± 1.53 (n=3)"
    assert cells[-1] == "1-3"


def test_protocols_are_not_mixed(tmp_path):
    write_run(tmp_path, "fgvc/cub", 90.0)
    write_run(tmp_path, "fgvc/cars", 88.0)
    for seed, value in enumerate([70.0, 71.0, 75.0]):
        write_run(tmp_path, "fgvc/cub", value, seed=seed, protocol="tune", experiment="tune")

    final = collect_runs(tmp_path, "final")
    assert len(final) == 2
    table = table_named(build_tables(final), "fgvc")
    assert row_labelled(table, "gps K=1").cells["fgvc/cub"].value == 90.0
    assert "skipped 3 runs of protocol tune; pass --protocol tune" in table.notes

    tune = collect_runs(tmp_path, "tune")
    assert len(tune) == 3
    table = table_named(build_tables(tune), "fgvc")
    assert row_labelled(table, "gps K=1").cells["fgvc/cub"].value == pytest.approx(72.0)  # 216 / 3
    assert "skipped 2 runs of protocol final; pass --protocol final" in table.notes
    assert not [row for row in table.rows if row.kind == "paper"]
    assert "protocol tune (validation split)" in table.title


def test_table_with_only_skipped_runs(tmp_path):
    write_run(tmp_path, "fgvc/cub", 90.0)
    write_run(tmp_path, "vtab/dtd", 60.0, protocol="tune")
    tables = build_tables(collect_runs(tmp_path))
    vtab = table_named(tables, "vtab")
    assert [row.kind for row in vtab.rows] == ["paper"] * 4
    assert "skipped 1 run of protocol tune; pass --protocol tune" in vtab.notes


def test_ema_accuracy_and_max_metric(tmp_path):
    write_run(tmp_path, "fgvc/cub", 80.0, ema_top1=82.0, max_top1=95.0, max_ema_top1=96.0,
              model_ema=True)
    write_run(tmp_path, "fgvc/cars", 70.0, max_top1=75.0)
    runs = collect_runs(tmp_path)

    table = table_named(build_tables(runs), "fgvc")
    row = row_labelled(table, "gps K=1")
    assert row.cells["fgvc/cub"].value == 82.0
    assert row.cells["fgvc/cars"].value == 70.0
    text = render(table)
    for value in ("95.00", "96.00", "75.00"):
        assert value not in text
    mixed = [note for note in table.notes if "'gps K=1' (mixed)" in note]
    assert len(mixed) == 1
    assert "ema_top1" in mixed[0]
    assert "on CUB" in mixed[0]
    assert "top1 (last epoch) on Cars" in mixed[0]

    table = table_named(build_tables(runs, metric="max"), "fgvc")
    row = row_labelled(table, "gps K=1")
    assert row.cells["fgvc/cub"].value == 96.0
    assert row.cells["fgvc/cars"].value == 75.0
    assert "max over epochs (selects on the evaluation split)" in table.title


def test_unusable_files_are_reported(tmp_path, caplog):
    write_run(tmp_path, "fgvc/cub", 90.0)
    broken = tmp_path / "exp" / "fgvc-cars" / "seed0" / "results.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    no_top1 = write_run(tmp_path, "fgvc/dogs", 91.0, experiment="other")
    data = json.loads(no_top1.read_text())
    del data["top1"]
    no_top1.write_text(json.dumps(data))
    no_ema = write_run(tmp_path, "fgvc/flowers", 99.0, experiment="ema", model_ema=True)
    short = write_run(tmp_path, "fgvc/nabirds", 80.0, experiment="short")
    data = json.loads(short.read_text())
    data["epochs"] = 40
    short.write_text(json.dumps(data))

    with caplog.at_level(logging.WARNING, logger="gps.tables"):
        runs = collect_runs(tmp_path)
    assert len(runs) == 1
    reasons = {path: reason for path, reason in runs.problems}
    assert set(reasons) == {broken, no_top1, no_ema, short}
    assert "not valid JSON" in reasons[broken]
    assert "missing top1" in reasons[no_top1]
    assert "ema_top1 is missing" in reasons[no_ema]
    assert "trained 40 of 100 epochs" in reasons[short]
    assert str(broken) in caplog.text

    result = subprocess.run([sys.executable, "-m", "gps.tables", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(broken) in result.stderr
    assert "Traceback" not in result.stderr
    assert "4 not usable" in result.stdout


def number_of(text: str) -> float | None:
    match = re.match(r"[+-]?\d+\.\d+", text.replace("$", ""))
    return float(match.group()) if match else None


def test_csv_and_latex_show_same_numbers(tmp_path):
    write_fgvc_set(tmp_path)
    write_run(tmp_path, "fgvc/cub", 92.0, seed=1)
    table = table_named(build_tables(collect_runs(tmp_path)), "fgvc")
    markdown = render(table, "markdown")
    rows = list(csv.DictReader(io.StringIO(render(table, "csv"))))
    latex = render(table, "latex")
    assert "\\begin{tabular}" in latex
    assert "\\end{tabular}" in latex

    by_label = {row["row"]: row for row in rows}
    assert len(rows) == len(table.rows)
    ours = by_label["gps K=1"]
    assert float(ours["cub"]) == pytest.approx(91.0)  # (90 + 92) / 2
    assert float(ours["cub_std"]) == pytest.approx(math.sqrt(2.0))  # ((-1)^2 + 1^2) / 1
    assert ours["cub_n"] == "2"
    assert float(ours["mean"]) == pytest.approx(91.5)  # (91 + 86 + 99.5 + 92 + 89) / 5 = 457.5 / 5
    assert float(by_label["Δ gps K=1 - paper GPS"]["mean"]) == pytest.approx(91.5 - 91.78)

    latex_rows = {line.split(" & ")[0]: line.rstrip(" \\").split(" & ")[1:]
                  for line in latex.splitlines() if " & " in line}
    keys = ["cub", "nabirds", "flowers", "dogs", "cars", "mean"]
    for row in table.rows:
        md_cells = markdown_row(markdown, row.label)[:6]
        tex_label = row.label.replace("Δ", "$\\Delta$")
        for key, md_text, tex_text in zip(keys, md_cells, latex_rows[tex_label][:6], strict=True):
            csv_value = float(by_label[row.label][key])
            assert number_of(md_text) == pytest.approx(round(csv_value, 2), abs=1e-9), (row.label, key)
            assert number_of(tex_text) == number_of(md_text), (row.label, key)


def test_settings_differences_are_flagged(tmp_path):
    write_run(tmp_path, "fgvc/cars", 88.0, seed=0, lr=1e-3)
    write_run(tmp_path, "fgvc/cars", 90.0, seed=1, lr=5e-4)
    table = table_named(build_tables(collect_runs(tmp_path)), "fgvc")
    cell = row_labelled(table, "gps K=1").cells["fgvc/cars"]
    assert cell.mark == "†"
    assert format_cell(cell).endswith("†")
    flagged = [note for note in table.notes if note.startswith("† Cars")]
    assert len(flagged) == 1
    assert "lr: 0.001 (seed 0) vs 0.0005 (seed 1)" in flagged[0]


def test_schedules_and_variants_get_own_rows(tmp_path):
    write_run(tmp_path, "fgvc/cub", 90.0)
    write_run(tmp_path, "fgvc/cub", 60.0, epochs=10, experiment="short")
    write_run(tmp_path, "fgvc/cub", 85.0, scores="random", experiment="random")
    write_run(tmp_path, "fgvc/cub", 87.0, k=2, loss="ce", experiment="ce")
    write_run(tmp_path, "fgvc/cub", 88.0, method="full")
    table = table_named(build_tables(collect_runs(tmp_path)), "fgvc")
    labels = [row.label for row in table.rows if row.kind == "ours"]
    assert labels == ["full [100 ep]", "gps K=1 [10 ep]", "gps K=1 [100 ep]",
                      "gps K=1 random [100 ep]", "gps K=2 ce [100 ep]"]
    assert row_labelled(table, "gps K=1 [10 ep]").cells["fgvc/cub"].value == 60.0
    assert row_labelled(table, "Δ full [100 ep] - paper Full fine-tuning").cells[
        "fgvc/cub"].value == pytest.approx(88.0 - 87.3)


def test_paper_k_row_combines_official_k(tmp_path):
    official = {"cub": 2, "nabirds": 20, "flowers": 1, "dogs": 1, "cars": 15}
    for task, k in official.items():
        write_run(tmp_path, f"fgvc/{task}", FGVC_VALUES[task], k=k)
    write_run(tmp_path, "fgvc/cub", 80.0, k=1)
    table = table_named(build_tables(collect_runs(tmp_path)), "fgvc")
    labels = [row.label for row in table.rows if row.kind == "ours"]
    assert labels == ["gps K=paper", "gps K=1"]
    row = row_labelled(table, "gps K=paper")
    assert row.cells["fgvc/cub"].value == 90.0
    assert row.cells["mean"].value == pytest.approx(91.3)  # 456.5 / 5
    k1 = row_labelled(table, "gps K=1")
    assert k1.cells["fgvc/cub"].value == 80.0
    assert k1.cells["fgvc/flowers"].value == 99.5


def test_other_tasks_table(tmp_path):
    write_run(tmp_path, "demo/digits", 95.0)
    write_run(tmp_path, "custom", 60.0, data_dir=str(tmp_path / "my_leaves"))
    tables = build_tables(collect_runs(tmp_path))
    assert [table.name for table in tables] == ["other"]
    row = row_labelled(tables[0], "gps K=1")
    assert row.cells["demo/digits"].value == 95.0
    assert row.cells["custom:my_leaves"].value == 60.0
    assert [r.kind for r in tables[0].rows] == ["ours"]


def test_task_aliases_resolve_to_benchmark(tmp_path):
    path = write_run(tmp_path, "fgvc/cars", 88.0)
    data = json.loads(path.read_text())
    data["task"] = "stanford_cars"
    path.write_text(json.dumps(data))
    runs = collect_runs(tmp_path)
    assert [run.task for run in runs] == ["fgvc/cars"]
    assert [run.table for run in runs] == ["fgvc"]


def test_paper_means_match_per_task_values():
    for row in FGVC_ROWS:
        assert sum(row.accuracy.values()) / 5 == pytest.approx(row.mean, abs=0.005), row.name
    for row in VTAB_ROWS:
        assert sum(row.accuracy.values()) / 19 == pytest.approx(row.mean, abs=0.005), row.name


def test_paper_tasks_match_registry():
    # Imported here: the gps.data package imports torch and timm, which the other tests do not need.
    from gps.data.registry import list_tasks

    assert tuple(spec.name for spec in list_tasks("fgvc")) == FGVC_TASKS
    assert tuple(spec.name for spec in list_tasks("vtab")) == VTAB_TASKS
    for spec in list_tasks("vtab"):
        assert spec.name in VTAB_GROUPS[spec.group]


def test_cli_prints_tables(tmp_path, capsys):
    write_fgvc_set(tmp_path)
    result = subprocess.run([sys.executable, "-m", "gps.tables", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "### FGVC" in result.stdout
    assert "| gps K=1 | 90.00 |" in result.stdout

    assert main([str(tmp_path), "--format", "csv", "--table", "fgvc"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("table,row,kind")


def test_cli_rejects_missing_and_empty_folders(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "gps.tables", str(tmp_path / "nope")],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr

    empty = subprocess.run([sys.executable, "-m", "gps.tables", str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode != 0
    assert "no results.json found" in empty.stderr
