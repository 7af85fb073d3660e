"""End-to-end tests of train.py on the bundled demo images with a tiny timm ViT."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from gps.checkpoint import merge_run
from gps.config import build_config, config_to_dict
from gps.mask import load_mask

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "dataset": "demo/digits", "data_dir": str(ROOT / "data/demo"), "protocol": "tune",
    "model": "vit_tiny_patch16_224", "pretrained": "none", "img_size": 16,
    "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                     "init_values": 1e-5},
    "k": 2, "batch_size": 16, "epochs": 2, "warmup_epochs": 0, "lr": 3e-3, "min_lr": 1e-5,
    "num_workers": 0, "log_interval": 5, "max_steps_per_epoch": 4,
    "selection": {"max_images": 32},
}


def tiny_config(tmp_path: Path, **overrides):
    values = json.loads(json.dumps(TINY))
    values["output"] = str(tmp_path / "runs")
    for key, value in overrides.items():
        values[key] = value
    return build_config(overrides=values)


def run_folder(cfg) -> Path:
    from gps.builders import run_dir_for

    return run_dir_for(cfg)


def initial_parameters(cfg) -> dict[str, torch.Tensor]:
    from gps.builders import build_model

    model, _ = build_model(cfg, num_classes=10)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def final_parameters(cfg) -> dict[str, torch.Tensor]:
    """Rebuild the run's model from its merged delta."""
    out = run_folder(cfg) / "merged.pth"
    merge_run(run_folder(cfg), out)
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def gps_run(tmp_path_factory):
    """One GPS run (Adam with weight decay, float32, EMA) shared by the read-only tests."""
    cfg = tiny_config(tmp_path_factory.mktemp("gps_run"), weight_decay=0.05, model_ema=True,
                      model_ema_decay=0.5)
    return cfg, train.run(cfg)


def check_only_trainable_entries_changed(cfg, results) -> None:
    before = initial_parameters(cfg)
    after = final_parameters(cfg)
    mask = load_mask(run_folder(cfg) / "mask.pth")
    for name, initial in before.items():
        frozen = ~mask[name]
        assert torch.equal(after[name][frozen], initial[frozen]), f"frozen entries moved in {name}"
    moved = sum(int((after[n] != before[n]).sum()) for n in before)
    assert moved > 0.5 * results["trainable_params"]["with_head"]
    assert results["ema_top1"] is not None


def test_adam_weight_decay_keeps_frozen_entries(gps_run):
    check_only_trainable_entries_changed(*gps_run)


def test_dense_adamw_bf16_keeps_frozen_entries(tmp_path):
    cfg = tiny_config(tmp_path, opt="adamw", amp="bf16", weight_decay=0.05, model_ema=True,
                      model_ema_decay=0.9, epochs=1, tuning={"engine": "dense"})
    check_only_trainable_entries_changed(cfg, train.run(cfg))


def test_checkpoint_and_ema_store_trainable_only(gps_run):
    cfg, _ = gps_run
    checkpoint = torch.load(run_folder(cfg) / "checkpoint.pth", weights_only=False)
    mask = load_mask(run_folder(cfg) / "mask.pth")
    partial = [n for n, m in mask.items() if 0 < int(m.sum()) < m.numel()]
    assert partial
    for name in partial:
        assert checkpoint["trainable"][name].numel() == int(mask[name].sum())
        assert checkpoint["ema"]["values"][name].numel() == int(mask[name].sum())
    frozen = [n for n, m in mask.items() if not m.any()]
    assert frozen and not any(n in checkpoint["trainable"] for n in frozen)


def test_loss_decreases_on_demo_images(tmp_path):
    cfg = tiny_config(tmp_path, method="full", epochs=3, max_steps_per_epoch=6, lr=2e-3,
                      eval_interval=3)
    train.run(cfg)
    with open(run_folder(cfg) / "metrics.csv") as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 3
    assert losses[-1] < losses[0]


def test_resume_matches_uninterrupted_run(tmp_path):
    whole = tiny_config(tmp_path / "a", epochs=2, model_ema=True, model_ema_decay=0.8)
    whole_results = train.run(whole)

    interrupted = tiny_config(tmp_path / "b", epochs=2, model_ema=True, model_ema_decay=0.8)
    _run_epochs(interrupted, 1)
    resumed = tiny_config(tmp_path / "b", epochs=2, model_ema=True, model_ema_decay=0.8,
                          resume="auto")
    resumed_results = train.run(resumed)

    assert resumed_results["top1"] == whole_results["top1"]
    assert resumed_results["ema_top1"] == whole_results["ema_top1"]
    a = torch.load(run_folder(whole) / "checkpoint.pth", weights_only=False)
    b = torch.load(run_folder(resumed) / "checkpoint.pth", weights_only=False)
    for name, value in a["trainable"].items():
        assert torch.equal(value, b["trainable"][name]), name
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def _run_epochs(cfg, epochs: int) -> None:
    """Run ``cfg`` but stop after ``epochs`` epochs, as an interruption would."""
    import gps.engine

    original = gps.engine.train_one_epoch
    calls = {"n": 0}

    def limited(*args, **kwargs):
        if calls["n"] == epochs:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    train.train_one_epoch = limited
    try:
        with pytest.raises(KeyboardInterrupt):
            train.run(cfg)
    finally:
        train.train_one_epoch = original


