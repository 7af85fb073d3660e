"""Typed run configuration: YAML loading, command-line overrides and validation.

A run is described by one :class:`RunConfig`. A YAML file sets values and ``--key value`` on the
command line overrides them; nested options are written ``--selection.loss ce`` (or
``--selection-loss ce``). Every problem (unknown keys, wrong types, values out of range) is
collected and reported at once in a :class:`ConfigError` before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


def option(default: Any, help: str, choices: Sequence[Any] | None = None, minimum: float | None = None,
           exclusive_minimum: bool = False, maximum: float | None = None) -> Any:
    """Declare a documented configuration field with optional choices and numeric bounds."""
    meta = {"help": help, "choices": choices, "minimum": minimum,
            "exclusive_minimum": exclusive_minimum, "maximum": maximum}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SelectionConfig:
    """Options of the gradient pass and of the rule that turns its scores into a mask."""

    loss: str = option("supcon", "loss of the gradient pass: supervised contrastive on two views "
                       "(the head plays no part) or cross-entropy on the head", choices=("supcon", "ce"))
    temperature: float = option(0.07, "SupCon temperature", minimum=0.0, exclusive_minimum=True)
    scores: str = option("gradient", "entry scores: accumulated |gradient| (GPS) or uniform random "
                         "scores with the same budget (control)", choices=("gradient", "random"))
    granularity: str = option("neuron", "where the top entries are taken: K per output row (GPS), "
                              "the same total per weight matrix, or the same total over the network",
                              choices=("neuron", "layer", "network"))
    max_images: int | None = option(None, "use only the first N training images in the gradient "
                                    "pass (default: the whole training split)", minimum=1)
    batch_size: int | None = option(None, "images per batch in the gradient pass, each giving two "
                                    "views (default: batch_size)", minimum=1)


@dataclass
class TuningConfig:
    """Options of mask enforcement during fine-tuning."""

    engine: str = option("sparse", "dense: full gradients with unselected entries zeroed by hooks; "
                         "sparse: gradients and optimizer state only for trainable entries",
                         choices=("dense", "sparse"))
    grad_checkpointing: bool = option(False, "recompute block activations in the backward pass "
                                      "to save activation memory (timm models that support it)")


@dataclass
class RunConfig:
    """One fine-tuning (or selection) run. Units are given in each field's help text."""

    # Data.
    dataset: str = option("", "task name: vtab/<task>, fgvc/<task>, demo/digits or custom")
    data_dir: str | None = option(None, "benchmark root or task folder (default: data/vtab-1k for "
                                  "VTAB-1k, data/fgvc for FGVC, data/demo for the demo)")
    protocol: str = option("final", "final: train on train+val, evaluate on test; tune: train on "
                           "train, evaluate on val", choices=("final", "tune"))
    num_classes: int | None = option(None, "number of classes (default: from the task registry, or "
                                     "inferred for custom data)", minimum=1)
    num_workers: int = option(4, "data-loading worker processes per training process", minimum=0)

    # Model.
    model: str = option("vit_base_patch16_224", "timm architecture name")
    pretrained: str = option("vit_base_patch16_224.augreg_in21k", "pretrained weights: a timm hub "
                             "tag, a local file (.npz, .safetensors, .pth, .bin) or 'none'")
    model_kwargs: dict = option({}, "extra keyword arguments for timm.create_model, e.g. "
                                "{depth: 2, embed_dim: 64} for a tiny model")
    img_size: int | None = option(None, "input resolution in pixels (default: the model's)", minimum=1)
    drop_path: float = option(0.0, "stochastic depth rate", minimum=0.0, maximum=1.0)

    # What trains.
    method: str = option("gps", "gps: selected entries + biases + layer-scale + head; full: all "
                         "parameters; linear: head only; bitfit: biases + head",
                         choices=("gps", "full", "linear", "bitfit"))
    k: int = option(1, "GPS: selected input connections per output neuron", minimum=1)
    mask: str | None = option(None, "use this mask file instead of running the gradient pass")
    selection: SelectionConfig = field(default_factory=SelectionConfig,
                                       metadata={"help": "gradient pass and mask choice"})
    tuning: TuningConfig = field(default_factory=TuningConfig,
                                 metadata={"help": "mask enforcement"})

    # Optimisation.
    batch_size: int = option(32, "training images per step and per process", minimum=1)
    epochs: int = option(100, "training epochs", minimum=1)
    opt: str = option("adam", "optimizer", choices=("adam", "adamw", "sgd"))
    lr: float = option(1e-3, "peak learning rate", minimum=0.0, exclusive_minimum=True)
    weight_decay: float = option(0.0, "weight decay (coupled for adam and sgd, decoupled for "
                                 "adamw); frozen entries never move", minimum=0.0)
    momentum: float = option(0.9, "SGD momentum", minimum=0.0, maximum=1.0)
    warmup_epochs: int = option(10, "linear warm-up length in epochs", minimum=0)
    warmup_lr: float = option(1e-7, "learning rate at the start of warm-up", minimum=0.0)
    min_lr: float = option(1e-8, "learning rate at the end of the cosine decay", minimum=0.0)
    clip_grad: float | None = option(None, "clip the gradient norm to this value", minimum=0.0,
                                     exclusive_minimum=True)
    model_ema: bool = option(False, "keep an exponential moving average of the weights")
    model_ema_decay: float = option(0.9998, "EMA decay per step", minimum=0.0, maximum=1.0)
    amp: str = option("auto", "mixed precision: auto (bf16 on CUDA, float32 on CPU), bf16, fp16 "
                      "(with loss scaling) or none", choices=("auto", "bf16", "fp16", "none"))

    # Run control and outputs.
    seed: int = option(0, "random seed for selection views, initialisation and data order",
                       minimum=0)
    device: str = option("auto", "auto (CUDA when present), cpu, or cuda[:N]")
    eval_interval: int = option(1, "evaluate every N epochs (and always after the last)", minimum=1)
    log_interval: int = option(20, "log loss, lr and throughput every N steps", minimum=1)
    output: str = option("output", "root folder of run folders")
    experiment: str | None = option(None, "experiment folder name (default: the method, with K "
                                    "for gps)")
    run_name: str | None = option(None, "run folder name (default: seed<seed>)")
    resume: str | None = option(None, "run folder or checkpoint file to continue, or 'auto' to "
                                "continue the run folder of this configuration if it has one")
    eval_only: bool = option(False, "evaluate the checkpoint of the run folder (or --resume) "
                             "without training")
    max_steps_per_epoch: int | None = option(None, "stop each epoch after N steps (smoke tests "
                                             "and benchmarks)", minimum=1)


