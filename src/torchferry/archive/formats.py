"""The runtimes a manifest can name, and the file each one runs, by convention.

This is the one place these names are spelled: the manifest's ``runtime`` field and the keys
of its ``graphs`` are these constants, export and import write the files named here, and
``torchferry.runtimes.RUNTIMES`` maps the same names to their engines. It imports nothing,
so every layer may use it without loading an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

#: ONNX Runtime on ``model.onnx``.
ONNXRUNTIME: Final = "onnxruntime"
#: TorchScript (``torch.jit.load``) on ``model.pt``.
TORCHSCRIPT: Final = "torchscript"
#: ONNX Runtime with NVIDIA TensorRT (then CUDA, then the CPU, for what TensorRT cannot
#: run) on the ``onnxruntime`` graph: it has no graph of its own (``GRAPH_OF``).
ONNXRUNTIME_TRT: Final = "onnxruntime-trt"
#: Eager PyTorch: the ``nn.Module`` rebuilt from the manifest's ``factory`` (Python carried
#: in the archive under ``code/``) and ``weights.safetensors``.
EAGER: Final = "eager"

ONNX_FILE: Final = "model.onnx"
TORCHSCRIPT_FILE: Final = "model.pt"
#: The eager weights, for the eager runtime, optimization and re-export (never pickled).
WEIGHTS_FILE: Final = "weights.safetensors"

#: Runtime name -> the file it loads. For ``eager`` that is the weights; the code it also
#: needs is the manifest's ``factory``.
GRAPH_FILES: Final[Mapping[str, str]] = MappingProxyType(
    {ONNXRUNTIME: ONNX_FILE, TORCHSCRIPT: TORCHSCRIPT_FILE, EAGER: WEIGHTS_FILE}
)

#: Runtimes that run another runtime's graph -> that runtime: an archive with an ONNX graph
#: can be served by either, and its manifest lists the graph once, under ``onnxruntime``.
GRAPH_OF: Final[Mapping[str, str]] = MappingProxyType({ONNXRUNTIME_TRT: ONNXRUNTIME})


def graph_runtime(runtime: str) -> str:
    """The key of ``Manifest.graphs`` whose file ``runtime`` loads: its own name, or for a
    runtime of ``GRAPH_OF`` the runtime whose graph it runs."""
    return GRAPH_OF.get(runtime, runtime)


__all__ = [
    "EAGER",
    "GRAPH_FILES",
    "GRAPH_OF",
    "ONNXRUNTIME",
    "ONNXRUNTIME_TRT",
    "ONNX_FILE",
    "TORCHSCRIPT",
    "TORCHSCRIPT_FILE",
    "WEIGHTS_FILE",
    "graph_runtime",
]
