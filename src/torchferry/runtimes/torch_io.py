"""Numpy in, numpy out, for the engines that run torch modules (TorchScript and eager)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from torchferry.errors import ModelError


def writable(array: np.ndarray) -> np.ndarray:
    """torch tensors may be written in place by the model: binary request bodies arrive as
    read-only views, which are copied (ONNX Runtime, which never writes, takes them as is)."""
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


def to_tensors(
    inputs: Mapping[str, np.ndarray], names: Sequence[str], device: str
) -> list[torch.Tensor]:
    """The inputs in the signature's order, as tensors on ``device``."""
    return [torch.from_numpy(writable(inputs[name])).to(device) for name in names]


def to_arrays(result: object, names: Sequence[str]) -> dict[str, np.ndarray]:
    """A module's result (a tensor, a tuple or list of tensors, or a dict by output name) as
    arrays named by the signature's outputs."""
    if isinstance(result, torch.Tensor):
        tensors: Sequence[object] = (result,)
    elif isinstance(result, Mapping):
        missing = [name for name in names if name not in result]
        if missing:
            raise ModelError(f"the model's result has no output {missing[0]!r}")
        tensors = [result[name] for name in names]
    elif isinstance(result, Sequence):
        tensors = result
    else:
        raise ModelError(f"the model returned a {type(result).__name__}, not tensors")
    if len(tensors) != len(names):
        raise ModelError(
            f"the model returned {len(tensors)} outputs; its signature has {len(names)}"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in zip(names, tensors, strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise ModelError(f"output {name!r} is a {type(tensor).__name__}, not a tensor")
        arrays[name] = tensor.detach().cpu().numpy()
    return arrays
