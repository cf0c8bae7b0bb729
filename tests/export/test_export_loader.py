"""Resolving FILE.py:FACTORY and package.module:factory targets."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from torchferry.errors import ExportError
from torchferry.export import load_model

TINY = Path(__file__).with_name("tiny_models.py")


def test_file_factory():
    model = load_model(f"{TINY}:mlp")
    assert type(model).__name__ == "MLP"


def test_module_factory():
    assert isinstance(load_model("torch.nn:Identity"), nn.Identity)


def test_module_instance_is_taken_as_is(tmp_path):
    target = tmp_path / "inst.py"
    target.write_text("import torch\nmodel = torch.nn.ReLU()\n")
    assert isinstance(load_model(f"{target}:model"), nn.ReLU)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "must be FILE.py:FACTORY or package.module:factory"),
        ("missing_file.py:f", "cannot load 'missing_file.py': no such file"),
        ("no_such_package_xyz:f", "cannot import module 'no_such_package_xyz'"),
        (f"{TINY}:nope", "has no attribute 'nope'"),
        (f"{TINY}:NOT_CALLABLE", "is a int, not a callable that returns an nn.Module"),
        (f"{TINY}:not_a_module", "returned a str, expected a torch.nn.Module"),
    ],
)
def test_errors(target, message):
    with pytest.raises(ExportError) as info:
        load_model(target)
    assert message in info.value.message


def test_file_that_raises_on_import(tmp_path):
    target = tmp_path / "broken.py"
    target.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ExportError, match=r"importing .*broken\.py' failed: RuntimeError: boom"):
        load_model(f"{target}:f")


def test_factory_that_raises(tmp_path):
    target = tmp_path / "bad_factory.py"
    target.write_text("def make():\n    raise ValueError('no weights')\n")
    with pytest.raises(ExportError, match=r"calling .* failed: ValueError: no weights"):
        load_model(f"{target}:make")
