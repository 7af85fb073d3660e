"""Peak memory of the GPS gradient pass versus one full fine-tuning step.

Each measurement runs in a fresh Python process, so the resident-set peak (ru_maxrss) of one
does not leak into the next. Inputs are random tensors and the model is randomly initialised
(memory does not depend on the weights). On CUDA the peak allocated GPU memory is reported too.

    python benchmarks/selection_memory.py                     # ViT-B/16, batch 4, CPU
    python benchmarks/selection_memory.py --device cuda --batch-size 32

Modes:
    select  accumulate_gradients with SupCon over `--batches` batches of two views each
    full    one forward and backward pass of cross-entropy with every parameter trainable,
            no optimizer (its state would add two float32 copies of the model for Adam)

From the second batch on, the selection pass runs its forward pass while the accumulated float32
gradients (one copy of the selectable weights) are alive. One full fine-tuning step without an
optimizer starts with no gradients, so its peak is lower by about that copy.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gps.selection import accumulate_gradients  # noqa: E402


def _max_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_batches(batch_size: int, batches: int, img_size: int, num_classes: int):
    generator = torch.Generator().manual_seed(0)
    for _ in range(batches):
        views = tuple(torch.randn(batch_size, 3, img_size, img_size, generator=generator) for _ in range(2))
        labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
        yield views, labels


def measure(args: argparse.Namespace) -> dict:
    """Run one mode in this process and return its measurements."""
    device = torch.device(args.device)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes).to(device)
    rss_model = _max_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    start = time.perf_counter()

    if args.mode == "select":
        batches = _random_batches(args.batch_size, args.batches, args.img_size, args.num_classes)
        accumulate_gradients(model, batches, device=device, amp_dtype=amp_dtype)
        images_per_step = 2 * args.batch_size
    else:
        model.train()
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
        labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()
        images_per_step = args.batch_size
    if device.type == "cuda":
        torch.cuda.synchronize(device)

    result = {
        "mode": args.mode,
        "model": args.model,
        "batch_size": args.batch_size,
        "images_per_forward": images_per_step,
        "batches": args.batches if args.mode == "select" else 1,
        "device": str(device),
        "rss_after_model_mb": round(rss_model, 1),
        "peak_rss_mb": round(_max_rss_mb(), 1),
        "seconds": round(time.perf_counter() - start, 2),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
    if device.type == "cuda":
        result["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def run_all(args: argparse.Namespace) -> list[dict]:
    """Run select at --batch-size, and full at --batch-size and twice that, each in a new process."""
    runs = [("select", args.batch_size), ("full", args.batch_size), ("full", 2 * args.batch_size)]
    results = []
    for mode, batch_size in runs:
        command = [
            sys.executable, __file__, "--mode", mode, "--batch-size", str(batch_size),
            "--batches", str(args.batches), "--model", args.model, "--img-size", str(args.img_size),
            "--num-classes", str(args.num_classes), "--device", args.device,
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("select", "full"), help="run one mode in this process")
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm architecture")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch")
    parser.add_argument("--batches", type=int, default=2, help="batches of the selection pass")
    parser.add_argument("--img-size", type=int, default=224, help="input resolution in pixels")
    parser.add_argument("--num-classes", type=int, default=100, help="classes of the new head")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    if args.mode:
        print(json.dumps(measure(args)))
        return
    results = run_all(args)
    header = f"{'mode':<8} {'batch':>5} {'images/fwd':>10} {'RSS after model MB':>19} {'peak RSS MB':>12}"
    cuda = any("peak_cuda_allocated_mb" in r for r in results)
    print(header + (f" {'peak CUDA MB':>13}" if cuda else "") + f" {'seconds':>8}")
    for r in results:
        line = (f"{r['mode']:<8} {r['batch_size']:>5} {r['images_per_forward']:>10} "
                f"{r['rss_after_model_mb']:>19} {r['peak_rss_mb']:>12}")
        if cuda:
            line += f" {r.get('peak_cuda_allocated_mb', ''):>13}"
        print(line + f" {r['seconds']:>8}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
