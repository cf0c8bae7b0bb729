"""What the Load action may offer, under roots a walk must survive: a link loop (a
RuntimeError from ``Path.resolve`` on Python 3.11) and more entries than one listing looks
at; and a load naming a link loop, refused as the caller's error."""

from __future__ import annotations

import pytest

from torchferry.errors import InvalidInput
from torchferry.serving.console.sources import MAX_ENTRIES, list_sources
from torchferry.serving.management.sources import resolve_source
from torchferry.serving.settings import ServerSettings


def test_a_link_loop_is_skipped_and_a_load_of_it_refused(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "m.onnx").write_bytes(b"")
    settings = ServerSettings(model_source_roots=[tmp_path])
    body = list_sources(settings)
    assert body["candidates"] == [{"path": str(tmp_path / "m.onnx"), "kind": "onnx"}]
    assert body["truncated"] is False
    for name in ("loop", "a"):
        with pytest.raises(InvalidInput, match="cannot be resolved"):
            resolve_source(name, settings)


def test_a_walk_looks_at_a_bounded_number_of_entries(tmp_path):
    assert MAX_ENTRIES == 5000  # the route's bound; a smaller one here keeps the test quick
    for i in range(60):
        (tmp_path / "deep" / f"f{i:02d}").mkdir(parents=True)
    (tmp_path / "z.onnx").write_bytes(b"")  # sorted after "deep": past the bound
    settings = ServerSettings(model_source_roots=[tmp_path])
    body = list_sources(settings, max_entries=50)
    assert body == {"roots": [str(tmp_path.resolve())], "candidates": [], "truncated": True}
    whole = list_sources(settings, max_entries=100)
    assert whole["candidates"] == [{"path": str(tmp_path / "z.onnx"), "kind": "onnx"}]
    assert whole["truncated"] is False
