"""The TensorRT engine cache's entries, without a GPU: a fake build stands in for ONNX
Runtime's. An entry is sealed (its directory read-only as well as its files), because ONNX
Runtime is handed it as a directory to write engines into; the weights cache's entries,
which no engine writes into, keep their owner-writable directory."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from torchferry.runtimes.trt_cache import KEY_NAME, KIND, EngineKey, engine_entry
from torchferry.runtimes.trt_options import Precision, ShapeProfile
from torchferry.runtimes.weight_cache import CACHE_ENV, RECORD_NAME, cached_entry

KEY = EngineKey(
    gpu="NVIDIA H200 sm_90 143771 MiB",
    profile=ShapeProfile("x:1x4", "x:8x4", "x:8x4", 8),
    precision=Precision(),
    calibration_sha256=None,
    onnxruntime="1.22.0",
    tensorrt="libnvinfer 100900",
    graph_sha256="a" * 64,
    graph_optimization_level="all",
)
ENGINE = "TensorrtExecutionProvider_TRTKernel_graph_0.engine"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def build_engine(directory: Path) -> None:
    (directory / ENGINE).write_bytes(b"engine")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_tensorrt_entry_is_sealed_and_a_weights_entry_is_not(cache):
    entry = engine_entry(KEY, build_engine)
    assert entry.parent == cache / KIND
    assert mode(entry) == 0o500
    assert {p.name: mode(p) for p in entry.iterdir()} == {
        ENGINE: 0o400,
        KEY_NAME: 0o400,
        RECORD_NAME: 0o400,
    }
    weights = cached_entry("k" * 32, "b" * 64, lambda d: (d / "model.onnx.data").write_bytes(b"w"))
    assert mode(weights) == 0o700


def modes_bind(directory: Path) -> bool:
    """Whether this process is held back by a directory's mode (root is not)."""
    probe = directory / "probe"
    probe.mkdir(mode=0o500)
    try:
        (probe / "file").touch()
    except PermissionError:
        return True
    return False


def test_an_engine_written_while_serving_cannot_land_in_a_verified_entry(cache, tmp_path):
    if not modes_bind(tmp_path):
        pytest.skip("this process writes whatever the modes say (root)")
    entry = engine_entry(KEY, build_engine)
    with pytest.raises(PermissionError):
        (entry / "TensorrtExecutionProvider_TRTKernel_graph_1.engine").write_bytes(b"new")


def test_an_entry_with_an_added_file_is_rebuilt_and_the_old_one_removed(cache):
    entry = engine_entry(KEY, build_engine)
    entry.chmod(0o700)  # as whoever could write to it (root does, whatever the mode)
    (entry / "TensorrtExecutionProvider_TRTKernel_graph_1.engine").write_bytes(b"new")
    entry.chmod(0o500)
    assert engine_entry(KEY, build_engine) == entry
    assert sorted(p.name for p in entry.iterdir()) == sorted([ENGINE, KEY_NAME, RECORD_NAME])
    assert mode(entry) == 0o500
    assert [p.name for p in (cache / KIND).iterdir() if p.is_dir()] == [entry.name]


def test_a_sealed_staging_directory_left_by_a_killed_build_is_removed(cache):
    entry = engine_entry(KEY, build_engine)
    other = dataclasses.replace(KEY, graph_optimization_level="basic")
    leftover = entry.parent / f".staging-{other.directory_name()}-killed"
    leftover.mkdir()
    build_engine(leftover)
    leftover.chmod(0o500)  # killed between sealing and publishing
    engine_entry(other, build_engine)
    assert not leftover.exists()
