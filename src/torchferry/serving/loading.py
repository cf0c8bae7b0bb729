"""Which models a server loads at start: a whole store, one model's folder, or the
supervisor's desired state (exactly the versions it lists, with their routes)."""

from __future__ import annotations

import logging
from pathlib import Path

from torchferry.archive.manifest import MANIFEST_NAME
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError
from torchferry.serving.build import served_as
from torchferry.serving.lifecycle.state import DesiredState, Routes
from torchferry.serving.repository import ModelRepository
from torchferry.serving.routing import Route
from torchferry.serving.settings import ServerSettings

log = logging.getLogger("torchferry.loading")


def load_model_dir(
    repository: ModelRepository, name: str, directory: Path, versions: list[int] | None = None
) -> None:
    """TorchServe-style ``--model-name NAME --model-dir DIR``: DIR is one archive, or a folder
    of integer versions; either is served as NAME whatever its manifest calls it. With
    ``versions``, only those (the supervisor's state after management unloads)."""
    if (directory / MANIFEST_NAME).is_file():  # one archive: its manifest's number
        archive = Archive.open(directory)
        number = archive.manifest.version
        if versions is None or number in versions:
            repository.add(served_as(archive, name, number))
        return
    store = ModelStore(directory.parent)
    found = store.versions(directory.name)
    if not found:
        raise ArchiveError(
            f"{directory} is neither a model archive (no {MANIFEST_NAME}) "
            "nor a folder of numbered versions"
        )
    for number in found:  # each served as its directory's number
        if versions is None or number in versions:
            repository.add(served_as(store.open(directory.name, number), name, number))


def load_state(repository: ModelRepository, store: ModelStore, state: DesiredState) -> None:
    """Exactly the versions ``state`` lists, then each model's routes. A version gone from
    the store since the state was written is skipped with a warning (the supervisor drops
    it too), and so is every route naming it; any other failure stops the start."""
    for name, model in sorted(state.models.items()):
        routes = model.routes
        for version in model.versions:
            if version not in store.versions(name):
                log.warning(
                    "model %s version %d is no longer in the store %s", name, version, store.root
                )
                continue
            repository.add(served_as(store.open(name, version), name, version))
        if name in repository.names():
            _apply_routes(repository, name, routes)


def _apply_routes(repository: ModelRepository, name: str, routes: Routes) -> None:
    """``routes`` without the versions that did not load."""
    loaded = set(repository.versions(name))
    for version in Route.of(routes).named() - loaded:
        routes = routes.without(version)
    repository.set_routes(name, routes)


def load_repository(settings: ServerSettings, state: DesiredState | None = None) -> ModelRepository:
    settings.check_sources()
    repository = ModelRepository(settings)
    if settings.model_dir is not None:
        name = settings.model_name or settings.model_dir.resolve().name
        wanted = state.models.get(name) if state is not None else None
        load_model_dir(repository, name, settings.model_dir, wanted.versions if wanted else None)
        if wanted is not None and name in repository.names():
            _apply_routes(repository, name, wanted.routes)
        return repository
    assert settings.store is not None
    store = ModelStore(settings.store)
    if state is not None:  # what the supervisor says, even nothing (every version unloaded)
        load_state(repository, store, state)
        return repository
    repository.load_store(store, settings.models or None)
    if not repository.names():
        raise ArchiveError(f"model store {store.root} holds no model versions")
    return repository
