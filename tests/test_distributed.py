"""Two CPU processes under torchrun (gloo, 127.0.0.1) against one process on the same data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from gps.builders import run_dir_for
from gps.config import build_config, config_to_dict
from gps.distributed import BatchShardSampler, ShardedShuffleSampler, ShardSampler
from gps.mask import load_mask

ROOT = Path(__file__).resolve().parent.parent

BASE = {
    "dataset": "demo/digits", "data_dir": str(ROOT / "data/demo"), "protocol": "tune",
    "model": "vit_tiny_patch16_224", "pretrained": "none", "img_size": 16,
    "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
    "k": 2, "epochs": 1, "warmup_epochs": 0, "lr": 1e-3, "num_workers": 0,
    "max_steps_per_epoch": 3, "selection": {"max_images": 40, "batch_size": 8},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A single-process run with batch 16 and a two-process run with batch 8 per process.

    The two-process launch also evaluates the single-process checkpoint (eval-only).
    """
    output = str(tmp_path_factory.mktemp("ddp"))
    single = build_config(overrides={**BASE, "output": output, "run_name": "single",
                                     "batch_size": 16})
    train.run(single)
    double = {**BASE, "output": output, "run_name": "double", "batch_size": 8}
    evaluation = {**config_to_dict(single), "eval_only": True}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "tests/ddp_worker.py",
               json.dumps(double), json.dumps(evaluation)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir_for(single), run_dir_for(build_config(overrides=double)), result


def test_two_process_mask_equals_single(runs):
    single, double, _ = runs
    a, b = load_mask(single / "mask.pth"), load_mask(double / "mask.pth")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_two_process_training_matches_double_batch(runs):
    single, double, _ = runs
    a = torch.load(single / "checkpoint.pth", weights_only=False)["trainable"]
    b = torch.load(double / "checkpoint.pth", weights_only=False)["trainable"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    initial = torch.load(single / "delta.pth", weights_only=True)
    assert initial["values"].keys() == a.keys()


def test_two_process_eval_counts_each_image_once(runs):
    single, _, _ = runs
    results = json.loads((single / "results.json").read_text())
    evaluation = json.loads((single / "eval.json").read_text())
    assert evaluation["eval_images"] == 100
    assert evaluation["eval_top1"] == results["top1"]
    assert evaluation["eval_top5"] == results["top5"]


def test_two_process_log_states_global_batch(runs):
    _, double, result = runs
    assert "global batch 16" in (double / "log.txt").read_text()


def test_samplers_cover_each_index_once():
    shards = [list(ShardSampler(11, 3, rank)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    batches = [list(BatchShardSampler(11, 4, 2, rank)) for rank in range(2)]
    assert batches == [[0, 1, 2, 3, 8, 9, 10], [4, 5, 6, 7]]
    whole = list(ShardedShuffleSampler(10, 1, 0, seed=3))
    halves = [list(ShardedShuffleSampler(10, 2, rank, seed=3)) for rank in range(2)]
    assert halves[0] == whole[0::2]
    assert halves[1] == whole[1::2]
