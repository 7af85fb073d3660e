"""Bytes all-reduced per training step under DistributedDataParallel, per update engine.

    python benchmarks/allreduce_bytes.py --model vit_base_patch16_224 --k 1 --num-classes 100

DDP all-reduces the gradient of every model parameter that requires a gradient. The dense
engine keeps a full gradient for each partially trained weight, so those weights are sent
whole. The sparse engine leaves the weights frozen, so only the head, biases and layer-scale go
through DDP. Its compact selected values are averaged in one extra all-reduce. The figures
are counted from the parameters each engine exposes, for float32 gradients (the dtype of the
parameters under autocast). The model is randomly initialised and the mask is a random choice of
K entries per row, because the count depends only on the structure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from gps.selection import build_mask  # noqa: E402
from gps.tuning import build_engine  # noqa: E402


def synchronised_bytes(model: torch.nn.Module, engine) -> dict:
    """Return the bytes DDP and the compact all-reduce send per step for ``engine``."""
    ddp = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    compact = engine.compact_parameters() if hasattr(engine, "compact_parameters") else []
    extra = sum(p.numel() * p.element_size() for p in compact)
    return {"ddp_bytes": ddp, "compact_bytes": extra, "total_bytes": ddp + extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm architecture")
    parser.add_argument("--k", type=int, default=1, help="selected entries per output row")
    parser.add_argument("--num-classes", type=int, default=100, help="classes of the new head")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    results = {}
    for name in ("dense", "sparse"):
        model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
        mask = build_mask(model, None, args.k, score_type="random",
                          generator=torch.Generator().manual_seed(0))
        engine = build_engine(name, model, mask)
        results[name] = synchronised_bytes(model, engine)
    if args.json:
        print(json.dumps(results))
        return
    for name, figures in results.items():
        print(f"{name:>6}: {figures['total_bytes'] / 2**20:10.2f} MiB per step "
              f"(DDP {figures['ddp_bytes'] / 2**20:.2f} MiB, compact values "
              f"{figures['compact_bytes'] / 2**20:.2f} MiB)")
    ratio = results["sparse"]["total_bytes"] / results["dense"]["total_bytes"]
    print(f"sparse / dense: {ratio:.5f}")


if __name__ == "__main__":
    main()
