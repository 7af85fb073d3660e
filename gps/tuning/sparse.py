"""Sparse mask enforcement: gradients and optimizer state for the trainable entries only.

The trainable entries of each partially trained weight live in a compact float32
``nn.Parameter`` held by the engine (not registered on the model), next to their flat indices.
The weight itself is frozen (``requires_grad=False``) and keeps serving the forward pass, so a
forward costs what a plain layer costs. Modules with a partial weight get their ``forward``
replaced per instance by a custom autograd function whose backward returns the gradient of the
compact values instead of a full weight gradient. After ``optimizer.step()``, :meth:`after_step`
writes the compact values back into the weights.

Fully trainable tensors (head, biases, layer-scale) stay ordinary model parameters, and frozen
tensors get ``requires_grad=False``. The optimizer, an EMA and checkpoints therefore see only
the trainable entries.

Supported modules with a partial weight: ``nn.Linear`` and ``nn.Conv1d``, ``nn.Conv2d``,
``nn.Conv3d`` (including subclasses that keep the base class's ``forward``). Anything else is
rejected at construction, and the dense engine handles every module kind.

Gradient of the compact values of a linear layer, for an input ``x`` flattened to N rows and
the output gradient ``g``. Entry e at (row r, column c) needs ``sum_n g[n, r] * x[n, c]``, so
the forward saves only the input columns that some entry uses (or the whole input when those
are more than ``SUBSET_FRACTION`` of the columns). The backward then takes one of two paths:

- gather: gather the saved columns per entry and multiply-add them with ``g``, about
  ``GATHER_COST * entries`` multiply-add equivalents per input row;
- product: the dense product ``g^T @ x_saved`` followed by a gather of the entries, about
  ``out_features * saved_columns`` multiply-adds per input row.

The engine picks the cheaper estimate per layer at construction and logs the choice at DEBUG
level. With K selected entries per row the gather path wins for K up to about
``saved_columns / GATHER_COST``, for example K=1 on ViT-B/16. Convolutions always compute the
full weight gradient with ``torch.nn.grad.conv*d_weight`` and gather the entries from it.

Gradient checkpointing works with timm's default non-reentrant variant. The compact values are
not model parameters, so ``DistributedDataParallel`` does not synchronise their gradients:
:meth:`SparseEngine.compact_parameters` returns them for an explicit all-reduce.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gps.tuning.base import TrainableSet, split_decay

logger = logging.getLogger(__name__)

# Estimated cost of one multiply-add of the gather path, in units of one multiply-add of a
# dense matrix product. Measured on 2 CPU cores (torch 2.14, float32, ViT-B/16 layer shapes,
# batch 8): the ratio ranged from about 80 to 500. On accelerators it is an estimate: gathers
# are memory-bound there too, while matrix units are faster still.
GATHER_COST = 200

# An input is saved whole instead of as a copy of its selected columns when the selected
# columns are more than this fraction of all columns: the copy would save little memory.
SUBSET_FRACTION = 0.9

# Maximum elements of one temporary of the gather path (16 MiB of float32); longer inputs are
# processed in chunks. Many small chunks are slower: each op has a fixed cost, and more so
# when the CPU threads are contended.
CHUNK_ELEMENTS = 1 << 22

LINEAR_PATHS = ("auto", "gather", "product")

_CONV_FUNCTIONS = {1: (F.conv1d, torch.nn.grad.conv1d_input, torch.nn.grad.conv1d_weight),
                   2: (F.conv2d, torch.nn.grad.conv2d_input, torch.nn.grad.conv2d_weight),
                   3: (F.conv3d, torch.nn.grad.conv3d_input, torch.nn.grad.conv3d_weight)}
_SUPPORTED_FORWARDS = {nn.Linear.forward: "linear", nn.Conv1d.forward: "conv",
                       nn.Conv2d.forward: "conv", nn.Conv3d.forward: "conv"}


@dataclass
class CompactWeight:
    """The trainable entries of one partially trained weight and how to compute their gradient.

    ``index`` contains the flat indices of the entries in ascending order. For linear layers the
    forward saves the input columns ``saved_cols`` (all columns when None), and ``positions``
    maps each entry to its column within the saved input. ``per_row`` is K when every output
    row has exactly K entries (None otherwise), and ``path`` is "gather" or "product".
    """

    name: str
    module: nn.Module
    kind: str
    values: nn.Parameter
    index: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    saved_cols: torch.Tensor | None
    per_row: int | None
    path: str

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    def select_input(self, x2d: torch.Tensor) -> torch.Tensor:
        """Return the part of a flattened linear input that the backward needs."""
        if self.saved_cols is None:
            return x2d
        return x2d.index_select(1, self.saved_cols)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the compact values into the model's weight."""
        weight = self.weight
        values = self.values.detach().to(weight.dtype)
        if weight.is_contiguous():
            weight.view(-1).index_copy_(0, self.index, values)
        else:
            weight.index_put_(torch.unravel_index(self.index, weight.shape), values)

    @torch.no_grad()
    def read_back(self) -> None:
        """Copy the model's weight entries into the compact values."""
        self.values.copy_(self.weight.detach().reshape(-1).index_select(0, self.index))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Return the dtype a plain layer would compute in: the autocast dtype when active."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and x.is_floating_point():
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _gather_gradient(layer: CompactWeight, grad2d: torch.Tensor,
                     saved: torch.Tensor) -> torch.Tensor:
    """Return the compact gradient as per-entry dot products over the rows of the input.

    Entry e at (row r, column c) gets ``sum_n grad[n, r] * x[n, c]``. The rows are processed in
    chunks of at most ``CHUNK_ELEMENTS`` gathered values.
    """
    entries = layer.index.numel()
    out_features = grad2d.shape[1]
    chunk = max(1, CHUNK_ELEMENTS // max(entries, 1))
    total = None
    for start in range(0, grad2d.shape[0], chunk):
        columns = saved[start:start + chunk].index_select(1, layer.positions).float()
        grad = grad2d[start:start + chunk].float()
        if layer.per_row is not None:
            product = columns.view(-1, out_features, layer.per_row)
            product.mul_(grad.unsqueeze(2))
        else:
            product = columns.mul_(grad.index_select(1, layer.rows))
        partial = product.reshape(product.shape[0], -1).sum(0)
        total = partial if total is None else total.add_(partial)
    if total is None:
        return torch.zeros(entries, dtype=torch.float32, device=grad2d.device)
    return total


def _product_gradient(layer: CompactWeight, grad2d: torch.Tensor,
                      saved: torch.Tensor) -> torch.Tensor:
    """Return the compact gradient from the dense product ``grad^T @ x`` over the saved columns."""
    full = grad2d.t().mm(saved.to(grad2d.dtype))
    return full[layer.rows, layer.positions].float()


class _SparseLinearFunction(torch.autograd.Function):
    """``F.linear`` on the real weight whose backward returns the compact values' gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, values, layer):
        dtype = _compute_dtype(x)
        x_cast = x.to(dtype)
        output = F.linear(x_cast, weight.to(dtype), None if bias is None else bias.to(dtype))
        ctx.layer = layer
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        saved = None
        if ctx.needs_input_grad[3]:
            saved = layer.select_input(x_cast.reshape(-1, x.shape[-1]))
        ctx.save_for_backward(saved, weight)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        saved, weight = ctx.saved_tensors
        layer = ctx.layer
        grad2d = grad_output.reshape(-1, grad_output.shape[-1])
        grad_x = grad_bias = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = grad2d.mm(weight.to(grad2d.dtype)).view(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad2d.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        if ctx.needs_input_grad[3]:
            compute = _gather_gradient if layer.path == "gather" else _product_gradient
            grad_values = compute(layer, grad2d, saved)
        return grad_x, None, grad_bias, grad_values, None


def _conv_padding(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return the input, padded explicitly where needed, and the padding left for the conv.

    Non-zero padding modes and string padding ('same', 'valid') become an explicit ``F.pad``
    so that the weight gradient functions, which take integer padding only, apply.
    """
    dims = module.weight.ndim - 2
    if module.padding_mode != "zeros":
        pad = module._reversed_padding_repeated_twice
        return F.pad(x, pad, mode=module.padding_mode), (0,) * dims
    if not isinstance(module.padding, str):
        return x, tuple(module.padding)
    if module.padding == "valid":
        return x, (0,) * dims
    pad = []
    for size, dilation in zip(reversed(module.kernel_size), reversed(module.dilation),
                              strict=True):
        total = dilation * (size - 1)
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad), (0,) * dims


