"""autotune's GPU candidates on ONNX Runtime: CUDA, and TensorRT in fp32, fp16 and int8 (with
a calibration table built from the data). Each is skipped with its reason where there is no
GPU or no such provider; the table is built on the CPU, so that is checked here too. The
``gpu`` tests measure them (``pytest -m gpu``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from gpu_marks import HAS_CUDA, ORT_CUDA, PROVIDERS, needs_ort_trt
from linear_archive import write_linear_archive
from onnxruntime.quantization.CalTableFlatBuffers import TrtTable

from torchferry.archive.formats import ONNXRUNTIME, ONNXRUNTIME_TRT
from torchferry.archive.store import Archive, ModelStore
from torchferry.optimize import CANDIDATES, autotune
from torchferry.optimize.candidates import original_name, select
from torchferry.optimize.measure import QUICK
from torchferry.optimize.trt_calibration import TABLE_NAME, has_qdq, write_trt_calibration_table
from torchferry.runtimes import load_runtime
from torchferry.runtimes.onnx_providers import CUDA_PROVIDER, TENSORRT_PROVIDER

GPU_ONNX = ["cuda-fp32-onnxruntime", "trt-fp32", "trt-fp16", "trt-int8"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Archive, dict[str, np.ndarray]]:
    """A digits-shaped model (64 pixels in, 10 probabilities out) and data for it."""
    store = ModelStore(tmp_path_factory.mktemp("store"))
    archive = write_linear_archive(
        store, "digits", inputs=64, outputs=10, softmax=True, input_name="pixels",
        output_name="probabilities",
    )  # fmt: skip
    data = {"pixels": (np.random.default_rng(0).random((48, 64)) * 16).astype(np.float32)}
    return archive, data


#: Measurements of a few tens of milliseconds: these tests check outcomes, not speeds.
BRIEF = dataclasses.replace(
    QUICK, latency_seconds=0.02, throughput_seconds=0.01, search_seconds=0.2, max_batch=8
)


def test_the_gpu_onnx_candidates_run_on_cuda():
    by_name = {c.name: c for c in CANDIDATES}
    assert [c.name for c in select(["cuda-*", "trt-*"])] == GPU_ONNX
    assert all(by_name[name].device == "cuda" for name in GPU_ONNX)


def test_a_tensorrt_archive_is_measured_as_its_own_candidate(digits):
    manifest = digits[0].manifest
    trt = manifest.model_copy(update={"runtime": ONNXRUNTIME_TRT})
    assert original_name(trt) == "trt-fp32"
    assert original_name(trt.model_copy(update={"runtime_options": {"trt_fp16": True}})) == (
        "trt-fp16"
    )
    int8 = {"trt_int8": True, "trt_fp16": True, "trt_int8_calibration_table_name": TABLE_NAME}
    assert original_name(trt.model_copy(update={"runtime_options": int8})) == "trt-int8"


@pytest.mark.skipif(ORT_CUDA, reason="a GPU and onnxruntime-gpu are here: the gpu tests run them")
def test_without_a_gpu_each_is_skipped_saying_what_it_needs(digits, tmp_path):
    archive, data = digits
    result = autotune(
        archive, data, candidates=["cuda-*", "trt-*"], store=tmp_path / "out", settings=BRIEF,
        report=False,
    )  # fmt: skip
    rows = {row.name: row for row in result.rows}
    assert [row.name for row in result.rows] == ["fp32-onnxruntime", *GPU_ONNX]
    for name in GPU_ONNX:
        assert rows[name].status == "skipped", rows[name].reason
        assert rows[name].device == "cuda"
        assert rows[name].reason.startswith(f"{name} needs ")
        if not HAS_CUDA:
            assert "a CUDA device (PyTorch sees none)" in rows[name].reason
    # the providers by the runtimes' own rule and words (onnx_providers.require_available)
    if CUDA_PROVIDER not in PROVIDERS:
        reason = rows["cuda-fp32-onnxruntime"].reason
        assert "cuda-fp32-onnxruntime needs ONNX Runtime's CUDAExecutionProvider" in reason
        assert "install onnxruntime-gpu in place of onnxruntime" in reason
    if TENSORRT_PROVIDER not in PROVIDERS:
        reason = rows["trt-int8"].reason
        assert "trt-int8 needs ONNX Runtime's TensorrtExecutionProvider" in reason
        assert "with NVIDIA TensorRT" in reason


def test_the_int8_calibration_table_is_built_on_the_cpu(digits, tmp_path):
    archive, data = digits
    feeds = [{"pixels": data["pixels"][i : i + 8]} for i in range(0, 48, 8)]
    table = write_trt_calibration_table(archive.file("model.onnx"), feeds, tmp_path / "t")
    assert table == tmp_path / "t" / TABLE_NAME
    assert sorted(p.name for p in table.parent.iterdir()) == [TABLE_NAME]  # no leftovers
    read = TrtTable.TrtTable.GetRootAsTrtTable(table.read_bytes(), 0)
    ranges = {
        read.Dict(i).Key().decode(): float(read.Dict(i).Value()) for i in range(read.DictLength())
    }
    # the input, every activation and the output
    assert sorted(ranges) == ["h", "pixels", "probabilities", "z"]
    assert ranges["pixels"] == pytest.approx(float(data["pixels"].max()), rel=1e-6)
    assert all(np.isfinite(value) and value >= 0 for value in ranges.values())
    with pytest.raises(ValueError, match="the graph's inputs are \\['pixels'\\]"):
        write_trt_calibration_table(archive.file("model.onnx"), [{"x": data["pixels"]}], tmp_path)


def test_a_statically_quantized_graph_needs_no_table(digits, tmp_path):
    from torchferry.optimize.quantize_onnx import quantize_static_onnx

    archive, data = digits
    assert not has_qdq(archive.file("model.onnx"))
    quantized = tmp_path / "model.onnx"
    quantize_static_onnx(archive.file("model.onnx"), quantized, [{"pixels": data["pixels"]}])
    assert has_qdq(quantized)  # TensorRT takes its Q/DQ scales, and refuses a table


@pytest.mark.gpu
@needs_ort_trt
def test_on_a_gpu_each_is_measured_and_the_winner_serves(digits, tmp_path, monkeypatch):
    from torchferry.runtimes.weight_cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    archive, data = digits
    result = autotune(
        archive, data, candidates=["cuda-*", "trt-*"], store=tmp_path / "out", settings=BRIEF,
        budget="5%", report=False,
    )  # fmt: skip
    rows = {row.name: row for row in result.rows}
    for name in GPU_ONNX:
        assert rows[name].measured, f"{name}: {rows[name].status} {rows[name].reason}"
        assert rows[name].device == "cuda"
    assert rows["cuda-fp32-onnxruntime"].runtime == ONNXRUNTIME
    assert {rows[n].runtime for n in GPU_ONNX[1:]} == {ONNXRUNTIME_TRT}
    assert rows["trt-fp32"].scores["agreement"] >= 0.99
    assert rows["trt-fp16"].scores["agreement"] >= 0.95
    winner = result.archive
    if winner is not None:  # a GPU candidate won: it serves as autotune measured it
        device = rows[result.winner.name].device
        runtime = load_runtime(winner, device=device)
        try:
            out = runtime.infer({"pixels": data["pixels"][:4]})["probabilities"]
            assert out.shape == (4, 10)
        finally:
            runtime.close()
        if winner.manifest.runtime_options.get("trt_int8"):
            assert TABLE_NAME in winner.manifest.files


@pytest.mark.gpu
@needs_ort_trt
def test_the_int8_candidate_carries_its_table(digits, tmp_path, monkeypatch):
    from torchferry.optimize.candidates import _trt
    from torchferry.optimize.context import BuildContext
    from torchferry.optimize.data import load_data
    from torchferry.runtimes.weight_cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    archive, data = digits
    ctx = BuildContext(archive, load_data(data, archive.manifest.signature), ModelStore(tmp_path))
    built = _trt("int8", ctx)
    manifest = built.manifest
    assert manifest.runtime == ONNXRUNTIME_TRT
    assert manifest.runtime_options == {
        "trt_int8": True, "trt_fp16": True, "trt_int8_calibration_table_name": TABLE_NAME,
    }  # fmt: skip
    assert Path(built.file(TABLE_NAME)).stat().st_size > 0
    runtime = load_runtime(built, device="cuda")
    try:
        assert runtime.infer({"pixels": data["pixels"][:3]})["probabilities"].shape == (3, 10)
    finally:
        runtime.close()
