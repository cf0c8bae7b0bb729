"""The loaded models: each model version with its runtime, handler and batcher, and the
routes that pick a version for requests that name none.

The data plane looks models up here by name, optional version and traffic key; the
repository knows nothing of wire formats. Versions change while serving in steps, so that a
version takes traffic only once it has answered a warm-up, and leaves only once it has
answered every request that reached it:

- ``prepare``: open and verify the archive, build runtime, handler and batcher, run one
  warm-up inference; the version is *pending* (no traffic). Slow work runs in a thread, so
  the event loop keeps serving.
- ``activate``: pending -> routable; ``discard``: release a pending version (one still
  building: answered at once, released when its build ends; ``activate`` then refuses it);
- ``retire``: out of routing at once, then wait for its in-flight requests, drain its
  batcher, release its runtime.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from torchferry.archive.manifest import Manifest
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import Conflict, ModelLoadFailed, ModelNotFound, TorchferryError
from torchferry.handlers.base import Handler
from torchferry.runtimes import Runtime, runtime_class
from torchferry.serving import metrics
from torchferry.serving.batcher import Batcher
from torchferry.serving.build import (
    UNSIGNED,
    build_version,
    check_signature,
    instances_of,
    open_archive,
    runtime_for,
    served_as,
)
from torchferry.serving.lifecycle.state import Routes
from torchferry.serving.residency import Residency, estimate_bytes
from torchferry.serving.routing import Route
from torchferry.serving.settings import ServerSettings
from torchferry.serving.versionstats import VersionStats
from torchferry.signature import ModelSignature

log = logging.getLogger("torchferry.repository")


@dataclass(eq=False)
class LoadedModel:
    archive: Archive
    #: One runtime per instance (``--instances``), each computing its own batches.
    runtimes: list[Runtime]
    handler: Handler
    batcher: Batcher
    preprocess_pool: ThreadPoolExecutor
    #: Seconds the load took (open, verify, build, warm-up).
    load_seconds: float = 0.0
    #: Its signature, as checked when it loaded (``build.check_signature``).
    signing: str = UNSIGNED
    #: Live figures since this version was loaded (requests, errors, latencies, shadow).
    stats: VersionStats = field(default_factory=VersionStats)
    #: Requests between the data plane's entry and their answer (and shadow mirrors).
    inflight: int = 0
    #: Out of routing: requests that resolved it before are still answered; new ones are
    #: routed elsewhere.
    retired: bool = False
    #: Whether its engines are loaded: always, without a memory budget; with one, only
    #: from its first request until it is evicted (``residency.py``).
    resident: bool = True
    #: What its engines count against the memory budget (estimated before they load).
    size_bytes: int = 0
    _idle: asyncio.Event | None = None

    @property
    def runtime(self) -> Runtime:
        """The first instance's runtime (what describes the model: platform, device)."""
        return self.runtimes[0]

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

    def left(self) -> None:
        """A request of a retired version has answered (called when in-flight reaches 0)."""
        if self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight, at most ``timeout_s`` seconds; whether it is."""
        deadline = time.monotonic() + timeout_s
        while self.inflight > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), left)
            except TimeoutError:
                return False
        return True


def _label(archive: Archive) -> str:
    return f"model {archive.manifest.name!r} version {archive.manifest.version}"


def not_loaded(name: str, names: list[str]) -> ModelNotFound:
    """The 404 for a model that is not loaded, naming the models the caller may see."""
    return ModelNotFound(f"model {name!r} is not loaded; loaded models are {names}")


class ModelRepository:
    """Every loaded model version, addressable by name and version."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._models: dict[str, dict[int, LoadedModel]] = {}
        #: Prepared versions that take no traffic yet.
        self._pending: dict[tuple[str, int], LoadedModel] = {}
        #: Loads in progress: a repeated command waits for the same one.
        self._loading: dict[tuple[str, int], asyncio.Future[LoadedModel]] = {}
        #: Retirements in progress, by instance: a version loaded again while its previous
        #: instance drains is a model of its own, retired on its own.
        self._retiring: dict[LoadedModel, asyncio.Future[None]] = {}
        #: Versions discarded before they were activated (``activate`` says so), and the
        #: releases of discarded builds that wait for their build to end.
        self._discarded: set[tuple[str, int]] = set()
        self._abandoned: set[asyncio.Future[None]] = set()
        self._routes: dict[str, Route] = {}
        #: (name, version text) -> the stats of an active version, for the request observer.
        self.stats: dict[tuple[str, str], VersionStats] = {}
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.resolved_threads(), thread_name_prefix="preprocess"
        )
        #: With ``--memory-budget``: which versions have their engines loaded (None: all).
        self.residency = (
            Residency(settings.memory_budget_bytes, settings.request_timeout_s, settings.metrics)
            if settings.memory_budget_bytes is not None
            else None
        )
        self.started = False

    # -- loading at start ----------------------------------------------------------------------

    def load_store(self, store: ModelStore, names: list[str] | None = None) -> None:
        """Load every version of every model in ``store`` (or only the models in ``names``)."""
        wanted = names or store.models()
        for name in wanted:
            versions = store.versions(name)
            if not versions:
                raise ModelNotFound(f"model {name!r} is not in the store {store.root}")
            for version in versions:
                self.add(served_as(store.open(name, version), name, version))

    def add(self, archive: Archive) -> LoadedModel:
        """Build and activate one version at once (at start: nothing serves yet)."""
        started = time.perf_counter()
        signing = check_signature(archive, self.settings, while_serving=False)
        residency = self.residency
        size = 0
        if residency is not None:  # refused before anything is built
            size = self._estimate(archive)
            residency.check_fits(_label(archive), size)
        load = residency is None  # with a budget, the engines load on the first request
        runtimes, handler = build_version(archive, self.settings, warm_up=False, load=load)
        model = self._assemble(archive, runtimes, handler, time.perf_counter() - started, signing)
        if residency is not None:
            model.size_bytes = size
            residency.register(model)
        self._register(model)
        return model

    def _estimate(self, archive: Archive) -> int:
        """What a version's engines count against the memory budget (``residency.py``)."""
        manifest, settings = archive.manifest, self.settings
        runtime = runtime_for(manifest, settings)
        # made, not loaded: whether its instances will map one copy of the weights
        engine = runtime_class(runtime)(
            archive, device=settings.device, share_weights=settings.share_weights
        )
        instances = instances_of(manifest, settings)
        return estimate_bytes(archive, runtime, instances, engine.shares_weights())

    # -- changing versions while serving -------------------------------------------------------

    async def prepare(self, name: str, version: int, path: Path) -> LoadedModel:
        """Load the archive at ``path`` as version ``version`` of ``name``, warm it up, and
        keep it pending. Already pending or active: that one. A failure releases whatever it
        built and raises ``ModelLoadFailed`` naming the model, the version and the cause."""
        found = self._find(name, version)
        if found is not None:
            return found
        key = (name, version)
        loading = self._loading.get(key)
        if loading is None:
            self._discarded.discard(key)
            loading = asyncio.ensure_future(self._build(name, version, path))
            self._loading[key] = loading
            loading.add_done_callback(functools.partial(self._built, key))
        model = await asyncio.shield(loading)
        if self._find(name, version) is not model:
            raise ModelLoadFailed(
                f"model {name!r} version {version} was discarded while it was loading"
            )
        return model

    async def _build(self, name: str, version: int, path: Path) -> LoadedModel:
        started = time.perf_counter()
        archive = await asyncio.to_thread(open_archive, name, version, path)
        signing = await asyncio.to_thread(check_signature, archive, self.settings, True)
        residency = self.residency
        if residency is None:
            runtimes, handler = await asyncio.to_thread(build_version, archive, self.settings, True)
            return self._assemble(
                archive, runtimes, handler, time.perf_counter() - started, signing
            )
        # with a budget: loaded and warmed up like any load while serving (so a broken version
        # fails here, not on its first request), in room made as a cold load makes it
        size = self._estimate(archive)
        try:
            await residency.reserve(_label(archive), size)
        except TorchferryError as exc:
            raise ModelLoadFailed(exc.message) from exc
        try:
            runtimes, handler = await asyncio.to_thread(build_version, archive, self.settings, True)
        except BaseException:
            residency.unreserve(size)
            raise
        model = self._assemble(archive, runtimes, handler, time.perf_counter() - started, signing)
        model.size_bytes = size
        residency.adopt(model)
        return model

    def _built(self, key: tuple[str, int], loading: asyncio.Future[LoadedModel]) -> None:
        """A build ended: pending, unless it was discarded meanwhile (its release then waits
        for it, in ``discard``)."""
        if self._loading.get(key) is loading:
            del self._loading[key]
            if not loading.cancelled() and loading.exception() is None:
                self._pending[key] = loading.result()

    def activate(self, name: str, version: int) -> LoadedModel:
        """A pending version becomes routable (its batcher starts). Active: nothing to do."""
        model = self._pending.pop((name, version), None)
        if model is None:
            active = self._models.get(name, {}).get(version)
            if active is not None:
                return active
            if (name, version) in self._discarded:
                raise Conflict(
                    f"model {name!r} version {version} was discarded before it was activated "
                    "(its load failed or timed out somewhere); load it again"
                )
            raise ModelNotFound(f"model {name!r} version {version} is not loaded; load it first")
        self._register(model)
        return model

    async def discard(self, name: str, version: int) -> None:
        """Release a pending version (nothing to do if there is none). A build in progress:
        answered at once; the version is released when its build ends."""
        key = (name, version)
        loading = self._loading.pop(key, None)
        if loading is not None:
            self._discarded.add(key)
            releasing = asyncio.ensure_future(self._release_when_built(loading))
            self._abandoned.add(releasing)
            releasing.add_done_callback(self._abandoned.discard)
            return
        model = self._pending.pop(key, None)
        if model is not None:
            self._discarded.add(key)
            await self._dispose(model)

    async def _release_when_built(self, loading: asyncio.Future[LoadedModel]) -> None:
        await asyncio.wait([loading])
        if not loading.cancelled() and loading.exception() is None:
            await self._dispose(loading.result())

    async def _dispose(self, model: LoadedModel) -> None:
        """Release a version that never took traffic."""
        await model.batcher.close()
        self._release(model)

    async def retire(self, name: str, version: int) -> None:
        """Take an active version out of service: out of routing at once, then wait until
        every request that resolved it has answered (at most ``drain_timeout_s``), drain its
        batcher, release it. Answered once no instance of the version is draining any more
        (a retirement in progress: wait for it; unknown: nothing to do)."""
        model = self._models.get(name, {}).get(version)
        if model is not None:
            self._unregister(model)
            draining = asyncio.ensure_future(self._drain(model))
            self._retiring[model] = draining
            draining.add_done_callback(lambda _: self._retiring.pop(model, None))
        waits = [f for m, f in self._retiring.items() if m.name == name and m.version == version]
        if waits:
            await asyncio.wait(waits)  # never cancels a drain
            for done in waits:
                done.result()

    async def _drain(self, model: LoadedModel) -> None:
        limit = self.settings.drain_timeout_s
        if not await model.wait_idle(limit):
            # queued rows are still answered by the batcher's close; requests that have not
            # reached it yet are refused (503), as at the end of any drain timeout
            log.warning(
                "%s version %d: %d request(s) still in flight after the drain timeout "
                "(%.1f s); closing it anyway",
                model.name,
                model.version,
                model.inflight,
                limit,
            )
        await model.batcher.close()
        self._release(model)

    async def unload(self, name: str, version: int) -> None:
        """``retire``, with a 404 for a version that is not loaded."""
        self.get(name, version)
        await self.retire(name, version)

    # -- routes --------------------------------------------------------------------------------

    def set_routes(self, name: str, routes: Routes) -> None:
        """Replace the routes of ``name``; every version they name must be active."""
        versions = self._lookup_versions(name)
        route = Route.of(routes)
        missing = sorted(route.named() - set(versions))
        if missing:
            raise Conflict(
                f"model {name!r}: routes name version(s) {missing}, which are not loaded; "
                f"loaded versions are {sorted(versions)}"
            )
        self._set_route(name, route)

    def routes(self, name: str) -> Routes:
        route = self._routes.get(name)
        return route.routes if route is not None else Routes()

    def route(self, name: str) -> Route | None:
        return self._routes.get(name)

    def _set_route(self, name: str, route: Route) -> None:
        if route.total or route.default is not None or route.shadow is not None:
            self._routes[name] = route
        else:  # no routes: the lookup stays the plain "highest version"
            self._routes.pop(name, None)

    # -- lookup --------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def loaded(self, name: str) -> bool:
        """Whether a version of ``name`` is active (what every lookup by name needs)."""
        return bool(self._models.get(name))

    def versions(self, name: str) -> list[int]:
        return sorted(self._lookup_versions(name))

    def get(
        self, name: str, version: str | int | None = None, key: str | None = None
    ) -> LoadedModel:
        """The model version asked for; when none is given, the one its routes pick (by
        ``key`` when its traffic is weighted), else the highest."""
        versions = self._lookup_versions(name)
        if version is None or version == "":
            route = self._routes.get(name)
            if route is not None:
                chosen = versions.get(route.pick(key))  # type: ignore[arg-type]
                if chosen is not None:
                    return chosen
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

    def default_version(self, name: str) -> int:
        versions = self._lookup_versions(name)
        route = self._routes.get(name)
        if route is not None and route.default in versions:
            return route.default
        return max(versions)

    def all(self) -> list[LoadedModel]:
        return [m for name in self.names() for _, m in sorted(self._models[name].items())]

    def find(self, name: str, version: int) -> LoadedModel | None:
        """An active version, or None (no error: the caller has another plan)."""
        versions = self._models.get(name)
        return versions.get(version) if versions else None

    def pending(self) -> list[LoadedModel]:
        return [self._pending[key] for key in sorted(self._pending)]

    def _find(self, name: str, version: int) -> LoadedModel | None:
        return self._pending.get((name, version)) or self._models.get(name, {}).get(version)

    def _lookup_versions(self, name: str) -> dict[int, LoadedModel]:
        versions = self._models.get(name)
        if not versions:
            raise not_loaded(name, self.names())
        return versions

    # -- building ------------------------------------------------------------------------------

    def _assemble(
        self,
        archive: Archive,
        runtimes: list[Runtime],
        handler: Handler,
        seconds: float,
        signing: str,
    ) -> LoadedModel:
        manifest = archive.manifest
        batching = manifest.batching.model_copy(update=self.settings.batching_for(manifest.name))
        batcher = Batcher(
            [runtime.infer for runtime in runtimes],
            name=f"{manifest.name}:{manifest.version}",
            max_batch_size=batching.max_batch_size,
            max_delay_ms=batching.max_delay_ms,
            max_queue_rows=self.settings.max_queue_rows,
            mode=batching.mode,
            max_latency_ms=batching.max_latency_ms,
            shed=self.settings.shed,
            observer=(
                metrics.batch_observer(manifest.name, str(manifest.version))
                if self.settings.metrics
                else None
            ),
        )
        model = LoadedModel(
            archive,
            runtimes,
            handler,
            batcher,
            self._preprocess_pool,
            load_seconds=seconds,
            signing=signing,
        )
        runtime = runtimes[0]
        objective = batching.max_latency_ms
        log.info(
            "loaded %s version %d (%s x%d, handler %s, %s batching, batch<=%d, delay %.1f ms, "
            "objective %s, signature %s) in %.2f s",
            manifest.name,
            manifest.version,
            runtime.name,
            len(runtimes),
            manifest.handler.name,
            batching.mode,
            batching.max_batch_size,
            batching.max_delay_ms,
            "none" if objective is None else f"{objective:g} ms",
            signing,
            seconds,
            extra={
                "event": "model_loaded",
                "model": manifest.name,
                "version": str(manifest.version),  # as in the access log and the metrics
                "runtime": runtime.name,
                "instances": len(runtimes),
                "handler": manifest.handler.name,
                "batching": batching.mode,
                "max_batch_size": batching.max_batch_size,
                "max_delay_ms": batching.max_delay_ms,
                "max_latency_ms": objective,
                "load_seconds": round(seconds, 4),
                "signature": signing,
            },
        )
        return model

    def _register(self, model: LoadedModel) -> None:
        self._models.setdefault(model.name, {})[model.version] = model
        self.stats[(model.name, str(model.version))] = model.stats
        if self.started:
            model.batcher.start()

    def _unregister(self, model: LoadedModel) -> None:
        """Out of routing at once: no lookup finds it from here on."""
        model.retired = True
        versions = self._models[model.name]
        del versions[model.version]
        if not versions:
            del self._models[model.name]
            self._routes.pop(model.name, None)
        else:
            route = self._routes.get(model.name)
            if route is not None:
                self._set_route(model.name, Route.of(route.routes.without(model.version)))

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        for model in self.all():
            model.batcher.start()
        self.started = True

    async def close(self) -> None:
        """Drain every batcher (queued requests are answered), then release the runtimes."""
        self.started = False
        if self._loading:
            await asyncio.wait(list(self._loading.values()))
        if self._abandoned:
            await asyncio.wait(list(self._abandoned))
        if self._retiring:
            await asyncio.wait(list(self._retiring.values()))
        models = self.all() + self.pending()
        self._pending.clear()
        await asyncio.gather(*(m.batcher.close() for m in models))
        for model in models:
            self._release(model)
        self._preprocess_pool.shutdown(wait=True)

    def _release(self, model: LoadedModel) -> None:
        key = (model.name, str(model.version))
        if self.stats.get(key) is model.stats:  # not a newer instance's of the same version
            del self.stats[key]
        if self.residency is not None:
            self.residency.forget(model)
        for runtime in model.runtimes:
            runtime.close()
        log.info(
            "unloaded %s version %d",
            model.name,
            model.version,
            extra={"event": "model_unloaded", "model": model.name, "version": str(model.version)},
        )
