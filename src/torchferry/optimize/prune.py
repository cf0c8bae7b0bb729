"""Pruning: unstructured magnitude pruning (zeros, same shapes) and structured channel pruning
(channels really removed; which ones may go is found on a ``torch.fx`` trace of the model).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torch.nn.utils import prune

from torchferry.optimize.errors import Skipped

log = logging.getLogger(__name__)

_WEIGHTED = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)  # fmt: skip
#: Ops that act on each element (or each channel alone) and keep the layout, for any rank.
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.AlphaDropout,
)  # fmt: skip
#: Ops that keep the channel dimension of an ``(N, C, H, W)`` tensor, channel by channel.
_SPATIAL_MODULES = (
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout2d,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, F.dropout, F.sigmoid, F.tanh,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh,
}  # fmt: skip
_SPATIAL_FUNCTIONS = {
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout2d,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous"}

#: "spatial": (N, C, H, W) with channels on dim 1; "features": channels on the last dim;
#: "flat": a flattened spatial tensor, each channel a block of H*W features.
_State = Literal["spatial", "features", "flat"]


def prune_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """L1 magnitude pruning of every Conv and Linear weight, on a deep copy of ``model``.

    In each layer the ``amount`` (0..1) of weights with the smallest magnitude are set to zero
    (``torch.nn.utils.prune.l1_unstructured``, then ``prune.remove``): the result is a plain
    module with the same class, shapes and state-dict keys, no pruning hooks or masks. Biases
    are untouched.

    **No speed-up with dense kernels**: the tensors keep their shapes and every multiply by
    zero is still done, so latency and FLOPs are unchanged (and ``weights.safetensors`` keeps
    its size). Only sparse kernels or compression (zip, zstd) of the weights benefit. For a
    faster model use :func:`prune_channels`. Raises :class:`Skipped` when the model has no
    Conv or Linear weight, ``ValueError`` when ``amount`` is outside 0..1.
    """
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be between 0 and 1, got {amount}")
    pruned = copy.deepcopy(model)
    layers = [
        m
        for m in pruned.modules()
        if isinstance(m, _WEIGHTED) and isinstance(getattr(m, "weight", None), nn.Parameter)
    ]
    if not layers:
        raise Skipped("the model has no Conv or Linear weights to prune")
    for layer in layers:
        prune.l1_unstructured(layer, "weight", amount=amount)
        prune.remove(layer, "weight")
    return pruned


@dataclass
class _Group:
    """A layer whose output channels can go, with what must shrink along with them."""

    producer: str
    norms: list[str] = field(default_factory=list)
    #: consumer path -> features per channel in its input (1, or H*W after a flatten)
    consumers: dict[str, int] = field(default_factory=dict)


def _is_flatten(user: fx.Node, module: nn.Module | None) -> bool:
    """A flatten of ``(N, C, H, W)`` into ``(N, C*H*W)`` (checked on the traced shapes)."""
    source = user.args[0] if user.args else None
    before = source.meta.get("tensor_meta") if isinstance(source, fx.Node) else None
    after = user.meta.get("tensor_meta")
    if before is None or after is None or len(before.shape) != 4 or len(after.shape) != 2:
        return False
    if after.shape[0] != before.shape[0]:
        return False
    if module is not None:
        return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
    if user.op == "call_function" and user.target is torch.flatten:
        return True
    if user.op == "call_method" and user.target == "flatten":
        return True
    # x.view(x.size(0), -1) / x.reshape(...): no channel count written into the code
    literals = [a for a in user.args[1:] if not isinstance(a, fx.Node)]
    return user.op == "call_method" and user.target in ("view", "reshape") and literals == [-1]


def _other_inputs(user: fx.Node, source: fx.Node) -> bool:
    if not user.args or user.args[0] is not source:
        return True
    nodes: list[fx.Node] = []
    fx.node.map_arg((user.args[1:], user.kwargs), nodes.append)
    if user.op == "call_method" and user.target in ("view", "reshape"):
        return False  # the size node of x.view(x.size(0), -1); _is_flatten checks the rest
    return bool(nodes)


def _rank(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None else None


def _step(
    user: fx.Node, source: fx.Node, state: _State, modules: dict[str, nn.Module]
) -> tuple[str, _State, int] | None:
    """What ``user`` of ``source`` (in ``state``) does to its channels: ("consumer" | "norm" |
    "pass" | "ignore", the state after it, features per channel gained); None blocks pruning."""
    if user.op == "call_method" and user.target == "size" and user.args[1:] == (0,):
        return ("ignore", state, 1)  # the batch size, as in x.view(x.size(0), -1)
    if user.op not in ("call_module", "call_function", "call_method"):
        return None  # the output, a placeholder...
    if _other_inputs(user, source):
        return None  # an add, a concat, a mul: channels meet another tensor
    module = modules[str(user.target)] if user.op == "call_module" else None
    if state == "spatial" and _is_flatten(user, module):
        shape = source.meta["tensor_meta"].shape
        return ("pass", "flat", int(shape[2] * shape[3]))
    if module is not None:
        if isinstance(module, nn.Conv2d):  # _group_for checks a Linear's in_features
            return ("consumer", state, 1) if state == "spatial" and module.groups == 1 else None
        if isinstance(module, nn.Linear):
            return ("consumer", state, 1) if state != "spatial" else None
        norm2d = isinstance(module, nn.BatchNorm2d) and state == "spatial"
        norm1d = isinstance(module, nn.BatchNorm1d) and state == "features" and _rank(user) == 2
        if norm2d or norm1d:
            return ("norm", state, 1)
        passes = (
            isinstance(module, _ELEMENTWISE_MODULES)
            or (isinstance(module, nn.PReLU) and module.num_parameters == 1)
            or (isinstance(module, _SPATIAL_MODULES) and state == "spatial")
        )
    elif user.op == "call_method":
        passes = user.target in _ELEMENTWISE_METHODS
    else:
        passes = user.target in _ELEMENTWISE_FUNCTIONS or (
            user.target in _SPATIAL_FUNCTIONS and state == "spatial"
        )
    return ("pass", state, 1) if passes else None


def _group_for(node: fx.Node, modules: dict[str, nn.Module]) -> _Group | None:
    """Follow the output of a Conv2d/Linear through channel-wise ops to its consumers."""
    producer = modules[str(node.target)]
    conv = isinstance(producer, nn.Conv2d)
    if isinstance(producer, nn.Conv2d):
        channels = producer.out_channels
    elif isinstance(producer, nn.Linear):
        channels = producer.out_features
    else:  # pragma: no cover - groups start only at Conv2d and Linear
        return None
    group = _Group(str(node.target))
    stack: list[tuple[fx.Node, _State, int]] = [(node, "spatial" if conv else "features", 1)]
    while stack:
        source, state, block = stack.pop()
        for user in source.users:
            step = _step(user, source, state, modules)
            if step is None:
                return None
            kind, new_state, factor = step
            if kind == "consumer":
                consumer = modules[str(user.target)]
                if isinstance(consumer, nn.Linear) and consumer.in_features != channels * block:
                    return None
                group.consumers[str(user.target)] = block
            elif kind != "ignore":
                if kind == "norm":
                    group.norms.append(str(user.target))
                stack.append((user, new_state, block * factor))
    return group if group.consumers else None


def _find_groups(traced: fx.GraphModule) -> list[_Group]:
    modules = dict(traced.named_modules())
    calls = Counter(str(n.target) for n in traced.graph.nodes if n.op == "call_module")
    attrs = [str(n.target) for n in traced.graph.nodes if n.op == "get_attr"]

    def once(path: str) -> bool:  # called once, and no parameter read around the call
        return calls[path] == 1 and not any(a.startswith(f"{path}.") for a in attrs)

    groups = []
    for node in traced.graph.nodes:
        module = modules[str(node.target)] if node.op == "call_module" else None
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            group = _group_for(node, modules)
            if group and all(once(p) for p in (group.producer, *group.norms, *group.consumers)):
                groups.append(group)
    return groups


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):  # pragma: no cover - Conv2d and Linear have one
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def _select(module: nn.Module, names: tuple[str, ...], dim: int, index: torch.Tensor) -> None:
    for name in names:
        tensor = getattr(module, name, None)
        if tensor is None:
            continue
        smaller = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
        if isinstance(tensor, nn.Parameter):
            smaller = nn.Parameter(smaller, requires_grad=tensor.requires_grad)
        setattr(module, name, smaller)


def _shapes(result: Any) -> list[tuple[int, ...]]:
    if isinstance(result, torch.Tensor):
        return [tuple(result.shape)]
    values = result.values() if isinstance(result, dict) else result
    if isinstance(values, (list, tuple)) or isinstance(result, dict):
        return [s for v in values for s in _shapes(v)]
    return []


def prune_channels(
    model: nn.Module,
    amount: float,
    example_inputs: tuple[torch.Tensor, ...],
    finetune: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Structured pruning that removes output channels for real, on a deep copy of ``model``.

    In every prunable Conv2d (``groups=1``) and Linear layer the ``amount`` (0 <= amount < 1;
    rounded, at least one channel kept) of output channels with the smallest L1 filter norm
    are removed, with the matching BatchNorm entries and the matching input channels (or
    input features) of the layers that consume them. The model gets fewer parameters, smaller
    activations and fewer FLOPs, hence faster with ordinary dense kernels. The result has the
    model's own class (methods such as ``logits`` keep working) and its training flag.

    A layer is prunable when ``torch.fx.symbolic_trace`` shows that its output reaches only
    Conv2d (``groups=1``) or Linear consumers, through channel-wise ops: BatchNorm, elementwise
    activations, dropout, 2-D pooling, and a flatten of ``(N, C, H, W)`` before a Linear (one
    block of ``H*W`` features per channel). Layers whose output meets a residual add, a
    concat, any other tensor op, or the model's output are left whole (in a ResNet only the
    inner conv of each block shrinks), and so are modules called more than once.

    ``example_inputs`` are run through the model to read shapes, and again to check that the
    pruned model gives outputs of the same shapes. Then ``finetune(pruned)`` is called, if
    given, to train the pruned model in place (accuracy usually drops without it).

    Limits: only Conv2d and Linear are pruned (grouped and depthwise convs, Conv1d/3d and
    transposed convs stay whole); a model ``torch.fx`` cannot trace (data-dependent control
    flow) raises :class:`Skipped`, and so does one with nothing prunable or one whose forward
    hard-codes channel counts (``x.view(-1, 1024)``), found when the pruned model fails on
    ``example_inputs``. The analysis follows ``forward`` only.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    pruned = copy.deepcopy(model)
    training = pruned.training
    pruned.eval()
    try:
        traced = fx.symbolic_trace(pruned)
    except Exception as exc:
        raise Skipped(f"torch.fx cannot trace the model: {type(exc).__name__}: {exc}") from exc
    with torch.no_grad():
        ShapeProp(traced).propagate(*example_inputs)
        expected = _shapes(pruned(*example_inputs))
    groups = _find_groups(traced)
    if not groups:
        raise Skipped("no layer's output channels can be removed (all feed adds, concats, outputs)")

    # choose every keep set from the original weights, then shrink
    keeps: dict[str, torch.Tensor] = {}
    for group in groups:
        weight = _weight(pruned.get_submodule(group.producer)).detach()
        total = weight.shape[0]
        kept = max(1, total - round(amount * total))
        norms = weight.abs().reshape(total, -1).sum(dim=1)
        keeps[group.producer] = torch.topk(norms, kept).indices.sort().values
    for group in groups:
        keep = keeps[group.producer]
        producer = pruned.get_submodule(group.producer)
        _select(producer, ("weight", "bias"), 0, keep)
        if isinstance(producer, nn.Conv2d):
            producer.out_channels = len(keep)
        elif isinstance(producer, nn.Linear):
            producer.out_features = len(keep)
        for path in group.norms:
            norm = pruned.get_submodule(path)
            _select(norm, ("weight", "bias", "running_mean", "running_var"), 0, keep)
            if isinstance(norm, nn.BatchNorm1d | nn.BatchNorm2d):
                norm.num_features = len(keep)
        for path, block in group.consumers.items():
            consumer = pruned.get_submodule(path)
            if isinstance(consumer, nn.Conv2d):
                _select(consumer, ("weight",), 1, keep)
                consumer.in_channels = len(keep)
            elif isinstance(consumer, nn.Linear):
                index = (keep[:, None] * block + torch.arange(block, device=keep.device)).reshape(
                    -1
                )
                _select(consumer, ("weight",), 1, index)
                consumer.in_features = len(index)
        log.info("pruned %s: kept %d channels", group.producer, len(keep))
    try:
        with torch.no_grad():
            got = _shapes(pruned(*example_inputs))
    except Exception as exc:
        raise Skipped(f"the pruned model fails on the example inputs: {exc}") from exc
    if got != expected:
        raise Skipped(f"the pruned model's output shapes changed: {expected} -> {got}")
    if finetune is not None:
        finetune(pruned)
    return pruned.train(training)
