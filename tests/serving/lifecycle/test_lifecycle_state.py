"""The desired state's file (round trip, atomic write) and the version policies."""

from __future__ import annotations

import logging
import os

import pytest
from lifecycle_fakes import add_version

from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.lifecycle.state import (
    DesiredState,
    ModelState,
    RolloutSpec,
    RolloutStatus,
    Routes,
    Shadow,
)
from torchferry.store_layout import store_models, store_versions


def full_state() -> DesiredState:
    rollout = RolloutStatus(
        spec=RolloutSpec(version=2, steps=[10, 100], min_agreement=0.9),
        stable=1,
        phase="stepping",
        step=0,
        weight=10,
        started_at=1.0,
        updated_at=2.0,
    )
    model = ModelState(
        versions=[1, 2],
        routes=Routes(default=1, weights={1: 90, 2: 10}, shadow=Shadow(version=2, share=0.5)),
        policy=VersionPolicy(kind="specific", versions=[1, 2]),
        rollout=rollout,
    )
    return DesiredState(models={"digits": model, "other": ModelState()})


def test_state_file_round_trip(tmp_path):
    state = full_state()
    state.write(tmp_path)
    assert DesiredState.path_in(tmp_path).is_file()
    restored = DesiredState.read(tmp_path)
    assert restored == state
    assert restored.models["digits"].routes.weights == {1: 90, 2: 10}  # integer keys back


def test_no_state_file_reads_as_none(tmp_path):
    assert DesiredState.read(tmp_path) is None


def test_a_corrupt_state_file_is_ignored_and_logged(tmp_path, caplog):
    path = DesiredState.path_in(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"models": {"m": {"versions": "nope"}}}')
    with caplog.at_level(logging.ERROR):
        assert DesiredState.read(tmp_path) is None
    assert "ignoring the saved state" in caplog.text


def test_a_failed_write_leaves_the_previous_state_whole(tmp_path, monkeypatch):
    first = full_state()
    first.write(tmp_path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        DesiredState().write(tmp_path)
    monkeypatch.undo()
    assert DesiredState.read(tmp_path) == first
    leftovers = [p.name for p in DesiredState.path_in(tmp_path).parent.iterdir()]
    assert leftovers == ["state.json"]  # the temporary file is gone


def test_store_listing_needs_a_manifest(tmp_path):
    add_version(tmp_path, "m", 1)
    add_version(tmp_path, "m", 3)
    (tmp_path / "m" / "2").mkdir()  # being copied in: no manifest yet
    (tmp_path / "m" / "notes").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / ".torchferry").mkdir()
    assert store_versions(tmp_path, "m") == [1, 3]
    assert store_models(tmp_path) == ["m"]


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("all", [1, 2, 5]),
        ("latest:1", [5]),
        ("latest:2", [2, 5]),
        ("latest:9", [1, 2, 5]),
        ("specific:2,5,7", [2, 5]),
    ],
)
def test_policy_selection(text, selected):
    policy = VersionPolicy.parse(text)
    assert policy.select([5, 1, 2, 2]) == selected
    assert VersionPolicy.parse(str(policy)) == policy
    assert VersionPolicy.from_triton(policy.to_triton()) == policy


@pytest.mark.parametrize("text", ["latest:x", "specific:", "newest", "all:3"])
def test_bad_policies_say_why(text):
    with pytest.raises(ValueError, match="version policy"):
        VersionPolicy.parse(text)
