"""The steps of one change to the fleet, each taken with the fleet's lock held: the
two-phase load (``load`` in every serving worker, then ``activate``; any failure discards it
everywhere), the unload (out of every worker's routing first, then retired), and new routes
(one refusal puts the old ones back). ``fleet.Fleet`` builds its calls from these."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from torchferry.errors import Conflict, InvalidInput, ModelLoadFailed, ModelNotFound
from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.lifecycle.state import DesiredState, ModelState, Routes
from torchferry.serving.lifecycle.workers import Workers, ask_all
from torchferry.serving.settings import ServerSettings
from torchferry.store_layout import store_versions

log = logging.getLogger("torchferry.lifecycle")

#: Opening, verifying, building and warming up one version in a worker.
LOAD_TIMEOUT_S = 300.0
#: Routing, activating, discarding and reading figures touch no model.
QUICK_TIMEOUT_S = 10.0
#: Beyond the drain timeout (which bounds the requests an unload waits for).
UNLOAD_MARGIN_S = 10.0


@dataclass
class VersionInfo:
    name: str
    version: int
    state: Literal["loading", "ready", "unloading", "failed"]
    #: Why it failed.
    reason: str | None = None
    #: The version record (``describe.version_record``) from the first worker's reply.
    record: dict[str, Any] | None = None
    #: Where it was staged from, when a management call staged it.
    source: str | None = None


class Steps:
    def __init__(self, workers: Workers, settings: ServerSettings) -> None:
        self.workers = workers
        self.settings = settings
        #: None in ``--model-dir`` mode: nothing to stage into, no state file.
        self.store: Path | None = settings.store if settings.model_dir is None else None
        self.state = DesiredState()
        self.versions: dict[tuple[str, int], VersionInfo] = {}
        #: Held by every change, and by a restarted worker's start (so that it starts from
        #: the state the change leaves, not from the one it found).
        self.lock = asyncio.Lock()
        self._sources: dict[tuple[str, int], str] = {}

    def _source(self, name: str, version: int) -> str | None:
        """Where a version was staged from: this run's staging, else the saved state."""
        staged = self._sources.get((name, version))
        if staged is not None:
            return staged
        model = self.state.models.get(name)
        return model.sources.get(version) if model is not None else None

    async def _load(self, name: str, version: int, *, pin: bool) -> VersionInfo:
        key = (name, version)
        model = self.state.models.get(name)
        if model is not None and version in model.versions:
            return self.versions.setdefault(key, VersionInfo(name, version, "ready"))
        store = self._need_store(f"loading model {name} version {version}")
        if version not in store_versions(store, name):
            raise ModelNotFound(f"model {name} has no version {version} in the store")
        if not self.workers.serving():
            raise Conflict("no worker is serving now: try again once one has started")
        info = VersionInfo(name, version, "loading", source=self._source(name, version))
        self.versions[key] = info
        path = str(store / name / str(version))
        loads = await ask_all(
            self.workers, "load", LOAD_TIMEOUT_S, name=name, version=version, path=path
        )
        reason = loads.first_failure()
        if reason is None and pin and model is not None and model.versions:
            # the new version is the highest: pin the serving one before it can take traffic
            reason = await self._try_routes(
                name, routes_with(model.routes, default=self.effective_default(name))
            )
        if reason is None:
            activated = await ask_all(
                self.workers, "activate", QUICK_TIMEOUT_S, name=name, version=version
            )
            if activated.refused:  # retired where it went live, released where it did not
                reason = activated.first_failure()
                await ask_all(
                    self.workers, "unload", self._unload_timeout(), name=name, version=version
                )
        if reason is not None:
            await ask_all(self.workers, "discard", QUICK_TIMEOUT_S, name=name, version=version)
            info.state, info.reason = "failed", reason
            log.warning(
                "model %s version %d was not loaded: %s",
                name,
                version,
                reason,
                extra={"event": "version_load_failed", "model": name, "version": version},
            )
            raise ModelLoadFailed(f"model {name} version {version} was not loaded: {reason}")
        model = self.state.models.setdefault(name, ModelState())
        model.versions = sorted({*model.versions, version})
        if info.source is not None:
            model.sources[version] = info.source
        info.state, info.reason, info.record = "ready", None, loads.first()
        log.info(
            "model %s version %d loaded in %d worker(s)",
            name,
            version,
            len(loads.ok),
            extra={"event": "version_loaded", "model": name, "version": version},
        )
        return info

    async def _unload(self, name: str, versions: list[int]) -> list[int]:
        model = self._model(name)
        for version in versions:
            self._loaded(name, version)
        rollout = model.rollout
        if rollout is not None and rollout.running:
            used = {rollout.stable, rollout.spec.version} & set(versions)
            if used:
                raise Conflict(
                    f"model {name} version {min(used)} is in the rollout in progress: "
                    "abort the rollout first"
                )
        await self._apply_routes(name, model.routes.without(*versions))
        for version in versions:
            info = self.versions.setdefault((name, version), VersionInfo(name, version, "ready"))
            info.state = "unloading"
        for version in versions:
            replies = await ask_all(
                self.workers, "unload", self._unload_timeout(), name=name, version=version
            )
            if replies.refused:  # out of routing already: it is released when it can be
                log.warning("model %s version %d: %s", name, version, replies.first_failure())
            model.versions = [v for v in model.versions if v != version]
            model.sources.pop(version, None)
            self.versions.pop((name, version), None)
            log.info(
                "model %s version %d unloaded",
                name,
                version,
                extra={"event": "version_unloaded", "model": name, "version": version},
            )
        return versions

    async def _set_default(self, name: str, version: int) -> None:
        model = self._model(name)
        await self._apply_routes(name, routes_with(model.routes, default=version, weights={}))

    async def _try_routes(self, name: str, routes: Routes) -> str | None:
        try:
            await self._apply_routes(name, routes)
        except Conflict as exc:
            return exc.message
        return None

    async def _apply_routes(self, name: str, routes: Routes) -> None:
        """Give every worker the model's new routes; one refusal puts the old ones back.
        A worker gone meanwhile is no failure: its replacement starts from the new state."""
        model = self._model(name)
        previous = model.routes
        if routes == previous:
            return
        replies = await ask_all(
            self.workers,
            "routes",
            QUICK_TIMEOUT_S,
            name=name,
            routes=routes.model_dump(mode="json"),
        )
        if replies.refused:
            await ask_all(
                self.workers,
                "routes",
                QUICK_TIMEOUT_S,
                name=name,
                routes=previous.model_dump(mode="json"),
            )
            raise Conflict(f"model {name}: routing not changed: {replies.first_failure()}")
        model.routes = routes

    async def route_rollout(self, name: str, routes: Routes | None) -> None:
        """A rollout's own routing change (the lock held by the rollout)."""
        if routes is not None:
            await self._apply_routes(name, routes)

    def save(self) -> None:
        """Persist the state (the lock held): a rollout's transitions."""
        self._persist()

    def effective_default(self, name: str) -> int:
        """The version answering unversioned requests when no weights are set."""
        model = self._model(name)
        default = model.routes.default
        return default if default in model.versions else model.versions[-1]

    # -- helpers -------------------------------------------------------------------------------

    def _model(self, name: str) -> ModelState:
        model = self.state.models.get(name)
        if model is None or not model.versions:
            raise ModelNotFound(f"model {name} has no loaded version")
        return model

    def _loaded(self, name: str, version: int) -> None:
        if version not in self._model(name).versions:
            raise ModelNotFound(f"model {name} version {version} is not loaded")

    def _loaded_for(self, name: str, version: int, what: str) -> None:
        if version not in self._model(name).versions:
            raise Conflict(f"model {name} version {version} is not loaded: load it before {what}")

    def _no_rollout(self, name: str) -> None:
        model = self.state.models.get(name)
        rollout = model.rollout if model is not None else None
        if rollout is not None and rollout.running:
            raise Conflict(
                f"a rollout of model {name} to version {rollout.spec.version} is running: "
                "abort it first"
            )

    def _pin_policy(self, name: str) -> None:
        """A management load or unload is what the operator wants: the poller keeps it."""
        model = self.state.models.get(name)
        if model is not None:
            versions = list(model.versions)
            model.policy = VersionPolicy(kind="specific", versions=versions) if versions else None

    def _need_store(self, what: str) -> Path:
        if self.store is None:
            raise Conflict(f"{what} needs a model store (serve --store DIR), not --model-dir")
        return self.store

    def _unload_timeout(self) -> float:
        return self.settings.drain_timeout_s + UNLOAD_MARGIN_S

    def _persist(self) -> None:
        if self.store is None:
            return
        try:
            self.state.write(self.store)
        except OSError as exc:  # the change is live; only a restart would lose it
            log.error(
                "the desired state was not saved: %s", exc, extra={"event": "state_not_saved"}
            )


def routes_with(routes: Routes, **changes: Any) -> Routes:
    """``routes`` with ``changes``, validated (a bad split is the caller's mistake)."""
    try:
        return Routes.model_validate({**routes.model_dump(), **changes})
    except ValidationError as exc:
        raise InvalidInput(
            "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        ) from None