def test_eval_only_reproduces_accuracy(gps_run):
    cfg, results = gps_run
    again = train.run(build_config(overrides={**config_to_dict(cfg), "eval_only": True}))
    assert again["eval_top1"] == results["top1"]
    assert again["eval_top5"] == results["top5"]


def test_non_finite_loss_stops_cleanly(tmp_path, monkeypatch):
    import gps.engine

    cfg = tiny_config(tmp_path, epochs=2)
    real = gps.engine.F.cross_entropy
    state = {"steps": 0}

    def poisoned(logits, targets, **kwargs):
        loss = real(logits, targets, **kwargs)
        if not logits.requires_grad:
            return loss
        state["steps"] += 1
        return loss * float("nan") if state["steps"] > 5 else loss

    monkeypatch.setattr(gps.engine.F, "cross_entropy", poisoned)
    with pytest.raises(gps.engine.NonFiniteLossError) as info:
        train.run(cfg)
    assert info.value.epoch == 2
    assert info.value.step == 2
    checkpoint = torch.load(run_folder(cfg) / "checkpoint.pth", weights_only=False)
    assert checkpoint["epoch"] == 1


@pytest.mark.parametrize("method, expected", [("linear", "head"), ("bitfit", "bias")])
def test_baseline_methods_train_their_parameters(tmp_path, method, expected):
    cfg = tiny_config(tmp_path, method=method, epochs=1, max_steps_per_epoch=2)
    results = train.run(cfg)
    mask = load_mask(run_folder(cfg) / "mask.pth")
    trained = [n for n, m in mask.items() if m.any()]
    assert trained
    for name in trained:
        assert expected in name or name.startswith("head"), name
    assert results["trainable_params"]["with_head"] == sum(int(m.sum()) for m in mask.values())


def test_results_json_reports_run(gps_run):
    cfg, _ = gps_run
    folder = run_folder(cfg)
    results = json.loads((folder / "results.json").read_text())
    for key in ("top1", "top5", "max_top1_over_epochs", "trainable_params", "wall_time_s",
                "train_images_per_s", "peak_memory", "environment", "weights"):
        assert key in results, key
    assert results["eval_split"] == "val200"
    assert results["eval_images"] == 100
    assert results["ema_top1"] is not None
    assert results["weights"]["source"] == "none"
    assert (folder / "config.yaml").is_file()
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert "summary" in (folder / "log.txt").read_text()


def test_cli_reports_bad_data_dir_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/demo.yaml", "--data-dir",
         str(tmp_path / "missing"), "--output", str(tmp_path / "runs")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "missing") in result.stderr


def test_merged_file_loads_in_timm(gps_run, tmp_path):
    import timm

    cfg, results = gps_run
    out = tmp_path / "merged.safetensors"
    assert subprocess.run([sys.executable, "-m", "gps.checkpoint", "merge", str(run_folder(cfg)),
                           "--out", str(out)], cwd=ROOT, timeout=120).returncode == 0
    model = timm.create_model(cfg.model, pretrained=True, num_classes=10, img_size=cfg.img_size,
                              pretrained_cfg_overlay=dict(file=str(out), num_classes=10),
                              **cfg.model_kwargs)
    merged = final_parameters(cfg)
    for name, value in model.state_dict().items():
        assert torch.equal(value, merged[name]), name


def test_select_params_writes_mask_and_summary(tmp_path):
    out = tmp_path / "mask.pth"
    command = [sys.executable, "select_params.py", "--dataset", "demo/digits", "--data-dir",
               "data/demo", "--model", "vit_tiny_patch16_224", "--pretrained", "none",
               "--img-size", "16", "--model-kwargs", "{patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
               "--k", "3", "--max-images", "32", "--batch-size", "16", "--num-workers", "0",
               "--out", str(out), "--save-scores", str(tmp_path / "scores.pth")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["meta"]["k"] == 3
    assert summary["meta"]["images"] == 32
    mask = load_mask(out)
    qkv = mask["blocks.0.attn.qkv.weight"]
    assert torch.equal(qkv.sum(dim=1), torch.full((qkv.shape[0],), 3))
    scores = torch.load(tmp_path / "scores.pth", weights_only=True)
    assert set(scores) == {n for n, m in mask.items() if 0 < int(m.sum()) < m.numel()}


def test_rerun_into_finished_folder_rejected(gps_run):
    cfg, _ = gps_run
    with pytest.raises(ValueError, match="already contains a finished run"):
        train.run(build_config(overrides=config_to_dict(cfg)))


def test_resume_with_changed_settings_rejected(gps_run):
    cfg, _ = gps_run
    changed = {**config_to_dict(cfg), "resume": "auto", "epochs": cfg.epochs + 1}
    with pytest.raises(ValueError, match="epochs: 2 -> 3"):
        train.run(build_config(overrides=changed))


def test_mask_with_other_k_rejected(gps_run, tmp_path):
    cfg, _ = gps_run
    mask_file = str(run_folder(cfg) / "mask.pth")
    other = tiny_config(tmp_path, mask=mask_file, k=cfg.k + 1)
    with pytest.raises(ValueError, match=f"pass --k {cfg.k}"):
        train.run(other)
