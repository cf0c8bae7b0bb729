"""ONNX Runtime int8 quantization of exported graphs: the digits CNN on real data, and
ResNet-18; every quantized graph is served through torchferry's ``OnnxRuntime``."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch

from torchferry.archive.store import Archive, ModelStore
from torchferry.export import export
from torchferry.optimize import quantize_dynamic_onnx, quantize_static_onnx
from torchferry.optimize.onnx_calibration import first_rows
from torchferry.optimize.quantize_onnx import MAX_CALIBRATION_ROWS
from torchferry.runtimes import load_runtime
from torchferry.zoo.digits import digits_split, train_digits
from torchferry.zoo.resnet import resnet18


def served(archive: Archive, graph, version: int) -> Archive:
    """A new version of ``archive`` whose ONNX graph is ``graph``."""
    store = ModelStore(archive.path.parent.parent)

    def populate(directory):
        shutil.copyfile(graph, directory / "model.onnx")

    manifest = archive.manifest.model_copy(update={"version": version, "parity": []})
    return store.write(manifest, populate)


def infer(archive: Archive, inputs: dict[str, np.ndarray]) -> np.ndarray:
    runtime = load_runtime(archive, threads=2)
    try:
        outputs = runtime.infer(inputs)
    finally:
        runtime.close()
    assert list(outputs) == archive.manifest.signature.output_names
    return next(iter(outputs.values()))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A briefly trained DigitsCNN exported to ONNX, its fp32 accuracy there, the split."""
    torch.set_num_threads(2)
    model, _ = train_digits(seed=0, epochs=4)
    x_train, x_test, y_train, y_test = digits_split()
    store = tmp_path_factory.mktemp("store")
    archive = export(
        model, torch.from_numpy(x_train[:2]), name="digits", store=store, format="onnx"
    )
    fp32 = float((infer(archive, {"pixels": x_test}).argmax(1) == y_test).mean())
    assert fp32 > 0.95
    return archive, fp32, (x_train, x_test, y_train, y_test)


def calibration(x: np.ndarray, rows: int = 256, size: int = 32) -> list[dict[str, np.ndarray]]:
    return [{"pixels": x[i : i + size]} for i in range(0, rows, size)]


VERSIONS = {"dynamic": 2, "minmax": 3, "entropy": 4, "percentile": 5}


@pytest.mark.parametrize("method", list(VERSIONS))
def test_digits_int8_within_two_points_smaller_any_batch(digits, method, tmp_path):
    archive, fp32, (x_train, x_test, _, y_test) = digits
    source = archive.file("model.onnx")
    target = tmp_path / "int8.onnx"
    if method == "dynamic":
        quantize_dynamic_onnx(source, target)
    else:
        quantize_static_onnx(source, target, calibration(x_train), method)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # no scratch left
    quantized = served(archive, target, VERSIONS[method])
    int8 = float((infer(quantized, {"pixels": x_test}).argmax(1) == y_test).mean())
    size, fp32_size = target.stat().st_size, source.stat().st_size
    print(f"digits onnx {method}: accuracy {int8:.4f} (fp32 {fp32:.4f}), {size} B ({fp32_size})")
    assert abs(int8 - fp32) <= 0.02
    assert size < fp32_size / 2
    for batch in (1, 7):
        assert infer(quantized, {"pixels": x_test[:batch]}).shape == (batch, 10)
    if method != "dynamic":
        ops = {node.op_type for node in onnx.load(str(target)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format


def test_static_refuses_batches_that_do_not_name_the_inputs(digits, tmp_path):
    archive, _, (x_train, *_) = digits
    with pytest.raises(ValueError, match=r"inputs \['x'\]; the graph's inputs are \['pixels'\]"):
        quantize_static_onnx(archive.file("model.onnx"), tmp_path / "q.onnx", [{"x": x_train}])
    with pytest.raises(ValueError, match="unknown calibration method"):
        quantize_static_onnx(archive.file("model.onnx"), tmp_path / "q.onnx", [], "mse")  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_calibration_is_capped_per_method():
    batches = [{"x": np.zeros((100, 3), np.float32)} for _ in range(3)]
    taken = first_rows(batches, ["x"], MAX_CALIBRATION_ROWS["entropy"])
    assert [len(b["x"]) for b in taken] == [100, 28]
    assert MAX_CALIBRATION_ROWS == {"minmax": 512, "entropy": 128, "percentile": 128}


def test_resnet18_static_minmax_runs_and_shrinks(tmp_path):
    torch.manual_seed(0)
    model = resnet18()
    archive = export(
        model, torch.randn(1, 3, 224, 224), name="resnet", store=tmp_path / "s", format="onnx"
    )
    source, target = archive.file("model.onnx"), tmp_path / "int8.onnx"
    rng = np.random.default_rng(0)
    images = [{"x": rng.standard_normal((2, 3, 224, 224), dtype=np.float32)} for _ in range(2)]
    quantize_static_onnx(source, target, images, "minmax")
    quantized = served(archive, target, 2)
    x = rng.standard_normal((2, 3, 224, 224), dtype=np.float32)
    fp32, int8 = infer(archive, {"x": x}), infer(quantized, {"x": x})
    cosine = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    size, fp32_size = target.stat().st_size, source.stat().st_size
    print(f"resnet18 onnx minmax: {size} B ({fp32_size}), logits cosine {cosine.tolist()}")
    assert size < fp32_size / 3
    assert cosine.min() > 0.9
    assert infer(quantized, {"x": x[:1]}).shape == (1, 1000)
