"""The TensorRT runtime's load around ONNX Runtime, without a GPU: the session is a fake
that records what it was given, so what the runtime does with its engine directory and
with a failing engine build is checked here; TensorRT itself, by the ``gpu`` tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from torchferry.archive.formats import ONNXRUNTIME, ONNXRUNTIME_TRT
from torchferry.archive.manifest import BatchingSpec, FileEntry, Manifest
from torchferry.archive.store import Archive
from torchferry.errors import ArchiveError
from torchferry.runtimes import onnx_trt
from torchferry.runtimes.onnx_providers import TENSORRT_PROVIDER, Provider
from torchferry.runtimes.weight_cache import CACHE_ENV
from torchferry.signature import ModelSignature, TensorSpec

TABLE = "calibration.flatbuffers"
SIGNATURE = ModelSignature(
    inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),),
    outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 3)),),
)


class FakeSession:
    """ONNX Runtime's session as the runtime uses it; ``fail_rows``: a run with that many
    rows raises as ONNX Runtime does (its own untyped error)."""

    def __init__(self, providers: list[Provider], fail_rows: int | None) -> None:
        self.trt_options = dict(providers)[TENSORRT_PROVIDER]
        self.fail_rows = fail_rows

    def get_outputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name="y")]

    def run(self, names: Any, feed: dict[str, np.ndarray], *options: Any) -> list[np.ndarray]:
        if len(feed["x"]) == self.fail_rows:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : TensorRT EP failed to build")
        return [np.zeros((len(feed["x"]), 3), np.float32)]


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    """An int8 archive with a calibration table (the graph file is never parsed here)."""
    version = tmp_path / "int8" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"a graph")
    (version / TABLE).write_bytes(b"ranges")
    manifest = Manifest(
        name="int8",
        version=1,
        runtime=ONNXRUNTIME_TRT,
        graphs={ONNXRUNTIME: "model.onnx"},
        signature=SIGNATURE,
        runtime_options={"trt_int8": True, "trt_int8_calibration_table_name": TABLE},
        batching=BatchingSpec(max_batch_size=8),
        files={
            "model.onnx": FileEntry(sha256="a" * 64, size=7),
            TABLE: FileEntry(sha256="c" * 64, size=6),
        },
    )
    return Archive(version, manifest)


def fake_onnx_runtime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, gpu: str | None, fail_rows: int | None
) -> list[FakeSession]:
    """TensorRT's provider taken as present, the GPU as named by ``gpu`` (None: not
    nameable, so nothing is cached), and every session a :class:`FakeSession`."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_trt, "require_available", lambda *args: None)
    monkeypatch.setattr(onnx_trt, "gpu_identity", lambda index: gpu)
    monkeypatch.setattr(onnx_trt, "tensorrt_version", lambda: "libnvinfer 100900")
    sessions: list[FakeSession] = []

    def new_session(
        self: onnx_trt.TensorRtRuntime, graph: Path, options: Any, providers: list[Provider]
    ) -> FakeSession:
        sessions.append(FakeSession(providers, fail_rows))
        return sessions[-1]

    monkeypatch.setattr(onnx_trt.TensorRtRuntime, "_new_session", new_session)
    return sessions


def test_an_uncached_engine_directory_keeps_its_table_until_close(archive, tmp_path, monkeypatch):
    sessions = fake_onnx_runtime(monkeypatch, tmp_path, gpu=None, fail_rows=None)
    runtime = onnx_trt.TensorRtRuntime(archive, device="cuda")
    runtime.load()
    (session,) = sessions
    assert session.trt_options["trt_engine_cache_enable"] == "False"
    directory = Path(session.trt_options["trt_engine_cache_path"])
    # an engine ONNX Runtime builds at a first run reads the table from here then
    assert (directory / TABLE).read_bytes() == b"ranges"
    assert runtime.infer({"x": np.ones((2, 4), np.float32)})["y"].shape == (2, 3)
    assert (directory / TABLE).is_file()
    runtime.close()
    assert not directory.exists()
    runtime.close()  # twice is harmless


def test_a_failing_engine_build_is_an_archive_error_naming_the_shapes(
    archive, tmp_path, monkeypatch
):
    fake_onnx_runtime(monkeypatch, tmp_path, gpu="NVIDIA H200 sm_90 143771 MiB", fail_rows=8)
    runtime = onnx_trt.TensorRtRuntime(archive, device="cuda")
    with pytest.raises(ArchiveError) as info:
        runtime.load()
    message = info.value.message
    assert message.startswith("ONNX Runtime cannot build the TensorRT engines of ")
    assert "its run at input shapes x:8x4 failed: [ONNXRuntimeError]" in message
    # nothing half-built is published
    assert [p.name for p in (tmp_path / "cache" / "tensorrt").iterdir() if p.is_dir()] == []
