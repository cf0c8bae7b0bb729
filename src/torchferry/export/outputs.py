"""A model's outputs as named tensors: one tensor, a tuple or list of them, or a dict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from torchferry.errors import ExportError
from torchferry.export.inputs import v2_datatype
from torchferry.signature import TensorSpec

_SHAPES = "a tensor, a tuple or list of tensors, or a dict of str to tensor"


def default_output_names(result: Any) -> list[str]:
    """``output`` for one tensor, ``output_0``, ``output_1``... for several, a dict's keys."""
    if isinstance(result, torch.Tensor):
        return ["output"]
    if isinstance(result, Mapping):
        return [str(k) for k in result]
    if isinstance(result, (tuple, list)):
        return ["output"] if len(result) == 1 else [f"output_{i}" for i in range(len(result))]
    raise ExportError(f"the model returned a {type(result).__name__}; it must return {_SHAPES}")


def output_names_for(result: Any, requested: Sequence[str] | None) -> list[str]:
    defaults = default_output_names(result)
    if requested is None:
        return defaults
    names = list(requested)
    if isinstance(result, Mapping) and sorted(names) != sorted(defaults):
        raise ExportError(
            f"output_names {names} differ from the keys of the dict the model returns {defaults}"
        )
    if len(names) != len(defaults):
        raise ExportError(f"{len(names)} output names {names} for {len(defaults)} model outputs")
    if len(set(names)) != len(names):
        raise ExportError(f"output names {names} are not unique")
    return defaults if isinstance(result, Mapping) else names


def flatten_outputs(result: Any, names: Sequence[str]) -> list[torch.Tensor]:
    """The model's outputs in ``names`` order (a dict is looked up by name)."""
    if isinstance(result, torch.Tensor):
        tensors: list[Any] = [result]
    elif isinstance(result, Mapping):
        missing = [n for n in names if n not in result]
        if missing:
            raise ExportError(f"the model's output dict lacks {missing}; it has {list(result)}")
        tensors = [result[n] for n in names]
    elif isinstance(result, (tuple, list)):
        tensors = list(result)
    else:
        raise ExportError(f"the model returned a {type(result).__name__}; it must return {_SHAPES}")
    if len(tensors) != len(names):
        raise ExportError(f"the model returned {len(tensors)} outputs, expected {len(names)}")
    for name, tensor in zip(names, tensors, strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise ExportError(
                f"output {name!r} is a {type(tensor).__name__}; the model must return {_SHAPES}"
            )
    return tensors


def output_specs(
    names: Sequence[str], tensors: Sequence[torch.Tensor], batch_size: int
) -> list[TensorSpec]:
    """Specs with ``-1`` for dim 0, which must be the batch dimension of every output."""
    specs = []
    for name, tensor in zip(names, tensors, strict=True):
        if tensor.ndim == 0 or tensor.shape[0] != batch_size:
            raise ExportError(
                f"output {name!r} has shape {list(tensor.shape)} for a batch of {batch_size}; "
                "dim 0 of every output must be the batch dimension"
            )
        specs.append(
            TensorSpec(
                name=name,
                datatype=v2_datatype(tensor.dtype, f"output {name!r}"),
                shape=(-1, *tensor.shape[1:]),
            )
        )
    return specs
