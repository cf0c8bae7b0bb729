"""``torchferry export``, ``import`` and ``inspect`` end to end."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchferry.cli as cli
from torchferry.archive import Archive, ModelStore

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "export" / "tiny_models.py"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(f"torchferry.cli.{module}")
    except ImportError:
        return False
    return True


#: Other engineers' subcommands may not exist yet; run the CLI with the ones that do.
AVAILABLE = [m for m in cli.COMMANDS if _importable(m)]


@pytest.fixture
def main(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", AVAILABLE)
    monkeypatch.setenv("COLUMNS", "160")
    return cli.main


def cli_command() -> list[str]:
    if AVAILABLE == cli.COMMANDS:
        return [sys.executable, "-m", "torchferry.cli"]
    code = (
        "import sys, torchferry.cli as c; "
        f"c.COMMANDS = {AVAILABLE!r}; sys.exit(c.main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code]


def test_export_subprocess_end_to_end(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    store = tmp_path / "store"
    args = [
        "export",
        f"{TINY}:mlp",
        "--name",
        "mlp",
        "--input",
        "features:-1,4:float32",  # any name; inputs are positional in forward()'s order
        "--store",
        str(store),
        "--labels",
        str(labels),
        "--output-name",
        "scores",
        "--max-batch-size",
        "8",
        "--handler-config",
        '{"top_k": 2}',
    ]
    env = os.environ | {"COLUMNS": "160"}
    result = subprocess.run(
        [*cli_command(), *args], capture_output=True, text=True, env=env, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert "max abs err" in result.stdout
    assert "torchscript" in result.stdout
    assert str(store / "mlp" / "1") in result.stdout
    assert "torch.onnx" not in result.stdout + result.stderr

    archive = Archive.open(store / "mlp" / "1")
    manifest = archive.manifest
    assert manifest.signature.input_names == ["features"]
    assert manifest.signature.output_names == ["scores"]
    assert manifest.handler.config == {"top_k": 2, "labels": "labels.json"}
    assert manifest.batching.max_batch_size == 8
    assert manifest.factory == f"{Path(TINY).resolve()}:mlp"  # rebuilds the eager model
    assert json.loads((archive.path / "labels.json").read_text()) == ["cat", "dog", "bird"]
    assert {"model.onnx", "model.pt", "weights.safetensors", "labels.json"} == set(manifest.files)


def test_export_errors_are_one_line(main, tmp_path, capsys):
    code = main(
        [
            "export",
            f"{TINY}:not_a_module",
            "--name",
            "m",
            "--input",
            "x:-1,4",
            "--store",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error:")
    assert "returned a str, expected a torch.nn.Module" in err
    assert len(err.strip().splitlines()) <= 2  # one message, perhaps wrapped by the terminal

    code = main(["export", f"{TINY}:mlp", "--name", "m", "--store", str(tmp_path)])
    assert code == 1
    assert "--input NAME:SHAPE:DTYPE" in capsys.readouterr().err

    code = main(
        ["export", f"{TINY}:mlp", "--name", "m", "--input", "x:-1,5", "--store", str(tmp_path)]
    )
    assert code == 1
    assert "the model failed on the example inputs" in capsys.readouterr().err
    assert ModelStore(tmp_path).models() == []


def test_bad_input_spec_is_an_argument_error(main, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", f"{TINY}:mlp", "--name", "m", "--input", "x:-1,4:complex", "--store", "s"])
    assert info.value.code == 2
    assert "unknown datatype 'complex'" in capsys.readouterr().err


def test_import_then_inspect(main, tmp_path, capsys):
    model = torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.randn(2, 4))
    source = tmp_path / "linear.pt"
    torch.jit.save(model, str(source))
    store = tmp_path / "store"
    base = ["import", str(source), "--name", "linear", "--store", str(store)]

    assert main(base) == 1
    assert "does not record its inputs" in capsys.readouterr().err

    assert main([*base, "--input", "features:-1,4:float32"]) == 0
    out = capsys.readouterr().out
    assert "imported linear.pt as linear version 1" in out
    assert main([*base, "--input", "features:-1,4:float32", "--max-batch-size", "4"]) == 0
    capsys.readouterr()

    assert main(["inspect", str(store / "linear")]) == 0
    out = capsys.readouterr().out
    assert "linear" in out
    assert "features" in out
    assert "output" in out
    assert "torchscript" in out
    assert "other versions of linear: 1" in out
    assert "integrity: OK" in out
    assert Archive.open(store / "linear" / "2").manifest.batching.max_batch_size == 4

    assert main(["inspect", str(store / "linear" / "1"), "--json"]) == 0
    assert '"name": "linear"' in capsys.readouterr().out

    graph = store / "linear" / "2" / "model.pt"
    graph.write_bytes(graph.read_bytes() + b"tampered")
    assert main(["inspect", str(store / "linear")]) == 1
    out = capsys.readouterr().out
    assert "integrity: FAILED" in out
    assert "does not match the manifest" in out


def test_import_onnx_and_inspect_missing(main, tmp_path, capsys):
    source = tmp_path / "tiny.onnx"
    torch.onnx.export(
        torch.nn.Linear(3, 1).eval(),
        (torch.randn(2, 3),),
        str(source),
        dynamo=False,
        input_names=["inp"],
        output_names=["out"],
        dynamic_axes={"inp": {0: "n"}, "out": {0: "n"}},
    )
    store = tmp_path / "store"
    assert main(["import", str(source), "--name", "tiny", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "inp" in out
    assert "runtime onnxruntime" in out
    assert main(["inspect", str(store / "tiny")]) == 0
    assert "inp" in capsys.readouterr().out

    assert main(["inspect", str(store / "nothing")]) == 1
    assert "does not exist" in capsys.readouterr().err
