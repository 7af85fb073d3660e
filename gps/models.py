"""timm model creation with pretrained weights from the hub or a local file, and features.

The classification head is always new: a pretrained head is never loaded, because GPS trains a
fresh head for the downstream task.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

DEFAULT_PRETRAINED = "vit_base_patch16_224.augreg_in21k"
CHECKPOINT_SUFFIXES = (".npz", ".safetensors", ".pth", ".pt", ".bin", ".ckpt")
NO_WEIGHTS = ("", "none", "null", "random")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be downloaded or found in the local cache."""


@dataclass
class WeightsInfo:
    """Identity of the weights a model was initialised from.

    Attributes:
        source: 'hub' (timm pretrained tag), 'file' (local checkpoint) or 'none' (random init).
        tag: The timm model tag for hub weights, e.g. 'vit_base_patch16_224.augreg_in21k'.
        path: The absolute path of a local checkpoint.
        sha256: The SHA-256 hex digest of a local checkpoint.
        missing_keys: Model keys absent from the checkpoint (only the new head's keys are allowed).
        unexpected_keys: Checkpoint keys that the model does not have (always empty on success).
    """

    source: str
    tag: str | None = None
    path: str | None = None
    sha256: str | None = None
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict."""
        return asdict(self)

    def describe(self) -> str:
        """Return a one-line description for logs and reports."""
        if self.source == "hub":
            return f"timm hub weights {self.tag}"
        if self.source == "file":
            return f"file {self.path} (sha256 {self.sha256})"
        return "random initialisation (no pretrained weights)"


def create_model(
    name: str,
    num_classes: int,
    pretrained: str | None = DEFAULT_PRETRAINED,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, WeightsInfo]:
    """Create a timm model with a new classification head and load pretrained weights.

    Args:
        name: timm architecture name, optionally with a pretrained tag
            ('vit_base_patch16_224' or 'vit_base_patch16_224.augreg_in21k').
        num_classes: Number of classes of the new head.
        pretrained: A timm pretrained tag (downloaded through timm, or read from the Hugging Face
            cache), a local checkpoint (.npz Google ViT checkpoint, .safetensors, or a
            .pth/.pt/.bin/.ckpt state dict, possibly nested under 'state_dict' or 'model'), or
            None/'none' for random initialisation. A value is a file if it ends with one of
            those suffixes or exists on disk.
        img_size: Input resolution for models that take one; position embeddings of a
            checkpoint are resampled to it.
        drop_path_rate: Stochastic depth rate.
        model_kwargs: Extra keyword arguments for `timm.create_model`.

    Returns:
        The model (in train mode, on the CPU) and the identity of its weights.

    Raises:
        ValueError: Unknown architecture or tag, missing file, or a checkpoint whose keys or
            shapes do not match the model.
        PretrainedWeightsError: Hub weights could not be downloaded or found in the cache.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    arch = timm.models.get_arch_name(name)
    if not timm.is_model(arch):
        raise ValueError(
            f"unknown timm model {name!r}; list the available names with timm.list_models()"
        )
    kwargs = dict(model_kwargs or {})
    kwargs.update(num_classes=num_classes, drop_path_rate=drop_path_rate)
    if img_size is not None:
        kwargs["img_size"] = img_size

    kind = pretrained_kind(pretrained)
    if kind == "none":
        model = _build(name, kwargs)
        info = WeightsInfo(source="none")
        logger.warning(
            "model %s is randomly initialised (no pretrained weights): its results are not "
            "comparable with any published number",
            arch,
        )
        return model, info
    if kind == "file":
        model = _build(name, kwargs)
        info = load_checkpoint_file(model, str(pretrained))
    else:
        model, info = _create_from_hub(name, str(pretrained), kwargs)
    logger.info("model %s initialised from %s", arch, info.describe())
    return model, info


