"""The loaded models: each model version with its runtime, handler and batcher.

The data plane looks models up here by name and optional version; the repository knows
nothing of wire formats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from torchferry.archive.manifest import Manifest
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ModelNotFound, TorchferryError
from torchferry.handlers import load_handler
from torchferry.handlers.base import Handler
from torchferry.runtimes import Runtime, load_runtime
from torchferry.serving import metrics
from torchferry.serving.batcher import Batcher
from torchferry.serving.settings import ServerSettings
from torchferry.signature import ModelSignature

log = logging.getLogger("torchferry.repository")


@dataclass
class LoadedModel:
    archive: Archive
    runtime: Runtime
    handler: Handler
    batcher: Batcher
    preprocess_pool: ThreadPoolExecutor

    @property
    def manifest(self) -> Manifest:
        return self.archive.manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def signature(self) -> ModelSignature:
        return self.manifest.signature


class ModelRepository:
    """Every loaded model version, addressable by name and version."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.resolved_threads(), thread_name_prefix="preprocess"
        )
        self.started = False

    # -- loading -------------------------------------------------------------------------------

    def load_store(self, store: ModelStore, names: list[str] | None = None) -> None:
        """Load every version of every model in ``store`` (or only the models in ``names``)."""
        wanted = names or store.models()
        for name in wanted:
            versions = store.versions(name)
            if not versions:
                raise ModelNotFound(f"model {name!r} is not in the store {store.root}")
            for version in versions:
                self.add(store.open(name, version))

    def add(self, archive: Archive) -> LoadedModel:
        started = time.perf_counter()
        manifest = archive.manifest
        overrides = self.settings.batching_for(manifest.name)
        batching = manifest.batching.model_copy(update=overrides)
        preferred = self.settings.runtime
        runtime = load_runtime(
            archive,
            runtime=preferred if preferred in manifest.graphs else None,
            device=self.settings.device,
            threads=self.settings.threads,
            trust_code=self.settings.trust_code,
        )
        try:
            handler = load_handler(archive, trust_code=self.settings.trust_code)
        except TorchferryError:
            runtime.close()
            raise
        batcher = Batcher(
            runtime.infer,
            name=f"{manifest.name}:{manifest.version}",
            max_batch_size=batching.max_batch_size,
            max_delay_ms=batching.max_delay_ms,
            max_queue_rows=self.settings.max_queue_rows,
            observer=(
                metrics.batch_observer(manifest.name, str(manifest.version))
                if self.settings.metrics
                else None
            ),
        )
        model = LoadedModel(archive, runtime, handler, batcher, self._preprocess_pool)
        self._models.setdefault(manifest.name, {})[manifest.version] = model
        if self.started:
            batcher.start()
        seconds = time.perf_counter() - started
        log.info(
            "loaded %s version %d (%s, handler %s, batch<=%d, delay %.1f ms) in %.2f s",
            manifest.name,
            manifest.version,
            runtime.name,
            manifest.handler.name,
            batching.max_batch_size,
            batching.max_delay_ms,
            seconds,
            extra={
                "event": "model_loaded",
                "model": manifest.name,
                "version": str(manifest.version),  # as in the access log and the metrics
                "runtime": runtime.name,
                "handler": manifest.handler.name,
                "max_batch_size": batching.max_batch_size,
                "max_delay_ms": batching.max_delay_ms,
                "load_seconds": round(seconds, 4),
            },
        )
        return model

    async def unload(self, name: str, version: int) -> None:
        """Take one version out of service: no new requests reach it, its queued ones are
        answered, then its runtime is released (404 for a version that is not loaded)."""
        model = self.get(name, version)
        versions = self._models[name]
        del versions[model.version]
        if not versions:
            del self._models[name]
        await model.batcher.close()
        self._release(model)

    # -- lookup --------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._lookup_versions(name))

    def get(self, name: str, version: str | int | None = None) -> LoadedModel:
        """The model version asked for; the default version (the highest) when none is given."""
        versions = self._lookup_versions(name)
        if version is None or version == "":
            return versions[max(versions)]
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise ModelNotFound(f"model {name!r} has no version {version!r}") from None
        if number not in versions:
            raise ModelNotFound(
                f"model {name!r} has no version {number}; loaded versions are {sorted(versions)}"
            )
        return versions[number]

    def all(self) -> list[LoadedModel]:
        return [m for name in self.names() for _, m in sorted(self._models[name].items())]

    def _lookup_versions(self, name: str) -> dict[int, LoadedModel]:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not loaded; loaded models are {self.names()}")
        return versions

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        for model in self.all():
            model.batcher.start()
        self.started = True

    async def close(self) -> None:
        """Drain every batcher (queued requests are answered), then release the runtimes."""
        self.started = False
        await asyncio.gather(*(m.batcher.close() for m in self.all()))
        for model in self.all():
            self._release(model)
        self._preprocess_pool.shutdown(wait=True)

    def _release(self, model: LoadedModel) -> None:
        model.runtime.close()
        log.info(
            "unloaded %s version %d",
            model.name,
            model.version,
            extra={"event": "model_unloaded", "model": model.name, "version": str(model.version)},
        )
