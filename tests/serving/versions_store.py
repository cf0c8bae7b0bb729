"""A small store for the tests of changing versions while serving: ``lin`` is ``y = x @ W``
for x of shape [N, 4] and y of shape [N, 3] (an ONNX MatMul), and the versions differ only
in W: 1 and 2 are the same model, 3 is the same with W's columns rotated (a perturbed copy,
whose argmax disagrees on most rows)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from torchferry.archive import BatchingSpec, Manifest, ModelStore
from torchferry.signature import ModelSignature, TensorSpec

WEIGHTS = np.array(
    [[1.0, 0.5, -1.0], [0.0, 2.0, 1.0], [-1.0, 0.0, 3.0], [0.5, -2.0, 0.0]], np.float32
)
PERTURBED = np.roll(WEIGHTS, 1, axis=1)


def _graph(weights: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def write_lin(store: ModelStore, version: int, weights: np.ndarray, name: str = "lin") -> Path:
    manifest = Manifest(
        name=name,
        version=version,
        runtime="onnxruntime",
        graphs={"onnxruntime": "model.onnx"},
        signature=ModelSignature(
            inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),),
            outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 3)),),
        ),
        batching=BatchingSpec(max_batch_size=32, max_delay_ms=0.0),
        source="tests",
    )
    graph = _graph(weights)
    return store.write(manifest, lambda d: onnx.save(graph, str(d / "model.onnx"))).path


def build_versions_store(root: Path) -> ModelStore:
    """``lin`` 1 in the store; 2 (identical) and 3 (perturbed) in ``root/../candidates``."""
    store = ModelStore(root)
    write_lin(store, 1, WEIGHTS)
    candidates = ModelStore(root.parent / "candidates")
    write_lin(candidates, 2, WEIGHTS)
    write_lin(candidates, 3, PERTURBED)
    return store


def candidate(root: Path, version: int) -> Path:
    return root.parent / "candidates" / "lin" / str(version)


def corrupt_copy(source: Path, target: Path) -> Path:
    """A copy of an archive whose graph no longer matches its manifest's hash."""
    shutil.copytree(source, target)
    graph = target / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    return target