def _build(name: str, kwargs: dict[str, Any], pretrained: bool = False) -> nn.Module:
    """Call timm.create_model, turning a rejected keyword argument into a ValueError."""
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as error:
        raise ValueError(
            f"timm model {name} rejected its arguments {sorted(kwargs)}: {error}. Remove the "
            "option (e.g. img_size for CNNs) or change model_kwargs."
        ) from None


def pretrained_kind(pretrained: str | os.PathLike | None) -> str:
    """Classify a `pretrained` value as 'none', 'file' or 'hub'."""
    if pretrained is None or str(pretrained).strip().lower() in NO_WEIGHTS:
        return "none"
    value = str(pretrained)
    if value.lower().endswith(CHECKPOINT_SUFFIXES) or os.path.exists(value):
        return "file"
    return "hub"


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Exception types raised when hub weights are not reachable and not cached."""
    errors: list[type[BaseException]] = [OSError]
    for module_name in ("httpx2", "httpx", "requests"):
        module = sys.modules.get(module_name)
        if module_name == "requests" and module is not None:
            errors.append(module.exceptions.RequestException)
        elif module is not None and hasattr(module, "HTTPError"):
            errors.append(module.HTTPError)
    return tuple(errors)


def _create_from_hub(name: str, tag: str, kwargs: dict[str, Any]) -> tuple[nn.Module, WeightsInfo]:
    """Create `name` with the timm pretrained weights of `tag`."""
    arch, name_tag = timm.models.split_model_name_tag(name)
    tag_arch, weights_tag = timm.models.split_model_name_tag(tag)
    if tag_arch != arch or (name_tag and weights_tag and name_tag != weights_tag):
        raise ValueError(
            f"pretrained weights {tag!r} do not belong to model {name!r}; pass a tag of "
            f"{arch} (one of {timm.list_pretrained(arch + '.*')}) or a local checkpoint file"
        )
    full_tag = tag if weights_tag else name
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(full_tag)
    except RuntimeError:
        raise ValueError(
            f"unknown pretrained tag {full_tag!r}; the tags of {arch} are "
            f"{timm.list_pretrained(arch + '.*')}"
        ) from None

    try:
        model = _build(full_tag, kwargs, pretrained=True)
    except _hub_errors() as error:
        raise PretrainedWeightsError(_offline_message(full_tag, pretrained_cfg, error)) from None
    except RuntimeError as error:
        raise ValueError(
            f"the pretrained weights of {full_tag} do not fit the model built with {kwargs}: "
            f"{error}"
        ) from None
    resolved = f"{arch}.{model.pretrained_cfg.get('tag') or weights_tag}"
    return model, WeightsInfo(source="hub", tag=resolved)


def _offline_message(tag: str, pretrained_cfg: Any, error: BaseException) -> str:
    sources = []
    if pretrained_cfg is not None and pretrained_cfg.hf_hub_id:
        sources.append(f"https://huggingface.co/{pretrained_cfg.hf_hub_id}")
    if pretrained_cfg is not None and pretrained_cfg.url:
        sources.append(pretrained_cfg.url)
    # The first sentence of the hub's message is enough; the rest repeats generic advice.
    reason = (str(error).splitlines() or [""])[0].split(". ")[0][:200]
    return (
        f"the pretrained weights of {tag} could not be downloaded or found in the Hugging Face "
        f"cache ({type(error).__name__}: {reason}). Without network access, download the "
        f"weights on another machine ({' or '.join(sources) or 'see the timm model card'}) and "
        "pass the file, e.g. --pretrained /path/to/ViT-B_16.npz (.npz, .safetensors and .pth "
        "are accepted). With HF_HUB_OFFLINE=1 set, timm reads only the local cache."
    )


def sha256_file(path: str, chunk_size: int = 1 << 20) -> str:
    """Return the SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def head_modules(model: nn.Module) -> list[nn.Module]:
    """Return the classifier module(s) of a timm model, as given by `get_classifier()`.

    Distilled models return two classifiers. An `nn.Identity` head (num_classes=0) has no
    parameters and is still returned.
    """
    if not hasattr(model, "get_classifier"):
        raise ValueError(
            f"{type(model).__name__} has no get_classifier(): pass a timm model (for "
            "DistributedDataParallel, pass model.module)"
        )
    classifier = model.get_classifier()
    if isinstance(classifier, (tuple, list)):
        return list(classifier)
    return [classifier]


