"""``load_eager``: the eager model optimization starts from, rebuilt from an archive."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchferry.export import export, load_model
from torchferry.optimize import Skipped, load_eager

SOURCE = """
from torch import nn


def make() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
"""


@pytest.fixture
def factory(tmp_path: Path) -> str:
    path = tmp_path / "small.py"
    path.write_text(SOURCE, encoding="utf-8")
    return f"{path}:make"


@pytest.mark.parametrize("format", ["eager", "onnx"])
def test_the_rebuilt_model_has_the_exported_weights(tmp_path, factory, format):
    torch.manual_seed(3)
    model = load_model(factory).eval()
    archive = export(
        model, torch.ones(2, 4), name="small", store=tmp_path / "s", format=format, factory=factory
    )
    rebuilt = load_eager(archive, trust_code=True)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_code_in_the_archive_needs_trust(tmp_path, factory):
    archive = export(
        load_model(factory), torch.ones(2, 4), name="small", store=tmp_path, format="eager",
        factory=factory,
    )  # fmt: skip
    with pytest.raises(Skipped, match="--trust-code"):
        load_eager(archive)


def test_autotune_refuses_an_eager_archive(tmp_path, factory):
    import numpy as np

    from torchferry.errors import InvalidInput
    from torchferry.optimize import autotune

    archive = export(
        load_model(factory), torch.ones(2, 4), name="small", store=tmp_path, format="eager",
        factory=factory,
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="eager archive"):
        autotune(archive, {"input": np.ones((4, 4), np.float32)}, report=False)
