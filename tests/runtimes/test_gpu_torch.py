"""TorchScript and eager on a CUDA device: the CPU's answers, inputs through the runtime's
reused pinned buffers. Needs a GPU (``pytest -m gpu``); skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gpu_marks import needs_cuda

from torchferry.archive.formats import EAGER, TORCHSCRIPT
from torchferry.archive.store import Archive
from torchferry.errors import DeviceUnavailable
from torchferry.export import export, load_model
from torchferry.runtimes import Runtime, load_runtime
from torchferry.runtimes.torch_io import PinnedInputs

pytestmark = [pytest.mark.gpu, needs_cuda]

FACTORY = """
import torch
from torch import nn


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(16, 32)
        self.second = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def make() -> nn.Module:
    return TwoLayers()
"""


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Archive]:
    code = tmp_path_factory.mktemp("code") / "two.py"
    code.write_text(FACTORY, encoding="utf-8")
    torch.manual_seed(0)
    model = load_model(f"{code}:make").eval()
    store = tmp_path_factory.mktemp("store")
    example = torch.randn(2, 16)
    return {
        TORCHSCRIPT: export(model, example, name="ts", store=store, format="torchscript",
                            input_names=["x"], output_names=["y"]),
        EAGER: export(model, example, name="eager", store=store, format="eager",
                      input_names=["x"], output_names=["y"], factory=f"{code}:make"),
    }  # fmt: skip


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)


def pair(archive: Archive, runtime: str) -> tuple[Runtime, Runtime]:
    trust = runtime == EAGER
    cpu = load_runtime(archive, runtime=runtime, threads=1, trust_code=trust)
    gpu = load_runtime(archive, runtime=runtime, device="cuda", trust_code=trust)
    return cpu, gpu


@pytest.mark.parametrize("runtime", [TORCHSCRIPT, EAGER])
def test_cuda_answers_as_the_cpu(archives, runtime):
    cpu, gpu = pair(archives[runtime], runtime)
    try:
        assert isinstance(getattr(gpu, "pinned", None), PinnedInputs)
        for n in (1, 7, 64):
            x = rows(n, seed=n)
            got, want = gpu.infer({"x": x})["y"], cpu.infer({"x": x})["y"]
            assert isinstance(got, np.ndarray) and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    finally:
        cpu.close()
        gpu.close()


def test_pinned_buffers_are_reused_and_grown(archives):
    cpu, gpu = pair(archives[TORCHSCRIPT], TORCHSCRIPT)
    try:
        pinned = gpu.pinned
        assert pinned is not None
        gpu.infer({"x": rows(2)})
        first = pinned._buffers["x"]
        assert first.is_pinned()
        gpu.infer({"x": rows(8)})
        assert pinned._buffers["x"].data_ptr() == first.data_ptr()  # reused, not reallocated
        big = rows(4096)  # 256 KiB: past the first buffer
        np.testing.assert_allclose(
            gpu.infer({"x": big})["y"], cpu.infer({"x": big})["y"], rtol=1e-4, atol=1e-4
        )
        grown = pinned._buffers["x"]
        assert grown.is_pinned() and grown.numel() >= big.nbytes > first.numel()
        # a read-only, column-major request body is copied into the buffer as it is
        odd = np.asfortranarray(rows(5, seed=3))
        odd.flags.writeable = False
        np.testing.assert_allclose(
            gpu.infer({"x": odd})["y"], cpu.infer({"x": odd})["y"], rtol=1e-4, atol=1e-4
        )
    finally:
        cpu.close()
        gpu.close()


def test_a_closed_cuda_runtime_loads_again(archives):
    gpu = load_runtime(archives[TORCHSCRIPT], runtime=TORCHSCRIPT, device="cuda:0")
    before = gpu.infer({"x": rows(3)})["y"]
    gpu.close()
    assert gpu.pinned is None
    gpu.load()
    np.testing.assert_array_equal(gpu.infer({"x": rows(3)})["y"], before)
    gpu.close()


def test_a_device_past_the_last_is_refused(archives):
    count = torch.cuda.device_count()
    with pytest.raises(DeviceUnavailable) as info:
        load_runtime(archives[TORCHSCRIPT], runtime=TORCHSCRIPT, device=f"cuda:{count}")
    assert info.value.message == (
        f"--device cuda:{count}: PyTorch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    )


def test_the_module_lives_on_the_device(archives):
    gpu = load_runtime(archives[TORCHSCRIPT], runtime=TORCHSCRIPT, device="cuda")
    try:
        assert all(p.device.type == "cuda" for p in gpu.module.parameters())
    finally:
        gpu.close()
