"""The selection as data: mask files, validation against a model, and trainable-parameter counts.

A mask maps every parameter name of a model to a boolean tensor of the parameter's shape, True
where the entry is trained. On disk (`torch.save` of plain Python containers and tensors) each
parameter is stored as 'all', 'none', or the int32 flat indices of its True entries. A GPS mask
of ViT-B/16 takes 0.36 MB at K=1 and 2.7 MB at K=8 (4 bytes per selected weight).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import timm
import torch
from torch import Tensor, nn

from gps.checkpoint import atomic_save
from gps.selection import (
    ROLE_BIAS,
    ROLE_HEAD,
    ROLE_LAYER_SCALE,
    ROLE_NORM,
    ROLE_OTHER,
    ROLE_WEIGHT,
    parameter_roles,
)

MASK_FORMAT = "gps-mask"
MASK_FORMAT_VERSION = 1
ROLE_ORDER = (ROLE_WEIGHT, ROLE_BIAS, ROLE_LAYER_SCALE, ROLE_HEAD, ROLE_NORM, ROLE_OTHER)
ROLE_LABELS = {
    ROLE_WEIGHT: "selected weights",
    ROLE_BIAS: "biases",
    ROLE_LAYER_SCALE: "layer scale (and other 1-D)",
    ROLE_HEAD: "head",
    ROLE_NORM: "normalisation",
    ROLE_OTHER: "other (embeddings, tokens)",
}


def _shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def check_shapes(
    found: Mapping[str, tuple[int, ...]], model: nn.Module, source: str
) -> None:
    """Raise ValueError naming the first difference between `found` and the model's parameters.

    Parameters are compared in model order, then names that only `found` has are reported.
    """
    expected = _shapes_of(model)
    for name, shape in expected.items():
        if name not in found:
            raise ValueError(
                f"{source} does not match the model: parameter {name!r} is missing from it"
            )
        if tuple(found[name]) != shape:
            raise ValueError(
                f"{source} does not match the model: parameter {name!r} has shape "
                f"{list(found[name])} there but {list(shape)} in the model"
            )
    for name in found:
        if name not in expected:
            raise ValueError(
                f"{source} does not match the model: it has parameter {name!r}, which the "
                "model does not have"
            )


def _encode(values: Tensor) -> str | Tensor:
    flat = values.reshape(-1).to(torch.bool)
    if bool(flat.all()):
        return "all"
    if not bool(flat.any()):
        return "none"
    index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
    return torch.nonzero(flat).reshape(-1).to(index_dtype)


def _decode(name: str, shape: tuple[int, ...], entry: Any, path: str) -> Tensor:
    numel = 1
    for size in shape:
        numel *= size
    if isinstance(entry, str) and entry in ("all", "none"):
        return torch.full(shape, entry == "all", dtype=torch.bool)
    if not isinstance(entry, Tensor) or entry.dim() != 1:
        raise ValueError(f"mask file {path} has an invalid entry for {name!r}")
    if entry.numel() and (int(entry.min()) < 0 or int(entry.max()) >= numel):
        raise ValueError(f"mask file {path} has indices of {name!r} outside [0, {numel})")
    dense = torch.zeros(numel, dtype=torch.bool)
    dense[entry.long()] = True
    return dense.reshape(shape)


def save_mask(
    path: str | os.PathLike, mask: Mapping[str, Tensor], model: nn.Module, meta: Mapping[str, Any]
) -> None:
    """Write a mask file atomically (a temporary file in the same folder, then os.replace).

    Args:
        path: Output file.
        mask: Boolean tensor per parameter name; must cover exactly the model's parameters.
        model: The model the mask belongs to.
        meta: JSON-serialisable facts to store, e.g. architecture, k, loss, dataset, images,
            seed. The architecture defaults to the model's timm name; the torch and timm
            versions, creation time and trainable count are added.
    """
    check_shapes({name: tuple(t.shape) for name, t in mask.items()}, model, "the mask")
    names = list(_shapes_of(model))
    stored_meta = dict(meta)
    stored_meta.setdefault("architecture", _architecture(model))
    stored_meta.update(
        torch_version=torch.__version__,
        timm_version=timm.__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        num_params=sum(mask[name].numel() for name in names),
        num_trainable=sum(int(mask[name].sum()) for name in names),
    )
    try:
        # The JSON round trip also turns str subclasses (torch.__version__) into plain str,
        # which torch.load(weights_only=True) requires.
        stored_meta = json.loads(json.dumps(stored_meta))
    except TypeError as error:
        raise ValueError(f"mask metadata must be JSON-serialisable: {error}") from None

    payload = {
        "format": MASK_FORMAT,
        "version": MASK_FORMAT_VERSION,
        "meta": stored_meta,
        "names": names,
        "shapes": [list(mask[name].shape) for name in names],
        "entries": [_encode(mask[name]) for name in names],
    }
    atomic_save(payload, path)


def _architecture(model: nn.Module) -> str:
    config = getattr(model, "pretrained_cfg", None) or {}
    return str(config.get("architecture") or type(model).__name__)


def _read(path: str | os.PathLike) -> dict[str, Any]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"mask file not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MASK_FORMAT:
        raise ValueError(f"{path} is not a GPS mask file (written by gps.mask.save_mask)")
    if payload.get("version") != MASK_FORMAT_VERSION:
        raise ValueError(
            f"mask file {path} has format version {payload.get('version')}; this code reads "
            f"version {MASK_FORMAT_VERSION}"
        )
    lengths = {len(payload.get(key, ())) for key in ("names", "shapes", "entries")}
    if len(lengths) != 1:
        raise ValueError(f"mask file {path} is damaged: names, shapes and entries differ in length")
    return payload


def load_mask(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, Tensor]:
    """Read a mask file as dense boolean tensors, True where the entry is trained.

    Args:
        path: A file written by `save_mask`.
        model: If given, the stored names and shapes must equal the model's parameters.

    Raises:
        ValueError: Missing or invalid file, or (with a model) the first name or shape that
            differs.
    """
    payload = _read(path)
    shapes = {name: tuple(shape) for name, shape in zip(payload["names"], payload["shapes"], strict=True)}
    if model is not None:
        check_shapes(shapes, model, f"mask file {os.fspath(path)}")
    return {
        name: _decode(name, shapes[name], entry, os.fspath(path))
        for name, entry in zip(payload["names"], payload["entries"], strict=True)
    }


def load_mask_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Return the metadata stored in a mask file."""
    return dict(_read(path)["meta"])


