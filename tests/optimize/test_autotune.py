"""autotune on the real digits model, real runtimes and real candidates (short measurements)."""

from __future__ import annotations

import html
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from torchferry.archive import ModelStore
from torchferry.errors import InvalidInput
from torchferry.optimize import CANDIDATES, Candidate, Skipped, autotune, load_eager
from torchferry.optimize.candidates import select
from torchferry.optimize.context import BuildContext
from torchferry.optimize.measure import QUICK
from torchferry.optimize.outcome import parse_budget
from torchferry.optimize.report import cells, render_html, rich_table

pytestmark = pytest.mark.timeout(300)


def build_digits(store: Path, epochs: int = 3) -> Path:
    """The digits model (briefly trained) exported with its factory, and its test split."""
    from torchferry.demo.digits import export_digits, write_test_data
    from torchferry.zoo.digits import train_digits

    export_digits(train_digits(epochs=epochs)[0], store)
    return write_test_data(store.parent / "digits.npz")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    store = tmp_path_factory.mktemp("autotune") / "store"
    data = build_digits(store)
    return store, data


def by_name(result) -> dict:
    return {row.name: row for row in result.rows}


def test_budget_text():
    assert parse_budget("1%", "top1") == pytest.approx(0.01)
    assert parse_budget(0.02, "agreement") == pytest.approx(0.02)
    assert parse_budget("0.5", "max-abs") == 0.5
    with pytest.raises(InvalidInput, match="absolute bound"):
        parse_budget("1%", "max-abs")
    with pytest.raises(InvalidInput, match="at most 100%"):
        parse_budget("150%", "top1")
    with pytest.raises(InvalidInput, match="not a number"):
        parse_budget("lots", "top1")


def test_candidate_patterns():
    assert [c.name for c in select(["ort-static-*"])] == [
        "ort-static-int8-minmax",
        "ort-static-int8-entropy",
        "ort-static-int8-percentile",
    ]
    assert len(select(None)) == len(CANDIDATES)
    with pytest.raises(InvalidInput, match="matches no candidate"):
        select(["int4-*"])


def test_data_must_match_the_inputs(digits, tmp_path):
    store, _ = digits
    pixels = np.zeros((4, 64), np.float32)
    with pytest.raises(
        InvalidInput, match=r"named as the inputs \['pixels'\].*missing \['pixels'\]"
    ):
        autotune(store / "digits", {"x": pixels}, report=False)
    with pytest.raises(InvalidInput, match=r"'pixels' has shape \[4, 63\]"):
        autotune(store / "digits", {"pixels": pixels[:, :63]}, report=False)
    with pytest.raises(InvalidInput, match="top1 needs an array 'labels'"):
        autotune(store / "digits", {"pixels": pixels}, metric="top1", report=False)
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=pixels, labels=np.zeros(3, np.int64))
    with pytest.raises(InvalidInput, match="one integer class per row"):
        autotune(store / "digits", bad, report=False)
    assert ModelStore(store).versions("digits") == [1]


def test_candidates_outside_the_budget_are_rejected(digits, tmp_path):
    store, data = digits
    calls = []
    result = autotune(
        store / "digits",
        data,
        metric="max-abs",
        budget=1e-4,
        candidates=["ort-dynamic-int8", "ort-static-int8-minmax"],
        store=tmp_path / "out",
        settings=QUICK,
        progress=lambda done, total, what: calls.append((done, total, what)),
    )
    rows = by_name(result)
    assert list(rows) == ["fp32-onnxruntime", "ort-dynamic-int8", "ort-static-int8-minmax"]
    assert rows["fp32-onnxruntime"].original and rows["fp32-onnxruntime"].status == "accepted"
    assert rows["fp32-onnxruntime"].scores["max-abs"] == 0.0
    for name in ("ort-dynamic-int8", "ort-static-int8-minmax"):
        assert rows[name].status == "rejected", rows[name]
        assert "exceeds the budget 0.0001" in rows[name].reason
        assert rows[name].scores["max-abs"] > 1e-4
        assert rows[name].size_bytes < rows["fp32-onnxruntime"].size_bytes  # int8 weights
    # the only candidate left is the original: nothing new is written, the report says why
    assert result.winner is rows["fp32-onnxruntime"] and result.archive is None
    assert "already the fastest within budget" in result.summary
    assert result.report_path == tmp_path / "out" / "digits" / "optimize-report-v1.html"
    assert ModelStore(tmp_path / "out").versions("digits") == []
    assert calls[0] == (0, 3, "fp32-onnxruntime") and calls[-1] == (3, 3, "done")


