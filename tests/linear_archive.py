"""A loadable archive in a blink: one linear layer (and a softmax) as an ONNX graph made by
hand, and as TorchScript, without going through the exporters (seconds of tracing), for
tests of what surrounds the engines: devices, providers, candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from torchferry.archive import Manifest, ModelStore
from torchferry.archive.store import Archive
from torchferry.signature import ModelSignature, TensorSpec


def write_linear_archive(
    store: ModelStore,
    name: str = "linear",
    *,
    inputs: int = 4,
    outputs: int = 3,
    softmax: bool = False,
    input_name: str = "x",
    output_name: str = "y",
    seed: int = 0,
) -> Archive:
    """``y = x @ w + b`` (then a softmax), ONNX (``runtime``) and TorchScript graphs."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(inputs, outputs)).astype(np.float32)
    bias = rng.normal(size=(outputs,)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", [input_name, "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["z" if softmax else output_name]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", outputs])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    module = torch.nn.Linear(inputs, outputs)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight.T))
        module.bias.copy_(torch.from_numpy(bias))
    scripted = torch.jit.trace(
        torch.nn.Sequential(module, torch.nn.Softmax(dim=1)) if softmax else module,
        torch.zeros(2, inputs),
    )
    manifest = Manifest(
        name=name,
        version=store.next_version(name),
        runtime="onnxruntime",
        graphs={"onnxruntime": "model.onnx", "torchscript": "model.pt"},
        signature=ModelSignature(
            inputs=(TensorSpec(name=input_name, datatype="FP32", shape=(-1, inputs)),),
            outputs=(TensorSpec(name=output_name, datatype="FP32", shape=(-1, outputs)),),
        ),
        source="tests",
    )

    def populate(directory: Path) -> None:
        onnx.save(model, str(directory / "model.onnx"))
        torch.jit.save(scripted, str(directory / "model.pt"))

    return store.write(manifest, populate)
