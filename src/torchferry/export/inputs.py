"""Example inputs: naming, dtypes, the batch dimension, and random inputs matching a signature."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from torchferry.errors import ExportError
from torchferry.signature import TensorSpec

#: torch dtype -> V2 datatype name (bfloat16 and complex types have no V2 datatype here).
TORCH_TO_V2: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.uint16: "UINT16",
    torch.uint32: "UINT32",
    torch.uint64: "UINT64",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
}
V2_TO_TORCH: dict[str, torch.dtype] = {v: k for k, v in TORCH_TO_V2.items()}

#: Random integer inputs are drawn from ``[0, INT_HIGH)``.
INT_HIGH = 10

ExampleInputs = (
    torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor] | dict[str, torch.Tensor]
)


def v2_datatype(dtype: torch.dtype, what: str) -> str:
    """The V2 datatype of a torch dtype; ``what`` names the tensor in the error message."""
    try:
        return TORCH_TO_V2[dtype]
    except KeyError:
        raise ExportError(
            f"{what} has dtype {dtype}, which has no V2 datatype; "
            f"supported: {', '.join(str(d) for d in TORCH_TO_V2)}"
        ) from None


def torch_dtype(datatype: str, what: str) -> torch.dtype:
    try:
        return V2_TO_TORCH[datatype]
    except KeyError:
        raise ExportError(
            f"{what} has datatype {datatype}, which cannot be a torch tensor"
        ) from None


def forward_parameter_names(model: nn.Module) -> list[str]:
    """Names of ``model.forward``'s positional parameters (without ``self``)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def normalize_inputs(
    model: nn.Module, example_inputs: ExampleInputs, input_names: Sequence[str] | None
) -> tuple[list[str], tuple[torch.Tensor, ...]]:
    """Return the input names and the example tensors in ``forward``'s positional order.

    A dict's keys must be ``forward`` parameter names; they are the input names. Otherwise
    names default to ``forward``'s parameter names (``input_N`` beyond them).
    """
    params = forward_parameter_names(model)
    if isinstance(example_inputs, Mapping):
        keys = list(example_inputs)
        unknown = [k for k in keys if k not in params]
        if unknown:
            raise ExportError(
                f"example input {unknown[0]!r} is not a parameter of forward(); "
                f"forward takes {params}"
            )
        keys.sort(key=params.index)
        if keys != params[: len(keys)]:
            raise ExportError(
                f"example inputs {keys} must be the leading parameters of forward() {params}"
            )
        if input_names is not None and list(input_names) != keys:
            raise ExportError(
                f"input_names {list(input_names)} differ from the example inputs' keys {keys}"
            )
        names, tensors = keys, tuple(example_inputs[k] for k in keys)
    else:
        if isinstance(example_inputs, torch.Tensor):
            tensors = (example_inputs,)
        else:
            tensors = tuple(example_inputs)
        if input_names is not None:
            names = list(input_names)
            if len(names) != len(tensors):
                raise ExportError(
                    f"{len(names)} input names {names} for {len(tensors)} example inputs"
                )
        else:
            names = [params[i] if i < len(params) else f"input_{i}" for i in range(len(tensors))]
    if not tensors:
        raise ExportError("the model needs at least one example input")
    for name, tensor in zip(names, tensors, strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise ExportError(f"example input {name!r} is a {type(tensor).__name__}, not a tensor")
    if len(set(names)) != len(names):
        raise ExportError(f"input names {names} are not unique")
    return names, tensors


def batched(
    names: Sequence[str], tensors: Sequence[torch.Tensor], minimum: int = 2
) -> tuple[torch.Tensor, ...]:
    """Check that every input shares one batch size on dim 0; repeat rows up to ``minimum``.

    ``torch.export`` specializes dimensions of size 1, so exports need a batch of at least 2.
    """
    batch: int | None = None
    for name, tensor in zip(names, tensors, strict=True):
        if tensor.ndim == 0:
            raise ExportError(f"example input {name!r} is a scalar; dim 0 must be the batch")
        if batch is None:
            batch = tensor.shape[0]
        elif tensor.shape[0] != batch:
            raise ExportError(
                f"example input {name!r} has batch size {tensor.shape[0]}, the others {batch}"
            )
    assert batch is not None
    if batch == 0:
        raise ExportError("the example inputs' batch is empty")
    if batch >= minimum:
        return tuple(tensors)
    repeats = -(-minimum // batch)
    return tuple(t.repeat(repeats, *([1] * (t.ndim - 1))) for t in tensors)


def input_specs(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=name,
            datatype=v2_datatype(t.dtype, f"input {name!r}"),
            shape=(-1, *t.shape[1:]),
        )
        for name, t in zip(names, tensors, strict=True)
    ]


def int_bounds(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> dict[str, int]:
    """Upper bounds for random integer inputs: ``INT_HIGH``, or less where the examples are smaller.

    An embedding table of 5 rows, exported with example indices below 5, is then not fed 7.
    """
    bounds: dict[str, int] = {}
    for name, tensor in zip(names, tensors, strict=True):
        if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.numel() == 0:
            continue
        low, high = int(tensor.min()), int(tensor.max())
        if low >= 0:
            bounds[name] = max(1, min(INT_HIGH, high + 1))
    return bounds


def random_tensor(
    spec: TensorSpec, batch_size: int, generator: torch.Generator, int_high: int = INT_HIGH
) -> torch.Tensor:
    """A random tensor for ``spec`` with dim 0 = ``batch_size``.

    Floats are standard normal, integers uniform in ``[0, int_high)``, booleans fair coins.
    """
    if any(d == -1 for d in spec.shape[1:]):
        raise ExportError(
            f"input {spec.name!r} has shape {list(spec.shape)}: give a size for every "
            "dimension but the first (the batch)"
        )
    shape = (batch_size, *spec.shape[1:])
    dtype = torch_dtype(spec.datatype, f"input {spec.name!r}")
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    return torch.randint(0, int_high, shape, generator=generator).to(dtype)


def random_inputs(
    specs: Sequence[TensorSpec],
    batch_size: int,
    *,
    seed: int = 0,
    int_high: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Random named inputs matching ``specs`` (reproducible for one ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    bounds = int_high or {}
    return {
        spec.name: random_tensor(spec, batch_size, generator, bounds.get(spec.name, INT_HIGH))
        for spec in specs
    }
