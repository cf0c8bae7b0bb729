"""Importing TorchServe ``.mar`` archives: handlers, labels, refusals, and zip safety."""

from __future__ import annotations

import importlib
import io
import json
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from zipfile import ZipInfo

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import torchferry.cli as cli
from torchferry.archive import ModelStore
from torchferry.errors import ArchiveError
from torchferry.handlers import load_handler
from torchferry.handlers.base import HandlerRequest
from torchferry.importers import import_model
from torchferry.importers.mar import MarFile
from torchferry.runtimes import load_runtime
from torchferry.signature import TensorSpec

LABELS = {"0": ["n01", "tench"], "1": ["n02", "goldfish"], "2": ["n03", "shark"]}


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.fc = nn.Linear(4, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))


def write_mar(
    path: Path, model: dict[str, Any], files: dict[str, bytes], extra: Sequence[ZipInfo] = ()
) -> Path:
    """A .mar as torch-model-archiver writes it: the files, then MAR-INF/MANIFEST.json."""
    manifest = {
        "createdOn": "01/01/2025 00:00:00",
        "runtime": "python",
        "model": {"modelName": "tiny", "handler": "image_classifier", **model},
        "archiverVersion": "0.12.0",
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        for info in extra:
            archive.writestr(info, b"x")
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=2))
    return path


def torchscript_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(module.eval(), example), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cnn_pt() -> bytes:
    return torchscript_bytes(TinyCNN(), torch.zeros(1, 3, 224, 224))


@pytest.fixture(scope="module")
def linear_pt() -> bytes:
    torch.manual_seed(0)
    return torchscript_bytes(nn.Linear(4, 2), torch.zeros(1, 4))


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_image_classifier_mar_maps_to_the_image_handler(tmp_path, cnn_pt):
    files = {"model.pt": cnn_pt, "index_to_name.json": json.dumps(LABELS).encode()}
    mar = write_mar(
        tmp_path / "tiny.mar", {"serializedFile": "model.pt", "modelVersion": "2.0"}, files
    )
    archive = import_model(mar, store=tmp_path / "store")  # name from the manifest
    manifest = archive.manifest
    assert (manifest.name, manifest.version, manifest.runtime) == ("tiny", 1, "torchscript")
    assert manifest.handler.name == "image"
    assert manifest.handler.config == {
        "resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "top_k": 5, "softmax": True, "labels": "labels.json",
    }  # fmt: skip
    (spec,) = manifest.signature.inputs
    assert (spec.name, spec.datatype, spec.shape) == ("image", "FP32", (-1, 3, 224, 224))
    assert "modelVersion 2.0" in manifest.source and "image_classifier" in manifest.source
    assert set(manifest.files) == {"model.pt", "labels.json", "torchserve/MAR-INF/MANIFEST.json"}
    assert json.loads(archive.file("labels.json").read_text()) == LABELS

    # the stored archive serves: labels from index_to_name.json, softmax top-k in order
    handler = load_handler(archive, trust_code=False)
    runtime = load_runtime(archive, threads=1)
    try:
        upload = {"file": [jpeg((200, 30, 30))]}
        request = HandlerRequest(content_type="multipart/form-data; boundary=x", files=upload)
        tensors, state = handler.preprocess(request)
        (row,) = handler.postprocess(runtime.infer(tensors), state)
    finally:
        runtime.close()
    pixels = torch.from_numpy(tensors["image"])
    expected = torch.softmax(TinyCNN().eval()(pixels), dim=1)[0].detach().numpy()
    order = np.argsort(-expected)
    assert [r["label"] for r in row] == [["tench", "goldfish", "shark"][i] for i in order]
    assert [r["score"] for r in row] == pytest.approx(expected[order].tolist(), rel=1e-4)


def test_name_version_and_input_can_be_given(tmp_path, cnn_pt):
    mar = write_mar(tmp_path / "m.mar", {"serializedFile": "m.pt"}, {"m.pt": cnn_pt})
    spec = TensorSpec.parse("pixels:-1,3,224,224:float32")
    archive = import_model(mar, name="other", store=tmp_path / "s", version=7, inputs=[spec])
    assert (archive.manifest.name, archive.manifest.version) == ("other", 7)
    assert archive.manifest.signature.input_names == ["pixels"]
    assert "labels" not in archive.manifest.handler.config  # no index_to_name.json


