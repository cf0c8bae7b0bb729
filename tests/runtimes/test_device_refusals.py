"""A GPU that is asked for and not usable is refused at load, saying what is needed, never
run on the CPU instead; and ``--runtime onnxruntime-trt`` runs the archive's ONNX graph.
End to end through ``load_runtime`` and the server's build step, on this (CPU) machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gpu_marks import without_cuda, without_ort_cuda, without_ort_trt
from linear_archive import write_linear_archive

from torchferry.archive.formats import EAGER, ONNXRUNTIME, ONNXRUNTIME_TRT, TORCHSCRIPT
from torchferry.archive.manifest import Manifest
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError, DeviceUnavailable, ModelLoadFailed
from torchferry.runtimes import load_runtime, runtime_class
from torchferry.serving.build import build_version, runtime_for
from torchferry.serving.settings import ServerSettings
from torchferry.signature import ModelSignature, TensorSpec


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return write_linear_archive(ModelStore(tmp_path_factory.mktemp("store")), "lin")


@without_ort_cuda
def test_onnx_on_cuda_without_onnxruntime_gpu_is_refused(archive):
    with pytest.raises(DeviceUnavailable) as info:
        load_runtime(archive, device="cuda:1")
    message = info.value.message
    assert message.startswith(
        "--device cuda:1 needs ONNX Runtime's CUDAExecutionProvider, which this onnxruntime"
    )
    assert "install onnxruntime-gpu in place of onnxruntime" in message


@without_ort_trt
def test_tensorrt_without_its_provider_is_refused(archive):
    with pytest.raises(DeviceUnavailable) as info:
        load_runtime(archive, runtime=ONNXRUNTIME_TRT, device="cuda")
    message = info.value.message
    assert message.startswith(
        "--runtime onnxruntime-trt --device cuda needs ONNX Runtime's "
        "TensorrtExecutionProvider, which this onnxruntime"
    )
    assert "with NVIDIA TensorRT" in message


def test_tensorrt_on_the_cpu_is_refused(archive):
    with pytest.raises(
        DeviceUnavailable, match="runs on an NVIDIA GPU: serve it with --device cuda"
    ):
        load_runtime(archive, runtime=ONNXRUNTIME_TRT)
    # and so without loading (a memory budget loads on the first request)
    with pytest.raises(DeviceUnavailable, match="runs on an NVIDIA GPU"):
        runtime_class(ONNXRUNTIME_TRT)(archive).check()


@without_cuda
@pytest.mark.parametrize("engine", [TORCHSCRIPT, EAGER])
def test_torch_on_cuda_without_a_cuda_device_is_refused(archive, engine):
    runtime = runtime_class(engine)(archive, device="cuda")
    for step in (runtime.check, runtime.load):
        with pytest.raises(DeviceUnavailable) as info:
            step()
        assert info.value.message.startswith("--device cuda: PyTorch sees no CUDA device (")


@pytest.mark.parametrize("engine", [ONNXRUNTIME, ONNXRUNTIME_TRT, TORCHSCRIPT, EAGER])
def test_a_malformed_device_is_refused_by_every_engine(archive, engine):
    with pytest.raises(DeviceUnavailable, match="--device 'gpu:0' is not a device"):
        runtime_class(engine)(archive, device="gpu:0").check()


@without_ort_cuda
def test_the_server_refuses_at_start_and_a_management_load_says_why(archive):
    settings = ServerSettings(device="cuda", threads=1)
    with pytest.raises(DeviceUnavailable):  # at start: the error itself
        build_version(archive, settings, warm_up=False)
    with pytest.raises(ModelLoadFailed, match="needs ONNX Runtime's CUDAExecutionProvider"):
        build_version(archive, settings, warm_up=True)


def test_the_tensorrt_runtime_runs_the_onnx_graph(archive):
    manifest = archive.manifest
    assert manifest.graphs == {ONNXRUNTIME: "model.onnx", TORCHSCRIPT: "model.pt"}
    assert manifest.has_graph(ONNXRUNTIME_TRT)
    assert manifest.graph_file(ONNXRUNTIME_TRT) == "model.onnx"
    assert manifest.graph_files(ONNXRUNTIME_TRT) == ["model.onnx"]
    assert runtime_for(manifest, ServerSettings(runtime=ONNXRUNTIME_TRT)) == ONNXRUNTIME_TRT
    only_torchscript = manifest.model_copy(
        update={"runtime": TORCHSCRIPT, "graphs": {TORCHSCRIPT: "model.pt"}}
    )
    # where the archive has no ONNX graph, its own runtime serves it
    assert runtime_for(only_torchscript, ServerSettings(runtime=ONNXRUNTIME_TRT)) == TORCHSCRIPT
    with pytest.raises(ArchiveError) as info:
        only_torchscript.graph_file(ONNXRUNTIME_TRT)
    assert info.value.message == (
        "model 'lin' version 1 has no graph for runtime 'onnxruntime-trt' (it runs the "
        "'onnxruntime' graph); it has ['torchscript']"
    )


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """A TorchScript model whose output is its input tensor: whether a request's array was
    copied on the way in shows in whether the answer shares its memory."""
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, 4))
    manifest = Manifest(
        name="identity",
        version=1,
        runtime=TORCHSCRIPT,
        graphs={TORCHSCRIPT: "model.pt"},
        signature=ModelSignature(inputs=(spec,), outputs=(spec.model_copy(update={"name": "y"}),)),
        source="tests",
    )
    store = ModelStore(tmp_path_factory.mktemp("store"))
    return store.write(
        manifest, lambda d: torch.jit.save(torch.jit.script(Identity()), d / "model.pt")
    )


def test_on_the_cpu_torch_inputs_are_the_request_arrays_themselves(identity):
    runtime = load_runtime(identity, threads=1)
    try:
        assert runtime.pinned is None  # no pinned buffers
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        y = runtime.infer({"x": x})["y"]
        np.testing.assert_array_equal(y, x)
        assert np.shares_memory(y, x)  # the request's array, not a copy of it
        # a model may write its inputs: a read-only array (a binary body) or a strided one
        # is copied first, never handed over
        read_only = x.copy()
        read_only.flags.writeable = False
        strided = np.arange(16, dtype=np.float32).reshape(2, 8)[:, ::2]
        for array in (read_only, strided):
            y = runtime.infer({"x": array})["y"]
            np.testing.assert_array_equal(y, array)
            assert not np.shares_memory(y, array)
    finally:
        runtime.close()
