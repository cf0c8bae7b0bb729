"""``torchferry.export.export``: real exports through torch.onnx, TorchScript and ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from torchferry.archive import Archive, BatchingSpec, ModelStore, hash_file
from torchferry.errors import ExportError
from torchferry.export import export
from torchferry.export.loader import resolve_factory
from torchferry.runtimes import load_runtime

TINY = Path(__file__).with_name("tiny_models.py")


def tiny(name: str):
    return resolve_factory(f"{TINY}:{name}")


def served(archive: Archive, runtime: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    engine = load_runtime(archive, runtime=runtime, threads=1)
    try:
        return engine.infer(inputs)
    finally:
        engine.close()


def test_mlp_both_formats(tmp_path, capfd):
    model = tiny("mlp")()
    archive = export(model, torch.randn(2, 4), name="mlp", store=tmp_path)

    assert archive.path == tmp_path / "mlp" / "1"
    manifest = archive.manifest
    assert manifest.runtime == "onnxruntime"
    assert manifest.graphs == {"onnxruntime": "model.onnx", "torchscript": "model.pt"}
    assert manifest.source == "export (dynamo)"
    assert set(manifest.files) == {"model.onnx", "model.pt", "weights.safetensors"}
    for name, entry in manifest.files.items():
        assert hash_file(archive.path / name) == entry
    assert sorted(p.name for p in archive.path.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "model.pt",
        "weights.safetensors",
    ]
    assert set(manifest.framework_versions) == {
        "torch",
        "onnx",
        "onnxruntime",
        "python",
        "torchferry",
    }
    sig = manifest.signature
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [("x", "FP32", (-1, 4))]
    assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [("output", "FP32", (-1, 3))]
    assert [(r.format, r.batch_size) for r in manifest.parity] == [
        ("onnx", 1),
        ("onnx", 3),
        ("torchscript", 1),
        ("torchscript", 3),
    ]
    assert all(r.max_abs_error < 1e-5 for r in manifest.parity)
    assert not model.training

    # What the store reads back is what was written, and it verifies.
    reopened = ModelStore(tmp_path).open("mlp")
    assert reopened.manifest == manifest
    assert json.loads((archive.path / "manifest.json").read_text())["name"] == "mlp"

    # Weights round-trip through safetensors.
    weights = safetensors.torch.load_file(archive.path / "weights.safetensors")
    for key, tensor in model.state_dict().items():
        assert torch.equal(weights[key], tensor)

    # Both runtimes serve it at a batch size never seen during export.
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = model(torch.from_numpy(x)).detach().numpy()
    for runtime in ("onnxruntime", "torchscript"):
        got = served(archive, runtime, {"x": x})
        np.testing.assert_allclose(got["output"], want, rtol=1e-5, atol=1e-6)

    # The exporters' progress lines and warnings stay out of the user's console.
    out, err = capfd.readouterr()
    assert "torch.onnx" not in out + err
    assert "Warning" not in out + err

    second = export(model, torch.randn(2, 4), name="mlp", store=tmp_path, format="onnx")
    assert second.manifest.version == 2
    assert ModelStore(tmp_path).versions("mlp") == [1, 2]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "both"])
def test_cnn_each_format(tmp_path, fmt):
    model = tiny("cnn")()
    image = torch.randn(1, 3, 8, 8)  # a batch of 1 is repeated to 2 for export
    archive = export(model, image, name="cnn", store=tmp_path, format=fmt)
    manifest = archive.manifest
    graphs = {"onnx": {"onnxruntime": "model.onnx"}, "torchscript": {"torchscript": "model.pt"}}
    expected = graphs.get(fmt, graphs["onnx"] | graphs["torchscript"])
    assert manifest.graphs == expected
    assert set(manifest.files) == {*expected.values(), "weights.safetensors"}
    assert manifest.runtime == ("torchscript" if fmt == "torchscript" else "onnxruntime")
    forms = {"onnxruntime": "onnx", "torchscript": "torchscript"}
    assert {r.format for r in manifest.parity} == {forms[runtime] for runtime in expected}
    assert manifest.signature.inputs[0].name == "image"
    assert manifest.signature.inputs[0].shape == (-1, 3, 8, 8)
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    got = served(archive, manifest.runtime, {"image": x})["output"]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    Archive.open(archive.path)


def test_two_inputs_two_outputs(tmp_path):
    model = tiny("TwoInTwoOut")()
    features, tokens = torch.randn(2, 4), torch.randint(0, 10, (2, 6))
    archive = export(model, (features, tokens), name="two", store=tmp_path)
    sig = archive.manifest.signature
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [
        ("features", "FP32", (-1, 4)),
        ("tokens", "INT64", (-1, 6)),
    ]
    assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [
        ("output_0", "FP32", (-1, 2)),
        ("output_1", "INT64", (-1,)),
    ]
    rng = np.random.default_rng(2)
    inputs = {
        "features": rng.standard_normal((4, 4)).astype(np.float32),
        "tokens": rng.integers(0, 10, (4, 6)).astype(np.int64),
    }
    want = model(*(torch.from_numpy(a) for a in inputs.values()))
    for runtime in ("onnxruntime", "torchscript"):
        got = served(archive, runtime, inputs)
        np.testing.assert_allclose(got["output_0"], want[0].detach().numpy(), atol=1e-5)
        np.testing.assert_array_equal(got["output_1"], want[1].numpy())


def test_dict_outputs_and_named_inputs(tmp_path):
    model = tiny("DictOut")()
    archive = export(
        model,
        {"x": torch.randn(3, 4)},
        name="dict",
        store=tmp_path,
        handler="tensor",  # the image handler would refuse this [N, 4] input at export
        handler_config={"top_k": 2},
        extra_files={"labels.json": b'["a", "b", "c"]'},
        batching=BatchingSpec(max_batch_size=4, max_delay_ms=1.5),
    )
    manifest = archive.manifest
    assert manifest.signature.output_names == ["logits", "probs"]
    assert manifest.handler.name == "tensor"
    assert manifest.handler.config == {"top_k": 2}
    assert manifest.batching == BatchingSpec(max_batch_size=4, max_delay_ms=1.5)
    assert (archive.path / "labels.json").read_bytes() == b'["a", "b", "c"]'
    assert "labels.json" in manifest.files
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    want = model(torch.from_numpy(x))
    for runtime in ("onnxruntime", "torchscript"):
        got = served(archive, runtime, {"x": x})
        np.testing.assert_allclose(got["probs"], want["probs"].detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(got["logits"], want["logits"].detach().numpy(), atol=1e-5)


def test_trace_divergence_fails_and_leaves_the_store_untouched(tmp_path):
    good = export(
        tiny("mlp")(), torch.randn(2, 4), name="branchy", store=tmp_path, format="torchscript"
    )
    # The example takes the `mean > 100` branch; the parity inputs (standard normal) the other.
    with pytest.raises(ExportError) as info:
        export(
            tiny("branchy")(),
            torch.full((2, 4), 1000.0),
            name="branchy",
            store=tmp_path,
            format="torchscript",
        )
    message = info.value.message
    assert message.startswith("parity check failed")
    assert "torchscript at batch size 1: output 'output' max abs error" in message
    assert "max rel error" in message
    assert ModelStore(tmp_path).versions("branchy") == [good.manifest.version]
    assert [p.name for p in (tmp_path / "branchy").iterdir()] == ["1"]  # no staging leftovers


def test_onnx_falls_back_to_the_legacy_exporter(tmp_path):
    # torch.export cannot capture data-dependent control flow; the legacy exporter traces it.
    archive = export(
        tiny("branchy")(), torch.zeros(2, 4), name="legacy", store=tmp_path, format="onnx"
    )
    assert archive.manifest.source == "export (legacy)"
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(served(archive, "onnxruntime", {"x": x})["output"], x - 1)


def test_shared_weights_and_scripting(tmp_path):
    model = tiny("TiedWeights")()
    archive = export(
        model,
        torch.randn(2, 4),
        name="tied",
        store=tmp_path,
        format="torchscript",
        torchscript="script",
    )
    assert archive.manifest.source == "export (torchscript script)"
    weights = safetensors.torch.load_file(archive.path / "weights.safetensors")
    assert len(weights) == 1  # the tied weight is stored once
    restored = tiny("TiedWeights")()
    safetensors.torch.load_model(restored, archive.path / "weights.safetensors")
    assert torch.equal(restored.decode.weight, model.encode.weight)


def test_argument_errors(tmp_path):
    model = tiny("mlp")()
    x = torch.randn(2, 4)
    with pytest.raises(ExportError, match="invalid model name 'a/b'"):
        export(model, x, name="a/b", store=tmp_path)
    with pytest.raises(ExportError, match="unknown format 'tflite'"):
        export(model, x, name="m", store=tmp_path, format="tflite")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="2 input names"):
        export(model, x, name="m", store=tmp_path, input_names=["a", "b"])
    with pytest.raises(ExportError, match="example input 'y' is not a parameter of forward"):
        export(model, {"y": x}, name="m", store=tmp_path)
    with pytest.raises(ExportError, match=r"output_names \['a'\] differ from the keys"):
        export(tiny("DictOut")(), x, name="m", store=tmp_path, output_names=["a"])
    with pytest.raises(ExportError, match="the model failed on the example inputs"):
        export(model, torch.randn(2, 5), name="m", store=tmp_path)
    with pytest.raises(ExportError, match="would replace a file the export writes"):
        export(
            model, x, name="m", store=tmp_path, format="torchscript", extra_files={"model.pt": b""}
        )
    assert not (tmp_path / "m").exists()
    export(
        model,
        x,
        name="m",
        store=tmp_path,
        format="torchscript",
        version=7,
        input_names=["features"],
    )
    with pytest.raises(ExportError, match="'m' version 7 already exists"):
        export(model, x, name="m", store=tmp_path, version=7)
    assert ModelStore(tmp_path).open("m").manifest.signature.input_names == ["features"]
