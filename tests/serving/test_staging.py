"""A version's name and number come from its place in the store, on every path that loads
it (a start from the store or from the supervisor's state, a ``--model-dir`` folder, a load
while serving, staging); and staging puts exactly the files a source's manifest promised
into the store, refusing symlinks and ONNX external data that leaves its folder."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from versions_store import build_versions_store, candidate, corrupt_copy

from torchferry.archive import Manifest, ModelStore
from torchferry.errors import ArchiveError
from torchferry.serving import staging
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


# -- staging puts exactly what the manifest promised into the store ------------------------------


def _source(store_root: Path, tmp_path: Path) -> Path:
    """An archive outside the store (candidate 3, a perturbed ``lin``)."""
    return Path(shutil.copytree(candidate(store_root, 3), tmp_path / "source"))


def _untouched(store_root: Path) -> None:
    """The refused source left nothing in the store: no version, no staging directory."""
    assert sorted(p.name for p in (store_root / "lin").iterdir()) == ["1"]


def test_a_symbolic_link_anywhere_in_the_source_is_refused(store_root: Path, tmp_path: Path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"not for the store")
    for case in ("graph", "extra", "folder", "manifest"):
        source = _source(store_root, tmp_path / case)
        if case == "graph":  # a listed file replaced by a link to a copy of itself
            kept = tmp_path / case / "model.onnx"
            (source / "model.onnx").rename(kept)
            (source / "model.onnx").symlink_to(kept)
            where = "'model.onnx'"
        elif case == "extra":  # not even listed
            (source / "notes.txt").symlink_to(outside)
            where = "'notes.txt'"
        elif case == "folder":
            (source / "assets").symlink_to(tmp_path, target_is_directory=True)
            where = "'assets'"
        else:
            kept = tmp_path / case / "manifest.json"
            (source / "manifest.json").rename(kept)
            (source / "manifest.json").symlink_to(kept)
            where = "'manifest.json'"
        with pytest.raises(ArchiveError, match=rf"{source}: {where} is a symbolic link"):
            stage_source(source, store_root, None)
        _untouched(store_root)


def test_a_file_that_changes_while_it_is_copied_is_refused(
    store_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    source = _source(store_root, tmp_path)
    real_copy = staging._copy_file

    def swapped(where: Path, file_name: str, target: Path) -> None:
        graph = where / file_name
        graph.write_bytes(graph.read_bytes() + b"\0")  # after any check of the source
        real_copy(where, file_name, target)

    monkeypatch.setattr(staging, "_copy_file", swapped)
    with pytest.raises(ArchiveError) as refused:
        stage_source(source, store_root, None)
    message = str(refused.value)
    assert message.startswith(f"{source}: file 'model.onnx' does not match the manifest")
    assert "changed while it was copied" in message
    _untouched(store_root)


def test_a_corrupt_or_incomplete_source_is_refused_with_its_path(store_root: Path, tmp_path: Path):
    corrupt = corrupt_copy(candidate(store_root, 3), tmp_path / "corrupt")
    with pytest.raises(ArchiveError, match=rf"^{corrupt}: file 'model.onnx' does not match"):
        stage_source(corrupt, store_root, None)
    missing = _source(store_root, tmp_path)
    (missing / "model.onnx").unlink()
    with pytest.raises(ArchiveError, match=rf"^{missing}: file 'model.onnx' listed in the"):
        stage_source(missing, store_root, None)
    _untouched(store_root)


def _onnx_with_external_data(store_root: Path, folder: Path, location: str) -> Path:
    """``lin``'s graph in ``folder/model.onnx`` with its weights in ``folder/location``."""
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(store_root / "lin" / "1" / "model.onnx"))
    path = folder / "model.onnx"
    onnx.save_model(
        graph, str(path), save_as_external_data=True, location=location, size_threshold=0
    )
    assert (folder / location).is_file()
    return path


def test_an_onnx_file_with_its_external_data_beside_it_is_imported(
    store_root: Path, tmp_path: Path
):
    path = _onnx_with_external_data(store_root, tmp_path / "plain", "weights/w.bin")
    staged = stage_source(path, store_root, "lin")
    assert (staged.manifest.name, staged.manifest.version) == ("lin", 2)
    assert set(staged.manifest.files) == {"model.onnx", "weights/w.bin"}


def test_onnx_external_data_through_a_link_or_outside_its_folder_is_refused(
    store_root: Path, tmp_path: Path
):
    # the data file itself a link
    linked = _onnx_with_external_data(store_root, tmp_path / "linked", "w.bin")
    (tmp_path / "linked" / "w.bin").rename(tmp_path / "kept.bin")
    (tmp_path / "linked" / "w.bin").symlink_to(tmp_path / "kept.bin")
    with pytest.raises(ArchiveError, match=rf"^{linked}: its external data 'w.bin' is a symbolic"):
        stage_source(linked, store_root, "lin")
    # a folder on its way a link to elsewhere
    away = _onnx_with_external_data(store_root, tmp_path / "away", "data/w.bin")
    shutil.move(tmp_path / "away" / "data", tmp_path / "elsewhere")
    (tmp_path / "away" / "data").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ArchiveError, match=rf"^{away}: its external data 'data/w.bin' resolves"):
        stage_source(away, store_root, "lin")
    _untouched(store_root)


def test_a_worker_imports_no_torch_until_a_model_needs_it():
    """A worker (and the warm spare) imports the serving stack before it knows its models:
    staging's importers, which bring torch, wait until a .mar or .onnx is staged. With torch
    at import, a replacement worker took seconds longer to serve an ONNX model."""
    code = "import sys, torchferry.serving.worker; print('torch' in sys.modules)"
    answer = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert answer.stdout.strip() == "False", answer.stdout


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_tensorflow_model_is_refused_not_converted_in_the_server(
    store_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # it must not even be looked for
    model = tmp_path / f"classifier{suffix}"
    model.write_bytes(b"PK")
    with pytest.raises(ArchiveError, match="convert it first with `torchferry import"):
        stage_source(model, store_root, "classifier")
    assert not (store_root / "classifier").exists()