def _module_of_parameters(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    names = {id(p): name for name, p in model.named_parameters()}
    owners: dict[str, tuple[str, nn.Module]] = {}
    for module_name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(names[id(param)], (module_name, module))
    return owners


def _layer_type_key(param_name: str, module_name: str, module: nn.Module) -> str:
    path = re.sub(r"(^|\.)\d+(?=\.|$)", "", module_name).strip(".")
    return f"{path or param_name} [{type(module).__name__}]"


def _block_key(param_name: str) -> str:
    parts = param_name.split(".")
    if len(parts) > 2 and parts[1].isdigit():
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def mask_summary(model: nn.Module, mask: Mapping[str, Tensor]) -> dict[str, Any]:
    """Count trainable entries by role, layer type and block; JSON-serialisable.

    Layer types and blocks are grouped by module path for reporting only. Trainable counts
    follow the accounting of the GPS paper (Zhang et al., CVPR 2024): selected weights +
    biases + layer scale + head. `trainable_pct` is relative to all parameters and
    `trainable_without_head_pct` to the parameters outside the head.
    """
    check_shapes({name: tuple(t.shape) for name, t in mask.items()}, model, "the mask")
    roles = parameter_roles(model)
    owners = _module_of_parameters(model)
    by_role = {role: {"trainable": 0, "total": 0} for role in ROLE_ORDER}
    layer_types: dict[str, dict[str, Any]] = {}
    blocks: dict[str, dict[str, int]] = {}
    row_counts: list[Tensor] = []
    for name, p in model.named_parameters():
        selected = mask[name].to(torch.bool)
        trainable, total = int(selected.sum()), p.numel()
        module_name, module = owners[name]
        for group in (
            by_role[roles[name]],
            layer_types.setdefault(
                _layer_type_key(name, module_name, module),
                {"module": type(module).__name__, "trainable": 0, "total": 0,
                 "selected_weights": 0, "rows": 0},
            ),
            blocks.setdefault(_block_key(name), {"trainable": 0, "total": 0}),
        ):
            group["trainable"] += trainable
            group["total"] += total
        if roles[name] == ROLE_WEIGHT:
            row_counts.append(selected.reshape(p.shape[0], -1).sum(dim=1))
            layer_type = layer_types[_layer_type_key(name, module_name, module)]
            layer_type["selected_weights"] += trainable
            layer_type["rows"] += p.shape[0]
    return _totals(by_role, layer_types, blocks, row_counts)


def _totals(
    by_role: dict[str, dict[str, int]],
    layer_types: dict[str, dict[str, Any]],
    blocks: dict[str, dict[str, int]],
    row_counts: list[Tensor],
) -> dict[str, Any]:
    total = sum(group["total"] for group in by_role.values())
    trainable = sum(group["trainable"] for group in by_role.values())
    head, head_total = by_role[ROLE_HEAD]["trainable"], by_role[ROLE_HEAD]["total"]
    rows = torch.cat(row_counts) if row_counts else torch.zeros(0, dtype=torch.long)
    return {
        "total_params": total,
        "head_params": head_total,
        "backbone_params": total - head_total,
        "trainable": trainable,
        "trainable_pct": _percent(trainable, total),
        "trainable_without_head": trainable - head,
        "trainable_without_head_pct": _percent(trainable - head, total - head_total),
        "selected_weights": by_role[ROLE_WEIGHT]["trainable"],
        "biases": by_role[ROLE_BIAS]["trainable"],
        "layer_scale": by_role[ROLE_LAYER_SCALE]["trainable"],
        "head": head,
        "rows": {
            "count": int(rows.numel()),
            "min_selected": int(rows.min()) if rows.numel() else 0,
            "max_selected": int(rows.max()) if rows.numel() else 0,
        },
        "roles": by_role,
        "layer_types": layer_types,
        "blocks": blocks,
    }


def _table(
    title: str, groups: Mapping[str, Mapping[str, Any]], label: str, with_rows: bool = False
) -> list[str]:
    width = max([len(label)] + [len(key) for key in groups])
    header = f"  {label:<{width}}  {'trainable':>12}  {'total':>12}  {'%':>7}"
    if with_rows:
        header += f"  {'selected weights':>16}  {'rows':>8}"
    lines = [title, header]
    for key, group in groups.items():
        share = _percent(group["trainable"], group["total"])
        line = f"  {key:<{width}}  {group['trainable']:>12,}  {group['total']:>12,}  {share:>7.3f}"
        if with_rows and group["rows"]:
            line += f"  {group['selected_weights']:>16,}  {group['rows']:>8,}"
        lines.append(line)
    return lines


def format_summary(summary: Mapping[str, Any]) -> str:
    """Format a `mask_summary` result as a plain-text table."""
    roles = {ROLE_LABELS[role]: group for role, group in summary["roles"].items()}
    rows = summary["rows"]
    lines = _table("Trainable parameters by role", roles, "role")
    lines += [
        "",
        f"  total with head:    {summary['trainable']:>12,} of {summary['total_params']:,} "
        f"({summary['trainable_pct']:.3f}%)",
        f"  total without head: {summary['trainable_without_head']:>12,} of "
        f"{summary['backbone_params']:,} ({summary['trainable_without_head_pct']:.3f}%)",
        f"  selected entries per row of {rows['count']:,} weight rows: "
        f"min {rows['min_selected']}, max {rows['max_selected']}",
        "",
    ]
    lines += _table("By layer type", summary["layer_types"], "layer [module]", with_rows=True)
    lines.append("")
    lines += _table("By block", summary["blocks"], "block")
    return "\n".join(lines)
