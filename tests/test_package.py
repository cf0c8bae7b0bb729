"""The package's top-level names."""

import importlib

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
