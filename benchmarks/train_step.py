"""Step time and peak memory of full fine-tuning, dense GPS and sparse GPS, side by side.

Each configuration runs in a fresh Python process (``--worker CONFIG``), so the memory peak of
one does not leak into the next. The model is randomly initialised (``pretrained=False``),
because the figures do not depend on the weights. The mask is a random selection of K entries
per output row with the structure of a GPS mask, since the selection pass is not part of a
training step. The optimizer is Adam, and the loss is cross-entropy on random images and
labels. CPU runs in float32, CUDA in bf16 autocast.

    python benchmarks/train_step.py --model vit_base_patch16_224 --batch-size 8 --k 1
    python benchmarks/train_step.py --configs sparse,sparse_ckpt --steps 3 --warmup 1 --json

Configurations (add ``_ckpt`` to any of them for gradient checkpointing):
    full    every parameter trainable, plain autograd
    dense   GPS mask enforced by the dense engine (full gradients, masked by hooks)
    sparse  GPS mask enforced by the sparse engine (compact trainable values)
    frozen  every linear/conv weight frozen, while biases, layer-scale and head train (a
            lower bound for any GPS engine)

Step time is the median over the measured steps after warm-up. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA; on CPU it is the peak resident set (VmHWM) minus
the resident set after imports, before the model is built. The CPU time of the process per
step (median) is printed too: on a shared machine it is less inflated by other processes than
the step time, in particular with ``--threads 1``. With ``--repeat N`` the
configurations run N times in turn, and the report takes the fastest of the N median step
times (other processes on a shared machine only ever slow a run down) and the median of the N
memory peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gps.engine import Precision, StepContext, train_step  # noqa: E402
from gps.selection import build_mask, selectable_weights  # noqa: E402
from gps.tuning import DenseEngine  # noqa: E402
from gps.tuning.sparse import SparseEngine  # noqa: E402

BASE_CONFIGS = ("full", "dense", "sparse", "frozen")


def _status_mb(field: str) -> float:
    """Return a memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def gps_structured_mask(model: nn.Module, k: int, select_weights: bool,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a GPS mask built from random scores, by the selection module's own rules.

    Linear and conv weights (except the head) get ``k`` random entries per output row, or none
    when ``select_weights`` is False. The head, biases and layer-scale train fully.
    """
    mask = build_mask(model, None, k, score_type="random",
                      generator=torch.Generator().manual_seed(seed))
    if not select_weights:
        for name in selectable_weights(model):
            mask[name] = torch.zeros_like(mask[name])
    return mask


class PlainEngine:
    """Engine interface for plain full fine-tuning, where every parameter trains."""

    name = "full"

    def __init__(self, model: nn.Module):
        self.model = model
        for param in model.parameters():
            param.requires_grad_(True)

    def param_groups(self, weight_decay: float) -> list[dict]:
        return [{"params": list(self.model.parameters()), "weight_decay": weight_decay}]

    def apply_masked_decay(self, optimizer, weight_decay: float, decoupled: bool) -> None:
        pass

    def after_step(self) -> None:
        pass


def build_engine(config: str, model: nn.Module, k: int):
    """Create the engine of a base configuration name."""
    if config == "full":
        return PlainEngine(model)
    mask = gps_structured_mask(model, k, select_weights=config != "frozen")
    if config == "sparse":
        return SparseEngine(model, mask)
    return DenseEngine(model, mask)


def split_config(config: str) -> tuple[str, str]:
    """Split a configuration name into its base and its suffix ('' or 'ckpt')."""
    base, _, suffix = config.partition("_")
    if base not in BASE_CONFIGS or suffix not in ("", "ckpt"):
        raise ValueError(f"unknown configuration {config!r}; expected one of {BASE_CONFIGS}, "
                         "optionally with the suffix _ckpt")
    return base, suffix


def create_model(args: argparse.Namespace) -> nn.Module:
    """Create the randomly initialised model; ``img_size`` only where the model takes it."""
    torch.manual_seed(0)
    try:
        return timm.create_model(args.model, pretrained=False, num_classes=args.num_classes,
                                 img_size=args.img_size)
    except TypeError:
        return timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)


def run_worker(config: str, args: argparse.Namespace) -> dict:
    """Measure one configuration in this process and return its figures."""
    base, suffix = split_config(config)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    baseline_mb = _status_mb("VmRSS")

    model = create_model(args).to(device)
    model.train()
    if suffix == "ckpt":
        model.set_grad_checkpointing(True)
    engine = build_engine(base, model, args.k)
    optimizer = torch.optim.Adam(engine.param_groups(0.0), lr=1e-4)
    precision = Precision(device.type, torch.bfloat16 if device.type == "cuda" else None)
    ctx = StepContext(optimizer=optimizer, engine=engine, precision=precision)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    targets = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    times, cpu_times = [], []
    for step in range(args.warmup + args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        train_step(model, images, targets, ctx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)

    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = _status_mb("VmHWM") - baseline_mb
    trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    return {"config": config, "step_time_s": statistics.median(times), "peak_memory_mb": peak_mb,
            "cpu_time_s": statistics.median(cpu_times), "step_times_s": times,
            "trainable_values": trainable,
            "threads": torch.get_num_threads(), "device": str(device),
            "precision": precision.label, "torch": torch.__version__}


def run_config(config: str, args: argparse.Namespace) -> dict:
    """Run one configuration in a fresh subprocess and return its parsed JSON line."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", config,
               "--model", args.model, "--batch-size", str(args.batch_size), "--k", str(args.k),
               "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--img-size", str(args.img_size), "--num-classes", str(args.num_classes),
               "--device", args.device, "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"configuration {config} failed (exit code {result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"configuration {config} printed no JSON line:\n{result.stdout}")
    return json.loads(lines[-1])


def combine_runs(runs: list[dict]) -> dict:
    """Combine repeated runs of one configuration: fastest median step time, median peak."""
    combined = dict(min(runs, key=lambda figures: figures["step_time_s"]))
    combined["peak_memory_mb"] = statistics.median(f["peak_memory_mb"] for f in runs)
    combined["runs"] = len(runs)
    return combined


def print_report(results: dict[str, dict], args: argparse.Namespace) -> None:
    """Print each configuration's figures and its ratios to full fine-tuning and dense GPS."""
    first = next(iter(results.values()))
    print(f"{args.model}, batch {args.batch_size}, {args.img_size}px, K={args.k}, "
          f"{first['device']} {first['precision']}, {first['threads']} threads, "
          f"torch {first['torch']}, median of {args.steps} steps after {args.warmup} warm-up, "
          f"best of {args.repeat} runs")
    columns = ["config", "step s", "CPU s", "peak MB", "time/full", "time/dense", "mem/full",
               "mem/dense"]
    print("".join(f"{c:>12}" for c in columns))
    for config, figures in results.items():
        row = [config, f"{figures['step_time_s']:.3f}", f"{figures['cpu_time_s']:.3f}",
               f"{figures['peak_memory_mb']:.0f}"]
        for key in ("step_time_s", "peak_memory_mb"):
            for reference in ("full", "dense"):
                if reference in results:
                    row.append(f"{figures[key] / results[reference][key]:.3f}")
                else:
                    row.append("-")
        print("".join(f"{c:>12}" for c in row))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm model name")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument("--k", type=int, default=1, help="selected entries per output row")
    parser.add_argument("--steps", type=int, default=5, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps before them")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration this many times, in turn")
    parser.add_argument("--img-size", type=int, default=224, help="input side length in pixels")
    parser.add_argument("--num-classes", type=int, default=100, help="classes of the new head")
    parser.add_argument("--configs", default="full,dense,sparse",
                        help="comma-separated configurations: full, dense, sparse, frozen, each "
                             "optionally with _ckpt (gradient checkpointing)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="also run sparse_ckpt (sparse with gradient checkpointing)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=("cpu", "cuda"), help="where to run (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of torch (default 0: torch's own choice)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args)), flush=True)
        return 0
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if args.grad_checkpointing and "sparse_ckpt" not in configs:
        configs.append("sparse_ckpt")
    for config in configs:
        split_config(config)
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {config: [] for config in configs}
    for _ in range(args.repeat):
        for config in configs:
            figures = run_config(config, args)
            runs[config].append(figures)
            print(f"{config}: {figures['step_time_s']:.3f} s/step, "
                  f"{figures['peak_memory_mb']:.0f} MB peak", file=sys.stderr)
    results = {config: combine_runs(config_runs) for config, config_runs in runs.items()}
    print(f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after",
          file=sys.stderr)
    if args.json:
        print(json.dumps({config: {"step_time_s": figures["step_time_s"],
                                   "peak_memory_mb": figures["peak_memory_mb"]}
                          for config, figures in results.items()}))
    else:
        print_report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
