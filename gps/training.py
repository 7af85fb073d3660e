"""State of a fine-tuning run: checkpoints, resuming, evaluation with EMA, results."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from gps.checkpoint import CHECKPOINT_NAME, DELTA_NAME, atomic_save, save_delta, to_cpu
from gps.config import RunConfig, config_to_dict
from gps.data import TaskData
from gps.distributed import DistContext
from gps.engine import Precision, evaluate
from gps.models import WeightsInfo
from gps.runlog import environment, peak_memory_mb, write_json
from gps.tuning import swapped_in

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "gps-checkpoint-1"


@dataclass
class RunState:
    """Everything a checkpoint saves and restores, plus the per-epoch history."""

    cfg: RunConfig
    run_dir: Path
    model: nn.Module
    engine: object
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None
    ema: object | None = None
    dist: DistContext = field(default_factory=DistContext)
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    earlier_wall_time_s: float = 0.0  # wall time of the sessions before a resume

    def wall_time_s(self) -> float:
        """Return the run's wall time so far, over every session that trained it."""
        return self.earlier_wall_time_s + time.time() - self.started

    def record_epoch(self, row: dict) -> None:
        """Append the metrics of the epoch just finished."""
        self.history.append(dict(row))
        self.epoch += 1


# Options that may change when a run is resumed: they do not change what the run computes.
RUN_CONTROL_KEYS = {"resume", "eval_only", "num_workers", "log_interval", "device", "data_dir",
                    "output", "mask"}


def check_run_folder(cfg: RunConfig, run_dir: Path) -> None:
    """Reject a run that would overwrite another run's folder or resume it with other settings."""
    if cfg.eval_only:
        return
    if cfg.resume is None:
        for name, found in (("results.json", "a finished run"),
                            (CHECKPOINT_NAME, "an interrupted run")):
            if (run_dir / name).is_file():
                raise ValueError(f"run folder {run_dir} already contains {found}; pass --resume auto "
                                 "to continue it, --eval-only to evaluate it, or --run-name NAME "
                                 "for a new run folder")
        return
    saved_path = Path(cfg.resume) if cfg.resume != "auto" else run_dir
    saved_path = (saved_path if saved_path.is_dir() else saved_path.parent) / "config.yaml"
    if not saved_path.is_file():
        return
    saved = _flat(yaml.safe_load(saved_path.read_text()) or {})
    current = _flat(config_to_dict(cfg))
    changed = [f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in sorted(current)
               if key.split(".")[0] not in RUN_CONTROL_KEYS and saved.get(key) != current.get(key)]
    if changed:
        raise ValueError(f"--resume continues the run in {saved_path.parent} with its own settings, "
                         f"but these differ: {'; '.join(changed)}. Drop the changed options, or "
                         "start a new run with --run-name NAME")


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "model_kwargs":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def resume_path(cfg: RunConfig, run_dir: Path) -> Path | None:
    """Return the checkpoint to continue from, or None for a fresh run."""
    if cfg.resume is None and not cfg.eval_only:
        return None
    if cfg.resume in (None, "auto"):
        candidate = run_dir / CHECKPOINT_NAME
        if candidate.is_file():
            return candidate
        if cfg.eval_only:
            raise FileNotFoundError(f"--eval-only: no checkpoint at {candidate}; train first or "
                                    "pass --resume PATH")
        logger.info("no checkpoint in %s, starting a fresh run", run_dir)
        return None
    path = Path(cfg.resume)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(state: RunState) -> Path:
    """Write the resumable checkpoint of ``state`` atomically and return its path."""
    path = state.run_dir / CHECKPOINT_NAME
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "epoch": state.epoch,
        "engine": state.engine.name,
        "trainable": to_cpu(state.engine.trainable_values()),
        "buffers": to_cpu(dict(state.model.named_buffers())),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "history": state.history,
        "wall_time_s": state.wall_time_s(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "python": random.getstate()},
    }
    atomic_save(checkpoint, path)
    return path


