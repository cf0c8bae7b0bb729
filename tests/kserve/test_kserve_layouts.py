"""Telling ``/mnt/models`` layouts apart (file system only), TorchServe's config.properties as
KServe's TorchServe runtime reads it, and the usage errors ``serve`` exits with 2 on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torchferry.cli as cli
from torchferry.errors import ArchiveError
from torchferry.serving.model_dir import LayoutError, detect, mounted, read_properties


def touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def torchserve(root: Path, config: str, mars: tuple[str, ...] = ("a.mar",)) -> Path:
    for mar in mars:
        touch(root / "model-store" / mar)
    touch(root / "config" / "config.properties", config.encode())
    return root


def named(root: Path, model_name: str | None = "isvc") -> list[tuple[str, str | None]]:
    return [(m.file.name, m.name) for m in detect(root, model_name).imports]


def test_torchferry_layouts_are_served_from_the_folder(tmp_path: Path) -> None:
    touch(tmp_path / "archive" / "manifest.json")
    touch(tmp_path / "versions" / "1" / "manifest.json")
    touch(tmp_path / "store" / "digits" / "2" / "manifest.json")
    assert detect(tmp_path / "archive").kind == "archive"
    assert detect(tmp_path / "versions").kind == "versions"
    assert detect(tmp_path / "store").kind == "store"


def test_onnx_is_served_as_the_model_name(tmp_path: Path) -> None:
    touch(tmp_path / "one" / "iris.onnx")
    assert named(tmp_path / "one") == [("iris.onnx", "isvc")]
    assert named(tmp_path / "one", None) == [("iris.onnx", "iris")]  # its stem without a name
    touch(tmp_path / "two" / "model.onnx")
    touch(tmp_path / "two" / "other.onnx")
    assert named(tmp_path / "two") == [("model.onnx", "isvc")]
    assert named(tmp_path / "one" / "iris.onnx") == [("iris.onnx", "isvc")]  # a file given


def test_several_onnx_without_model_onnx_is_refused(tmp_path: Path) -> None:
    touch(tmp_path / "a.onnx")
    touch(tmp_path / "b.onnx")
    with pytest.raises(LayoutError, match=r"several ONNX files \(a.onnx, b.onnx\)"):
        detect(tmp_path)


def test_snapshot_names_the_models_in_version_order(tmp_path: Path) -> None:
    versions = {"10.0": {"marName": "c.mar"}, "2.0": {"marName": "b.mar"}}
    snapshot = {"models": {"mnist": versions, "bert": {"1.0": {"marName": "a.mar"}}}}
    root = torchserve(
        tmp_path,
        "# KServe's layout\ninference_address=http://0.0.0.0:8085\n"
        "model_store=/mnt/models/model-store\n"
        f"model_snapshot={json.dumps(snapshot)}\n",
        mars=("a.mar", "b.mar", "c.mar"),
    )
    assert named(root) == [("b.mar", "mnist"), ("c.mar", "mnist"), ("a.mar", "bert")]


def test_load_models_names_or_leaves_names(tmp_path: Path) -> None:
    config = "model_store: model-store\nload_models = mnist=a.mar, b.mar\n"
    root = torchserve(tmp_path / "named", config, mars=("a.mar", "b.mar"))
    assert named(root) == [("a.mar", "mnist"), ("b.mar", None)]  # b: its own modelName
    root = torchserve(tmp_path / "one", "load_models=a.mar\n")
    assert named(root) == [("a.mar", "isvc")]
    root = torchserve(tmp_path / "all", "load_models=all\n", mars=("a.mar", "b.mar"))
    assert named(root) == [("a.mar", None), ("b.mar", None)]


def test_mar_files_without_a_config(tmp_path: Path) -> None:
    touch(tmp_path / "bare" / "resnet.mar")
    assert named(tmp_path / "bare") == [("resnet.mar", "isvc")]
    touch(tmp_path / "store-only" / "model-store" / "resnet.mar")
    assert named(tmp_path / "store-only") == [("resnet.mar", "isvc")]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('model_snapshot={"models": ', "model_snapshot is not TorchServe's"),
        ('model_snapshot={"models": {}}', "model_snapshot names no model"),
        ('model_snapshot={"models": {"m": {"1.0": {"marName": "../a.mar"}}}}', "not a .mar"),
        ("load_models=https://example.com/a.mar", "not a .mar file name"),
        ("load_models=m=missing.mar", "names missing.mar, which is not in"),
        ("model_store=/elsewhere/models", "/elsewhere/models (model_store) is not a folder"),
        ("model_store=../..", "model_store=../.. leads out of"),
        ("model_store=/mnt/models/../../etc", "leads out of"),
    ],
)
def test_a_broken_config_is_named(tmp_path: Path, config: str, message: str) -> None:
    with pytest.raises(LayoutError, match=message.replace("(", r"\(").replace(")", r"\)")):
        detect(torchserve(tmp_path, config + "\n"))


def test_a_file_that_is_no_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="is a file, not a model folder"):
        detect(touch(tmp_path / "model.pt"))


def test_properties_keep_case_and_skip_comments(tmp_path: Path) -> None:
    path = touch(tmp_path / "c.properties", b"# one\n! two\nModel_Store = /x\nkey: a=b:c\nbare\n")
    assert read_properties(path) == {"Model_Store": "/x", "key": "a=b:c", "bare": ""}


def test_unknown_layouts_exit_2_naming_what_was_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    touch(tmp_path / "odd" / "weights.bin")
    (tmp_path / "odd" / "sub").mkdir()
    (tmp_path / "empty").mkdir()
    for folder, found in [("odd", "found sub/, weights.bin"), ("empty", "it is empty")]:
        code = cli.main(["serve", f"--model_dir={tmp_path / folder}", "--model_name=isvc"])
        error = capsys.readouterr().err
        assert code == 2
        assert found in error and "accepted: a torchferry archive" in error
        assert len(error.strip().splitlines()) == 1
    assert cli.main(["serve", f"--model_dir={tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_store_and_another_store_is_a_usage_error(tmp_path: Path) -> None:
    touch(tmp_path / "mounted" / "digits" / "1" / "manifest.json")
    source = mounted(tmp_path / "mounted", "isvc", tmp_path / "other")
    with pytest.raises(LayoutError, match="is a model store"), source:
        pass


def test_a_file_that_cannot_be_imported_says_why(tmp_path: Path) -> None:
    touch(tmp_path / "mnt" / "broken.mar", b"not a zip")
    source = mounted(tmp_path / "mnt", "isvc", tmp_path / "store")
    with pytest.raises(ArchiveError, match=r"broken.mar is not a TorchServe .mar"), source:
        pass