def _boom(ctx: BuildContext):
    raise RuntimeError("kaboom: this builder always fails [/bold]")


def _bad_level(ctx: BuildContext):
    base = ctx.onnx_base()
    return ctx.variant("bad-level", base, "onnxruntime", {"graph_optimization_level": "max"})


def test_failures_are_listed_and_the_run_goes_on(digits, tmp_path):
    store, data = digits
    original = next(c for c in CANDIDATES if c.name == "fp32-onnxruntime")
    basic = next(c for c in CANDIDATES if c.name == "ort-level-basic")
    registry = [
        original,
        Candidate("boom", "fails to build", _boom),
        Candidate("bad-level", "fails to load", _bad_level),
        basic,
    ]
    result = autotune(
        store / "digits",
        data,
        budget="2%",
        registry=registry,
        store=tmp_path / "out",
        settings=QUICK,
    )
    rows = by_name(result)
    assert rows["boom"].status == "failed"
    assert rows["boom"].reason == "build: RuntimeError: kaboom: this builder always fails [/bold]"
    assert rows["bad-level"].status == "failed"
    assert rows["bad-level"].reason.startswith("measure: ArchiveError:")
    assert "graph_optimization_level 'max'" in rows["bad-level"].reason
    assert rows["ort-level-basic"].status == "accepted"
    assert rows["ort-level-basic"].scores["top1"] == rows["fp32-onnxruntime"].scores["top1"]
    page = result.report_path.read_text()
    assert "kaboom: this builder always fails [/bold]" in page
    assert html.escape("graph_optimization_level 'max'") in page
    terminal = Console(file=io.StringIO(), width=300)
    terminal.print(rich_table(result))  # messages are text, never rich markup
    assert "[/bold]" in terminal.file.getvalue()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the half candidates run on a GPU here")
def test_half_precision_is_skipped_without_a_gpu(digits, tmp_path):
    store, data = digits
    result = autotune(
        store / "digits",
        data,
        candidates=["fp16", "bf16"],
        store=tmp_path / "out",
        settings=QUICK,
        report=False,
    )
    rows = by_name(result)
    for name in ("fp16", "bf16"):
        assert rows[name].status == "skipped"
        assert "GPU" in rows[name].reason or "CUDA" in rows[name].reason
    assert result.report_path is None


def test_without_a_factory_torch_candidates_are_skipped(digits, tmp_path):
    store, data = digits
    source = ModelStore(store).open("digits", 1)
    assert isinstance(load_eager(source), torch.nn.Module)
    bare_store = ModelStore(tmp_path / "bare")
    manifest = source.manifest.model_copy(update={"factory": None})

    def populate(directory: Path) -> None:
        for name in source.manifest.files:
            shutil.copyfile(source.file(name), directory / name)

    bare = bare_store.write(manifest, populate)
    with pytest.raises(Skipped, match="no factory"):
        load_eager(bare)
    result = autotune(
        bare,
        data,
        budget="5%",
        candidates=["torch-*", "prune-l1-30", "fp32-torchscript", "ort-level-extended"],
        settings=QUICK,
    )
    rows = by_name(result)
    for name in ("torch-dynamic-int8", "torch-static-int8", "prune-l1-30"):
        assert rows[name].status == "skipped"
        assert "no factory" in rows[name].reason
    # the archive's own TorchScript graph and the ONNX-side candidates still run
    assert rows["fp32-torchscript"].status == "accepted"
    assert rows["fp32-torchscript"].runtime == "torchscript"
    assert rows["ort-level-extended"].status == "accepted"
    assert result.winner is not None and result.winner.status == "accepted"
    page = result.report_path.read_text()
    assert "<svg" in page
    for row in result.rows:
        assert html.escape(row.name) in page
        for value in cells(row, result):
            assert html.escape(value) in page
    assert render_html(result, None).count("<tr") == 2 * (len(result.rows) + 1)