def test_base_handler_is_the_tensor_handler_and_needs_inputs(tmp_path, linear_pt):
    model = {"serializedFile": "linear.pt", "handler": "base_handler"}
    labels = {"object_type_names": ["a", "b"]}  # TorchServe's older labels layout
    files = {"linear.pt": linear_pt, "index_to_name.json": json.dumps(labels).encode()}
    mar = write_mar(tmp_path / "lin.mar", model, files)
    with pytest.raises(ArchiveError, match="does not record its inputs; give them"):
        import_model(mar, store=tmp_path / "s")
    archive = import_model(mar, store=tmp_path / "s", inputs=[TensorSpec.parse("x:-1,4")])
    assert archive.manifest.handler.name == "tensor" and archive.manifest.handler.config == {}
    assert json.loads(archive.file("labels.json").read_text()) == ["a", "b"]
    assert ModelStore(tmp_path / "s").versions("tiny") == [1]


def test_onnx_serialized_file(tmp_path):
    onnx_path = tmp_path / "cnn.onnx"
    torch.onnx.export(
        TinyCNN().eval(), (torch.zeros(1, 3, 224, 224),), str(onnx_path), dynamo=False,
        input_names=["img"], output_names=["logits"], dynamic_axes={"img": {0: "n"}},
    )  # fmt: skip
    mar = write_mar(
        tmp_path / "o.mar", {"serializedFile": "cnn.onnx"}, {"cnn.onnx": onnx_path.read_bytes()}
    )
    archive = import_model(mar, store=tmp_path / "s")
    assert archive.manifest.runtime == "onnxruntime" and archive.manifest.handler.name == "image"
    assert archive.manifest.signature.input_names == ["img"]
    assert "torchserve/cnn.onnx" not in archive.manifest.files  # the graph is stored once


CUSTOM = b"""
from ts.torch_handler.image_classifier import ImageClassifier
import os

os.system("touch /tmp/torchferry-must-never-run-this")

class MyHandler(ImageClassifier):
    topk = 3
"""


def test_custom_handler_is_refused_unless_trusted_and_never_run(tmp_path, cnn_pt):
    model = {"serializedFile": "model.pt", "handler": "my_handler.py"}
    files = {"model.pt": cnn_pt, "my_handler.py": CUSTOM, "index_to_name.json": b"[]"}
    mar = write_mar(tmp_path / "custom.mar", model, files)
    store = tmp_path / "s"
    with pytest.raises(ArchiveError) as refused:
        import_model(mar, store=store)
    message = str(refused.value)
    assert "custom handler 'my_handler.py'" in message
    assert "arbitrary Python" in message and "--trust-custom-handler" in message
    assert "(image, from its base class ImageClassifier)" in message
    assert ModelStore(store).models() == []

    notes: list[str] = []
    archive = import_model(mar, store=store, trust_custom_handler=True, report=notes.append)
    assert archive.manifest.handler.name == "image"  # the closest built-in, by its base class
    assert archive.file("torchserve/my_handler.py").read_bytes() == CUSTOM
    assert not Path("/tmp/torchferry-must-never-run-this").exists()
    (note,) = notes
    assert "NOT imported and will never run" in note and "torchserve/my_handler.py" in note


@pytest.mark.parametrize(
    ("handler", "files"),
    [
        ("image_classifier", {"image_classifier.py": b"# shadows the built-in"}),
        ("mypackage.handlers:handle", {}),  # a module the archive does not carry
    ],
)
def test_handlers_that_are_code_anywhere(tmp_path, cnn_pt, handler, files):
    model = {"serializedFile": "model.pt", "handler": handler}
    mar = write_mar(tmp_path / "c.mar", model, {"model.pt": cnn_pt, **files})
    with pytest.raises(ArchiveError, match="custom handler"):
        import_model(mar, store=tmp_path / "s")
    spec = [TensorSpec.parse("x:-1,3,224,224")]
    archive = import_model(mar, store=tmp_path / "s", inputs=spec, trust_custom_handler=True)
    assert archive.manifest.handler.name == "tensor"  # no image base class in sight


def test_unsupported_builtin_handler_needs_a_choice(tmp_path, cnn_pt):
    model = {"serializedFile": "model.pt", "handler": "object_detector"}
    mar = write_mar(tmp_path / "d.mar", model, {"model.pt": cnn_pt})
    with pytest.raises(ArchiveError, match="object_detector handler, which torchferry does not"):
        import_model(mar, store=tmp_path / "s")
    archive = import_model(mar, store=tmp_path / "s", handler="image")
    assert archive.manifest.handler.name == "image"


def test_eager_mode_archive_is_refused(tmp_path):
    state = io.BytesIO()
    torch.save(nn.Linear(4, 2).state_dict(), state)
    model = {"serializedFile": "weights.pth", "modelFile": "model.py"}
    files = {"weights.pth": state.getvalue(), "model.py": b"raise SystemExit('ran!')"}
    mar = write_mar(tmp_path / "eager.mar", model, files)
    with pytest.raises(ArchiveError, match="eager-mode archive") as refused:
        import_model(mar, store=tmp_path / "s", trust_custom_handler=True)
    assert "torchferry export" in str(refused.value)


