"""Resumable checkpoints, the compact fine-tuned delta, and merging a run into a timm state dict.

``python -m gps.checkpoint merge RUN_DIR --out FILE`` rebuilds the pretrained model of a run,
writes the delta into it and saves a plain state dict (``.safetensors``, or a torch file for any
other suffix) that ``timm.create_model(..., pretrained_cfg_overlay=dict(file=FILE))`` loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth"
DELTA_NAME = "delta.pth"


def atomic_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``.

    An interruption leaves either the previous file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates the file readable by its owner only
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def to_cpu(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a copy of a tensor dict on the CPU."""
    return {name: value.detach().cpu() for name, value in values.items()}


def save_delta(path: str | Path, engine, model: torch.nn.Module, meta: dict) -> None:
    """Write what training changed: trainable values (compact), their indices, and buffers.

    ``meta`` identifies the base model (architecture, weights, classes) so that the delta can be
    merged later.
    """
    trainable = engine.trainable
    delta = {
        "format": "gps-delta-1",
        "meta": meta,
        "values": to_cpu(engine.trainable_values()),
        "indices": {name: index.to(torch.int32) for name, index in trainable.indices.items()},
        "shapes": {name: tuple(m.shape) for name, m in trainable.mask.items()
                   if trainable.kind[name] != "none"},
        "buffers": to_cpu(dict(model.named_buffers())),
    }
    atomic_save(delta, path)


def apply_delta(model: torch.nn.Module, delta: dict) -> None:
    """Write a delta's values and buffers into ``model`` in place."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in delta["values"].items():
            if name not in params:
                raise ValueError(f"delta entry {name!r} is not a parameter of this model")
            target = params[name]
            if name in delta["indices"]:
                index = delta["indices"][name].long().to(target.device)
                target.view(-1).index_copy_(0, index, value.to(target.device, target.dtype))
            else:
                if tuple(value.shape) != tuple(target.shape):
                    raise ValueError(f"delta entry {name!r} has shape {tuple(value.shape)}, the "
                                     f"model's parameter has {tuple(target.shape)}")
                target.copy_(value)
        for name, value in delta["buffers"].items():
            if name in buffers:
                buffers[name].copy_(value)


def merge_run(run_dir: str | Path, out: str | Path) -> Path:
    """Rebuild a run's pretrained model, apply its delta and save a plain state dict."""
    from gps.builders import build_model
    from gps.config import build_config

    run_dir = Path(run_dir)
    delta_path = run_dir / DELTA_NAME
    config_path = run_dir / "config.yaml"
    for required in (delta_path, config_path):
        if not required.is_file():
            raise FileNotFoundError(f"{required} not found; is {run_dir} a finished run folder?")
    cfg = build_config(config_path, validate=False)
    delta = torch.load(delta_path, map_location="cpu", weights_only=True)
    model, _ = build_model(cfg, num_classes=delta["meta"]["num_classes"])
    apply_delta(model, delta)
    out = Path(out)
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out))
    else:
        torch.save(state, out)
    logger.info("merged %s into %s (%d tensors)", run_dir, out, len(state))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``merge RUN_DIR --out FILE``."""
    parser = argparse.ArgumentParser(prog="python -m gps.checkpoint",
                                     description="Work with run folders and their deltas.")
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="write the fine-tuned model as a plain timm state dict")
    merge.add_argument("run_dir", help="run folder holding config.yaml and delta.pth")
    merge.add_argument("--out", required=True,
                       help="output file: .safetensors, or .pth/.bin for a torch file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        merge_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
