"""Numpy in, numpy out, for the engines that run torch modules (TorchScript and eager).

On the CPU a request's arrays become tensors without a copy (:func:`to_tensors`: only
read-only or strided ones are copied, since a model may write its inputs). On a CUDA device
each input of a batch goes through a page-locked (pinned) host buffer that the runtime
instance owns and reuses (:class:`PinnedInputs`): one copy into it, then one asynchronous
host-to-device copy; results come back with one device-to-host copy per output, which waits
for the model (:func:`to_arrays`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from torchferry.devices import parse_device
from torchferry.errors import DeviceUnavailable, ModelError


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


def torch_device(text: str) -> torch.device:
    """``--device`` as a torch device; ``DeviceUnavailable`` when PyTorch cannot use it (no
    CUDA device, or no device of that index), never the CPU instead."""
    device = parse_device(text)
    if not device.is_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = (
            f"torch {torch.__version__} is a CPU-only build"
            if torch.version.cuda is None
            else f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, finds no "
            "usable GPU or driver"
        )
        raise DeviceUnavailable(f"--device {text}: PyTorch sees no CUDA device ({build})")
    count = torch.cuda.device_count()
    if device.index >= count:
        raise DeviceUnavailable(
            f"--device {text}: PyTorch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return torch.device("cuda", device.index)


#: Pinned buffers start at this many bytes and double: a batch a little larger than the
#: last does not allocate (pinning memory is slow: it maps the pages for the device).
_MIN_PINNED = 1 << 16


class PinnedInputs:
    """A batch's inputs copied to a CUDA ``device`` through page-locked host buffers, one per
    input name, grown when a batch is larger and reused by every batch after.

    The host-to-device copies are asynchronous (``non_blocking``): the model queues behind
    them on the same stream (a model that runs on a stream of its own must make it wait on
    the default stream: docs/gpu.md), and the device-to-host copies of its results wait for
    it. So when ``infer`` returns every copy out of these buffers is done, and the next batch
    may overwrite them; a runtime instance runs one batch at a time, so each needs its own."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def to_device(
        self, inputs: Mapping[str, np.ndarray], names: Sequence[str]
    ) -> list[torch.Tensor]:
        """The inputs in the signature's order, as tensors on the device."""
        return [self._copy(name, inputs[name]) for name in names]

    def _copy(self, name: str, array: np.ndarray) -> torch.Tensor:
        dtype = _torch_dtype(array.dtype)
        staged = self._buffer(name, array.nbytes)[: array.nbytes].view(dtype).view(array.shape)
        # one copy into page-locked memory, whatever the array's layout or writability
        np.copyto(staged.numpy(), array, casting="no")
        return staged.to(self.device, non_blocking=True)

    def _buffer(self, name: str, nbytes: int) -> torch.Tensor:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < nbytes:
            size = max(_MIN_PINNED, 1 << max(0, nbytes - 1).bit_length())
            buffer = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            self._buffers[name] = buffer
        return buffer


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    # torch's own table (raises TypeError, as from_numpy does on the CPU, for what it lacks)
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


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
