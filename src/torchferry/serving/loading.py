"""Which models a server loads at start: a whole store, or one model's folder."""

from __future__ import annotations

from pathlib import Path

from torchferry.archive.manifest import MANIFEST_NAME
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings


def load_model_dir(repository: ModelRepository, name: str, directory: Path) -> None:
    """TorchServe-style ``--model-name NAME --model-dir DIR``: DIR is one archive, or a folder
    of integer versions; either is served as NAME whatever its manifest calls it."""
    if (directory / MANIFEST_NAME).is_file():
        archives = [Archive.open(directory)]
    else:
        store = ModelStore(directory.parent)
        versions = store.versions(directory.name)
        if not versions:
            raise ArchiveError(
                f"{directory} is neither a model archive (no {MANIFEST_NAME}) "
                "nor a folder of numbered versions"
            )
        archives = [store.open(directory.name, v) for v in versions]
    for archive in archives:
        renamed = archive.manifest.model_copy(update={"name": name})
        repository.add(Archive(path=archive.path, manifest=renamed))


def load_repository(settings: ServerSettings) -> ModelRepository:
    settings.check_sources()
    repository = ModelRepository(settings)
    if settings.model_dir is not None:
        name = settings.model_name or settings.model_dir.resolve().name
        load_model_dir(repository, name, settings.model_dir)
        return repository
    assert settings.store is not None
    store = ModelStore(settings.store)
    repository.load_store(store, settings.models or None)
    if not repository.names():
        raise ArchiveError(f"model store {store.root} holds no model versions")
    return repository
