"""Tests of gps.sweep: grid parsing, validation, choice on validation data, resuming.

The end-to-end fixture runs a 2x2 sweep (lr x K) of a one-block ViT on the bundled digits,
interrupts it after two runs, marks one finished run as incomplete, and continues it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gps import sweep
from gps.config import ConfigError, build_config
from gps.sweep import (
    SweepError,
    SweepRun,
    parse_grid,
    plan_sweep,
    point_run_name,
    run_in_process,
    run_sweep,
    select_best,
    validation_accuracy,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
TINY_OVERRIDES = [
    "--data-dir", str(ROOT / "data" / "demo"), "--epochs", "1", "--warmup-epochs", "0",
    "--max-steps-per-epoch", "2", "--selection.max_images", "16", "--img-size", "16",
    "--batch-size", "16", "--model-kwargs", "{patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
]
GRID = ["lr=1e-3,2e-3", "k=1,2"]


class Interrupted(Exception):
    """Raised by the test runner to simulate a sweep stopped part-way."""


def plan_tiny(output: Path, grid=GRID, overrides=TINY_OVERRIDES, **kwargs):
    return plan_sweep(DEMO_CONFIG, grid, output=str(output), overrides=overrides, **kwargs)


@pytest.fixture(scope="module")
def resumed_sweep(tmp_path_factory):
    """Run a sweep that stops after two runs, then continue it; return what happened."""
    output = tmp_path_factory.mktemp("sweep")
    first_calls = []

    def interrupting_runner(cfg):
        results = run_in_process(cfg)
        first_calls.append(cfg.run_name)
        if len(first_calls) == 2:
            raise Interrupted
        return results

    plan = plan_tiny(output)
    with pytest.raises(Interrupted):
        run_sweep(plan, runner=interrupting_runner)

    # The second run "died" after its last checkpoint but before writing results.json.
    finished = [run.run_dir for run in plan.tune_runs[:2]]
    (finished[1] / "results.json").unlink()
    first_mtime = (finished[0] / "results.json").stat().st_mtime_ns

    second_calls = []

    def counting_runner(cfg):
        second_calls.append((cfg.run_name, cfg.protocol, cfg.resume))
        return run_in_process(cfg)

    plan = plan_tiny(output)
    outcome = run_sweep(plan, runner=counting_runner)
    return {"plan": plan, "outcome": outcome, "first_calls": first_calls,
            "second_calls": second_calls, "first_mtime": first_mtime}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_sweep_csv_has_row_per_point(resumed_sweep):
    rows = read_csv(resumed_sweep["plan"].csv_path)
    assert len(rows) == 4
    assert list(rows[0]) == ["lr", "k", "seed", "val_top1", "run_dir", "status"]
    assert [(row["lr"], row["k"]) for row in rows] == [
        ("0.001", "1"), ("0.001", "2"), ("0.002", "1"), ("0.002", "2")]
    assert Path(rows[0]["run_dir"]).name == "lr0.001_k1_seed0"


def test_sweep_csv_values_are_validation_results(resumed_sweep):
    for row in read_csv(resumed_sweep["plan"].csv_path):
        results = json.loads((Path(row["run_dir"]) / "results.json").read_text())
        assert results["protocol"] == "tune"
        assert results["eval_split"] == "val200"
        assert float(row["val_top1"]) == pytest.approx(results["top1"], abs=1e-4)


def test_choice_is_argmax_of_csv(resumed_sweep):
    rows = read_csv(resumed_sweep["plan"].csv_path)
    scores = [float(row["val_top1"]) for row in rows]
    best_row = rows[scores.index(max(scores))]  # ties go to the first point
    best = resumed_sweep["outcome"].best_point
    assert best["lr"] == float(best_row["lr"])
    assert best["k"] == int(best_row["k"])
    assert resumed_sweep["outcome"].best_accuracy == pytest.approx(max(scores), abs=1e-4)


def test_best_yaml_loads_as_final_config(resumed_sweep):
    plan, outcome = resumed_sweep["plan"], resumed_sweep["outcome"]
    cfg = build_config(plan.best_yaml)
    assert cfg.protocol == "final"
    assert cfg.lr == outcome.best_point["lr"]
    assert cfg.k == outcome.best_point["k"]
    assert cfg.epochs == 1
    assert cfg.resume is None


def test_final_run_uses_final_protocol(resumed_sweep):
    (final,) = resumed_sweep["outcome"].final_runs
    results = json.loads((final.run_dir / "results.json").read_text())
    assert results["protocol"] == "final"
    assert results["eval_split"] == "test"
    assert results["config"]["lr"] == resumed_sweep["outcome"].best_point["lr"]
    assert final.run_dir.parent.parent.name == "sweep_demo_final"


def test_resume_skips_finished_runs(resumed_sweep):
    calls = resumed_sweep["second_calls"]
    names = [name for name, protocol, _ in calls if protocol == "tune"]
    assert resumed_sweep["first_calls"] == ["lr0.001_k1_seed0", "lr0.001_k2_seed0"]
    assert names == ["lr0.001_k2_seed0", "lr0.002_k1_seed0", "lr0.002_k2_seed0"]
    assert [protocol for _, protocol, _ in calls].count("final") == 1
    assert all(resume == "auto" for _, _, resume in calls)


def test_resume_keeps_finished_results(resumed_sweep):
    first = resumed_sweep["plan"].tune_runs[0].run_dir / "results.json"
    assert first.stat().st_mtime_ns == resumed_sweep["first_mtime"]
    statuses = [run.status for run in resumed_sweep["outcome"].tune_runs]
    assert statuses == ["reused", "resumed", "trained", "trained"]


def test_resumed_run_continues_checkpoint(resumed_sweep):
    resumed = resumed_sweep["plan"].tune_runs[1].run_dir
    log = (resumed / "log.txt").read_text()
    assert "resumed from" in log
    metrics = read_csv(resumed / "metrics.csv")
    assert [row["epoch"] for row in metrics] == ["1"]


def test_run_logs_do_not_leak(resumed_sweep):
    runs = resumed_sweep["plan"].tune_runs
    third_log = (runs[2].run_dir / "log.txt").read_text()
    fourth_log = (runs[3].run_dir / "log.txt").read_text()
    assert str(runs[3].run_dir) not in third_log
    assert str(runs[2].run_dir) not in fourth_log


def test_second_pass_reuses_everything(resumed_sweep):
    calls = []
    plan = plan_tiny(resumed_sweep["plan"].sweep_dir.parent.parent)
    outcome = run_sweep(plan, runner=lambda cfg: calls.append(cfg) or {})
    assert calls == []
    assert [run.status for run in outcome.final_runs] == ["reused"]


def test_changed_options_reject_old_folders(resumed_sweep):
    output = resumed_sweep["plan"].sweep_dir.parent.parent
    with pytest.raises(ConfigError) as caught:
        plan_tiny(output, overrides=[*TINY_OVERRIDES, "--epochs", "2"])
    (problem,) = caught.value.problems
    assert "4 run folder(s) contain a run of another configuration" in problem
    assert "epochs: 1 in the folder, 2 now" in problem


def test_grid_values_take_option_types():
    problems = []
    axes = parse_grid(["lr=1e-3,2e-3", "k=1,2", "loss=supcon,ce", "model_ema=true,false"],
                      problems)
    assert problems == []
    assert [axis.key for axis in axes] == ["lr", "k", "selection.loss", "model_ema"]
    assert axes[0].values == [0.001, 0.002]
    assert axes[1].values == [1, 2]
    assert axes[2].values == ["supcon", "ce"]
    assert axes[3].values == [True, False]


def test_plan_reports_every_problem(tmp_path):
    with pytest.raises(ConfigError) as caught:
        plan_tiny(tmp_path, grid=["lrr=1e-3", "k=1,x", "seed=1,2", "min_lr=1e-2", "lr=1e-3"],
                  overrides=[*TINY_OVERRIDES, "--protocol", "tune"], seeds="0,a")
    text = "\n".join(caught.value.problems)
    assert "unknown option 'lrr'" in text
    assert "k: expected int, got 'x'" in text
    assert "'seed' cannot be swept" in text
    assert "override '--protocol'" in text
    assert "--seeds: 'a'" in text
    assert not any(tmp_path.iterdir())


def test_plan_checks_each_point(tmp_path):
    with pytest.raises(ConfigError) as caught:
        plan_tiny(tmp_path, grid=["lr=1e-3,1e-7"], overrides=[*TINY_OVERRIDES, "--min-lr", "1e-5"])
    (problem,) = caught.value.problems
    assert problem.startswith("grid point lr=1e-07: min_lr")
    assert not any(tmp_path.iterdir())


def test_point_run_name_encodes_values():
    assert point_run_name({"lr": 0.001, "k": 1}, 0) == "lr0.001_k1_seed0"
    assert point_run_name({"selection.loss": "ce"}, 2) == "selection.lossce_seed2"


def fake_results(top1, protocol="tune", split="val200", ema_top1=None, model_ema=False):
    return {"protocol": protocol, "eval_split": split, "top1": top1, "ema_top1": ema_top1,
            "config": {"model_ema": model_ema}, "task": "demo/digits", "seed": 0}


def fake_run(point, seed, results):
    return SweepRun(point, seed, cfg=None, run_dir=Path("unused"), results=results)


def test_validation_accuracy_rejects_test_runs():
    with pytest.raises(SweepError, match="tune-protocol runs"):
        validation_accuracy(fake_results(90.0, protocol="final", split="test"))
    with pytest.raises(SweepError):
        validation_accuracy(fake_results(90.0, protocol="tune", split="test"))
    assert validation_accuracy(fake_results(80.0)) == 80.0


def test_validation_accuracy_uses_ema_when_kept():
    results = fake_results(70.0, ema_top1=75.0, model_ema=True)
    assert validation_accuracy(results) == 75.0


def test_select_best_averages_seeds():
    runs = [
        fake_run({"lr": 1}, 0, fake_results(90.0)), fake_run({"lr": 1}, 1, fake_results(50.0)),
        fake_run({"lr": 2}, 0, fake_results(80.0)), fake_run({"lr": 2}, 1, fake_results(70.0)),
    ]
    point, score = select_best(runs)
    assert point == {"lr": 2}
    assert score == 75.0


def test_select_best_ties_and_failures():
    runs = [
        fake_run({"lr": 1}, 0, None), fake_run({"lr": 1}, 1, fake_results(99.0)),
        fake_run({"lr": 2}, 0, fake_results(60.0)), fake_run({"lr": 3}, 0, fake_results(60.0)),
    ]
    point, _ = select_best(runs)
    assert point == {"lr": 2}


def test_select_best_rejects_final_results():
    runs = [fake_run({"lr": 1}, 0, fake_results(50.0)),
            fake_run({"lr": 2}, 0, fake_results(99.0, protocol="final", split="test"))]
    with pytest.raises(SweepError):
        select_best(runs)


def test_dry_run_lists_runs(tmp_path, capsys):
    argv = ["--config", str(DEMO_CONFIG), "--grid", *GRID, "--seeds", "0,1", "--output",
            str(tmp_path), "--dry-run", "--", *TINY_OVERRIDES]
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count(" train ") == 8
    assert "lr0.002_k2_seed1" in printed
    assert not any(tmp_path.iterdir())


def test_cli_rejects_bad_grid(tmp_path):
    argv = ["--config", str(DEMO_CONFIG), "--grid", "k=0", "--output", str(tmp_path)]
    assert sweep.main(argv) == 2
    assert not any(tmp_path.iterdir())
