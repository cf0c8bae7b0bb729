"""Skip marks for the GPU tests (``pytest -m gpu``), each with the reason it skips: CI and
most machines have no GPU, and the CPU onnxruntime wheel has no CUDA or TensorRT provider."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from torchferry.runtimes.onnx_providers import CUDA_PROVIDER, TENSORRT_PROVIDER

HAS_CUDA = torch.cuda.is_available()
PROVIDERS = ort.get_available_providers()
ORT_CUDA = HAS_CUDA and CUDA_PROVIDER in PROVIDERS
ORT_TRT = ORT_CUDA and TENSORRT_PROVIDER in PROVIDERS

needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)"
)
needs_ort_cuda = pytest.mark.skipif(
    not ORT_CUDA,
    reason="needs a CUDA device and onnxruntime-gpu with the CUDA provider "
    f"(torch.cuda.is_available() is {HAS_CUDA}; onnxruntime offers {PROVIDERS})",
)
needs_ort_trt = pytest.mark.skipif(
    not ORT_TRT,
    reason="needs a CUDA device and onnxruntime-gpu with the TensorRT provider "
    f"(torch.cuda.is_available() is {HAS_CUDA}; onnxruntime offers {PROVIDERS})",
)
#: For the tests of what a machine without them refuses.
without_cuda = pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present")
without_ort_cuda = pytest.mark.skipif(
    CUDA_PROVIDER in PROVIDERS, reason="this onnxruntime has the CUDA provider"
)
without_ort_trt = pytest.mark.skipif(
    TENSORRT_PROVIDER in PROVIDERS, reason="this onnxruntime has the TensorRT provider"
)