def test_pickled_serialized_file_is_refused(tmp_path):
    state = io.BytesIO()
    torch.save(nn.Linear(4, 2), state)  # a whole pickled module, no modelFile
    mar = write_mar(tmp_path / "p.mar", {"serializedFile": "m.pth"}, {"m.pth": state.getvalue()})
    with pytest.raises(ArchiveError, match="is not a TorchScript file"):
        import_model(mar, store=tmp_path / "s")


def _link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (zipfile.ZipInfo("../../evil.py"), "would be written outside the archive"),
        (zipfile.ZipInfo("code/../../evil.py"), "would be written outside the archive"),
        (zipfile.ZipInfo("/etc/evil"), "has an absolute path"),
        (zipfile.ZipInfo("C:/evil"), "has an absolute path"),
        (_link("link"), "is a symbolic link"),
        (zipfile.ZipInfo("model.pt"), "appears twice"),
    ],
)
def test_unsafe_entries_are_refused(tmp_path, cnn_pt, entry, match):
    mar = write_mar(
        tmp_path / "x.mar", {"serializedFile": "model.pt"}, {"model.pt": cnn_pt}, [entry]
    )
    with pytest.raises(ArchiveError, match=match):
        import_model(mar, store=tmp_path / "s")
    assert not (tmp_path / "evil.py").exists() and ModelStore(tmp_path / "s").models() == []


def test_zip_bombs_are_refused(tmp_path, cnn_pt):
    zeros = {"model.pt": cnn_pt, "padding.bin": bytes(40 * 1024**2)}  # deflates ~1000:1
    mar = write_mar(tmp_path / "bomb.mar", {"serializedFile": "model.pt"}, zeros)
    assert mar.stat().st_size < 1024**2
    with pytest.raises(ArchiveError, match="likely zip bomb"):
        import_model(mar, store=tmp_path / "s")
    small = write_mar(tmp_path / "ok.mar", {"serializedFile": "model.pt"}, {"model.pt": cnn_pt})
    with pytest.raises(ArchiveError, match="unpacks to more than 1000 bytes"):
        MarFile(small, max_unpacked_bytes=1000)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a zip", "is not a TorchServe .mar"),
        (None, r"no MAR-INF/MANIFEST\.json"),
    ],
)
def test_not_a_mar(tmp_path, content, match):
    path = tmp_path / "bad.mar"
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model.pt", b"")
    else:
        path.write_bytes(content)
    with pytest.raises(ArchiveError, match=match):
        import_model(path, store=tmp_path / "s")


def test_missing_serialized_file_and_bad_labels(tmp_path, cnn_pt):
    mar = write_mar(tmp_path / "a.mar", {"serializedFile": "absent.pt"}, {"model.pt": cnn_pt})
    with pytest.raises(ArchiveError, match=r"serializedFile 'absent\.pt' is not in the archive"):
        import_model(mar, store=tmp_path / "s")
    labels = {"model.pt": cnn_pt, "index_to_name.json": b'{"cat": "dog"}'}
    bad = write_mar(tmp_path / "b.mar", {"serializedFile": "model.pt"}, labels)
    with pytest.raises(ArchiveError, match=r"index_to_name\.json: expected"):
        import_model(bad, store=tmp_path / "s")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(f"torchferry.cli.{module}")
    except ImportError:
        return False
    return True


def test_cli_import_mar(tmp_path, cnn_pt, linear_pt, capsys, monkeypatch):
    # other engineers' subcommands may be mid-change; run the CLI with the ones that import
    monkeypatch.setattr(cli, "COMMANDS", [m for m in cli.COMMANDS if _importable(m)])
    monkeypatch.setenv("COLUMNS", "200")
    model = {"serializedFile": "model.pt", "handler": "my_handler:handle"}
    files = {"model.pt": cnn_pt, "my_handler.py": CUSTOM}
    mar = write_mar(tmp_path / "tiny.mar", model, files)
    store = tmp_path / "store"
    assert cli.main(["import", str(mar), "--store", str(store)]) == 1
    assert "--trust-custom-handler" in capsys.readouterr().err
    args = ["import", str(mar), "--store", str(store), "--trust-custom-handler"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "imported tiny.mar as tiny version 1" in out and "handler image" in out
    assert "NOT imported and will never run" in out
    assert cli.main([*args, "--handler", "tensor", "--input", "x:-1,3,224,224"]) == 0
    assert ModelStore(store).open("tiny", 2).manifest.handler.name == "tensor"

    plain = tmp_path / "linear.pt"
    plain.write_bytes(linear_pt)
    assert cli.main(["import", str(plain), "--store", str(store), "--input", "x:-1,4"]) == 1
    assert "give the model a name (--name)" in capsys.readouterr().err
