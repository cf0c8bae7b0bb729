"""The eager runtime: a model with Python control flow on tensor values, exported with
``format="eager"`` and rebuilt from the code and weights its archive carries."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from torchferry.archive.code import load_archived
from torchferry.archive.formats import EAGER, WEIGHTS_FILE
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError, ModelError, ModelNotReady, UntrustedCode
from torchferry.export import export, load_model
from torchferry.runtimes import load_runtime
from torchferry.runtimes.eager import EagerRuntime

BRANCHY = '''
import torch
from torch import nn


class Branchy(nn.Module):
    """Doubles a batch whose sum is positive, negates any other: a Python ``if`` on a
    tensor's value, which tracing would freeze to one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.linear(x) * 2
        if bool(torch.isnan(x).any()):
            raise ValueError("x holds a NaN")
        return -self.linear(x)


def make() -> nn.Module:
    return Branchy()
'''


def write_factory(directory: Path) -> Path:
    path = directory / "branchy.py"
    path.write_text(BRANCHY, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Archive, torch.nn.Module]:
    """The model (with trained-looking weights, not the factory's) and its eager archive."""
    directory = tmp_path_factory.mktemp("code")
    source = write_factory(directory)
    torch.manual_seed(7)
    model = load_model(f"{source}:make").eval()
    with torch.no_grad():
        model.linear.weight.mul_(3.0)  # weights the factory alone would not give
    archive = export(
        model,
        torch.ones(2, 4),
        name="branchy",
        store=tmp_path_factory.mktemp("store"),
        format="eager",
        output_names=["y"],
        factory=f"{source}:make",
    )
    return archive, model


def eager(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_the_archive_holds_code_and_weights_and_no_graph(exported):
    archive, _ = exported
    manifest = archive.manifest
    assert manifest.runtime == EAGER
    assert manifest.graphs == {EAGER: WEIGHTS_FILE}
    assert manifest.factory == "code/branchy.py:make"
    assert sorted(manifest.files) == ["code/branchy.py", WEIGHTS_FILE]
    assert (archive.path / "code" / "branchy.py").read_text(encoding="utf-8") == BRANCHY
    assert {r.format for r in manifest.parity} == {EAGER}
    assert all(r.max_abs_error == 0.0 for r in manifest.parity)


def test_the_weights_are_mapped_from_the_archive_and_shared(exported):
    archive, model = exported
    runtime = load_runtime(archive, threads=1, trust_code=True)
    try:
        weights = str(archive.path / WEIGHTS_FILE)
        assert weights in Path("/proc/self/maps").read_text()
        own = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        assert runtime.mapped_bytes == own  # type: ignore[attr-defined]
    finally:
        runtime.close()


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["positive-branch", "negative-branch"])
def test_both_branches_match_eager_pytorch(exported, sign):
    archive, model = exported
    x = sign * np.abs(np.random.default_rng(0).normal(size=(5, 4))).astype(np.float32)
    runtime = load_runtime(archive, threads=1, trust_code=True)
    try:
        assert runtime.name == EAGER
        outputs = runtime.infer({"x": x})
    finally:
        runtime.close()
    assert list(outputs) == ["y"]
    np.testing.assert_allclose(outputs["y"], eager(model, x), rtol=1e-6, atol=1e-6)
    # the branch really differs: the other sign's rule would give another answer
    assert not np.allclose(outputs["y"], -sign * eager(model, sign * x))


def test_read_only_inputs_are_copied_not_written(exported):
    archive, model = exported
    data = np.ones((2, 4), np.float32)
    view = np.frombuffer(data.tobytes(), np.float32).reshape(2, 4)  # read-only, as from a body
    runtime = load_runtime(archive, threads=1, trust_code=True)
    try:
        np.testing.assert_allclose(runtime.infer({"x": view})["y"], eager(model, data), atol=1e-6)
    finally:
        runtime.close()


def test_a_model_failure_is_a_model_error_with_its_message(exported):
    archive, _ = exported
    runtime = load_runtime(archive, threads=1, trust_code=True)
    try:
        with pytest.raises(ModelError, match="ValueError: x holds a NaN"):
            runtime.infer({"x": np.full((1, 4), np.nan, np.float32)})
        # and the runtime still serves
        assert runtime.infer({"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 3)
    finally:
        runtime.close()


def test_untrusted_code_is_refused(exported):
    archive, _ = exported
    with pytest.raises(UntrustedCode, match="--trust-code") as caught:
        load_runtime(archive, threads=1)
    assert "eager model" in caught.value.message
    with pytest.raises(UntrustedCode, match="--trust-code"):
        load_archived(archive, archive.manifest.factory or "", trust_code=False, what="eager model")


def test_a_tampered_factory_fails_the_sha256_check(exported, tmp_path):
    archive, _ = exported
    store = ModelStore(tmp_path / "store")
    copy = store.path("branchy", 1)
    copy.parent.mkdir(parents=True)
    shutil.copytree(archive.path, copy)
    code = copy / "code" / "branchy.py"
    code.write_text(BRANCHY.replace("* 2", "* 3"), encoding="utf-8")
    with pytest.raises(ArchiveError, match=r"'code/branchy.py' does not match the manifest"):
        store.open("branchy", 1)


def test_a_factory_outside_the_archive_is_refused(exported, tmp_path):
    archive, _ = exported
    outside = write_factory(tmp_path)
    manifest = archive.manifest.model_copy(update={"factory": f"{outside}:make"})
    with pytest.raises(ArchiveError, match="not carried in the archive"):
        load_runtime(Archive(archive.path, manifest), trust_code=True)


def test_no_pickle_is_read(exported, monkeypatch):
    archive, model = exported

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling while loading an eager model")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    runtime = load_runtime(archive, threads=1, trust_code=True)
    x = np.ones((1, 4), np.float32)
    try:
        np.testing.assert_allclose(runtime.infer({"x": x})["y"], eager(model, x), atol=1e-6)
    finally:
        runtime.close()
    weights = (archive.path / WEIGHTS_FILE).read_bytes()
    header = int.from_bytes(weights[:8], "little")
    assert weights[8 : 8 + header].startswith(b"{")  # a safetensors JSON header


def test_a_closed_runtime_loads_again_and_answers_the_same(exported):
    """A memory budget (serving/residency.py) closes an idle version's engine and loads it
    again: the factory runs again and the weights load again."""
    archive, model = exported
    x = np.abs(np.random.default_rng(3).normal(size=(2, 4))).astype(np.float32)
    runtime = load_runtime(archive, threads=1, trust_code=True)
    try:
        runtime.close()
        with pytest.raises(ModelNotReady):
            runtime.infer({"x": x})
        runtime.load()
        np.testing.assert_allclose(runtime.infer({"x": x})["y"], eager(model, x), atol=1e-6)
    finally:
        runtime.close()


def test_check_refuses_untrusted_code_without_loading(exported):
    """What a memory budget's start runs instead of ``load``: the same refusal, up front."""
    archive, _ = exported
    with pytest.raises(UntrustedCode, match="--trust-code"):
        EagerRuntime(archive, threads=1).check()
    trusted = EagerRuntime(archive, threads=1, trust_code=True)
    trusted.check()
    assert trusted.module is None  # nothing was loaded
