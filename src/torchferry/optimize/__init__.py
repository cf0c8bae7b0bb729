"""Optimization: quantization, pruning, half precision, distillation, and ``autotune``, which
tries them on the user's data and keeps the fastest within an accuracy budget."""

from torchferry.optimize.autotune import autotune
from torchferry.optimize.candidates import CANDIDATES, Candidate
from torchferry.optimize.context import load_eager
from torchferry.optimize.distill import distill
from torchferry.optimize.errors import Skipped
from torchferry.optimize.half import gpu_available, half_precision
from torchferry.optimize.measure import MeasureSettings
from torchferry.optimize.outcome import AutotuneResult, CandidateRow
from torchferry.optimize.prune import prune_channels, prune_unstructured
from torchferry.optimize.quantize_onnx import quantize_dynamic_onnx, quantize_static_onnx
from torchferry.optimize.quantize_torch import quantize_dynamic_torch, quantize_static_torch

__all__ = [
    "CANDIDATES",
    "AutotuneResult",
    "Candidate",
    "CandidateRow",
    "MeasureSettings",
    "Skipped",
    "autotune",
    "distill",
    "gpu_available",
    "half_precision",
    "load_eager",
    "prune_channels",
    "prune_unstructured",
    "quantize_dynamic_onnx",
    "quantize_dynamic_torch",
    "quantize_static_onnx",
    "quantize_static_torch",
]
