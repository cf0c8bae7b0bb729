"""PyTorch int8 quantization on real data (scikit-learn's digits) and on ResNet-18."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchferry.export import export
from torchferry.export.parity import check_parity, module_runner, torchscript_runner
from torchferry.export.torchscript import export_torchscript
from torchferry.optimize import Skipped, quantize_dynamic_torch, quantize_static_torch
from torchferry.signature import ModelSignature, TensorSpec
from torchferry.zoo.digits import digits_split, train_digits
from torchferry.zoo.resnet import resnet18


@pytest.fixture(scope="module")
def digits():
    """A DigitsCNN trained briefly, its fp32 test accuracy, and the split."""
    torch.set_num_threads(2)
    model, accuracy = train_digits(seed=0, epochs=4)
    assert accuracy > 0.95
    return model, accuracy, digits_split()


def accuracy_of(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(dim=1).numpy() == y).mean())


def calibration_batches(x: np.ndarray, rows: int = 256, size: int = 64):
    return [(torch.from_numpy(x[i : i + size]),) for i in range(0, rows, size)]


def assert_torchscript_parity(model: nn.Module, example: tuple[torch.Tensor, ...], tmp_path):
    """What ``export(format="torchscript")`` does: trace, save, load with ``torch.jit.load`` (the TorchScript runtime's
    loader) and compare with the eager model at batch sizes 1 and 3."""
    graph = tmp_path / "model.pt"
    export_torchscript(model, example, graph, "trace")
    with torch.no_grad():
        output = model(*example)
    signature = ModelSignature(
        inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, *example[0].shape[1:])),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, *output.shape[1:])),),
    )
    runners = {"torchscript": torchscript_runner(graph, signature)}
    reports = check_parity(module_runner(model, signature), signature, runners, tolerance=1e-2)
    assert [r.batch_size for r in reports] == [1, 3]


def test_dynamic_quantizes_the_linear_layers_within_a_point(digits, tmp_path):
    model, fp32, (_, x_test, _, y_test) = digits
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 2  # DigitsCNN has two
    quantized = quantize_dynamic_torch(model)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, dynamic) for m in quantized.modules()) == 2
    assert all(type(m) is not dynamic for m in model.modules())  # the original is untouched
    int8 = accuracy_of(quantized, x_test, y_test)
    print(f"digits fp32 {fp32:.4f}, torch dynamic int8 {int8:.4f}")
    assert abs(int8 - fp32) <= 0.01
    assert_torchscript_parity(quantized, (torch.from_numpy(x_test[:2]),), tmp_path)


def test_dynamic_skips_a_model_without_linear_or_recurrent_layers():
    conv_only = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
    with pytest.raises(Skipped) as info:
        quantize_dynamic_torch(conv_only)
    assert info.value.reason == "no Linear/LSTM/GRU layers to quantize dynamically"


def test_static_digits_within_two_points_and_traceable(digits, tmp_path):
    model, fp32, (x_train, x_test, _, y_test) = digits
    example = (torch.from_numpy(x_train[:2]),)
    quantized = quantize_static_torch(model, calibration_batches(x_train), example)
    assert torch.backends.quantized.engine == "x86"
    kinds = {type(m).__module__ for m in quantized.modules()}
    assert "torch.ao.nn.intrinsic.quantized.modules.conv_relu" in kinds  # conv-relu fused
    assert "torch.ao.nn.intrinsic.quantized.modules.linear_relu" in kinds  # linear-relu fused
    int8 = accuracy_of(quantized, x_test, y_test)
    print(f"digits fp32 {fp32:.4f}, torch static int8 {int8:.4f}")
    assert abs(int8 - fp32) <= 0.02
    assert_torchscript_parity(quantized, example, tmp_path)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = resnet18()
    example = (torch.randn(1, 3, 224, 224),)
    calibration = [(torch.randn(2, 3, 224, 224),) for _ in range(3)]
    return model, quantize_static_torch(model, calibration, example), example


def test_static_resnet18_folds_batch_norm_and_stays_close(resnet, tmp_path):
    model, quantized, example = resnet
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in quantized.modules())
    conv_relu = torch.ao.nn.intrinsic.quantized.ConvReLU2d
    assert sum(isinstance(m, conv_relu) for m in quantized.modules()) == 9  # stem + 8 blocks
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(model(x), quantized(x), dim=1)
    print(f"resnet18 torch static int8 logits cosine to fp32: {cosine.tolist()}")
    assert cosine.min() > 0.9
    assert_torchscript_parity(quantized, example, tmp_path)


def test_export_torchscript_of_a_statically_quantized_model(digits, tmp_path):
    model, _, (x_train, _, _, _) = digits
    example = (torch.from_numpy(x_train[:2]),)
    quantized = quantize_static_torch(model, calibration_batches(x_train, 64), example)
    archive = export(
        quantized, example, name="int8", store=tmp_path, format="torchscript", tolerance=1e-2
    )
    # quantized state has no pickle-free form: the TorchScript graph carries the weights
    assert set(archive.manifest.files) == {"model.pt"}
    assert archive.manifest.parity and all(r.max_abs_error < 1e-2 for r in archive.manifest.parity)


def test_static_skips_a_model_fx_cannot_trace():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return self.linear(x)
            return x

    x = torch.randn(2, 4)
    with pytest.raises(Skipped, match="FX graph mode cannot trace the model"):
        quantize_static_torch(Branchy().eval(), [(x,)], (x,))


def test_static_skips_an_unknown_engine_and_needs_calibration():
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    x = torch.randn(2, 4)
    with pytest.raises(Skipped, match="quantized engine 'tpu'"):
        quantize_static_torch(model, [(x,)], (x,), backend="tpu")
    with pytest.raises(ValueError, match="at least one calibration batch"):
        quantize_static_torch(model, [], (x,))
