"""TensorRT's engines kept between loads: where, and what keys them.

Building a TensorRT engine takes seconds to minutes; ONNX Runtime's TensorRT provider can
write the engine (with its profile and TensorRT's timing cache) to ``trt_engine_cache_path``
and load it next time. torchferry keeps that directory in its cache (``weight_cache``:
``$TORCHFERRY_CACHE_DIR/tensorrt/KEY/``), not in the archive's version directory: a version
is exactly its manifest's file list, every file hashed and, when signed, covered by
``model.sig``, which refuses added files; a store may be read-only (KServe's
``/mnt/models``) or shared by machines with different GPUs. So one engine entry serves every
version and store with the same graph, on the same kind of GPU.

An entry is keyed by everything the engine depends on (:class:`EngineKey`): the GPU (name,
compute capability and memory: an engine built on a larger card may not load on a smaller
one of the same architecture), the input shapes profile, the precision and the calibration
table's SHA-256, the ONNX Runtime and TensorRT versions, the graph's SHA-256 as the
verified manifest lists it, and ONNX Runtime's graph optimization level (its basic rewrites
run before the graph is split between the providers: one file at two levels can give
TensorRT two graphs). ONNX Runtime's own warning is that an engine is valid for that and
nothing else. The entry is a ``weight_cache`` directory: built once under a lock (the
workers that start together build it once), published by one rename, its files read-only
and checked against ``sidecar.json`` (a swapped engine file would run someone else's code
on the GPU). ``key.json`` in it says what it was built for.

When the GPU or TensorRT version cannot be read (PyTorch sees no CUDA device; no TensorRT
library this process can name), nothing is cached: the engine is built at every load.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchferry.runtimes.trt_options import Precision, ShapeProfile
from torchferry.runtimes.weight_cache import cache_key, cached_entry

log = logging.getLogger(__name__)

KIND = "tensorrt"
KEY_NAME = "key.json"
#: The TensorRT library by the names ONNX Runtime's provider loads (TensorRT 10, then 8).
_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")
#: Where pip installs TensorRT, when its library is not on the loader's path.
_DISTRIBUTIONS = (
    "tensorrt",
    "tensorrt-cu13",
    "tensorrt-cu13-libs",
    "tensorrt-cu12",
    "tensorrt-cu12-libs",
    "tensorrt-cu11",
    "tensorrt-libs",
)


@dataclass(frozen=True)
class EngineKey:
    """Everything a TensorRT engine depends on (see the module's docstring)."""

    gpu: str
    profile: ShapeProfile
    precision: Precision
    #: SHA-256 of the int8 calibration table, when there is one.
    calibration_sha256: str | None
    onnxruntime: str
    tensorrt: str
    #: The graph's SHA-256 (with its external data's), from the verified manifest.
    graph_sha256: str
    #: ONNX Runtime's graph optimization level, by the manifest's name: the basic rewrites
    #: run before ONNX Runtime gives TensorRT its part, so one graph file at two levels can
    #: give TensorRT two graphs (autotune's ort-level-* variants share one file).
    graph_optimization_level: str

    def parts(self) -> dict[str, str]:
        return {
            "gpu": self.gpu,
            "profile_min_shapes": self.profile.min,
            "profile_opt_shapes": self.profile.opt,
            "profile_max_shapes": self.profile.max,
            "fp16": str(self.precision.fp16),
            "int8": str(self.precision.int8),
            "calibration_sha256": self.calibration_sha256 or "",
            "onnxruntime": self.onnxruntime,
            "tensorrt": self.tensorrt,
            "graph_sha256": self.graph_sha256,
            "graph_optimization_level": self.graph_optimization_level,
        }

    def directory_name(self) -> str:
        return cache_key(KIND, *(f"{k}={v}" for k, v in self.parts().items()))


def gpu_identity(index: int) -> str | None:
    """``NAME sm_XY MEMORY MiB`` of CUDA device ``index`` as PyTorch sees it (torch is always
    installed; no ``nvidia-smi``); None when PyTorch sees no such device."""
    import torch

    try:
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            return None
        props = torch.cuda.get_device_properties(index)
    except (RuntimeError, AssertionError) as exc:  # a driver in a bad state
        log.warning("cannot read CUDA device %d's properties: %s", index, exc)
        return None
    return f"{props.name} sm_{props.major}{props.minor} {props.total_memory >> 20} MiB"


@functools.cache
def tensorrt_version() -> str | None:
    """The TensorRT version: ``getInferLibVersion()`` of the library the provider will load,
    else the version of a pip-installed TensorRT; None when neither is found."""
    for name in _LIBRARIES:
        try:
            library = ctypes.CDLL(name)
            version = library.getInferLibVersion
        except (OSError, AttributeError):
            continue
        version.restype = ctypes.c_int32
        version.argtypes = []
        return f"libnvinfer {version()}"
    for distribution in _DISTRIBUTIONS:
        try:
            return f"{distribution} {importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def engine_entry(key: EngineKey, build: Callable[[Path], None]) -> Path:
    """The verified entry of ``key``, built by ``build(empty_dir)`` (which writes the
    engines there) if missing or failing its check. Raises ``UnsafeCache`` (and ``OSError``)
    when the cache cannot be used."""

    def populate(directory: Path) -> None:
        (directory / KEY_NAME).write_text(json.dumps(key.parts(), indent=2), encoding="utf-8")
        build(directory)

    # sealed: ONNX Runtime is given the entry as its engine cache path, and writes an engine
    # it builds while serving there; in a read-only directory the write fails (ONNX Runtime
    # does not check it: the engine is used unsaved) and the verified entry stays as it was
    return cached_entry(key.directory_name(), key.graph_sha256, populate, kind=KIND, sealed=True)


__all__ = ["KEY_NAME", "KIND", "EngineKey", "engine_entry", "gpu_identity", "tensorrt_version"]