# Command-line spellings that differ from the field path.
ALIASES = {
    "loss": "selection.loss",
    "max_images": "selection.max_images",
    "engine": "tuning.engine",
    "grad_checkpointing": "tuning.grad_checkpointing",
    "drop_path_rate": "drop_path",
    "ema": "model_ema",
    "ema_decay": "model_ema_decay",
    "learning_rate": "lr",
}


def _field_map(cls: type = RunConfig, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Map every leaf option path ('lr', 'selection.loss') to its dataclass field."""
    fields = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        if dataclasses.is_dataclass(f.type):
            fields.update(_field_map(f.type, prefix + f.name + "."))
        else:
            fields[prefix + f.name] = f
    return fields


FIELDS = _field_map()


def _base_type(annotation: Any) -> tuple[type, bool]:
    """Return the concrete type of an annotation and whether None is allowed."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        concrete = [a for a in args if a is not type(None)]
        return concrete[0], True
    return annotation, False


def _convert(path: str, value: Any) -> tuple[Any, str | None]:
    """Convert a YAML or command-line value to the field's type; return (value, problem)."""
    f = FIELDS[path]
    kind, optional = _base_type(f.type)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None, None
        return None, f"{path}: a value is required (got {value!r}); {f.metadata['help']}"
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = lowered in ("true", "1", "yes")
            elif not isinstance(value, bool):
                raise ValueError
        elif kind is int:
            if isinstance(value, str):
                value = float(value) if "." in value or "e" in value.lower() else int(value)
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if not math.isfinite(value):
                return None, f"{path}: expected a finite number, got {value!r}"
        elif kind is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError
            bad = [k for k, v in value.items() if not str(k).isidentifier() or v is None]
            if bad:
                return None, (f"{path}: invalid entries {bad} in {value!r}; write "
                              "{name: value, ...} with a space after each colon")
        elif kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            value = str(value)
    except (TypeError, ValueError, yaml.YAMLError):
        return None, f"{path}: expected {kind.__name__}, got {value!r}"
    return value, _check_bounds(path, f, value)


def _check_bounds(path: str, f: dataclasses.Field, value: Any) -> str | None:
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{path}: {value!r} is not one of {list(meta['choices'])}{hint}"
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None and (value < low or (meta.get("exclusive_minimum") and value == low)):
        relation = ">" if meta.get("exclusive_minimum") else ">="
        return f"{path}: {value!r} is out of range, expected {relation} {low}"
    if high is not None and value > high:
        return f"{path}: {value!r} is out of range, expected <= {high}"
    return None


def _canonical_key(key: str) -> str:
    key = key.lstrip("-").replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in FIELDS and "_" in key:
        # --selection-loss is accepted for --selection.loss.
        head, _, rest = key.partition("_")
        if f"{head}.{rest}" in FIELDS:
            key = f"{head}.{rest}"
    return key


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        path = prefix + str(key)
        if isinstance(value, dict) and _canonical_key(path) not in FIELDS:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _unknown_key_problem(key: str, source: str) -> str:
    spelled = key.lstrip("-").replace("-", "_")
    close = difflib.get_close_matches(spelled, list(FIELDS) + list(ALIASES), n=1)
    hint = ""
    if close:
        suggestion = close[0]
        if source == "the command line":
            suggestion = "--" + suggestion.replace("_", "-")
        hint = f"; did you mean {suggestion!r}?"
    return f"unknown option {key!r} in {source}{hint}"


def apply_overrides(cfg: RunConfig, values: dict[str, Any], source: str,
                    problems: list[str]) -> None:
    """Set flat or nested ``values`` on ``cfg``, appending every problem to ``problems``."""
    for raw_key, raw_value in _flatten(values).items():
        key = _canonical_key(raw_key)
        if key not in FIELDS:
            problems.append(_unknown_key_problem(raw_key, source))
            continue
        value, problem = _convert(key, raw_value)
        if problem:
            problems.append(f"{problem} (from {source})")
            continue
        target = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)


