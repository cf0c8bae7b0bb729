"""Engines behind the ``Runtime`` interface, chosen by the manifest's ``runtime`` field.

Engines are imported only when a model needs them: a server of ONNX models never imports
torch, and the CLI's client commands start without either engine.
"""

from __future__ import annotations

import importlib

from torchferry.archive.formats import EAGER, ONNXRUNTIME, ONNXRUNTIME_TRT, TORCHSCRIPT
from torchferry.archive.store import Archive
from torchferry.errors import ArchiveError
from torchferry.runtimes.base import Runtime, default_threads

#: Runtime name -> "module:Class". A new engine is a new file plus an entry here (and its
#: name and file in :mod:`torchferry.archive.formats`).
RUNTIMES: dict[str, str] = {
    ONNXRUNTIME: "torchferry.runtimes.onnx:OnnxRuntime",
    ONNXRUNTIME_TRT: "torchferry.runtimes.onnx_trt:TensorRtRuntime",
    TORCHSCRIPT: "torchferry.runtimes.torchscript:TorchScriptRuntime",
    EAGER: "torchferry.runtimes.eager:EagerRuntime",
}


def runtime_class(name: str) -> type[Runtime]:
    try:
        target = RUNTIMES[name]
    except KeyError:
        raise ArchiveError(
            f"unknown runtime {name!r}; known runtimes are {sorted(RUNTIMES)}"
        ) from None
    module_name, _, class_name = target.partition(":")
    cls: type[Runtime] = getattr(importlib.import_module(module_name), class_name)
    return cls


def load_runtime(
    archive: Archive,
    runtime: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    trust_code: bool = False,
    share_weights: bool = True,
) -> Runtime:
    """Instantiate and load the archive's runtime (or ``runtime`` when given).

    ``trust_code`` lets Python carried in the archive run (the eager runtime's factory); a
    runtime that needs it refuses with ``UntrustedCode`` without it. ``share_weights``: see
    ``Runtime.share_weights``.
    """
    engine = runtime_class(runtime or archive.manifest.runtime)(
        archive, device=device, threads=threads, trust_code=trust_code, share_weights=share_weights
    )
    engine.load()
    return engine


__all__ = ["RUNTIMES", "Runtime", "default_threads", "load_runtime", "runtime_class"]
