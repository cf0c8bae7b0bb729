"""Handlers of your own: a file exported with ``--handler FILE.py:Class`` (run at export, then
only with trust), an installed entry point (no trust needed), and the errors of each."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import torchferry
import torchferry.cli as cli
from torchferry.archive import ModelStore
from torchferry.errors import ArchiveError, ExportError, UntrustedCode
from torchferry.handlers import installed_handlers, load_handler
from torchferry.handlers.base import HandlerRequest

#: A handler that counts a vocabulary's words; setup logs each call to the file in its config.
VOCAB_HANDLER = textwrap.dedent(
    """
    import json
    from pathlib import Path

    import numpy as np

    from torchferry import Handler, HandlerContext, HandlerRequest, InvalidInput


    class WordCounts(Handler):
        def setup(self, ctx: HandlerContext) -> None:
            self.words = json.loads(ctx.files["vocab.json"].read_text())
            with Path(ctx.config["log"]).open("a") as log:
                log.write(f"setup {ctx.model_name} {ctx.model_version} {sorted(ctx.files)}\\n")

        def preprocess(self, request: HandlerRequest):
            text = request.body.decode()
            if not text:
                raise InvalidInput("send some text")
            counts = [[float(text.split().count(word)) for word in self.words]]
            return {"x": np.asarray(counts, dtype=np.float32)}, len(text)

        def postprocess(self, outputs, state):
            return {"length": state, "scores": outputs["y"][0].tolist()}


    class NotAHandler:
        pass


    class BrokenSetup(Handler):
        def setup(self, ctx: HandlerContext) -> None:
            raise ValueError("the vocabulary is missing a word")
    """
)
VOCAB = ["good", "bad", "ugly", "fun"]


@pytest.fixture
def handler_dir(tmp_path: Path) -> Path:
    """A directory outside the package with the handler file, a vocab and a setup log."""
    directory = tmp_path / "src"
    directory.mkdir()
    (directory / "word_counts.py").write_text(VOCAB_HANDLER)
    (directory / "vocab.json").write_text(json.dumps(VOCAB))
    return directory


def setups(directory: Path) -> list[str]:
    log = directory / "setup.log"
    return log.read_text().splitlines() if log.exists() else []


def export_linear(store: Path, handler: object, directory: Path, **kwargs: object):
    torch.manual_seed(0)
    return torchferry.export(
        torch.nn.Linear(4, 2),
        torch.zeros(2, 4),
        name="words",
        store=store,
        format="torchscript",
        input_names=["x"],
        output_names=["y"],
        handler=handler,
        handler_config={"log": str(directory / "setup.log")},
        **kwargs,
    )


def test_cli_export_with_a_handler_file_and_extra_file(handler_dir, tmp_path, monkeypatch):
    from torchferry.cli.export_cmd import register  # noqa: F401  (the command must import)

    monkeypatch.setattr(cli, "COMMANDS", ["export_cmd"])
    store = tmp_path / "store"
    code = cli.main(
        [
            "export",
            f"{Path(__file__).parents[1] / 'export' / 'tiny_models.py'}:mlp",
            "--name",
            "words",
            "--input",
            "x:-1,4:float32",
            "--output-name",
            "y",
            "--store",
            str(store),
            "--format",
            "torchscript",
            "--handler",
            f"{handler_dir / 'word_counts.py'}:WordCounts",
            "--extra-file",
            str(handler_dir / "vocab.json"),
            "--handler-config",
            json.dumps({"log": str(handler_dir / "setup.log")}),
        ]
    )
    assert code == 0
    # setup ran once at export, over the staged extra file and the handler's own copy
    assert setups(handler_dir) == ["setup words 1 ['code/word_counts.py', 'vocab.json']"]
    archive = ModelStore(store).open("words")
    manifest = archive.manifest
    assert manifest.handler.name == "code/word_counts.py:WordCounts"
    assert {"code/word_counts.py", "vocab.json", "model.pt"} <= set(manifest.files)
    assert archive.file("code/word_counts.py").read_text() == VOCAB_HANDLER
    assert json.loads(archive.file("vocab.json").read_text()) == VOCAB

    with pytest.raises(UntrustedCode, match="--trust-code") as info:
        load_handler(archive, trust_code=False)
    assert "code/word_counts.py:WordCounts" in info.value.message
    assert len(setups(handler_dir)) == 1  # nothing ran

    # with trust it is imported from the archive, not from where it once lay
    (handler_dir / "word_counts.py").unlink()
    handler = load_handler(archive, trust_code=True)
    assert setups(handler_dir)[1] == (
        "setup words 1 ['code/word_counts.py', 'model.pt', 'vocab.json', 'weights.safetensors']"
    )
    inputs, state = handler.preprocess(HandlerRequest(body=b"good fun fun", route="predict"))
    np.testing.assert_array_equal(inputs["x"], [[1, 0, 0, 2]])
    answer = handler.postprocess({"y": np.array([[0.5, -0.5]], np.float32)}, state)
    assert answer == {"length": 12, "scores": [0.5, -0.5]}


def test_python_export_takes_a_class_and_a_list_of_extra_files(handler_dir, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "word_counts_module", handler_dir / "word_counts.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    archive = export_linear(
        tmp_path / "store", module.WordCounts, handler_dir, extra_files=[handler_dir / "vocab.json"]
    )
    assert archive.manifest.handler.name == "code/word_counts.py:WordCounts"
    assert "vocab.json" in archive.manifest.files and len(setups(handler_dir)) == 1
    assert load_handler(archive, trust_code=True).words == VOCAB


@pytest.mark.parametrize(
    ("handler", "extra", "message"),
    [
        ("word_counts.py:BrokenSetup", True, r"BrokenSetup.*ValueError: the vocabulary is missing"),
        ("word_counts.py:WordCounts", False, r"WordCounts.*KeyError: 'vocab.json'"),
        ("word_counts.py:NotAHandler", True, "not a class derived from torchferry.Handler"),
        ("word_counts.py:Nowhere", True, "has no attribute 'Nowhere'"),
        ("missing.py:Handler", True, "is not a file"),
        ("text", True, r"handler 'text'.*known handlers are \['image', 'tensor'\]"),
        ("image", True, r"\[N, C, H, W\]"),  # built-ins are checked at export too
    ],
)
def test_a_broken_handler_fails_the_export(handler_dir, tmp_path, handler, extra, message):
    store = tmp_path / "store"
    reference = str(handler_dir / handler) if ".py:" in handler else handler
    extra_files = {"vocab.json": handler_dir / "vocab.json"} if extra else None
    with pytest.raises(ExportError, match=message) as info:
        export_linear(store, reference, handler_dir, extra_files=extra_files)
    assert repr(reference) in info.value.message  # names the handler as given
    assert ModelStore(store).versions("words") == []


def test_extra_file_names_must_not_clash(handler_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "vocab.json").write_text("[]")
    twice = [handler_dir / "vocab.json", other / "vocab.json"]
    with pytest.raises(ExportError, match=r"two extra files are named 'vocab\.json'"):
        export_linear(tmp_path / "store", "tensor", handler_dir, extra_files=twice)
    (other / "model.pt").write_bytes(b"x")
    with pytest.raises(ExportError, match="would replace a file the export writes"):
        export_linear(tmp_path / "store", "tensor", handler_dir, extra_files=[other / "model.pt"])
    code = {"code/word_counts.py": b"# something else\n", "vocab.json": handler_dir / "vocab.json"}
    reference = f"{handler_dir / 'word_counts.py'}:WordCounts"
    with pytest.raises(ExportError, match=r"already archived as code/word_counts\.py"):
        export_linear(tmp_path / "store", reference, handler_dir, extra_files=code)


PLUGIN = textwrap.dedent(
    """
    import numpy as np

    from torchferry import Handler


    class Shout(Handler):
        def setup(self, ctx):
            self.input = ctx.signature.input_names[0]

        def preprocess(self, request):
            return {self.input: np.array([request.body.decode().upper()], dtype=object)}, None

        def postprocess(self, outputs, state):
            return outputs


    def not_a_class():
        pass
    """
)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution (a dist-info directory on sys.path) with two entry points."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "tf_shout_plugin.py").write_text(PLUGIN)
    info = site / "tf_shout_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tf-shout-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[torchferry.handlers]\nshout = tf_shout_plugin:Shout\n"
        "not-a-class = tf_shout_plugin:not_a_class\nbroken = tf_shout_plugin_missing:X\n"
    )
    monkeypatch.syspath_prepend(str(site))


def test_an_installed_handler_loads_without_trust(plugin, make_archive):
    assert {"shout", "not-a-class", "broken"} <= set(installed_handlers())
    archive = make_archive([("text", "BYTES", (-1,))], handler="shout")
    handler = load_handler(archive, trust_code=False)
    inputs, state = handler.preprocess(HandlerRequest(body=b"hi"))
    assert inputs["text"].tolist() == ["HI"] and state is None
    with pytest.raises(ArchiveError, match=r"known handlers .*\['broken', 'not-a-class'"):
        load_handler(make_archive([("text", "BYTES", (-1,))], handler="nope"), trust_code=False)
    with pytest.raises(ArchiveError, match=r"not a class derived from torchferry\.Handler"):
        load_handler(
            make_archive([("text", "BYTES", (-1,))], handler="not-a-class"), trust_code=False
        )
    with pytest.raises(ArchiveError, match="entry point 'tf_shout_plugin_missing:X' failed"):
        load_handler(make_archive([("text", "BYTES", (-1,))], handler="broken"), trust_code=False)


def test_an_installed_handler_exports_by_name(plugin, tmp_path):
    archive = torchferry.export(
        torch.nn.Linear(4, 2), torch.zeros(2, 4), name="p", store=tmp_path, format="torchscript",
        handler="shout",
    )  # fmt: skip
    assert archive.manifest.handler.name == "shout"
    assert not any(name.startswith("code/") for name in archive.manifest.files)


def test_archived_handler_errors_at_load(make_archive, handler_dir):
    source = (handler_dir / "word_counts.py").read_bytes()
    files = {"code/word_counts.py": source, "vocab.json": VOCAB}
    config = {"log": str(handler_dir / "setup.log")}
    broken = make_archive([("x", "FP32", (-1, 4))], handler="code/word_counts.py:BrokenSetup",
                          config=config, files=files)  # fmt: skip
    with pytest.raises(ArchiveError, match=r"BrokenSetup.*failed in setup: ValueError"):
        load_handler(broken, trust_code=True)
    unlisted = make_archive([("x", "FP32", (-1, 4))], handler="code/other.py:X", files=files)
    with pytest.raises(ArchiveError, match="not listed in the manifest"):
        load_handler(unlisted, trust_code=True)


def test_reexport_with_an_archives_files_records_its_code_without_running_it(handler_dir, tmp_path):
    """As ``torchferry optimize`` does: the archive's files and handler name, exported again."""
    reference = f"{handler_dir / 'word_counts.py'}:WordCounts"
    first = export_linear(
        tmp_path / "store", reference, handler_dir, extra_files=[handler_dir / "vocab.json"]
    )
    assert len(setups(handler_dir)) == 1
    manifest = first.manifest
    files = {n: first.file(n) for n in manifest.files if n.startswith("code/") or n == "vocab.json"}
    again = export_linear(tmp_path / "store", manifest.handler.name, handler_dir, extra_files=files)
    assert again.manifest.handler.name == "code/word_counts.py:WordCounts"
    assert len(setups(handler_dir)) == 1  # the archive's code ran nowhere without trust


def test_cli_extra_file_must_not_clash_with_labels(tmp_path):
    import argparse

    from torchferry.cli.export_cmd import add_archive_options, archive_settings

    parser = argparse.ArgumentParser()
    add_archive_options(parser)
    labels = tmp_path / "labels.json"
    labels.write_text('["a", "b"]')
    vocab = tmp_path / "vocab.json"
    vocab.write_text("[]")
    common = ["--name", "m", "--store", str(tmp_path), "--extra-file", str(vocab)]
    settings = archive_settings(parser.parse_args(common))
    assert settings["extra_files"] == {"vocab.json": vocab}
    clash = parser.parse_args([*common, "--labels", str(labels), "--extra-file", str(labels)])
    with pytest.raises(ExportError, match=r"already gets a file named 'labels\.json'"):
        archive_settings(clash)


def test_the_api_imports_from_torchferry_without_torch_or_serving():
    code = (
        "import sys\n"
        "from torchferry import Handler, HandlerContext, HandlerRequest, InvalidInput\n"
        "assert Handler.__module__ == 'torchferry.handlers.base', Handler\n"
        "heavy = [m for m in sys.modules if m == 'torch' or m.startswith('torchferry.serving')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
