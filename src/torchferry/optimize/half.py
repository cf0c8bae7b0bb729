"""Half precision (fp16 or bfloat16) on a CUDA GPU, behind a float32 interface.

On CPUs half precision is rarely faster than float32 (few CPUs have fast fp16/bf16 matrix
kernels in PyTorch, and many operators fall back or upcast), so these candidates are
offered only where a CUDA device is present.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

from torchferry.optimize.errors import Skipped

DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
NO_GPU = "fp16/bf16 candidates run only where a GPU is present (no CUDA device here)"


def gpu_available() -> bool:
    """Whether PyTorch can use a CUDA device here."""
    return torch.cuda.is_available()


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating-point tensors in ``value`` (a tensor, or tuples, lists and dicts of them)
    cast to ``dtype``; everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


class HalfPrecision(nn.Module):
    """Runs ``model`` (already converted to ``dtype``) on float32 inputs: floating-point
    inputs are cast to ``dtype`` on the way in and floating-point outputs back to float32
    on the way out, so callers and the archive's signature keep float32. Integer inputs
    (token ids...) pass unchanged. Traceable with ``torch.jit.trace``."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, *args: Any) -> Any:
        return _cast(self.model(*_cast(args, self.dtype)), torch.float32)


def half_precision(
    model: nn.Module, dtype: Literal["fp16", "bf16"], device: str | None = None
) -> nn.Module:
    """A copy of ``model`` with its parameters and buffers in ``dtype`` on a CUDA device
    (``device``, by default ``"cuda"``), wrapped in :class:`HalfPrecision` so that it takes
    and returns float32 tensors. Inputs must be on that device; only their dtype changes.

    Limits: every parameter and buffer is converted, including batch norm statistics (fine
    on GPUs, where cuDNN computes them in float32); fp16 can overflow where activations
    exceed 65504 (bf16 keeps float32's range, with less precision). The accuracy budget of
    autotune is what decides whether the result is good enough.

    Raises :class:`Skipped` when no CUDA device is available or ``device`` is not a CUDA
    device, and for bf16 on GPUs without native bfloat16 (before Ampere).
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown half precision dtype {dtype!r}; use 'fp16' or 'bf16'")
    target = torch.device(device or "cuda")
    if target.type != "cuda":
        raise Skipped(f"fp16/bf16 candidates run only on a CUDA device, not {str(target)!r}")
    if not gpu_available():
        raise Skipped(NO_GPU)
    if dtype == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(target)
        raise Skipped(f"this GPU ({name}) has no native bfloat16 (emulated bf16 is slow)")
    converted = copy.deepcopy(model).to(device=target, dtype=DTYPES[dtype]).eval()
    return HalfPrecision(converted, DTYPES[dtype]).eval()
