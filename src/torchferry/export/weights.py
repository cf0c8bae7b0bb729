"""The module's weights as ``weights.safetensors``: a portable, pickle-free copy of the state."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
from torch import nn

from torchferry.errors import ExportError


def save_weights(model: nn.Module, path: Path) -> None:
    """Save the parameters and buffers; tensors shared between modules are stored once."""
    try:
        safetensors.torch.save_model(model, str(path), force_contiguous=True)
    except Exception as exc:
        raise ExportError(f"saving the weights to {path.name} failed: {exc}") from exc
