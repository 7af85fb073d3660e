"""Run the GPS gradient pass and write the mask file and its summary.

    python select_params.py --config configs/vtab/cifar100.yaml [--k N] [--loss supcon|ce]
        [--max-images N] [--out PATH] [--save-scores PATH]

Without --config, every run option is given on the command line (--model, --pretrained,
--dataset, --data-dir, --num-classes, --img-size, --batch-size, --seed, ...).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from gps import builders, distributed
from gps.config import ConfigError, parse_cli
from gps.data import DatasetError
from gps.engine import resolve_precision
from gps.mask import format_summary, mask_summary, save_mask
from gps.models import PretrainedWeightsError
from gps.runlog import setup_logging, write_json
from gps.training import weights_identity

logger = logging.getLogger("select_params")

EXTRA_OPTIONS = {
    "out": "mask file to write [default: <output>/masks/<task>/<model>_k<K>_<loss>_seed<seed>.pth]",
    "save-scores": "also write the accumulated |gradient| of every selectable weight (torch file)",
}


def default_mask_path(cfg) -> Path:
    """Return the default mask path of a configuration."""
    task = builders.task_folder_name(cfg.dataset)
    name = f"{cfg.model}_k{cfg.k}_{cfg.selection.loss}_seed{cfg.seed}.pth"
    return Path(cfg.output) / "masks" / task / name


def select(cfg, out: Path, scores_path: Path | None) -> dict:
    """Run the selection of ``cfg``, write the mask and its summary, and return the summary."""
    dist_ctx = distributed.setup(cfg.device)
    device = dist_ctx.device
    precision = resolve_precision(cfg.amp, device)
    if not dist_ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    builders.seed_everything(cfg.seed)
    data = builders.load_data(cfg)
    model, weights = builders.build_model(cfg, data.num_classes)
    model.to(device)
    data_config = builders.data_config_of(model, cfg.img_size)

    mask, meta, scores = builders.obtain_mask(cfg, model, data, data_config, device, precision,
                                              keep_scores=True, dist_ctx=dist_ctx)
    meta["weights"] = weights_identity(weights)
    meta["sha256"] = distributed.check_same_everywhere(mask, "mask", dist_ctx)
    summary = mask_summary(model, mask)
    if not dist_ctx.is_main:
        return summary
    save_mask(out, mask, model, meta)
    write_json(out.with_suffix(".json"), {"mask_file": str(out), "meta": meta, "summary": summary})
    if scores_path is not None and scores is not None:
        scores_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({name: value.cpu() for name, value in scores.items()}, scores_path)
        logger.info("wrote gradient scores of %d weights to %s", len(scores), scores_path)
    logger.info("mask summary\n%s", format_summary(summary))
    logger.info("wrote mask %s and summary %s", out, out.with_suffix(".json"))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the selection; return the process exit code."""
    setup_logging()
    try:
        cfg, extras = parse_cli(sys.argv[1:] if argv is None else argv, prog="select_params.py",
                                description=__doc__.strip().splitlines()[0], extra=EXTRA_OPTIONS)
        if cfg.method != "gps":
            raise ConfigError([f"method: select_params.py selects for 'gps', not {cfg.method!r}"])
        out = Path(extras["out"]) if "out" in extras else default_mask_path(cfg)
        scores_path = Path(extras["save-scores"]) if "save-scores" in extras else None
        select(cfg, out, scores_path)
    except (ConfigError, DatasetError, PretrainedWeightsError, FileNotFoundError,
            ValueError) as error:
        # User errors: the message names the value and the fix, so no traceback is shown.
        logger.error("%s", error)
        logger.debug("traceback", exc_info=True)
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
