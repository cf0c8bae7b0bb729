"""Each engine behind the Runtime interface, on one exported model in both forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchferry.archive.formats import (
    EAGER,
    GRAPH_FILES,
    GRAPH_OF,
    ONNXRUNTIME,
    ONNXRUNTIME_TRT,
    TORCHSCRIPT,
)
from torchferry.archive.store import Archive
from torchferry.errors import ArchiveError
from torchferry.export import export
from torchferry.runtimes import RUNTIMES, default_threads, load_runtime


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.linear(x)
        return y, y.sum(dim=1)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Archive, torch.nn.Module]:
    torch.manual_seed(0)
    model = TwoHeads().eval()
    store = tmp_path_factory.mktemp("store")
    exported = export(
        model, torch.randn(2, 4), name="heads", store=store, output_names=["y", "total"]
    )
    return exported, model


def test_every_runtime_has_a_name_and_a_file():
    assert set(GRAPH_FILES) == {ONNXRUNTIME, TORCHSCRIPT, EAGER}
    # a runtime with no graph of its own runs one that has a file
    assert dict(GRAPH_OF) == {ONNXRUNTIME_TRT: ONNXRUNTIME}
    assert set(RUNTIMES) == set(GRAPH_FILES) | set(GRAPH_OF)


# the eager runtime needs a factory carried in the archive: see test_eager.py
@pytest.mark.parametrize("engine", [ONNXRUNTIME, TORCHSCRIPT])
def test_each_runtime_matches_eager_torch(archive, engine):
    exported, model = archive
    runtime = load_runtime(exported, runtime=engine, threads=1)
    try:
        x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
        outputs = runtime.infer({"x": x})
        with torch.no_grad():
            y, total = model(torch.from_numpy(x))
        assert list(outputs) == ["y", "total"]
        np.testing.assert_allclose(outputs["y"], y.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(outputs["total"], total.numpy(), rtol=1e-5, atol=1e-5)
        assert runtime.threads == 1 and runtime.name == engine
    finally:
        runtime.close()


def test_threads_default_to_the_cores_available():
    assert default_threads() >= 1


def test_the_manifest_chooses_the_runtime(archive):
    exported, _ = archive
    runtime = load_runtime(exported)
    assert runtime.name == exported.manifest.runtime == "onnxruntime"
    assert runtime.threads == default_threads()
    runtime.close()


def test_unknown_or_absent_runtime_is_refused(archive):
    exported, _ = archive
    with pytest.raises(ArchiveError, match="unknown runtime 'tensorrt'"):
        load_runtime(exported, runtime="tensorrt")
    only_onnx = exported.manifest.model_copy(update={"graphs": {"onnxruntime": "model.onnx"}})
    with pytest.raises(ArchiveError, match="no graph for runtime 'torchscript'"):
        load_runtime(Archive(exported.path, only_onnx), runtime="torchscript")


def test_onnx_graph_optimization_level_comes_from_the_manifest(archive):
    exported, _ = archive
    basic = exported.manifest.model_copy(
        update={"runtime_options": {"graph_optimization_level": "basic"}}
    )
    # the private session: a shared one was optimized at this level once, and loads with
    # optimizations off (tests/runtimes/test_shared_weights.py)
    runtime = load_runtime(Archive(exported.path, basic), share_weights=False)
    import onnxruntime as ort

    level = runtime.session.get_session_options().graph_optimization_level
    assert level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    runtime.close()
    wrong = exported.manifest.model_copy(
        update={"runtime_options": {"graph_optimization_level": "max"}}
    )
    with pytest.raises(ArchiveError, match="graph_optimization_level 'max'"):
        load_runtime(Archive(exported.path, wrong))


# a memory budget (serving/residency.py) closes an idle version's engine and loads it again
@pytest.mark.parametrize("engine", [ONNXRUNTIME, TORCHSCRIPT])
def test_a_closed_runtime_loads_again_and_answers_the_same(archive, engine):
    exported, _ = archive
    runtime = load_runtime(exported, runtime=engine, threads=1)
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    try:
        before = runtime.infer({"x": x})
        runtime.close()
        runtime.load()
        after = runtime.infer({"x": x})
    finally:
        runtime.close()
    np.testing.assert_array_equal(after["y"], before["y"])
    np.testing.assert_array_equal(after["total"], before["total"])
