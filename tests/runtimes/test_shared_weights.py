"""Workers share one mapped copy of a model's weights: an ONNX graph's (``runtimes/onnx_shared``)
and a TorchScript module's (``runtimes/torch_shared``)."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from torchferry.archive import Manifest, ModelStore
from torchferry.archive.store import Archive
from torchferry.cli import build_parser
from torchferry.cli.serve_cmd import settings_from_args
from torchferry.export.weights import save_weights
from torchferry.runtimes import Runtime, load_runtime, weight_cache
from torchferry.runtimes.onnx_shared import DATA
from torchferry.runtimes.weight_cache import CACHE_ENV, RECORD_NAME
from torchferry.signature import ModelSignature, TensorSpec

CHANNELS = 64  # a 64x64x3x3 FP32 kernel: 144 KiB, mapped by ONNX Runtime, not inlined


def conv_graph(seed: int = 0) -> onnx.ModelProto:
    """Two 3x3 convolutions with a ReLU: what the ``all`` level re-lays out (NCHWc)."""
    rng = np.random.default_rng(seed)
    kernels = [
        numpy_helper.from_array(
            rng.normal(scale=0.05, size=(CHANNELS, CHANNELS, 3, 3)).astype(np.float32), name
        )
        for name in ("w1", "w2")
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    shape = ["N", CHANNELS, 8, 8]
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        kernels,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


def conv_manifest(name: str, runtime: str, graph: str, options: dict[str, object]) -> Manifest:
    """A manifest for the two convolutions: x and y of shape [N, 64, 8, 8]."""
    spec = (-1, CHANNELS, 8, 8)
    return Manifest(
        name=name,
        version=1,
        runtime=runtime,
        graphs={runtime: graph},
        signature=ModelSignature(
            inputs=(TensorSpec(name="x", datatype="FP32", shape=spec),),
            outputs=(TensorSpec(name="y", datatype="FP32", shape=spec),),
        ),
        runtime_options=options,
        source="tests",
    )


def write_archive(store: ModelStore, name: str, options: dict[str, object]) -> Archive:
    manifest = conv_manifest(name, "onnxruntime", "model.onnx", options)
    graph = conv_graph()
    return store.write(manifest, lambda directory: onnx.save(graph, str(directory / "model.onnx")))


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Archive]:
    store = ModelStore(tmp_path_factory.mktemp("store"))
    return {
        "convs": write_archive(store, "convs", {}),
        "opted-out": write_archive(store, "optedout", {"share_weights": False}),
        "basic": write_archive(store, "basic", {"graph_optimization_level": "basic"}),
    }


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


X = np.random.default_rng(1).normal(size=(3, CHANNELS, 8, 8)).astype(np.float32)


def mapped_data_files() -> list[str]:
    maps = Path("/proc/self/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if line.endswith(DATA)})


def run(runtime: Runtime) -> np.ndarray:
    return runtime.infer({"x": X})["y"]


def test_a_shared_session_maps_its_weights_and_answers_as_the_private_one(archives, cache):
    private = load_runtime(archives["convs"], threads=1, share_weights=False)
    expected = run(private)
    private.close()
    assert mapped_data_files() == []

    shared = load_runtime(archives["convs"], threads=1)
    try:
        (data_file,) = mapped_data_files()
        assert Path(data_file).is_relative_to(cache)
        np.testing.assert_allclose(run(shared), expected, rtol=1e-5, atol=1e-5)
        # the memory helper's eviction: released, then loaded again from the same entry
        shared.close()
        assert mapped_data_files() == []
        shared.load()
        assert mapped_data_files() == [data_file]
        np.testing.assert_allclose(run(shared), expected, rtol=1e-5, atol=1e-5)
    finally:
        shared.close()


@pytest.mark.parametrize("location", [DATA, "weights.bin"])
def test_graphs_with_external_data_are_keyed_by_their_weights_too(tmp_path, cache, location):
    """Same graph, different weights in its external data file (named after the graph, or
    not, as an imported graph's may be): each gets its own entry."""
    store = ModelStore(tmp_path / "store")

    def write(name: str, seed: int) -> Archive:
        graph = conv_graph(seed)
        manifest = conv_manifest(name, "onnxruntime", "model.onnx", {})
        return store.write(
            manifest,
            lambda d: onnx.save(
                graph, str(d / "model.onnx"), save_as_external_data=True, location=location
            ),
        )

    answers = []
    for name, seed in (("one", 1), ("two", 2)):
        archive = write(name, seed)
        assert location in archive.manifest.files
        private = load_runtime(archive, threads=1, share_weights=False)
        shared = load_runtime(archive, threads=1)
        np.testing.assert_allclose(run(shared), run(private), rtol=1e-4, atol=1e-5)
        answers.append(run(shared))
        private.close()
        shared.close()
    assert not np.allclose(answers[0], answers[1])
    assert len(list((cache / "weights").glob("*/" + DATA))) == 2


def test_a_tampered_cache_entry_is_rebuilt_not_used(archives, cache, caplog):
    expected = run(load_runtime(archives["convs"], threads=1, share_weights=False))
    load_runtime(archives["convs"], threads=1).close()
    (entry,) = (p for p in (cache / "weights").iterdir() if p.is_dir())
    data = entry / DATA
    data.chmod(0o600)
    tampered = bytearray(data.read_bytes())
    tampered[: len(tampered) // 2] = bytes(len(tampered) // 2)  # zeroed weights
    data.write_bytes(bytes(tampered))

    with caplog.at_level(logging.WARNING, logger="torchferry.runtimes.weight_cache"):
        runtime = load_runtime(archives["convs"], threads=1)
    try:
        assert "rebuilding" in caplog.text
        np.testing.assert_allclose(run(runtime), expected, rtol=1e-5, atol=1e-5)
        assert data.read_bytes() != bytes(tampered)
        assert (entry / RECORD_NAME).is_file()
    finally:
        runtime.close()


def test_the_manifest_and_the_server_can_opt_out(archives, cache):
    for runtime in (
        load_runtime(archives["opted-out"], threads=1),
        load_runtime(archives["convs"], threads=1, share_weights=False),
    ):
        try:
            assert not runtime.shares_weights()  # type: ignore[attr-defined]
            assert mapped_data_files() == []
        finally:
            runtime.close()
    assert not (cache / "weights").exists()
    parse = build_parser().parse_args
    assert settings_from_args(parse(["serve", "--store", "s"])).share_weights
    assert not settings_from_args(
        parse(["serve", "--store", "s", "--no-share-weights"])
    ).share_weights


def test_a_cache_others_can_write_is_not_trusted(archives, cache, caplog):
    cache.mkdir(mode=0o700)
    os.chmod(cache, 0o777)
    with caplog.at_level(logging.WARNING, logger="torchferry.runtimes.onnx"):
        runtime = load_runtime(archives["convs"], threads=1)
    try:
        assert "writable by others" in caplog.text
        assert mapped_data_files() == []
        assert run(runtime).shape == X.shape
    finally:
        runtime.close()


def test_a_symlinked_cache_is_not_trusted(archives, cache, tmp_path, caplog):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    cache.symlink_to(real)
    with caplog.at_level(logging.WARNING, logger="torchferry.runtimes.onnx"):
        runtime = load_runtime(archives["convs"], threads=1)
    try:
        assert "symbolic link" in caplog.text and mapped_data_files() == []
    finally:
        runtime.close()


def test_an_entry_is_hashed_once_and_leftover_staging_is_removed(archives, cache, monkeypatch):
    load_runtime(archives["convs"], threads=1).close()
    weights = cache / "weights"
    leftover = [weights / f".staging-{p.name}-killed" for p in weights.iterdir() if p.is_dir()]
    for path in leftover:
        path.mkdir()
        (path / DATA).write_bytes(b"half")
    hashed: list[Path] = []
    real_hash = weight_cache.hash_file
    monkeypatch.setattr(weight_cache, "hash_file", lambda p: hashed.append(p) or real_hash(p))
    load_runtime(archives["convs"], threads=1).close()
    assert hashed == []  # verified by the first load in this process: not hashed again
    assert leftover and not any(p.exists() for p in leftover)


def test_each_optimization_level_has_its_own_entry(archives, cache):
    # the same graph (same SHA-256) at two levels: an all-level entry holds NCHWc layouts
    for name in ("convs", "basic"):
        load_runtime(archives[name], threads=1).close()
    entries = [p for p in (cache / "weights").iterdir() if p.is_dir()]
    assert len(entries) == 2


class Convs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.second = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def write_torchscript(store: ModelStore, name: str, weights_of: torch.nn.Module) -> Archive:
    """A TorchScript archive of ``Convs`` (seed 0) whose safetensors hold ``weights_of``'s."""
    torch.manual_seed(0)
    module = Convs().eval()
    manifest = conv_manifest(name, "torchscript", "model.pt", {})

    def populate(directory: Path) -> None:
        torch.jit.script(module).save(str(directory / "model.pt"))
        save_weights(weights_of, directory / "weights.safetensors")

    return store.write(manifest, populate)


def mapped_weights_files() -> list[str]:
    maps = Path("/proc/self/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if line.endswith(".safetensors")})


def test_a_torchscript_module_maps_only_the_weights_equal_to_its_own(tmp_path):
    store = ModelStore(tmp_path)
    torch.manual_seed(0)
    same = write_torchscript(store, "same", Convs())
    torch.manual_seed(0)
    other = Convs()
    with torch.no_grad():
        other.second.weight.add_(1.0)  # one tensor differs from the module's own
    differs = write_torchscript(store, "differs", other)

    private = load_runtime(same, runtime="torchscript", threads=1, share_weights=False)
    expected = run(private)
    assert private.mapped_bytes == 0  # type: ignore[attr-defined]
    private.close()
    kernel = CHANNELS * CHANNELS * 9 * 4
    for archive, mapped in (
        (same, 2 * kernel + 2 * CHANNELS * 4),
        (differs, kernel + 2 * CHANNELS * 4),
    ):
        runtime = load_runtime(archive, runtime="torchscript", threads=1)
        try:
            assert runtime.mapped_bytes == mapped  # type: ignore[attr-defined]
            assert mapped_weights_files() == [str(archive.path / "weights.safetensors")]
            np.testing.assert_allclose(run(runtime), expected, rtol=1e-5, atol=1e-5)
        finally:
            runtime.close()


def test_two_served_workers_map_the_same_file(tmp_path, start_server):
    store = ModelStore(tmp_path / "store")
    write_archive(store, "convs", {})
    args = ["--store", str(store.root), "--workers", "2", "--no-grpc", "--no-metrics"]
    args += ["--no-management", "--log-level", "info"]
    with start_server(args, tmp_path / "server.log") as server:
        deadline = time.monotonic() + 30
        while (
            len(pids := set(re.findall(r"worker \d+ serving \(pid (\d+)\)", server.output()))) < 2
        ):
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        mapped = {
            pid: {
                line.split()[-1]
                for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                if line.endswith(DATA)
            }
            for pid in pids
        }
    (first, second) = mapped.values()
    assert first == second and len(first) == 1, mapped
    assert Path(os.environ[CACHE_ENV]) in Path(next(iter(first))).parents
