"""Fine-tune a pretrained timm model with GPS (or a baseline) and evaluate it.

    python train.py --config configs/vtab/cifar100.yaml [--key value ...]

Steps: configuration, seed, data, model, mask, mask enforcement, optimizer, schedule, EMA,
epochs with evaluation, outputs. See ``python train.py --help`` for every option.
"""

from __future__ import annotations

import logging
import sys
import time

import torch

from gps import builders, distributed
from gps.config import ConfigError, RunConfig, parse_cli, save_config
from gps.data import DatasetError
from gps.engine import NonFiniteLossError, StepContext, resolve_precision, train_one_epoch
from gps.mask import format_summary, load_mask, load_mask_meta, mask_summary, save_mask
from gps.models import PretrainedWeightsError
from gps.runlog import MetricsWriter, close_log_file, setup_logging, write_json
from gps.training import (
    RunState,
    build_results,
    check_run_folder,
    evaluate_all,
    load_checkpoint,
    log_final_summary,
    resume_path,
    save_checkpoint,
    write_outputs,
)
from gps.tuning import TrainableEma, build_engine

logger = logging.getLogger("train")


def run(cfg: RunConfig) -> dict:
    """Run one configuration end to end and return its results (on every process).

    The run's log file is closed afterwards, so later log lines of the caller stay out of it.
    """
    try:
        return _run(cfg)
    finally:
        close_log_file()


def _run(cfg: RunConfig) -> dict:
    started = time.time()

    # Processes and device: one process, or one per GPU (or CPU share) under torchrun.
    dist_ctx = distributed.setup(cfg.device)
    device = dist_ctx.device
    precision = resolve_precision(cfg.amp, device)

    # Run folder, log and resolved configuration (written by the main process only).
    run_dir = builders.run_dir_for(cfg)
    check_run_folder(cfg, run_dir)
    if dist_ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(run_dir / "log.txt")
        if not cfg.eval_only:
            save_config(cfg, run_dir / "config.yaml")
        logger.info("run folder %s", run_dir)
    else:
        logging.getLogger().setLevel(logging.WARNING)
    if dist_ctx.enabled:
        logger.info("%d processes, batch %d per process, global batch %d (lr is not scaled)",
                    dist_ctx.world_size, cfg.batch_size, cfg.batch_size * dist_ctx.world_size)

    # Seed, then the data, checked before any work starts.
    builders.seed_everything(cfg.seed)
    data = builders.load_data(cfg)

    # Model with a new head, and its transforms.
    model, weights = builders.build_model(cfg, data.num_classes)
    model.to(device)
    data_config = builders.data_config_of(model, cfg.img_size)
    loaders = builders.build_loaders(cfg, data, data_config, dist_ctx)

    # Mask: the gradient pass, a given mask file, or a baseline's rule. A resumed or evaluated
    # run reuses the mask of its run folder.
    checkpoint = resume_path(cfg, run_dir)
    if checkpoint is not None:
        mask_file = checkpoint.parent / "mask.pth"
        mask, mask_meta = load_mask(mask_file, model), load_mask_meta(mask_file)
    else:
        mask, mask_meta = builders.obtain_mask(cfg, model, data, data_config, device, precision,
                                               dist_ctx=dist_ctx)
        if dist_ctx.is_main:
            save_mask(run_dir / "mask.pth", mask, model, mask_meta)
    mask_meta["sha256"] = distributed.check_same_everywhere(mask, "mask", dist_ctx)
    summary = mask_summary(model, mask)
    logger.info("trainable entries\n%s", format_summary(summary))

    # Mask enforcement, optimizer, schedule and EMA.
    engine = build_engine(cfg.tuning.engine, model, mask)
    if cfg.tuning.grad_checkpointing:
        model.set_grad_checkpointing(True)
    optimizer = builders.build_optimizer(cfg, engine)
    scheduler = builders.build_scheduler(cfg, optimizer)
    ema = TrainableEma(engine.trainable_values(), cfg.model_ema_decay) if cfg.model_ema else None
    scaler = torch.amp.GradScaler("cuda") if precision.dtype is torch.float16 else None
    ctx = StepContext(optimizer, engine, precision, scaler, ema, cfg.clip_grad, cfg.weight_decay,
                      decoupled_decay=cfg.opt == "adamw", log_interval=cfg.log_interval,
                      max_steps=cfg.max_steps_per_epoch,
                      after_backward=builders.gradient_sync(engine, dist_ctx))
    train_model = builders.wrap_distributed(model, dist_ctx)
    state = RunState(cfg, run_dir, model, engine, optimizer, scaler, ema, dist=dist_ctx,
                     started=started)

    # Resume an interrupted run, or evaluate a finished one.
    if checkpoint is not None:
        load_checkpoint(state, checkpoint)
    if cfg.eval_only:
        metrics = evaluate_all(state, loaders.eval, device, precision)
        if dist_ctx.is_main:
            write_json(run_dir / "eval.json", {"checkpoint": str(checkpoint), **metrics})
        logger.info("evaluation of %s: top-1 %.2f%%, top-5 %.2f%% on %d images", checkpoint,
                    metrics["eval_top1"], metrics["eval_top5"], metrics["eval_images"])
        return metrics

    # Epochs with evaluation; the main process writes metrics and checkpoints.
    metrics_writer = MetricsWriter(run_dir) if dist_ctx.is_main else None
    for epoch in range(state.epoch, cfg.epochs):
        scheduler.step(epoch)
        builders.start_epoch(cfg, loaders.train, epoch, dist_ctx)
        row = train_one_epoch(train_model, loaders.train, ctx, epoch + 1, device)
        if (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs:
            row.update(evaluate_all(state, loaders.eval, device, precision))
        state.record_epoch(row)
        if metrics_writer is not None:
            metrics_writer.write(epoch + 1, row)
            save_checkpoint(state)
        distributed.barrier(dist_ctx)
    if metrics_writer is not None:
        metrics_writer.close()

    # Outputs: delta, results.json and a readable summary.
    results = build_results(state, summary, weights, data, device, precision)
    if dist_ctx.is_main:
        write_outputs(state, results)
        log_final_summary(results)
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run; return the process exit code."""
    setup_logging()
    try:
        cfg, _ = parse_cli(sys.argv[1:] if argv is None else argv, prog="train.py",
                           description=__doc__.strip().splitlines()[0])
        run(cfg)
    except (ConfigError, DatasetError, PretrainedWeightsError, FileNotFoundError,
            ValueError) as error:
        # User errors: the message names the value and the fix, so no traceback is shown.
        logger.error("%s", error)
        logger.debug("traceback", exc_info=True)
        return 2
    except NonFiniteLossError as error:
        logger.error("%s", error)
        return 3
    finally:
        close_log_file()
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
