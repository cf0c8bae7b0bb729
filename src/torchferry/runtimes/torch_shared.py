"""One copy of a torch model's weights for every worker: the parameters and buffers of a
TorchScript module (or an eager ``nn.Module``) pointed at the archive's
``weights.safetensors``, memory-mapped.

``torch.jit.load`` gives each process private copies of the weights. safetensors maps its
file (``MAP_PRIVATE``: pages stay shared until written, and a write makes a private copy,
never a crash), so a module whose tensors are pointed at the mapped ones holds them as
shared page-cache pages. The archive's file is listed with its SHA-256 in the (signed)
manifest and verified when the archive opens, so nothing derived is written; and a tensor
is pointed at its mapped twin only when the two are equal (same name, dtype, shape and
values): an optimized graph's folded or converted weights keep their own copy.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from torchferry.runtimes.base import Runtime
from torchferry.runtimes.weight_cache import return_freed_memory

log = logging.getLogger(__name__)


def map_archive_weights(runtime: Runtime, module: nn.Module, name: str) -> int:
    """``map_weights`` from the archive's file ``name`` (verified with the archive), when the
    runtime shares weights and the archive lists that file; a failure only leaves the module
    its private copies. The bytes now mapped."""
    if not runtime.shares_weights() or name not in runtime.archive.manifest.files:
        return 0
    weights = runtime.archive.file(name)
    try:
        return map_weights(module, weights)
    except Exception as exc:  # safetensors raises its own untyped errors
        log.warning("%s: weights not shared between workers: %s", weights, exc)
        return 0


def map_weights(module: nn.Module, weights: Path) -> int:
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
        return_freed_memory()
    return mapped_bytes
