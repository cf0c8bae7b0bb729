"""One copy of a TorchScript module's weights for every worker: its parameters and buffers
pointed at the archive's ``weights.safetensors``, memory-mapped.

``torch.jit.load`` gives each process private copies of the weights. safetensors maps its
file (``MAP_PRIVATE``: pages stay shared until written, and a write makes a private copy,
never a crash), so a module whose tensors are pointed at the mapped ones holds them as
shared page-cache pages. The archive's file is listed with its SHA-256 in the (signed)
manifest and verified when the archive opens, so nothing derived is written; and a tensor
is pointed at its mapped twin only when the two are equal (same name, dtype, shape and
values): an optimized graph's folded or converted weights keep their own copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
from pathlib import Path

import torch
from safetensors import safe_open


def map_weights(module: torch.jit.ScriptModule, weights: Path) -> int:
    """Point ``module``'s tensors at their equal twins in ``weights``; the bytes now mapped."""
    mapped_bytes = 0
    tensors = itertools.chain(module.named_parameters(), module.named_buffers())
    with safe_open(str(weights), framework="pt") as mapped, torch.no_grad():
        names = set(mapped.keys())
        for name, tensor in tensors:
            if name not in names or tensor.device.type != "cpu":
                continue
            twin = mapped.get_tensor(name)
            if (
                twin.dtype == tensor.dtype
                and twin.shape == tensor.shape
                and torch.equal(twin, tensor)
            ):
                tensor.set_(twin)
                mapped_bytes += twin.numel() * twin.element_size()
    if mapped_bytes:
        _return_freed_memory()
    return mapped_bytes


def _return_freed_memory() -> None:
    """Hand the copies ``torch.jit.load`` made back to the system (glibc keeps freed heap)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
