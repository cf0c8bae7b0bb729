"""What KServe's storage initializer may leave in ``/mnt/models``, built small: one tiny ONNX
model (``y = 2x + 1`` for ``x`` of shape ``[N, 4]``) in each layout torchferry serves."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from torchferry.importers import import_model

#: The model the archive and store layouts hold (the store serves it by this name).
STORE_MODEL = "lin"
#: The name TorchServe's ``model_snapshot`` gives the ``.mar`` (KServe serves it by it).
SNAPSHOT_MODEL = "mnist"


def expected(x: np.ndarray) -> np.ndarray:
    return x * 2 + 1


def write_onnx(path: Path) -> Path:
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["twice"]),
        helper.make_node("Add", ["twice", "one"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_layouts(root: Path) -> dict[str, Path]:
    """layout name -> the folder KServe would mount at /mnt/models."""
    onnx_dir = root / "onnx"
    graph = write_onnx(onnx_dir / "model.onnx")

    store = root / "store"
    archive = import_model(graph, name=STORE_MODEL, store=store)
    archive_dir = shutil.copytree(archive.path, root / "archive")

    torchserve = root / "torchserve"
    (torchserve / "model-store").mkdir(parents=True)
    with zipfile.ZipFile(torchserve / "model-store" / "lin.mar", "w") as mar:
        mar.write(graph, "model.onnx")
        manifest = {
            "runtime": "python",
            "model": {
                "modelName": "lin",
                "serializedFile": "model.onnx",
                "handler": "base_handler",
                "modelVersion": "1.0",
            },
        }
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    (torchserve / "config").mkdir()
    # as KServe's TorchServe examples write it: the snapshot names the model
    snapshot = {
        "name": "startup.cfg",
        "modelCount": 1,
        "models": {SNAPSHOT_MODEL: {"1.0": {"defaultVersion": True, "marName": "lin.mar"}}},
    }
    (torchserve / "config" / "config.properties").write_text(
        "inference_address=http://0.0.0.0:8085\n"
        "management_address=http://0.0.0.0:8085\n"
        "metrics_address=http://0.0.0.0:8082\n"
        "enable_metrics_api=true\n"
        "model_store=/mnt/models/model-store\n"
        f"model_snapshot={json.dumps(snapshot)}\n"
    )
    return {"archive": archive_dir, "store": store, "torchserve": torchserve, "onnx": onnx_dir}
