"""Shipped task configs and launch scripts, and the configuration loader's overrides and errors.

The tables below repeat the hyper-parameters of the official GPS launch scripts (Zhang et al.,
CVPR 2024). They are the specification, so a typo in a shipped YAML file fails here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gps.config import ConfigError, RunConfig, build_config, parse_cli, save_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SCRIPTS = ROOT / "train_scripts" / "vit"

# config name: (launch script name, batch size, lr, K, drop-path, EMA decay). EMA is on.
FGVC_SETTINGS = {
    "cub": ("cub_2011", 32, 3e-3, 2, 0.0, 0.9998),
    "nabirds": ("nabirds", 32, 1e-4, 20, 0.1, 0.9998),
    "flowers": ("oxford_flowers", 32, 1e-3, 1, 0.1, 0.99),
    "dogs": ("stanford_dogs", 64, 1e-4, 1, 0.0, 0.9998),
    "cars": ("stanford_cars", 32, 5e-4, 15, 0.0, 0.9998),
}

# task: (batch size, lr, K, drop-path), in the VTAB-1k table order. EMA is off.
VTAB_SETTINGS = {
    "cifar100": (32, 1e-2, 1, 0.0),
    "caltech101": (16, 2e-3, 1, 0.0),
    "dtd": (16, 2e-3, 1, 0.0),
    "flowers102": (16, 2e-3, 1, 0.0),
    "pets": (32, 3e-3, 1, 0.0),
    "svhn": (32, 5e-3, 1, 0.0),
    "sun397": (16, 2.5e-3, 1, 0.0),
    "patch_camelyon": (32, 4e-3, 2, 0.0),
    "eurosat": (16, 2e-3, 1, 0.0),
    "resisc45": (16, 1.5e-3, 1, 0.1),
    "diabetic_retinopathy": (32, 2e-3, 1, 0.2),
    "clevr_count": (16, 3e-4, 1, 0.1),
    "clevr_dist": (16, 2e-3, 1, 0.1),
    "dmlab": (16, 1.5e-3, 1, 0.1),
    "kitti": (16, 1e-3, 1, 0.0),
    "dsprites_loc": (32, 7e-3, 1, 0.0),
    "dsprites_ori": (16, 5e-4, 1, 0.2),
    "smallnorb_azi": (32, 3e-3, 1, 0.1),
    "smallnorb_ele": (32, 3e-4, 1, 0.2),
}

# Every task config: (config path relative to ROOT, launch script relative to ROOT, data root).
TASK_FILES = (
    [(f"configs/vtab/{task}.yaml", f"train_scripts/vit/vtab/{task}.sh", "data/vtab-1k")
     for task in VTAB_SETTINGS]
    + [(f"configs/fgvc/{name}.yaml", f"train_scripts/vit/fgvc/{row[0]}.sh", "data/fgvc")
       for name, row in FGVC_SETTINGS.items()]
)
TASK_CONFIGS = [config for config, _, _ in TASK_FILES]
ALL_SCRIPTS = [script for _, script, _ in TASK_FILES] + [
    "train_scripts/vit/vtab/all.sh", "train_scripts/vit/fgvc/all.sh"]

# Keys whose YAML value must be a float as written, not a string such as '1e-3'.
FLOAT_KEYS = ("lr", "warmup_lr", "min_lr", "drop_path", "weight_decay")



def _load(config: str, validate: bool = False) -> RunConfig:
    return build_config(ROOT / config, validate=validate)


def _problem(error: ConfigError, key: str) -> str:
    """Return the single problem whose message names ``key`` first or as a quoted option."""
    found = [p for p in error.problems if p.startswith(f"{key}:") or f"option {key!r}" in p]
    assert len(found) == 1, f"expected one problem about {key!r} in {error.problems}"
    return found[0]


def _parse(argv: list[str]) -> RunConfig:
    cfg, _ = parse_cli(argv, prog="train.py", description="test")
    return cfg


# Shipped configs.


@pytest.mark.parametrize("suite, names", [("vtab", VTAB_SETTINGS), ("fgvc", FGVC_SETTINGS)])
def test_config_folder_holds_every_task(suite, names):
    shipped = sorted(path.stem for path in (CONFIGS / suite).glob("*.yaml"))
    assert shipped == sorted(names)


@pytest.mark.parametrize("task", list(VTAB_SETTINGS))
def test_vtab_config_values(task):
    batch_size, lr, k, drop_path = VTAB_SETTINGS[task]
    cfg = _load(f"configs/vtab/{task}.yaml")
    assert cfg.dataset == f"vtab/{task}"
    assert cfg.batch_size == batch_size
    assert cfg.lr == lr
    assert cfg.k == k
    assert cfg.drop_path == drop_path
    assert cfg.model_ema is False


@pytest.mark.parametrize("name", list(FGVC_SETTINGS))
def test_fgvc_config_values(name):
    _, batch_size, lr, k, drop_path, ema_decay = FGVC_SETTINGS[name]
    cfg = _load(f"configs/fgvc/{name}.yaml")
    assert cfg.dataset == f"fgvc/{name}"
    assert cfg.batch_size == batch_size
    assert cfg.lr == lr
    assert cfg.k == k
    assert cfg.drop_path == drop_path
    assert cfg.model_ema is True
    assert cfg.model_ema_decay == ema_decay


@pytest.mark.parametrize("config", TASK_CONFIGS)
def test_task_config_common_settings(config):
    cfg = _load(config, validate=True)
    assert cfg.model == "vit_base_patch16_224"
    assert cfg.pretrained == "vit_base_patch16_224.augreg_in21k"
    assert cfg.method == "gps"
    assert cfg.protocol == "final"
    assert cfg.img_size == 224
    assert cfg.epochs == 100
    assert cfg.opt == "adam"
    assert cfg.weight_decay == 0.0
    assert cfg.warmup_epochs == 10
    assert cfg.warmup_lr == 1e-7
    assert cfg.min_lr == 1e-8
    assert cfg.selection.loss == "supcon"
    assert cfg.selection.temperature == 0.07


@pytest.mark.parametrize("config", TASK_CONFIGS)
def test_task_config_sets_values_explicitly(config):
    raw = yaml.safe_load((ROOT / config).read_text())
    required = {"dataset", "model", "pretrained", "method", "k", "batch_size", "lr", "drop_path",
                "epochs", "opt", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr",
                "model_ema", "protocol", "img_size", "selection"}
    if config.startswith("configs/fgvc/"):
        required.add("model_ema_decay")
    assert sorted(required - set(raw)) == []
    assert raw["selection"]["loss"] == "supcon"
    for key in FLOAT_KEYS:
        assert isinstance(raw[key], float), f"{key}: {raw[key]!r} is not a YAML float"


@pytest.mark.parametrize("config, script, data_root", TASK_FILES)
def test_task_config_header_names_launch_commands(config, script, data_root):
    header = []
    for line in (ROOT / config).read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert f"# bash {script}" in text
    assert f"# python train.py --config {config} --data-dir {data_root}" in text
    assert "official GPS launch script" in text


def _load_registry(monkeypatch):
    """Load gps/data/registry.py alone: importing the gps.data package pulls in torch (seconds)."""
    path = ROOT / "gps" / "data" / "registry.py"
    if not path.is_file():
        pytest.skip("gps/data/registry.py is not written yet")
    spec = importlib.util.spec_from_file_location("_task_registry", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def test_task_dataset_names_are_registered(monkeypatch):
    registry = _load_registry(monkeypatch)
    for config in TASK_CONFIGS + ["configs/demo.yaml"]:
        dataset = yaml.safe_load((ROOT / config).read_text())["dataset"]
        assert registry.get_task(dataset).name == dataset, config


def test_demo_config_values():
    cfg = _load("configs/demo.yaml", validate=True)
    assert cfg.dataset == "demo/digits"
    assert cfg.data_dir == "data/demo"
    assert cfg.pretrained == "none"
    assert cfg.model == "vit_tiny_patch16_224"
    assert cfg.img_size == 16
    assert cfg.model_kwargs == {"patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}
    assert cfg.method == "gps"
    assert cfg.k == 8
    assert cfg.epochs == 30
    assert cfg.warmup_epochs == 2


# Command-line overrides.


def test_cli_overrides_config_values():
    cfg = _parse(["--config", str(CONFIGS / "vtab/cifar100.yaml"), "--lr", "0.5",
                  "--selection.loss", "ce", "--batch-size=8", "--model-kwargs", "{depth: 2}"])
    assert cfg.lr == 0.5
    assert cfg.selection.loss == "ce"
    assert cfg.batch_size == 8
    assert cfg.model_kwargs == {"depth": 2}
    assert cfg.dataset == "vtab/cifar100"
    assert cfg.drop_path == 0.0
    assert cfg.selection.temperature == 0.07


def test_cli_dash_form_of_nested_key():
    cfg = _parse(["--dataset", "vtab/dtd", "--selection-loss", "ce", "--tuning-engine", "dense",
                  "--selection-max-images", "7"])
    assert cfg.selection.loss == "ce"
    assert cfg.tuning.engine == "dense"
    assert cfg.selection.max_images == 7


def test_cli_aliases():
    cfg = _parse(["--dataset", "vtab/dtd", "--loss", "ce", "--max-images", "100",
                  "--engine", "dense", "--ema", "true", "--ema-decay", "0.99",
                  "--drop-path-rate", "0.1"])
    assert cfg.selection.loss == "ce"
    assert cfg.selection.max_images == 100
    assert cfg.tuning.engine == "dense"
    assert cfg.model_ema is True
    assert cfg.model_ema_decay == 0.99
    assert cfg.drop_path == 0.1


def test_cli_bare_flag_and_null():
    cfg = _parse(["--dataset", "vtab/dtd", "--eval-only", "--img-size", "none"])
    assert cfg.eval_only is True
    assert cfg.img_size is None


def test_cli_script_options_returned_apart():
    cfg, extras = parse_cli(["--dataset", "vtab/dtd", "--mask-out", "m.pth", "--k", "3"],
                            prog="select_params.py", description="test",
                            extra={"mask-out": "where to write the mask"})
    assert extras == {"mask-out": "m.pth"}
    assert cfg.k == 3


# Errors: every problem at once, each naming the key and the bad value.


def test_all_problems_reported_together(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dataset: vtab/dtd\nlrr: 0.1\nbatch_size: abc\ndrop_path: 1.5\n"
                      "opt: adamm\nselection:\n  loss: mse\n  temprature: 0.1\n")
    with pytest.raises(ConfigError) as info:
        _parse(["--config", str(config), "--epochs", "0", "--k", "two", "--momentun", "1",
                "--device", "tpu", "stray"])
    error = info.value
    assert len(error.problems) == 11, error.problems
    assert "'lrr'" in _problem(error, "lrr")
    assert "'abc'" in _problem(error, "batch_size")
    assert "1.5" in _problem(error, "drop_path")
    assert "'adamm'" in _problem(error, "opt")
    assert "'mse'" in _problem(error, "selection.loss")
    assert "'selection.temprature'" in _problem(error, "selection.temprature")
    assert " 0 " in _problem(error, "epochs")
    assert "'two'" in _problem(error, "k")
    assert "'momentun'" in _problem(error, "momentun")
    assert "'tpu'" in _problem(error, "device")
    assert any("'stray'" in p for p in error.problems)
    assert str(config) in _problem(error, "lrr")
    assert "command line" in _problem(error, "epochs")


def test_error_message_lists_every_problem(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dataset: vtab/dtd\nlr: -1.0\nwarmup_epochs: -2\n")
    with pytest.raises(ConfigError) as info:
        build_config(config)
    message = str(info.value)
    assert "2 problem(s)" in message
    assert "lr: -1.0 is out of range" in message
    assert "warmup_epochs: -2 is out of range" in message


@pytest.mark.parametrize("typo, suggestion", [
    ("lrr", "lr"), ("epoch", "epochs"), ("batch-sise", "batch_size"), ("selection.los", "selection.loss"),
])
def test_unknown_key_close_match_hint(typo, suggestion, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(f"dataset: vtab/dtd\n{typo}: 1\n")
    with pytest.raises(ConfigError) as from_yaml:
        build_config(config)
    with pytest.raises(ConfigError) as from_cli:
        _parse(["--dataset", "vtab/dtd", f"--{typo}", "1"])
    assert f"did you mean {suggestion!r}" in _problem(from_yaml.value, typo)
    cli_suggestion = "--" + suggestion.replace("_", "-")
    assert f"did you mean {cli_suggestion!r}" in _problem(from_cli.value, typo)


def test_learning_rate_alias():
    cfg = _parse(["--dataset", "vtab/dtd", "--learning-rate", "0.1"])
    assert cfg.lr == 0.1


def test_bad_choice_close_match_hint():
    with pytest.raises(ConfigError) as info:
        _parse(["--dataset", "vtab/dtd", "--opt", "adamm", "--selection.loss", "supcom"])
    assert "did you mean 'adam'" in _problem(info.value, "opt")
    assert "did you mean 'supcon'" in _problem(info.value, "selection.loss")


def test_wrong_types_in_yaml(tmp_path):
    config = tmp_path / "types.yaml"
    config.write_text("dataset: vtab/dtd\nk: 1.5\nmodel_ema: maybe\nmodel_kwargs: [1, 2]\n")
    with pytest.raises(ConfigError) as info:
        build_config(config)
    assert "1.5" in _problem(info.value, "k")
    assert "'maybe'" in _problem(info.value, "model_ema")
    assert "[1, 2]" in _problem(info.value, "model_kwargs")


def test_missing_dataset_reported():
    with pytest.raises(ConfigError) as info:
        build_config(None)
    assert "dataset" in _problem(info.value, "dataset")


# Config files that cannot be read.


def test_missing_config_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        build_config(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_invalid_yaml_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError) as info:
        build_config(path)
    assert str(path) in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_yaml_list_instead_of_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- lr: 0.1\n- k: 2\n")
    with pytest.raises(ConfigError) as info:
        build_config(path)
    assert str(path) in str(info.value)
    assert "mapping" in str(info.value)


def test_unreadable_config_reported_with_cli_problems(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        _parse(["--config", str(path), "--dataset", "vtab/dtd", "--k", "0"])
    assert any(str(path) in p for p in info.value.problems)
    assert "0" in _problem(info.value, "k")


def test_empty_config_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert build_config(path, validate=False) == RunConfig()


# Round trip.


def test_save_and_build_round_trip(tmp_path):
    cfg = _parse(["--config", str(CONFIGS / "fgvc/cars.yaml"), "--selection.max-images", "64",
                  "--engine", "dense", "--model-kwargs", "{depth: 2, embed_dim: 32}",
                  "--clip-grad", "1.0", "--run-name", "trial", "--img-size", "none"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    restored = build_config(path)
    assert restored == cfg
    assert dataclasses.asdict(restored) == dataclasses.asdict(cfg)


@pytest.mark.parametrize("config", ["configs/vtab/cifar100.yaml", "configs/fgvc/nabirds.yaml"])
def test_shipped_config_round_trip(config, tmp_path):
    cfg = _load(config)
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert build_config(path) == cfg


# Launch scripts.


def _clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("NPROC", "NNODES", "RDZV_ENDPOINT", "RDZV_ID", "VTAB_DIR", "FGVC_DIR",
                          "KEEP_GOING", "PYTHON")}
    env.update(extra)
    return env


@pytest.fixture
def fake_bin(tmp_path):
    """Directory with stand-ins for python and torchrun that log their calls and can fail."""
    directory = tmp_path / "bin"
    directory.mkdir()
    script = ('#!/bin/sh\n'
              '{ echo "== $(basename "$0") $(pwd)"; for a in "$@"; do echo "$a"; done; } '
              '>> "$FAKE_LOG"\n'
              'if [ -n "${FAKE_FAIL:-}" ] && echo "$*" | grep -Eq "$FAKE_FAIL"; then exit 3; fi\n')
    for name in ("python", "torchrun"):
        path = directory / name
        path.write_text(script)
        path.chmod(0o755)
    return directory


def _run_script(script: str, args: list[str], fake_bin: Path, **env: str):
    """Run a launch script from an unrelated folder with the fake python and torchrun."""
    log = fake_bin / "calls.log"
    log.write_text("")
    full_env = _clean_env(PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=str(log),
                          **env)
    result = subprocess.run(["bash", str(ROOT / script), *args], cwd=fake_bin, env=full_env,
                            capture_output=True, text=True, timeout=30)
    calls = []
    for line in log.read_text().splitlines():
        if line.startswith("== "):
            program, cwd = line[3:].split(" ", 1)
            calls.append({"program": program, "cwd": cwd, "args": []})
        else:
            calls[-1]["args"].append(line)
    return result, calls


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_launch_script_is_executable(script):
    path = ROOT / script
    assert path.is_file()
    assert path.stat().st_mode & stat.S_IXUSR
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in path.read_text()


def test_launch_scripts_pass_bash_syntax_check():
    for script in ALL_SCRIPTS + ["train_scripts/launch.sh"]:
        result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_launch_scripts_pass_shellcheck():
    result = subprocess.run(["shellcheck", "-x", "train_scripts/launch.sh",
                             *ALL_SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("config, script, data_root", TASK_FILES)
def test_task_script_points_to_its_config(config, script, data_root):
    text = (ROOT / script).read_text()
    launches = re.findall(r"^launch_train (\S+) \"\$DATA_DIR\" \"\$@\"$", text, re.MULTILINE)
    assert launches == [config]
    assert (ROOT / config).is_file()
    env = "VTAB_DIR" if data_root == "data/vtab-1k" else "FGVC_DIR"
    assert f'DATA_DIR="${{{env}:-{data_root}}}"' in text


def test_task_script_runs_train_py(fake_bin):
    result, calls = _run_script("train_scripts/vit/vtab/cifar100.sh", ["--seed", "3"], fake_bin)
    assert result.returncode == 0, result.stderr
    assert len(calls) == 1
    assert calls[0]["program"] == "python"
    assert calls[0]["cwd"] == str(ROOT)
    assert calls[0]["args"] == ["train.py", "--config", "configs/vtab/cifar100.yaml",
                                "--data-dir", "data/vtab-1k", "--seed", "3"]


def test_task_script_data_dir_from_environment(fake_bin):
    _, vtab_calls = _run_script("train_scripts/vit/vtab/dtd.sh", [], fake_bin, VTAB_DIR="/d/vtab")
    _, fgvc_calls = _run_script("train_scripts/vit/fgvc/stanford_cars.sh", ["--k", "1"], fake_bin,
                                FGVC_DIR="/d/my fgvc")
    assert vtab_calls[0]["args"][1:5] == ["--config", "configs/vtab/dtd.yaml", "--data-dir", "/d/vtab"]
    assert fgvc_calls[0]["args"] == ["train.py", "--config", "configs/fgvc/cars.yaml",
                                     "--data-dir", "/d/my fgvc", "--k", "1"]


def test_task_script_nproc_uses_torchrun(fake_bin):
    result, calls = _run_script("train_scripts/vit/fgvc/cub_2011.sh", ["--seed", "1"], fake_bin,
                                NPROC="2")
    assert result.returncode == 0, result.stderr
    assert [call["program"] for call in calls] == ["torchrun"]
    assert calls[0]["args"] == ["--nnodes", "1", "--nproc_per_node", "2", "--standalone",
                                "train.py", "--config", "configs/fgvc/cub.yaml",
                                "--data-dir", "data/fgvc", "--seed", "1"]


def test_task_script_multi_node_rendezvous(fake_bin):
    result, calls = _run_script("train_scripts/vit/vtab/svhn.sh", [], fake_bin, NPROC="4",
                                NNODES="2", RDZV_ENDPOINT="node0:29400", RDZV_ID="job7")
    assert result.returncode == 0, result.stderr
    assert calls[0]["args"][:10] == ["--nnodes", "2", "--nproc_per_node", "4",
                                     "--rdzv_backend", "c10d", "--rdzv_endpoint", "node0:29400",
                                     "--rdzv_id", "job7"]


def test_task_script_multi_node_needs_endpoint(fake_bin):
    result, calls = _run_script("train_scripts/vit/vtab/svhn.sh", [], fake_bin, NPROC="4",
                                NNODES="2")
    assert result.returncode == 2
    assert "RDZV_ENDPOINT" in result.stderr
    assert calls == []


def test_task_script_rejects_bad_nproc(fake_bin):
    result, calls = _run_script("train_scripts/vit/vtab/svhn.sh", [], fake_bin, NPROC="two")
    assert result.returncode == 2
    assert "NPROC" in result.stderr
    assert "'two'" in result.stderr
    assert calls == []


@pytest.mark.parametrize("suite, count", [("vtab", 19), ("fgvc", 5)])
def test_all_script_runs_every_task(suite, count, fake_bin):
    result, calls = _run_script(f"train_scripts/vit/{suite}/all.sh", ["--seed", "2"], fake_bin)
    expected = [config for config in TASK_CONFIGS if config.startswith(f"configs/{suite}/")]
    assert result.returncode == 0, result.stderr
    assert len(calls) == count
    assert [call["args"][2] for call in calls] == expected
    assert all(call["args"][-2:] == ["--seed", "2"] for call in calls)


def test_all_script_stops_at_first_failure(fake_bin):
    result, calls = _run_script("train_scripts/vit/vtab/all.sh", [], fake_bin,
                                FAKE_FAIL="vtab/dtd.yaml|vtab/kitti.yaml")
    assert result.returncode == 3
    assert calls[-1]["args"][2] == "configs/vtab/dtd.yaml"
    assert len(calls) == 3
    assert "KEEP_GOING=1" in result.stderr


def test_all_script_keep_going_lists_failures(fake_bin):
    result, calls = _run_script("train_scripts/vit/vtab/all.sh", [], fake_bin, KEEP_GOING="1",
                                FAKE_FAIL="vtab/dtd.yaml|vtab/kitti.yaml")
    assert result.returncode == 1
    assert len(calls) == 19
    assert "failed tasks (2 of 19): dtd kitti" in result.stderr


def test_task_script_prints_train_help():
    result = subprocess.run(["bash", str(SCRIPTS / "vtab" / "cifar100.sh"), "--help"],
                            env=_clean_env(), capture_output=True, text=True, timeout=120)
    # train.py imports every gps module, so the script cannot work while one is still missing.
    missing = re.search(r"(?:ModuleNotFoundError: No module named|ImportError: cannot import "
                        r"name \S+ from) '(gps[\w.]*)'", result.stderr)
    if missing:
        pytest.skip(f"train.py cannot import {missing.group(1)} yet: {result.stderr.splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    assert "usage: train.py" in result.stdout
    assert "--selection.loss" in result.stdout
