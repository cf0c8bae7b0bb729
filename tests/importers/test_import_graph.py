"""Importing a plain .onnx or a TorchScript .pt into a model store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from torchferry.archive import Archive, ModelStore
from torchferry.errors import ArchiveError
from torchferry.importers import IMPORTERS, import_model
from torchferry.runtimes import load_runtime
from torchferry.signature import TensorSpec


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(x) + ids.float().sum(1, keepdim=True), ids * 2


def legacy_onnx(path: Path, dynamic: bool = True) -> Path:
    axes = {n: {0: "N"} for n in ("x", "ids", "y", "ids2")} if dynamic else None
    torch.onnx.export(
        Net().eval(),
        (torch.randn(2, 3), torch.randint(0, 5, (2, 4))),
        str(path),
        dynamo=False,
        input_names=["x", "ids"],
        output_names=["y", "ids2"],
        dynamic_axes=axes,
    )
    return path


def run(archive: Archive, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    engine = load_runtime(archive, threads=1)
    try:
        return engine.infer(inputs)
    finally:
        engine.close()


INPUTS = {
    "x": np.ones((3, 3), np.float32),
    "ids": np.arange(12, dtype=np.int64).reshape(3, 4),
}


def expected() -> tuple[np.ndarray, np.ndarray]:
    y, ids2 = Net().eval()(*(torch.from_numpy(a) for a in INPUTS.values()))
    return y.detach().numpy(), ids2.numpy()


def test_import_onnx_reads_the_signature(tmp_path):
    source = legacy_onnx(tmp_path / "net.onnx")
    archive = import_model(source, name="net", store=tmp_path / "store", handler_config={"a": 1})
    manifest = archive.manifest
    assert manifest.runtime == "onnxruntime"
    assert manifest.graphs == {"onnxruntime": "model.onnx"}
    assert manifest.source == "import (onnx)"
    assert manifest.handler.config == {"a": 1}
    assert set(manifest.files) == {"model.onnx"}
    sig = manifest.signature
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [
        ("x", "FP32", (-1, 3)),
        ("ids", "INT64", (-1, 4)),
    ]
    assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [
        ("y", "FP32", (-1, 2)),
        ("ids2", "INT64", (-1, 4)),
    ]
    got = run(Archive.open(archive.path), INPUTS)
    want_y, want_ids2 = expected()
    np.testing.assert_allclose(got["y"], want_y, atol=1e-5)
    np.testing.assert_array_equal(got["ids2"], want_ids2)


def test_import_onnx_fixed_batch_becomes_dynamic(tmp_path):
    source = legacy_onnx(tmp_path / "fixed.onnx", dynamic=False)
    graph = onnx.load(str(source))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    archive = import_model(source, name="fixed", store=tmp_path / "store")
    assert all(s.shape[0] == -1 for s in archive.manifest.signature.inputs)


def test_import_onnx_with_external_data(tmp_path):
    source = legacy_onnx(tmp_path / "big.onnx")
    model = onnx.load(str(source))
    external = tmp_path / "ext" / "net.onnx"
    external.parent.mkdir()
    onnx.save_model(
        model,
        str(external),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="net.weights",
        size_threshold=0,
    )
    archive = import_model(external, name="ext", store=tmp_path / "store")
    assert set(archive.manifest.files) == {"model.onnx", "net.weights"}
    got = run(Archive.open(archive.path), INPUTS)
    np.testing.assert_allclose(got["y"], expected()[0], atol=1e-5)


def test_import_onnx_with_input_specs(tmp_path):
    source = legacy_onnx(tmp_path / "net.onnx")
    specs = [TensorSpec.parse("ids:-1,4:int64"), TensorSpec.parse("x:-1,3:float32")]
    archive = import_model(source, name="net", store=tmp_path / "s", inputs=specs)
    assert archive.manifest.signature.input_names == ["x", "ids"]
    with pytest.raises(ArchiveError, match="given datatype FP32, the graph has INT64"):
        import_model(
            source,
            name="net",
            store=tmp_path / "s",
            inputs=[TensorSpec.parse("x:-1,3"), TensorSpec.parse("ids:-1,4:float32")],
        )
    with pytest.raises(ArchiveError, match=r"differ from the graph's inputs \['x', 'ids'\]"):
        import_model(source, name="net", store=tmp_path / "s", inputs=specs[:1])


def test_import_torchscript(tmp_path):
    source = tmp_path / "net.pt"
    example = (torch.randn(2, 3), torch.randint(0, 5, (2, 4)))
    torch.jit.save(torch.jit.trace(Net().eval(), example), str(source))
    specs = [TensorSpec.parse("x:-1,3:float32"), TensorSpec.parse("ids:-1,4:int64")]
    archive = import_model(
        source,
        name="ts",
        store=tmp_path / "store",
        inputs=specs,
        output_names=["y", "ids2"],
        extra_files={"labels.json": b"[]"},
    )
    manifest = archive.manifest
    assert manifest.runtime == "torchscript"
    assert manifest.graphs == {"torchscript": "model.pt"}
    assert set(manifest.files) == {"model.pt", "labels.json"}
    assert [(s.name, s.datatype, s.shape) for s in manifest.signature.outputs] == [
        ("y", "FP32", (-1, 2)),
        ("ids2", "INT64", (-1, 4)),
    ]
    got = run(Archive.open(archive.path), INPUTS)
    np.testing.assert_allclose(got["y"], expected()[0], atol=1e-5)

    default_names = import_model(source, name="ts", store=tmp_path / "store", inputs=specs)
    assert default_names.manifest.version == 2
    assert default_names.manifest.signature.output_names == ["output_0", "output_1"]


def test_import_errors(tmp_path):
    store = tmp_path / "store"
    scripted = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(scripted))
    with pytest.raises(ArchiveError, match="does not record its inputs; give them"):
        import_model(scripted, name="n", store=store)
    with pytest.raises(
        ArchiveError, match=r"failed on random inputs of batch size 2 matching \['x'\]"
    ):
        import_model(scripted, name="n", store=store, inputs=[TensorSpec.parse("x:-1,5")])

    pickled = tmp_path / "state.pt"
    torch.save(nn.Linear(3, 2).state_dict(), pickled)
    with pytest.raises(ArchiveError, match="is not a TorchScript file"):
        import_model(pickled, name="n", store=store, inputs=[TensorSpec.parse("x:-1,3")])

    pickle = tmp_path / "model.pkl"
    pickle.write_bytes(b"PK")
    with pytest.raises(
        ArchiveError,
        match=r"unknown file type '\.pkl'; supported: \.h5, \.keras, \.mar, \.onnx, \.pt, \.ts files and SavedModel directories",
    ):
        import_model(pickle, name="n", store=store)

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(ArchiveError, match="is not a valid ONNX model"):
        import_model(broken, name="n", store=store)

    with pytest.raises(ArchiveError, match="no such file"):
        import_model(tmp_path / "absent.onnx", name="n", store=store)
    assert ModelStore(store).versions("n") == []


def test_importer_table_is_the_extension_point():
    assert {".onnx", ".pt", ".mar"} <= set(IMPORTERS)