class _SparseConvFunction(torch.autograd.Function):
    """A convolution on the real weight whose backward returns the compact values' gradient.

    NOTE: the whole input is saved for the backward. Saving only the input channels that
    selected entries use would need less memory for small K (not implemented).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, values, layer, padding):
        conv, _, _ = _CONV_FUNCTIONS[weight.ndim - 2]
        module = layer.module
        dtype = _compute_dtype(x)
        x_cast = x.to(dtype)
        output = conv(x_cast, weight.to(dtype), None if bias is None else bias.to(dtype),
                      module.stride, padding, module.dilation, module.groups)
        ctx.layer, ctx.padding = layer, padding
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(x_cast if ctx.needs_input_grad[3] else None, weight)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        saved, weight = ctx.saved_tensors
        layer, module = ctx.layer, ctx.layer.module
        _, conv_input, conv_weight = _CONV_FUNCTIONS[weight.ndim - 2]
        options = (module.stride, ctx.padding, module.dilation, module.groups)
        grad_x = grad_bias = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_input(ctx.x_shape, weight.to(grad_output.dtype), grad_output, *options)
            grad_x = grad_x.to(ctx.x_dtype)
        if ctx.needs_input_grad[2]:
            dims = [0] + list(range(2, grad_output.ndim))
            grad_bias = grad_output.sum(dims, dtype=torch.float32).to(ctx.bias_dtype)
        if ctx.needs_input_grad[3]:
            full = conv_weight(saved, weight.shape, grad_output, *options)
            grad_values = full.reshape(-1).index_select(0, layer.index).float()
        return grad_x, None, grad_bias, grad_values, None, None


def _linear_forward(layer: CompactWeight):
    def forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and layer.values.requires_grad):
            return nn.Linear.forward(module, x)
        _check_device(layer, x)
        return _SparseLinearFunction.apply(x, module.weight, module.bias, layer.values, layer)

    return forward


def _conv_forward(layer: CompactWeight):
    base_forward = {1: nn.Conv1d.forward, 2: nn.Conv2d.forward, 3: nn.Conv3d.forward}

    def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and layer.values.requires_grad):
            return base_forward[module.weight.ndim - 2](module, x)
        _check_device(layer, x)
        x, padding = _conv_padding(module, x)
        return _SparseConvFunction.apply(x, module.weight, module.bias, layer.values, layer,
                                         padding)

    return forward


def _check_device(layer: CompactWeight, x: torch.Tensor) -> None:
    if layer.values.device != layer.weight.device:
        raise RuntimeError(f"the compact values of {layer.name!r} are on {layer.values.device} "
                           f"but the weight is on {layer.weight.device}; build the sparse engine "
                           "after moving the model to its device")
    if x.device != layer.weight.device:
        raise RuntimeError(f"the input of {layer.name!r} is on {x.device} but the weight is on "
                           f"{layer.weight.device}; move the input to the model's device")


def _owner_module(model: nn.Module, name: str, shared: set[str]) -> tuple[nn.Module, str]:
    """Return the module owning the partial parameter ``name`` and its kind ('linear'/'conv').

    Raises:
        ValueError: when the parameter is not the weight of a supported module.
    """
    module_name, _, attribute = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    kind = _SUPPORTED_FORWARDS.get(type(module).forward)
    if attribute != "weight" or kind is None or name in shared:
        where = f"{type(module).__name__}.{attribute}"
        if name in shared:
            where += " (shared with another module)"
        raise ValueError(f"parameter {name!r} ({where}) is partially trained, but the sparse "
                         "engine supports partial weights only for nn.Linear and nn.Conv1d/2d/3d "
                         "modules that call their own forward; use --engine dense for this "
                         "model or mask")
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
        raise ValueError(f"parameter {name!r} belongs to a transposed convolution, which the "
                         "sparse engine does not support; use --engine dense")
    return module, kind


def _shared_parameter_names(model: nn.Module) -> set[str]:
    """Return the names of parameters reachable under more than one name."""
    seen: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        seen.setdefault(id(param), []).append(name)
    return {name for names in seen.values() if len(names) > 1 for name in names}


def _choose_path(requested: str, entries: int, out_features: int, saved_columns: int) -> str:
    """Pick the cheaper way to get a linear layer's compact gradient.

    Per input row, the gather path costs about ``GATHER_COST * entries`` and the dense product
    ``out_features * saved_columns`` multiply-adds (both scale with the number of input rows).
    """
    if requested != "auto":
        return requested
    gather = GATHER_COST * entries
    product = out_features * saved_columns
    return "gather" if gather < product else "product"


def _build_layer(name: str, module: nn.Module, kind: str, index: torch.Tensor,
                 linear_path: str) -> CompactWeight:
    """Create the compact values and the gradient plan of one partially trained weight."""
    weight = module.weight
    device = weight.device
    index = index.to(device)
    out_features = weight.shape[0]
    columns = weight[0].numel()
    rows, cols = index // columns, index % columns
    counts = torch.bincount(rows, minlength=out_features)
    per_row = int(counts[0]) if bool((counts == counts[0]).all()) else None
    values = nn.Parameter(weight.detach().reshape(-1).index_select(0, index).float())
    saved_cols, positions, path = None, cols, "product"
    if kind == "linear":
        unique_cols, inverse = torch.unique(cols, return_inverse=True)
        if unique_cols.numel() <= SUBSET_FRACTION * columns:
            saved_cols, positions = unique_cols, inverse
        saved_count = columns if saved_cols is None else saved_cols.numel()
        path = _choose_path(linear_path, index.numel(), out_features, saved_count)
        logger.debug("%s: linear %dx%d, %d trainable entries (%s per row), saves %d of %d input "
                     "columns, %s path", name, out_features, columns, index.numel(),
                     per_row if per_row is not None else "varying", saved_count, columns, path)
    else:
        logger.debug("%s: %dd convolution %s, %d trainable entries, product path (full weight "
                     "gradient, then gather)", name, weight.ndim - 2, tuple(weight.shape),
                     index.numel())
    return CompactWeight(name=name, module=module, kind=kind, values=values, index=index,
                         rows=rows, positions=positions, saved_cols=saved_cols, per_row=per_row,
                         path=path)


def _warn_if_reentrant_checkpointing() -> None:
    """Warn when timm is set to reentrant gradient checkpointing.

    Reentrant checkpointing returns no gradient for a checkpointed block whose input does not
    require grad, which is the case for the first block when the patch embedding is frozen.
    timm 1.0.31 uses the non-reentrant variant unless ``TIMM_REENTRANT_CKPT`` is set.
    """
    try:
        from timm.layers import use_reentrant_ckpt
    except ImportError:
        return
    if use_reentrant_ckpt():
        logger.warning("timm is set to reentrant gradient checkpointing (TIMM_REENTRANT_CKPT): "
                       "blocks whose input does not require grad get no gradient; unset it to "
                       "use the non-reentrant variant")


class SparseEngine:
    """Train the selected entries of partial weights as compact parameters outside the model."""

    name = "sparse"

    def __init__(self, model: nn.Module, mask: dict[str, torch.Tensor],
                 linear_path: str = "auto"):
        """Freeze the model's partial weights and route their gradients to compact values.

        Args:
            model: the model, already on its training device.
            mask: parameter name to boolean tensor of the parameter's shape, True where trained.
            linear_path: "auto" picks per linear layer by estimated cost; "gather" or
                "product" forces one way of computing the compact gradient for every layer.

        Raises:
            ValueError: for an unknown ``linear_path``, a mask that does not match the model,
                or a partial weight in a module kind the engine does not support.
        """
        if linear_path not in LINEAR_PATHS:
            raise ValueError(f"linear_path {linear_path!r} is not one of {LINEAR_PATHS}")
        self.model = model
        self.trainable = TrainableSet(model, mask)
        shared = _shared_parameter_names(model)
        owners = {name: _owner_module(model, name, shared)
                  for name, kind in self.trainable.kind.items() if kind == "partial"}
        for name, param in model.named_parameters():
            param.requires_grad_(self.trainable.kind[name] == "all")
        self.layers: dict[str, CompactWeight] = {}
        for name, (module, kind) in owners.items():
            layer = _build_layer(name, module, kind, self.trainable.indices[name], linear_path)
            make_forward = _linear_forward if kind == "linear" else _conv_forward
            module.forward = types.MethodType(make_forward(layer), module)
            self.layers[name] = layer
        self._checked_gradients = False
        _warn_if_reentrant_checkpointing()
        paths = [layer.path for layer in self.layers.values()]
        logger.info("sparse engine: %d partial weights (%d trainable entries), %d on the gather "
                    "path, %d on the product path", len(self.layers),
                    sum(layer.index.numel() for layer in self.layers.values()),
                    paths.count("gather"), paths.count("product"))

    def compact_parameters(self) -> list[nn.Parameter]:
        """Return the compact values.

        DistributedDataParallel does not synchronise their gradients, because they are not
        model parameters.
        """
        return [layer.values for layer in self.layers.values()]

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Return optimizer parameter groups: model parameters by decay, then the compact values.

        Every compact value is trainable, so the optimizer's own (coupled or decoupled) weight
        decay touches the trainable entries only.
        """
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = split_decay(named, weight_decay)
        compact = self.compact_parameters()
        if compact:
            groups.append({"params": compact, "weight_decay": weight_decay})
        return [g for g in groups if g["params"]]

    def apply_masked_decay(self, optimizer: torch.optim.Optimizer, weight_decay: float,
                           decoupled: bool) -> None:
        """Do nothing: the optimizer decays the compact values, which are all trainable."""

    def after_step(self) -> None:
        """Write the updated compact values into the model's weights."""
        if not self._checked_gradients:
            self._warn_missing_gradients()
        for layer in self.layers.values():
            layer.write_back()

    def _warn_missing_gradients(self) -> None:
        """Warn once about compact values that got no gradient while others did.

        That happens when a model uses a module's weight without calling the module (for
        example ``F.linear(x, self.qkv.weight, ...)``), which bypasses the replaced forward.
        """
        missing = [name for name, layer in self.layers.items() if layer.values.grad is None]
        if len(missing) == len(self.layers):
            return
        self._checked_gradients = True
        if not missing:
            return
        logger.warning("%d partial weights got no gradient in the first step (%s): the model "
                       "probably uses them without calling their module, so the sparse engine "
                       "cannot train them; use --engine dense", len(missing),
                       ", ".join(missing[:5]))

    def after_load(self) -> None:
        """Read the compact values back from the weights (where a checkpoint was written)."""
        for layer in self.layers.values():
            layer.read_back()

    def trainable_values(self) -> dict[str, torch.Tensor]:
        """Return the trained values: whole tensors, or the flat selected entries of partial ones.

        The format matches the dense engine's, so checkpoints, EMA and deltas are
        interchangeable. Partial entries come from the compact values (float32).
        """
        values = {}
        for name, param in self.model.named_parameters():
            kind = self.trainable.kind[name]
            if kind == "all":
                values[name] = param.detach().clone()
            elif kind == "partial":
                values[name] = self.layers[name].values.detach().clone()
        return values

    def remove(self) -> None:
        """Write the compact values into the weights and restore the modules' own forward.

        The ``requires_grad`` flags stay as the engine set them.
        """
        for layer in self.layers.values():
            layer.write_back()
            layer.module.__dict__.pop("forward", None)
        self.layers.clear()
