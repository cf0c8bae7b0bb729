"""A version's name and number come from its place in the store, on every path that loads
it (a start from the store or from the supervisor's state, a ``--model-dir`` folder, a load
while serving, staging); and staging puts exactly the files a source's manifest promised
into the store, refusing symlinks and ONNX external data that leaves its folder."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from versions_store import build_versions_store, candidate

from torchferry.archive import Manifest, ModelStore
from torchferry.serving.lifecycle.state import DesiredState, ModelState
from torchferry.serving.loading import load_model_dir, load_repository
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings
from torchferry.serving.staging import stage_source


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return build_versions_store(tmp_path / "store").root


def _settings(**fields: Any) -> ServerSettings:
    return ServerSettings(metrics_port=None, access_log=False, threads=1, grpc_port=None, **fields)


def _copied_as(store_root: Path, name: str, version: int) -> Path:
    """``lin`` 1 copied as ``name/version``: its manifest still says lin version 1."""
    target = store_root / name / str(version)
    shutil.copytree(store_root / "lin" / "1", target)
    assert (Manifest.read(target).name, Manifest.read(target).version) == ("lin", 1)
    return target


def _served(repository: ModelRepository) -> dict[str, list[tuple[str, int]]]:
    return {
        name: [(m.name, m.version) for m in repository.all() if m.name == name]
        for name in repository.names()
    }


# -- one rule for a version's name and number ----------------------------------------------------


def test_a_start_from_the_store_serves_each_version_as_its_directory(store_root: Path):
    _copied_as(store_root, "lin", 2)
    _copied_as(store_root, "other", 3)
    repository = load_repository(_settings(store=store_root))
    assert _served(repository) == {"lin": [("lin", 1), ("lin", 2)], "other": [("other", 3)]}
    assert repository.stats.keys() == {("lin", "1"), ("lin", "2"), ("other", "3")}


def test_a_start_from_the_supervisors_state_serves_each_version_as_its_directory(
    store_root: Path,
):
    _copied_as(store_root, "lin", 2)
    _copied_as(store_root, "other", 3)
    state = DesiredState(
        models={"lin": ModelState(versions=[2]), "other": ModelState(versions=[3])}
    )
    repository = load_repository(_settings(store=store_root), state)
    assert _served(repository) == {"lin": [("lin", 2)], "other": [("other", 3)]}


def test_a_load_while_serving_and_a_restart_agree(store_root: Path):
    path = _copied_as(store_root, "lin", 2)

    async def load() -> tuple[str, int]:
        repository = ModelRepository(_settings(store=store_root))
        model = await repository.prepare("lin", 2, path)
        await repository.close()
        return model.name, model.version

    assert asyncio.run(load()) == ("lin", 2)
    restarted = load_repository(_settings(store=store_root), DesiredState(
        models={"lin": ModelState(versions=[2])}
    ))  # fmt: skip
    assert _served(restarted) == {"lin": [("lin", 2)]}


def test_a_model_dir_of_versions_serves_each_as_its_directory_and_only_those_asked(
    store_root: Path,
):
    _copied_as(store_root, "lin", 2)
    repository = ModelRepository(_settings(store=store_root))
    load_model_dir(repository, "renamed", store_root / "lin", versions=[2])
    assert _served(repository) == {"renamed": [("renamed", 2)]}
    everything = ModelRepository(_settings(store=store_root))
    load_model_dir(everything, "renamed", store_root / "lin")
    assert _served(everything) == {"renamed": [("renamed", 1), ("renamed", 2)]}


def test_staging_a_version_already_in_the_store_names_it_by_its_directory(store_root: Path):
    path = _copied_as(store_root, "other", 3)
    staged = stage_source(path, store_root, None)
    assert (staged.path, staged.manifest.name, staged.manifest.version) == (path, "other", 3)
    assert stage_source(path, store_root, "other").path == path
    # asked under another name: copied in as that model's next version
    copied = stage_source(path, store_root, "lin")
    assert (copied.path, copied.manifest.name, copied.manifest.version) == (
        store_root / "lin" / "2",
        "lin",
        2,
    )
    assert ModelStore(store_root).versions("lin") == [1, 2]


def test_staging_an_archive_from_outside_copies_it_in_as_the_next_version(store_root: Path):
    staged = stage_source(candidate(store_root, 3), store_root, None)
    assert (staged.manifest.name, staged.manifest.version) == ("lin", 2)
    assert Manifest.read(staged.path).files == Manifest.read(candidate(store_root, 3)).files
