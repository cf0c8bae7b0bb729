"""The module's weights as ``weights.safetensors``: a portable, pickle-free copy of the state."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from torchferry.errors import ExportError


def has_plain_weights(model: nn.Module) -> bool:
    """Whether every entry of the state dict is a plain dense tensor that safetensors stores.

    Quantized models keep packed params, scales and dtypes in their state, which no
    pickle-free format holds; their TorchScript graph carries the weights instead.
    """
    return all(
        isinstance(value, torch.Tensor) and not value.is_quantized and value.layout == torch.strided
        for value in model.state_dict().values()
    )


def save_weights(model: nn.Module, path: Path) -> None:
    """Save the parameters and buffers; tensors shared between modules are stored once."""
    try:
        safetensors.torch.save_model(model, str(path), force_contiguous=True)
    except Exception as exc:
        raise ExportError(f"saving the weights to {path.name} failed: {exc}") from exc
