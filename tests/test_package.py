"""The package's top-level names."""

import importlib
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import torch

import torchferry


def test_torchferry_export_is_callable_every_time(tmp_path):
    model = torch.nn.Linear(3, 2)
    first = torchferry.export(model, torch.randn(2, 3), name="a", store=tmp_path, format="onnx")
    importlib.import_module("torchferry.export.api")  # binds the subpackage on the parent

    second = torchferry.export(model, torch.randn(2, 3), name="a", store=tmp_path, format="onnx")
    assert (first.manifest.version, second.manifest.version) == (1, 2)


def test_client_is_importable_lazily():
    assert torchferry.Client.__name__ == "Client"


def test_the_console_files_ship_as_package_data():
    """Every file of the console's static folder matches a package-data pattern (a wheel
    without them would serve a console that 404s)."""
    root = Path(__file__).parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["torchferry"]
    package = root / "src" / "torchferry"
    static = package / "serving" / "console" / "static"
    files = [p.relative_to(package).as_posix() for p in static.iterdir() if p.is_file()]
    assert "serving/console/static/index.html" in files
    for name in files:
        assert any(fnmatch(name, pattern) for pattern in patterns), name