def head_parameter_names(model: nn.Module) -> set[str]:
    """Return the names of all parameters of the classifier head."""
    head_ids = {id(p) for module in head_modules(model) for p in module.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in head_ids}


def _head_prefixes(model: nn.Module) -> list[str]:
    heads = {id(module) for module in head_modules(model)}
    return [name + "." for name, module in model.named_modules() if id(module) in heads and name]


def load_checkpoint_file(model: nn.Module, path: str) -> WeightsInfo:
    """Load a local checkpoint into `model`, keeping the model's new head.

    Raises:
        ValueError: The file is missing, or its keys or shapes do not match the model. Only
            the head's keys may be missing, and no key may be unexpected.
    """
    if not os.path.isfile(path):
        raise ValueError(f"pretrained checkpoint file not found: {path}")
    path = os.path.abspath(path)
    digest = sha256_file(path)
    if path.lower().endswith(".npz"):
        _load_npz(model, path)
        missing: list[str] = []
    else:
        missing = _load_state_dict_file(model, path)
    return WeightsInfo(source="file", path=path, sha256=digest, missing_keys=missing)


def _load_npz(model: nn.Module, path: str) -> None:
    """Load an original Google ViT .npz checkpoint through timm's ViT loader."""
    if not hasattr(model, "load_pretrained"):
        raise ValueError(
            f".npz checkpoints are only supported for timm Vision Transformers, not "
            f"{type(model).__name__}: convert {path} to a .safetensors or .pth state dict"
        )
    head_names = head_parameter_names(model)
    head_state = {
        name: p.detach().clone() for name, p in model.named_parameters() if name in head_names
    }
    try:
        with torch.no_grad():
            model.load_pretrained(path)
    except KeyError as error:
        raise ValueError(
            f"checkpoint {path} has no entry {error}; is it a ViT checkpoint of the same "
            "architecture?"
        ) from None
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path} does not fit the model: {error}") from None
    # timm copies a pretrained head whose class count happens to match; the head stays new.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in head_state:
                p.copy_(head_state[name])


def _load_state_dict_file(model: nn.Module, path: str) -> list[str]:
    """Load a .safetensors or torch state dict; return the missing (head) keys."""
    state_dict = timm.models.load_state_dict(path, use_ema=False, weights_only=True)
    # Model families convert foreign layouts and resample position embeddings in their
    # module's `checkpoint_filter_fn`, which timm applies to its own pretrained weights too.
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)

    prefixes = _head_prefixes(model)
    dropped = [key for key in state_dict if key.startswith(tuple(prefixes))]
    for key in dropped:
        del state_dict[key]
    if dropped:
        logger.info("ignored the checkpoint's classifier head: %s", ", ".join(dropped))

    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path} does not fit the model: {error}") from None
    head_names = head_parameter_names(model)
    missing = [key for key in result.missing_keys if key not in head_names]
    problems = []
    if missing:
        problems.append(f"missing keys {_preview(missing)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {_preview(result.unexpected_keys)}")
    if problems:
        raise ValueError(
            f"checkpoint {path} does not match model {type(model).__name__}: "
            + "; ".join(problems)
            + ". Check that the checkpoint belongs to the same architecture and settings."
        )
    return sorted(key for key in result.missing_keys if key in head_names)


def _preview(keys: list[str], limit: int = 20) -> str:
    listed = ", ".join(keys[:limit])
    return f"[{listed}]" if len(keys) <= limit else f"[{listed}, ...] ({len(keys)} in all)"


def features(model: nn.Module, x: Tensor) -> Tensor:
    """Return the pooled pre-logits feature of `x`, the input of the classifier head."""
    return model.forward_head(model.forward_features(x), pre_logits=True)
