"""``--runtime onnxruntime-trt``: TensorRT's answers are the CPU's, its engine lands in the
keyed cache entry, and the next load reads it from there. Needs a GPU, onnxruntime-gpu and
TensorRT (``pytest -m gpu``); skipped elsewhere."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from gpu_marks import needs_ort_trt

from torchferry.archive import BatchingSpec
from torchferry.archive.formats import ONNXRUNTIME_TRT
from torchferry.archive.store import Archive
from torchferry.export import export
from torchferry.runtimes import Runtime, load_runtime
from torchferry.runtimes.onnx_providers import CPU_PROVIDER, CUDA_PROVIDER, TENSORRT_PROVIDER
from torchferry.runtimes.trt_cache import KEY_NAME
from torchferry.runtimes.weight_cache import CACHE_ENV, RECORD_NAME
from torchferry.serving.process import ServerProcess
from torchferry.zoo.digits import DigitsCNN

pytestmark = [pytest.mark.gpu, needs_ort_trt]
MAX_BATCH = 8


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    torch.manual_seed(0)
    return export(
        DigitsCNN().eval(),
        torch.rand(2, 64) * 16,
        name="digits",
        store=tmp_path_factory.mktemp("store"),
        format="onnx",
        input_names=["pixels"],
        output_names=["probabilities"],
        batching=BatchingSpec(max_batch_size=MAX_BATCH),
    )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "tensorrt"


def pixels(n: int) -> np.ndarray:
    return (np.random.default_rng(n).random(size=(n, 64)) * 16).astype(np.float32)


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


def files_of(entry: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in entry.iterdir()}


def trt(archive: Archive) -> Runtime:
    return load_runtime(archive, runtime=ONNXRUNTIME_TRT, device="cuda")


def close_to_cpu(runtime: Runtime, archive: Archive, rtol: float, atol: float) -> None:
    cpu = load_runtime(archive, threads=1)
    try:
        # batch 1 to the profile's largest, and past it (run in parts)
        for n in (1, 5, MAX_BATCH, 3 * MAX_BATCH + 1):
            got = runtime.infer({"pixels": pixels(n)})["probabilities"]
            want = cpu.infer({"pixels": pixels(n)})["probabilities"]
            assert got.shape == want.shape == (n, 10)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    finally:
        cpu.close()


def test_tensorrt_answers_as_the_cpu_and_caches_its_engine(archive, cache):
    runtime = trt(archive)
    try:
        session = runtime.session
        assert session.get_providers() == [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]
        (entry,) = entries(cache)
        options = session.get_provider_options()[TENSORRT_PROVIDER]
        assert Path(options["trt_engine_cache_path"]) == entry
        names = {p.name for p in entry.iterdir()}
        assert {KEY_NAME, RECORD_NAME} <= names
        assert any(n.endswith(".engine") for n in names), names
        assert any(n.endswith(".timing") for n in names), names
        key = json.loads((entry / KEY_NAME).read_text())
        props = torch.cuda.get_device_properties(0)
        assert key["gpu"].startswith(f"{props.name} sm_{props.major}{props.minor} ")
        assert key["onnxruntime"] == ort.__version__ and key["tensorrt"]
        assert key["graph_sha256"] == archive.manifest.files["model.onnx"].sha256
        assert key["graph_optimization_level"] == "all"
        assert key["profile_max_shapes"] == f"pixels:{MAX_BATCH}x64" and key["fp16"] == "False"
        # TensorRT allows TF32 in an fp32 engine
        close_to_cpu(runtime, archive, rtol=1e-2, atol=1e-3)
    finally:
        runtime.close()


def test_a_second_load_reads_the_cached_engine(archive, cache):
    first = trt(archive)
    want = first.infer({"pixels": pixels(4)})["probabilities"]
    first.close()
    (entry,) = entries(cache)
    built = files_of(entry)
    second = trt(archive)
    try:
        assert entries(cache) == [entry]
        assert files_of(entry) == built  # nothing rebuilt, nothing added
        np.testing.assert_array_equal(second.infer({"pixels": pixels(4)})["probabilities"], want)
    finally:
        second.close()


def test_fp16_from_the_manifest_has_its_own_engine(archive, cache):
    fp32 = trt(archive)
    fp32.close()
    half = archive.manifest.model_copy(update={"runtime_options": {"trt_fp16": True}})
    runtime = trt(Archive(archive.path, half))
    try:
        assert len(entries(cache)) == 2
        options = runtime.session.get_provider_options()[TENSORRT_PROVIDER]
        assert options["trt_fp16_enable"] in ("1", "True")
        keys = [json.loads((e / KEY_NAME).read_text())["fp16"] for e in entries(cache)]
        assert sorted(keys) == ["False", "True"]
        close_to_cpu(runtime, Archive(archive.path, half), rtol=5e-2, atol=1e-2)
    finally:
        runtime.close()


def test_served_with_tensorrt_answers_as_the_cpu(
    archive, tmp_path: Path, start_server: Callable[..., AbstractContextManager[ServerProcess]]
):
    x = pixels(3)
    want = load_runtime(archive, threads=1).infer({"pixels": x})["probabilities"]
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip
    store = str(archive.path.parent.parent)
    args = ["--store", store, "--device", "cuda", "--runtime", ONNXRUNTIME_TRT, "--no-grpc"]
    with start_server(args, tmp_path / "server.log") as server:
        config = httpx.get(f"{server.url}/v2/models/digits/config", timeout=10)
        answer = httpx.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3)
    # Triton's model configuration: its onnxruntime backend runs TensorRT too
    assert config.status_code == 200 and config.json()["backend"] == "onnxruntime"