def load_checkpoint(state: RunState, path: Path) -> None:
    """Restore ``state`` from a checkpoint written by :func:`save_checkpoint`."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this code (format "
                         f"{checkpoint.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
    if checkpoint.get("engine", state.engine.name) != state.engine.name:
        raise ValueError(f"{path} was written by the {checkpoint['engine']!r} update engine, whose "
                         f"optimizer state does not fit the {state.engine.name!r} engine; resume "
                         f"with --tuning.engine {checkpoint['engine']}")
    params = dict(state.model.named_parameters())
    state.engine.trainable.scatter(params, checkpoint["trainable"])
    buffers = dict(state.model.named_buffers())
    with torch.no_grad():
        for name, value in checkpoint["buffers"].items():
            buffers[name].copy_(value)
    state.engine.after_load()
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    if state.scaler is not None and checkpoint["scaler"] is not None:
        state.scaler.load_state_dict(checkpoint["scaler"])
    if state.ema is not None and checkpoint["ema"] is not None:
        state.ema.load_state_dict(checkpoint["ema"])
    state.epoch = checkpoint["epoch"]
    state.history = checkpoint["history"]
    state.earlier_wall_time_s = checkpoint.get("wall_time_s", 0.0)
    action = "evaluating" if state.cfg.eval_only else "resumed from"
    logger.info("%s %s (after epoch %d)", action, path, state.epoch)


def evaluate_all(state: RunState, loader, device: torch.device, precision: Precision) -> dict:
    """Evaluate the model and, when kept, its EMA; return flat metrics."""
    metrics = evaluate(state.model, loader, device, precision, state.dist)
    row = {"eval_top1": metrics["top1"], "eval_top5": metrics["top5"],
           "eval_loss": metrics["loss"], "eval_images": metrics["images"]}
    if state.ema is not None:
        with swapped_in(state.model, state.engine.trainable, state.ema.values):
            ema_metrics = evaluate(state.model, loader, device, precision, state.dist)
        row.update({"eval_ema_top1": ema_metrics["top1"], "eval_ema_top5": ema_metrics["top5"]})
    return row


def _best_over_epochs(history: list[dict], key: str) -> dict | None:
    rows = [(row[key], epoch) for epoch, row in enumerate(history, 1) if key in row]
    if not rows:
        return None
    value, epoch = max(rows, key=lambda item: (item[0], -item[1]))
    return {"top1": value, "epoch": epoch}


def build_results(state: RunState, summary: dict, weights: WeightsInfo, data: TaskData,
                  device: torch.device, precision: Precision) -> dict:
    """Collect the results of a finished run (the contents of results.json)."""
    cfg, last = state.cfg, state.history[-1]
    train_seconds = sum(row["train_seconds"] for row in state.history)
    train_images = sum(row["train_images"] for row in state.history)
    return {
        "task": data.task.name, "benchmark": data.task.benchmark, "group": data.task.group,
        "protocol": cfg.protocol, "method": cfg.method, "k": cfg.k if cfg.method == "gps" else None,
        "selection": {"loss": cfg.selection.loss, "scores": cfg.selection.scores,
                      "granularity": cfg.selection.granularity},
        "seed": cfg.seed, "model": cfg.model, "num_classes": data.num_classes,
        "epochs": state.epoch,
        "eval_split": data.eval.name, "eval_images": last.get("eval_images"),
        "top1": last.get("eval_top1"), "top5": last.get("eval_top5"),
        "ema_top1": last.get("eval_ema_top1"), "ema_top5": last.get("eval_ema_top5"),
        "max_top1_over_epochs": _best_over_epochs(state.history, "eval_top1"),
        "max_ema_top1_over_epochs": _best_over_epochs(state.history, "eval_ema_top1"),
        # Percentages: with the head, of all parameters; without it, of the backbone's.
        "trainable_params": {
            "with_head": summary["trainable"], "without_head": summary["trainable_without_head"],
            "total_params": summary["total_params"], "backbone_params": summary["backbone_params"],
            "percent_with_head": summary["trainable_pct"],
            "percent_without_head": summary["trainable_without_head_pct"],
        },
        "mask_summary": summary,
        "engine": cfg.tuning.engine, "precision": precision.label, "device": str(device),
        "wall_time_s": state.wall_time_s(), "train_images_per_s": train_images / max(train_seconds, 1e-9),
        "peak_memory": peak_memory_mb(device),
        "weights": weights_identity(weights),
        "environment": environment(),
        "config": config_to_dict(cfg),
    }


def weights_identity(weights: WeightsInfo) -> dict:
    """Return the pretrained weights' identity (source, tag or path, sha256) for results.json."""
    info = weights.to_dict()
    return {k: v for k, v in info.items() if k not in ("missing_keys", "unexpected_keys")}


def write_outputs(state: RunState, results: dict) -> None:
    """Write the compact delta and results.json into the run folder."""
    meta = {"model": state.cfg.model, "pretrained": state.cfg.pretrained,
            "num_classes": results["num_classes"],
            "weights": results["weights"]}
    save_delta(state.run_dir / DELTA_NAME, state.engine, state.model, meta)
    write_json(state.run_dir / "results.json", results)


def _format_memory(peak: dict) -> str:
    parts = [f"{peak['peak_rss_mb']:.0f} MB resident"]
    if "peak_cuda_allocated_mb" in peak:
        parts.insert(0, f"{peak['peak_cuda_allocated_mb']:.0f} MB CUDA allocated")
    return ", ".join(parts)


def log_final_summary(results: dict) -> None:
    """Log a short human-readable summary of a finished run."""
    trainable = results["trainable_params"]
    lines = [
        f"task {results['task']} ({results['protocol']} protocol, {results['eval_split']}: "
        f"{results['eval_images']} images), method {results['method']}"
        + (f" K={results['k']}" if results["k"] else ""),
        f"last-epoch top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%"
        + (f"  EMA top-1 {results['ema_top1']:.2f}%" if results["ema_top1"] is not None else ""),
        f"trainable parameters {trainable['with_head']:,} ({trainable['percent_with_head']:.3f}%), "
        f"without head {trainable['without_head']:,} ({trainable['percent_without_head']:.3f}%)",
        f"wall time {results['wall_time_s']:.1f} s, training {results['train_images_per_s']:.1f} "
        f"images/s, peak memory {_format_memory(results['peak_memory'])}",
    ]
    best = results["max_top1_over_epochs"]
    if best is not None:
        lines.append(f"(for reference only: max top-1 over epochs {best['top1']:.2f}% at epoch "
                     f"{best['epoch']}; not a result, it selects on the evaluation split)")
    logger.info("summary\n  %s", "\n  ".join(lines))