def _check_consistency(cfg: RunConfig, problems: list[str]) -> None:
    if not cfg.dataset:
        problems.append("dataset: missing; pass --dataset (e.g. vtab/cifar100) or set it in the config")
    if cfg.mask is not None and not Path(cfg.mask).is_file():
        problems.append(f"mask: file {cfg.mask!r} not found; run select_params.py first or drop --mask")
    if cfg.mask is not None and cfg.method != "gps":
        problems.append(f"mask: a mask file is only used by method 'gps', not {cfg.method!r}")
    if cfg.warmup_epochs > cfg.epochs:
        problems.append(f"warmup_epochs: {cfg.warmup_epochs} is longer than epochs ({cfg.epochs})")
    if cfg.min_lr > cfg.lr:
        problems.append(f"min_lr: {cfg.min_lr} is above lr ({cfg.lr})")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        problems.append(f"device: {cfg.device!r} is not auto, cpu, cuda or cuda:N")
    if cfg.resume is not None and cfg.resume != "auto" and not Path(cfg.resume).exists():
        problems.append(f"resume: {cfg.resume!r} not found; pass a run folder, a checkpoint file "
                        "or 'auto'")


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict; an invalid file raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} not found"])
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError([f"config file {str(path)!r} is not valid YAML: {error}"]) from None
    if not isinstance(values, dict):
        raise ConfigError([f"config file {str(path)!r} must contain a mapping of option: value"])
    return values


