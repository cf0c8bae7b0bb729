"""What the GPU runtimes hand ONNX Runtime, checked without a GPU: the providers and their
options, the TensorRT shape profile and precision, and the engine cache's key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from torchferry.archive.formats import ONNXRUNTIME, ONNXRUNTIME_TRT
from torchferry.archive.manifest import FileEntry, Manifest
from torchferry.archive.store import Archive
from torchferry.devices import CPU, Device
from torchferry.errors import ArchiveError, DeviceUnavailable
from torchferry.runtimes import onnx_trt
from torchferry.runtimes.onnx_providers import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    providers_for,
    require_available,
    require_started,
)
from torchferry.runtimes.trt_cache import EngineKey
from torchferry.runtimes.trt_options import (
    Precision,
    ShapeProfile,
    precision_of,
    profile_feeds,
    shape_profile,
    tensorrt_options,
)
from torchferry.signature import ModelSignature, TensorSpec

IMAGE = ModelSignature(
    inputs=(TensorSpec(name="image", datatype="FP32", shape=(-1, 3, 224, 224)),),
    outputs=(TensorSpec(name="logits", datatype="FP32", shape=(-1, 1000)),),
)
TWO_INPUTS = ModelSignature(
    inputs=(
        TensorSpec(name="ids", datatype="INT64", shape=(-1, 16)),
        TensorSpec(name="scale", datatype="FP32", shape=(2,)),
    ),
    outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 4)),),
)


# -- providers ------------------------------------------------------------------------------
def test_the_cpu_runs_alone_and_cuda_n_picks_its_device_with_the_cpu_behind():
    assert providers_for(CPU) == [(CPU_PROVIDER, {})]
    assert providers_for(Device("cuda", 2)) == [
        (CUDA_PROVIDER, {"device_id": "2"}),
        (CPU_PROVIDER, {}),
    ]


def test_a_provider_this_onnxruntime_lacks_is_refused_saying_what_is_needed():
    cpu_wheel = ["AzureExecutionProvider", CPU_PROVIDER]
    require_available(providers_for(CPU), cpu_wheel, "--device cpu", "1.0")  # nothing needed
    with pytest.raises(DeviceUnavailable) as info:
        require_available(providers_for(Device("cuda", 0)), cpu_wheel, "--device cuda", "1.0")
    message = info.value.message
    assert message.startswith(
        "--device cuda needs ONNX Runtime's CUDAExecutionProvider, which this onnxruntime 1.0 "
        "does not have (it offers AzureExecutionProvider, CPUExecutionProvider): install "
        "onnxruntime-gpu in place of onnxruntime"
    )
    trt = [(TENSORRT_PROVIDER, {}), (CUDA_PROVIDER, {})]
    gpu_wheel = [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]
    require_available(trt, gpu_wheel, "--runtime onnxruntime-trt", "1.0")
    with pytest.raises(DeviceUnavailable, match="needs ONNX Runtime's TensorrtExecutionProvider"):
        require_available(trt, [CUDA_PROVIDER, CPU_PROVIDER], "--runtime onnxruntime-trt", "1.0")


def test_a_provider_onnx_runtime_dropped_is_refused_not_run_on_the_cpu():
    asked = providers_for(Device("cuda", 0))
    require_started(asked, [CUDA_PROVIDER, CPU_PROVIDER], "--device cuda")
    with pytest.raises(DeviceUnavailable) as info:
        require_started(asked, [CPU_PROVIDER], "--device cuda")
    assert info.value.message.startswith(
        "--device cuda: ONNX Runtime did not start its CUDAExecutionProvider (the session "
        "would run on CPUExecutionProvider)"
    )
    assert "Not running on the CPU instead" in info.value.message


# -- the shape profile ----------------------------------------------------------------------
def test_the_profile_runs_from_batch_1_to_the_max_batch_size():
    profile = shape_profile(IMAGE, 32, {})
    assert profile == ShapeProfile(
        min="image:1x3x224x224", opt="image:32x3x224x224", max="image:32x3x224x224", max_rows=32
    )
    # only dynamic inputs are named; a fixed one needs no range
    assert shape_profile(TWO_INPUTS, 8, {}) == ShapeProfile("ids:1x16", "ids:8x16", "ids:8x16", 8)


def test_no_dynamic_input_needs_no_profile():
    fixed = ModelSignature(
        inputs=(TensorSpec(name="x", datatype="FP32", shape=(1, 4)),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(1, 4)),),
    )
    profile = shape_profile(fixed, 32, {})
    assert not profile and profile.max_rows is None
    assert "trt_profile_min_shapes" not in tensorrt_options(
        Device("cuda", 0), Precision(), profile, Path("/c"), cache=True
    )


def test_other_dynamic_dims_need_the_profile_given():
    text = ModelSignature(
        inputs=(TensorSpec(name="ids", datatype="INT64", shape=(-1, -1)),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 2)),),
    )
    with pytest.raises(ArchiveError, match="input 'ids' has dynamic dimensions besides the batch"):
        shape_profile(text, 8, {})
    given = {
        "trt_profile_min_shapes": "ids:1x1",
        "trt_profile_opt_shapes": "ids:4x128",
        "trt_profile_max_shapes": "ids:8x512",
    }
    assert shape_profile(text, 8, given) == ShapeProfile("ids:1x1", "ids:4x128", "ids:8x512", 8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trt_profile_min_shapes": "ids:1x1"}, "go together: give all three"),
        (
            {"trt_profile_min_shapes": "ids:1", "trt_profile_opt_shapes": "ids:2",
             "trt_profile_max_shapes": "ids:4"},
            "must each have 2 dims with min <= opt <= max",
        ),
        (
            {"trt_profile_min_shapes": "ids:4x1", "trt_profile_opt_shapes": "ids:2x1",
             "trt_profile_max_shapes": "ids:8x1"},
            "must each have 2 dims with min <= opt <= max",
        ),
        (
            {"trt_profile_min_shapes": "ids:1x0", "trt_profile_opt_shapes": "ids:2x1",
             "trt_profile_max_shapes": "ids:8x1"},
            "'ids:1x0' is not NAME:DIMxDIM",
        ),
        (
            {"trt_profile_min_shapes": "x:1x1", "trt_profile_opt_shapes": "x:2x1",
             "trt_profile_max_shapes": "x:8x1"},
            "dynamic input 'ids' has no shapes",
        ),
    ],
)  # fmt: skip
def test_a_malformed_profile_is_refused(options, message):
    text = ModelSignature(
        inputs=(TensorSpec(name="ids", datatype="INT64", shape=(-1, -1)),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 2)),),
    )
    with pytest.raises(ArchiveError, match=message):
        shape_profile(text, 8, options)


def test_a_misspelt_profile_option_is_named_not_read_as_a_missing_profile():
    misspelt = {
        "trt_profile_min_shapes": "image:1x3x224x224",
        "trt_profile_opt_shapes": "image:8x3x224x224",
        "trt_profile_max_shape": "image:8x3x224x224",
    }
    with pytest.raises(ArchiveError, match="unknown TensorRT runtime option 'trt_profile_max_s"):
        shape_profile(IMAGE, 8, misspelt)


def test_the_profile_ends_are_fed_as_zeros():
    low, high = profile_feeds(TWO_INPUTS, shape_profile(TWO_INPUTS, 8, {}))
    assert low["ids"].shape == (1, 16) and high["ids"].shape == (8, 16)
    assert low["ids"].dtype == np.int64 and low["scale"].shape == high["scale"].shape == (2,)
    text = ModelSignature(
        inputs=(TensorSpec(name="s", datatype="BYTES", shape=(-1,)),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1,)),),
    )
    assert profile_feeds(text, shape_profile(text, 4, {})) == []


# -- precision ------------------------------------------------------------------------------
def test_precision_comes_from_the_runtime_options():
    assert precision_of({}, []) == Precision()
    assert precision_of({"trt_fp16": True}, []) == Precision(fp16=True)
    table = "trt/calibration.flatbuffers"
    options = {"trt_int8": True, "trt_int8_calibration_table_name": table}
    precision = precision_of(options, [table, "model.onnx"])
    assert precision == Precision(int8=True, calibration_table=table)
    assert precision.staged_table == "calibration.flatbuffers"
    # other engines' options are theirs
    assert precision_of({"graph_optimization_level": "basic"}, []) == Precision()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trt_fp61": True}, "unknown TensorRT runtime option 'trt_fp61'"),
        ({"trt_fp16": "yes"}, "trt_fp16 is 'yes': expected true or false"),
        ({"trt_int8_calibration_table_name": "t"}, "is given without trt_int8: true"),
        (
            {"trt_int8": True, "trt_int8_calibration_table_name": "missing"},
            "names 'missing', which is not a file the archive lists",
        ),
    ],
)
def test_a_malformed_precision_is_refused(options, message):
    with pytest.raises(ArchiveError, match=message):
        precision_of(options, ["model.onnx"])


# -- the provider's options -----------------------------------------------------------------
def test_tensorrt_options_as_onnx_runtime_parses_them():
    profile = shape_profile(IMAGE, 16, {})
    precision = Precision(fp16=True, int8=True, calibration_table="t/calibration.flatbuffers")
    options = tensorrt_options(Device("cuda", 1), precision, profile, Path("/c/k"), cache=True)
    assert options == {
        "device_id": "1",
        "trt_fp16_enable": "True",
        "trt_int8_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": "/c/k",
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": "/c/k",
        "trt_int8_calibration_table_name": "calibration.flatbuffers",
        "trt_int8_use_native_calibration_table": "False",
        "trt_profile_min_shapes": "image:1x3x224x224",
        "trt_profile_opt_shapes": "image:16x3x224x224",
        "trt_profile_max_shapes": "image:16x3x224x224",
    }
    uncached = tensorrt_options(Device("cuda", 0), Precision(), profile, Path("/t"), cache=False)
    assert uncached["trt_engine_cache_enable"] == uncached["trt_timing_cache_enable"] == "False"
    assert uncached["trt_fp16_enable"] == uncached["trt_int8_enable"] == "False"
    assert "trt_int8_calibration_table_name" not in uncached


# -- the engine cache's key -----------------------------------------------------------------
KEY = EngineKey(
    gpu="NVIDIA H200 sm_90 143771 MiB",
    profile=shape_profile(IMAGE, 32, {}),
    precision=Precision(fp16=True),
    calibration_sha256=None,
    onnxruntime="1.22.0",
    tensorrt="libnvinfer 100900",
    graph_sha256="a" * 64,
    graph_optimization_level="all",
)


@pytest.mark.parametrize(
    "change",
    [
        {"gpu": "NVIDIA A100-SXM4-80GB sm_80 81050 MiB"},
        {"gpu": "NVIDIA H200 sm_90 71885 MiB"},  # same chip, less memory
        {"profile": shape_profile(IMAGE, 64, {})},
        {"precision": Precision()},
        {"precision": Precision(fp16=True, int8=True)},
        {"calibration_sha256": "c" * 64},
        {"onnxruntime": "1.22.1"},
        {"tensorrt": "libnvinfer 101000"},
        {"graph_sha256": "b" * 64},
        {"graph_optimization_level": "basic"},
    ],
)
def test_the_cache_key_changes_with_each_thing_the_engine_depends_on(change):
    assert KEY.directory_name() != dataclasses.replace(KEY, **change).directory_name()


def test_the_cache_key_is_stable_and_names_what_it_keys():
    assert KEY.directory_name() == dataclasses.replace(KEY).directory_name()
    assert len(KEY.directory_name()) == 32
    parts = KEY.parts()
    assert parts["gpu"] == "NVIDIA H200 sm_90 143771 MiB"
    assert parts["profile_max_shapes"] == "image:32x3x224x224"
    assert parts["tensorrt"] == "libnvinfer 100900" and parts["fp16"] == "True"


def test_one_graph_at_two_optimization_levels_has_two_engine_entries(tmp_path, monkeypatch):
    # autotune's ort-level-* variants share the graph file, so its SHA-256 cannot tell them
    # apart: ONNX Runtime gives TensorRT a differently rewritten graph at each level
    monkeypatch.setattr(onnx_trt, "gpu_identity", lambda index: KEY.gpu)
    monkeypatch.setattr(onnx_trt, "tensorrt_version", lambda: KEY.tensorrt)
    (tmp_path / "model.onnx").write_bytes(b"a graph")  # only its listed hash is read
    manifest = Manifest(
        name="image",
        version=1,
        runtime=ONNXRUNTIME_TRT,
        graphs={ONNXRUNTIME: "model.onnx"},
        signature=IMAGE,
        files={"model.onnx": FileEntry(sha256="a" * 64, size=7)},
    )
    profile = shape_profile(IMAGE, 8, {})

    def key(options: dict[str, str]) -> EngineKey:
        archive = Archive(tmp_path, manifest.model_copy(update={"runtime_options": options}))
        runtime = onnx_trt.TensorRtRuntime(archive, device="cuda")
        built = runtime._engine_key(Device("cuda", 0), Precision(), profile)
        assert built is not None
        return built

    default, basic = key({}), key({"graph_optimization_level": "basic"})
    assert default.graph_sha256 == basic.graph_sha256 == "a" * 64
    assert (default.graph_optimization_level, basic.graph_optimization_level) == ("all", "basic")
    assert default.directory_name() != basic.directory_name()
    assert key({"graph_optimization_level": "all"}) == default  # the default, named
