"""The server's lifecycle: load the store, build the app, run uvicorn until a signal, drain."""

from __future__ import annotations

import gc
from pathlib import Path

import uvicorn

from torchferry.archive.manifest import MANIFEST_NAME
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError
from torchferry.serving.app import build_app
from torchferry.serving.logs import configure_logging
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
    if settings.model_dir is not None:
        repository = ModelRepository(settings)
        name = settings.model_name or settings.model_dir.resolve().name
        load_model_dir(repository, name, settings.model_dir)
        return repository
    if settings.store is None:
        raise ArchiveError("no model store given (--store DIR, or --model-name and --model-dir)")
    store = ModelStore(settings.store)
    if not store.root.is_dir():
        raise ArchiveError(f"model store {store.root} does not exist")
    repository = ModelRepository(settings)
    repository.load_store(store, settings.models or None)
    if not repository.names():
        raise ArchiveError(f"model store {store.root} holds no model versions")
    return repository


def serve(settings: ServerSettings) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn then stops accepting, and queued requests finish."""
    configure_logging(settings.log_level, settings.log_format)
    repository = load_repository(settings)  # logs a model_loaded event per version
    app = build_app(settings, repository)
    # torch and the engines leave millions of long-lived objects; a full collection that
    # walks them all stalls every request for ~100 ms, so move them out of the GC's sight.
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # uvicorn's lines go through the root logger, in the server's format; the access
        # log is torchferry's own (request ids, route templates, models)
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        loop="auto",
        http="auto",
    )
    uvicorn.Server(config).run()