def build_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 validate: bool = True) -> RunConfig:
    """Build a RunConfig from defaults, an optional YAML file and overrides (in that order)."""
    cfg = RunConfig()
    problems: list[str] = []
    if config_file is not None:
        apply_overrides(cfg, load_yaml(config_file), str(config_file), problems)
    if overrides:
        apply_overrides(cfg, overrides, "the command line", problems)
    if validate:
        _check_consistency(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


BARE_FLAG = "true"


def _split_cli(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Parse ``--key value`` / ``--key=value`` / bare ``--flag`` pairs into a dict."""
    values: dict[str, str] = {}
    problems = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            problems.append(f"unexpected argument {arg!r}; options are written --key value")
            i += 1
            continue
        if "=" in arg:
            key, value = arg.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = arg, argv[i + 1]
            i += 2
        else:
            key, value = arg, BARE_FLAG  # such as --eval-only; only boolean options allow it
            i += 1
        values[key[2:]] = value
    return values, problems


def format_help(prog: str, description: str, extra: dict[str, str] | None = None) -> str:
    """Return help text listing every option with its default and meaning."""
    lines = [f"usage: {prog} [--config FILE.yaml] [--key value ...]", "", description, "",
             "options (YAML keys use the same names with '_' and '.' for nesting):",
             "  --config FILE                  YAML file whose values the command-line options override"]
    width = max(len(path) for path in FIELDS) + 4
    for key, text in (extra or {}).items():
        lines.append(f"  --{key:<{width}}{text}")
    for path, f in FIELDS.items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        choice_text = f" {{{', '.join(map(str, choices))}}}" if choices else ""
        default_text = "" if "(default:" in f.metadata["help"] else f" [default: {default!r}]"
        if _base_type(f.type)[0] is bool:
            choice_text = " {true, false}; a bare --" + path.replace("_", "-") + " means true"
        name = path.replace("_", "-")
        lines.append(f"  --{name:<{width}}{f.metadata['help']}{choice_text}{default_text}")
    aliases = ", ".join(f"--{a.replace('_', '-')} = --{p.replace('_', '-')}" for a, p in ALIASES.items())
    lines += ["", f"aliases: {aliases}"]
    return "\n".join(lines)


def parse_cli(argv: Sequence[str], prog: str, description: str,
              extra: dict[str, str] | None = None,
              check: Callable[[RunConfig, list[str]], None] | None = None
              ) -> tuple[RunConfig, dict[str, str]]:
    """Parse a command line into a RunConfig plus the script's own ``extra`` options.

    Exits with the help text on ``--help``. Raises ConfigError listing every problem.
    """
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print(format_help(prog, description, extra))
        raise SystemExit(0)
    values, problems = _split_cli(argv)
    if argv.count("--config") + sum(a.startswith("--config=") for a in argv) > 1:
        problems.append("--config given more than once; pass a single config file")
    config_file = values.pop("config", None)
    extras = {}
    for key in list(values):
        if key.replace("_", "-") in (extra or {}):
            extras[key.replace("_", "-")] = values.pop(key)
    cfg = RunConfig()
    if config_file is not None:
        try:
            apply_overrides(cfg, load_yaml(config_file), config_file, problems)
        except ConfigError as error:
            problems.extend(error.problems)
    for key in [k for k, v in values.items() if v is BARE_FLAG]:
        path = _canonical_key(key)
        if path in FIELDS and _base_type(FIELDS[path].type)[0] is not bool:
            problems.append(f"--{key}: missing value; write --{key} VALUE")
            del values[key]
    apply_overrides(cfg, values, "the command line", problems)
    _check_consistency(cfg, problems)
    if check is not None:
        check(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg, extras


def config_to_dict(cfg: RunConfig) -> dict:
    """Return the configuration as a plain nested dict (YAML- and JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def default_data_dir(benchmark: str) -> str:
    """Return the documented default dataset root of a benchmark."""
    return {"vtab": "data/vtab-1k", "fgvc": "data/fgvc", "demo": "data/demo"}.get(benchmark, "data")
