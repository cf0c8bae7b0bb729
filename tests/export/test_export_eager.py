"""``format="eager"``: what the export requires, writes and checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchferry.cli as cli
from torchferry.archive import Archive, ModelStore
from torchferry.archive.formats import EAGER, WEIGHTS_FILE
from torchferry.errors import ExportError
from torchferry.export import export
from torchferry.runtimes import load_runtime

SOURCE = """
import torch
from torch import nn


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y * 2 if y.sum() > 0 else -y


def make() -> nn.Module:
    return Gate()
"""


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "gate.py"
    path.write_text(SOURCE, encoding="utf-8")
    return path


def test_eager_needs_a_factory(tmp_path):
    with pytest.raises(ExportError, match="format 'eager' needs the model's factory"):
        export(nn.Linear(4, 2), torch.ones(2, 4), name="m", store=tmp_path, format="eager")
    assert not (tmp_path / "m").exists()


def test_unknown_formats_are_named(tmp_path):
    with pytest.raises(ExportError, match="use one of onnx, torchscript, both, eager"):
        export(nn.Linear(4, 2), torch.ones(2, 4), name="m", store=tmp_path, format="tflite")  # type: ignore[arg-type]


def test_a_factory_that_rebuilds_another_model_fails_the_export(tmp_path, factory_file):
    # the factory builds Gate; the model given is a plain Linear: its weights fit no Gate
    with pytest.raises(ExportError, match="cannot be loaded back"):
        export(
            nn.Sequential(nn.Linear(4, 2)),
            torch.ones(2, 4),
            name="m",
            store=tmp_path / "store",
            format="eager",
            factory=f"{factory_file}:make",
        )
    assert ModelStore(tmp_path / "store").versions("m") == []


def test_an_extra_file_may_not_replace_the_factory(tmp_path, factory_file):
    with pytest.raises(ExportError, match=r"already archived as code/gate\.py"):
        export(
            nn.Linear(4, 2),
            torch.ones(2, 4),
            name="m",
            store=tmp_path / "store",
            format="eager",
            factory=f"{factory_file}:make",
            extra_files={"code/gate.py": b"print('not the factory')"},
        )


def test_quantized_weights_cannot_be_eager(tmp_path, factory_file):
    quantized = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(ExportError, match="quantized tensors"):
        export(
            quantized,
            torch.ones(2, 4),
            name="m",
            store=tmp_path / "store",
            format="eager",
            factory=f"{factory_file}:make",
        )


def test_cli_export_format_eager(tmp_path, factory_file, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ["export_cmd"])
    monkeypatch.setenv("COLUMNS", "160")
    store = tmp_path / "store"
    code = cli.main(
        [
            "export",
            f"{factory_file}:make",
            "--format",
            "eager",
            "--name",
            "gate",
            "--store",
            str(store),
            "--input",
            "x:-1,4:float32",
        ]
    )
    assert code == 0
    archive = Archive.open(store / "gate" / "1")
    manifest = archive.manifest
    assert (manifest.runtime, manifest.graphs) == (EAGER, {EAGER: WEIGHTS_FILE})
    assert manifest.factory == "code/gate.py:make"
    assert manifest.source == "export (eager)"
    assert set(manifest.files) == {"code/gate.py", WEIGHTS_FILE}
    # the archive, not the file it was exported from, is what runs
    factory_file.unlink()
    runtime = load_runtime(archive, threads=1, trust_code=True)
    try:
        x = np.ones((2, 4), np.float32)
        assert runtime.infer({"x": x})["output"].shape == (2, 2)
    finally:
        runtime.close()
