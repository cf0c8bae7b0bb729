"""ONNX Runtime's CUDA provider (``--device cuda[:N]``): the CPU's answers, in process and
served. Needs a GPU and onnxruntime-gpu (``pytest -m gpu``); skipped elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gpu_marks import needs_ort_cuda

from torchferry.archive.formats import ONNXRUNTIME
from torchferry.archive.store import Archive
from torchferry.runtimes import load_runtime
from torchferry.runtimes.onnx_providers import CPU_PROVIDER, CUDA_PROVIDER
from torchferry.serving.process import ServerProcess
from torchferry.zoo.digits import DigitsCNN

pytestmark = [pytest.mark.gpu, needs_ort_cuda]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    from torchferry.export import export

    torch.manual_seed(0)
    return export(
        DigitsCNN().eval(),
        torch.rand(2, 64) * 16,
        name="digits",
        store=tmp_path_factory.mktemp("store"),
        format="onnx",
        input_names=["pixels"],
        output_names=["logits"],
    )


def pixels(n: int) -> np.ndarray:
    return (np.random.default_rng(n).random(size=(n, 64)) * 16).astype(np.float32)


def test_cuda_runs_on_device_n_and_answers_as_the_cpu(archive):
    cpu = load_runtime(archive, threads=1)
    gpu = load_runtime(archive, device="cuda:0")
    try:
        assert gpu.session.get_providers() == [CUDA_PROVIDER, CPU_PROVIDER]
        assert gpu.session.get_provider_options()[CUDA_PROVIDER]["device_id"] == "0"
        for n in (1, 5, 32):
            np.testing.assert_allclose(
                gpu.infer({"pixels": pixels(n)})["logits"],
                cpu.infer({"pixels": pixels(n)})["logits"],
                # ONNX Runtime's CUDA provider allows TF32 (10-bit mantissa) by default
                rtol=1e-2,
                atol=1e-3,
            )
    finally:
        cpu.close()
        gpu.close()


def test_served_on_cuda_answers_as_the_cpu(
    archive, tmp_path: Path, start_server: Callable[..., AbstractContextManager[ServerProcess]]
):
    store = str(archive.path.parent.parent)
    x = pixels(3)
    want = load_runtime(archive, threads=1).infer({"pixels": x})["logits"]
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip
    args = ["--store", store, "--device", "cuda", "--runtime", ONNXRUNTIME, "--no-grpc"]
    with start_server(args, tmp_path / "server.log") as server:
        answer = httpx.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3)
