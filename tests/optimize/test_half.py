"""Half precision: skipped without a GPU; the float32 wrapper; fp16/bf16 on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchferry.optimize import Skipped, gpu_available, half_precision
from torchferry.optimize.half import HalfPrecision
from torchferry.zoo.digits import DigitsCNN
from torchferry.zoo.resnet import resnet18

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_gpu_available_is_torchs_answer():
    assert gpu_available() is torch.cuda.is_available()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_skipped_without_a_gpu(dtype):
    with pytest.raises(Skipped) as info:
        half_precision(DigitsCNN(), dtype)
    assert info.value.reason == (
        "fp16/bf16 candidates run only where a GPU is present (no CUDA device here)"
    )


def test_skipped_on_a_cpu_device_and_refuses_other_dtypes():
    with pytest.raises(Skipped, match="only on a CUDA device, not 'cpu'"):
        half_precision(DigitsCNN(), "fp16", device="cpu")
    with pytest.raises(ValueError, match="unknown half precision dtype 'int4'"):
        half_precision(DigitsCNN(), "int4")  # type: ignore[arg-type]


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.linear(x + self.embed(ids))
        return y, ids * 2


def test_wrapper_casts_floats_in_and_out_and_traces():
    """The wrapper's casts, checked on the CPU with bfloat16 (which CPUs run)."""
    torch.manual_seed(0)
    model = TwoOutputs().eval()
    wrapped = HalfPrecision(TwoOutputs().eval(), torch.bfloat16)
    wrapped.model.load_state_dict(model.state_dict())
    wrapped.model.to(torch.bfloat16)
    x, ids = torch.randn(5, 4), torch.randint(0, 10, (5,))
    with torch.no_grad():
        (y, doubled), (want, want_ids) = wrapped(x, ids), model(x, ids)
        traced = torch.jit.trace(wrapped, (x, ids))
        y_traced, _ = traced(x[:2], ids[:2])
    assert y.dtype == torch.float32 and doubled.dtype == torch.int64
    torch.testing.assert_close(y, want, atol=0.05, rtol=0.05)
    torch.testing.assert_close(doubled, want_ids)
    torch.testing.assert_close(y_traced, y[:2])


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_on_cuda_stays_close_to_fp32(dtype):
    if dtype == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bfloat16")
    torch.manual_seed(0)
    for model, x in (
        (DigitsCNN().eval(), torch.rand(8, 64) * 16),
        (resnet18(), torch.randn(2, 3, 224, 224)),
    ):
        half = half_precision(model, dtype)
        assert (
            next(half.parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        )
        assert next(model.parameters()).device.type == "cpu"  # the original is untouched
        with torch.no_grad():
            want = model.cuda()(x.cuda())
            got = half(x.cuda())
            traced = torch.jit.trace(half, (x.cuda(),))
            torch.testing.assert_close(traced(x.cuda()), got)
        assert got.dtype == torch.float32
        cosine = nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert cosine > 0.999, f"{type(model).__name__} {dtype}: cosine {cosine:.5f}"
        model.cpu()
