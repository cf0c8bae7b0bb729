"""The fleet: one change to the models, made in every worker, or in none.

The supervisor owns the desired state (``state.DesiredState``); every change to it goes
through one lock, so changes never interleave and a second load of a version waits for the
first and finds it loaded (one build, not two). A load is two-phase: every serving worker
opens, verifies, builds and warms the version up while it takes no traffic (``load``); only
when all have succeeded does it become routable everywhere (``activate``); any failure, a
worker that dies included, discards it everywhere and answers with the reason. An unload
first takes the version out of every worker's routing, then retires it (each worker waits
for the requests that already chose it). Every committed change is written to the store's
state file, and a worker started later starts from it.

The fleet talks to workers only through ``workers.Workers`` (two calls), so it runs the
same over control channels and over in-process test workers.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchferry.errors import Conflict, InvalidInput, ModelLoadFailed, ModelNotFound
from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.lifecycle.restore import initial_state
from torchferry.serving.lifecycle.rollout import Rollouts
from torchferry.serving.lifecycle.state import (
    ModelState,
    Routes,
    Shadow,
    check_model_name,
)
from torchferry.serving.lifecycle.steps import QUICK_TIMEOUT_S, Steps, VersionInfo, routes_with
from torchferry.serving.lifecycle.workers import WorkerGone, Workers, ask_all
from torchferry.serving.settings import ServerSettings
from torchferry.store_layout import store_models, store_versions

__all__ = ["Convergence", "Fleet", "VersionInfo"]

log = logging.getLogger("torchferry.lifecycle")

#: Copying (or importing) a source into the store.
STAGE_TIMEOUT_S = 600.0


@dataclass
class Convergence:
    #: The model's loaded versions afterwards.
    versions: list[int] = field(default_factory=list)
    #: Versions that failed to load: version -> the reason.
    failures: dict[int, str] = field(default_factory=dict)


class Fleet(Steps):
    def __init__(
        self, workers: Workers, settings: ServerSettings, *, rollout_tick_s: float = 1.0
    ) -> None:
        super().__init__(workers, settings)
        self.rollouts = Rollouts(self, tick_s=rollout_tick_s)
        self._adopted = False
        #: Versions a management call has staged and is about to load (True: staging made
        #: the directory): the poller and policies leave them alone until that load ends.
        self._claimed: dict[tuple[str, int], bool] = {}

    # -- start ---------------------------------------------------------------------------------

    def restore(self) -> None:
        """The state to start from: the saved one, else each model's policy over the store."""
        if self.store is not None:  # written at the first change: until then flags decide
            self.state = initial_state(self.settings, self.store)

    def start_state(self) -> dict[str, Any] | None:
        """What a worker's ``start`` carries: the desired state; None in ``--model-dir`` mode
        until a first worker has said what the folder holds (a replacement then serves what
        the fleet has kept of it, not every version again)."""
        if self.store is None and not self._adopted:
            return None
        return self.state.model_dump(mode="json")

    async def joined(self, index: int, status: dict[str, Any]) -> None:
        """A worker answered ``start`` with its status: learn the version records from the
        first one (and, in ``--model-dir`` mode, the state itself); give a later one in that
        mode the routes the fleet has since set (it started without a state)."""
        records = [r for r in status.get("models") or [] if isinstance(r, dict)]
        if self.store is None and not self._adopted:
            for record in records:
                model = self.state.models.setdefault(str(record["name"]), ModelState())
                model.versions = sorted({*model.versions, int(record["version"])})
            for name, routes in (status.get("routes") or {}).items():
                if name in self.state.models:
                    self.state.models[name].routes = Routes.model_validate(routes)
        elif self.store is None:
            for name, model in self.state.models.items():
                if model.routes != Routes():
                    await self._ask_quietly(index, "routes", name, model.routes)
        if not self._adopted:
            for record in records:
                key = (str(record["name"]), int(record["version"]))
                self.versions[key] = VersionInfo(
                    *key, state="ready", record=record, source=self._source(*key)
                )
            for name, model in self.state.models.items():
                for version in model.versions:
                    self.versions.setdefault(
                        (name, version),
                        VersionInfo(name, version, "ready", source=self._source(name, version)),
                    )
        self._adopted = True

    async def _ask_quietly(self, index: int, op: str, name: str, routes: Routes) -> None:
        try:
            await self.workers.ask(
                index, op, QUICK_TIMEOUT_S, name=name, routes=routes.model_dump(mode="json")
            )
        except Exception as exc:
            log.warning("worker %d did not take the routes of %s: %s", index, name, exc)

    # -- reading -------------------------------------------------------------------------------

    def index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every version in the store, and every loaded one."""
        rows: dict[tuple[str, int], tuple[str, str | None]] = {}
        if self.store is not None:
            for name in store_models(self.store):
                for version in store_versions(self.store, name):
                    rows[(name, version)] = ("UNAVAILABLE", "unloaded")
        for name, model in self.state.models.items():
            for version in model.versions:
                rows[(name, version)] = ("READY", None)
        for key, info in self.versions.items():
            if info.state in ("loading", "unloading"):
                rows[key] = (info.state.upper(), None)
            elif info.state == "failed" and rows.get(key, ("",))[0] != "READY":
                rows[key] = ("UNAVAILABLE", info.reason)
        return [
            {"name": name, "version": version, "state": state, "reason": reason}
            for (name, version), (state, reason) in sorted(rows.items())
        ]

    async def worker_stats(self, name: str, drain: bool) -> dict[int, dict[int, dict[str, Any]]]:
        """Each serving worker's figures of each loaded version (worker index -> version ->
        figures); a worker that did not answer is left out."""
        self._model(name)
        replies = await ask_all(self.workers, "stats", QUICK_TIMEOUT_S, name=name, drain=drain)
        for reason in replies.failures.values():
            log.debug("figures of %s incomplete: %s", name, reason)
        return {
            index: {int(version): figures for version, figures in (reply or {}).items()}
            for index, reply in replies.ok.items()
        }

    async def stats(self, name: str, drain: bool) -> dict[int, dict[str, Any]]:
        """Each loaded version's figures, summed over the workers (latency samples joined)."""
        totals: dict[int, dict[str, Any]] = {}
        for versions in (await self.worker_stats(name, drain)).values():
            for key, figures in versions.items():
                total = totals.setdefault(
                    int(key),
                    {
                        "requests": 0,
                        "errors": 0,
                        "compared": 0,
                        "agreed": 0,
                        "max_abs_diff": None,
                        "latencies_ms": [],
                    },
                )
                for counter in ("requests", "errors", "compared", "agreed"):
                    total[counter] += int(figures.get(counter) or 0)
                diff = figures.get("max_abs_diff")
                if diff is not None:
                    total["max_abs_diff"] = max(float(diff), total["max_abs_diff"] or 0.0)
                total["latencies_ms"].extend(figures.get("latencies_ms") or [])
        return totals

    # -- changes -------------------------------------------------------------------------------

    async def stage(
        self, source: Path, name: str | None, *, shown: str | None = None
    ) -> tuple[str, int]:
        """Put ``source`` (already allowed) into the store, as the next version of ``name``
        (or of its manifest's name); a store version is returned as it is. ``shown``: where
        the version is said to come from, when not ``source`` (a downloaded file's URL)."""
        store = self._need_store(f"loading {source}")
        if name is not None:
            check_model_name(name)
        async with self.lock:  # two stagings of one model must not both take version N+1
            serving = self.workers.serving()
            if not serving:
                raise Conflict("no worker is serving now: try again once one has started")
            index = serving[0]
            try:
                reply = await self.workers.ask(
                    index, "stage", STAGE_TIMEOUT_S, source=str(source), name=name, store=str(store)
                )
            except WorkerGone:
                raise ModelLoadFailed(f"worker {index} exited while staging {source}") from None
            except TimeoutError:
                raise ModelLoadFailed(
                    f"staging {source} took longer than {STAGE_TIMEOUT_S:g} s"
                ) from None
            except Exception as exc:
                raise ModelLoadFailed(f"{source} was not staged: {exc}") from None
            staged = (str(reply["name"]), int(reply["version"]))
            self._sources[staged] = shown or str(source)
            self._claimed[staged] = Path(str(reply["path"])).resolve() != source.resolve()
        return staged

    async def load(self, name: str, version: int, *, make_default: bool = False) -> VersionInfo:
        """Load a store version in every worker (at once if it is loaded already). It takes
        no traffic from the version serving unless ``make_default``: the current default is
        pinned first (TorchServe's register, then set-default)."""
        check_model_name(name)
        async with self.lock:
            fresh = self._claimed.pop((name, version), False)
            try:
                if make_default:
                    self._no_rollout(name)
                info = await self._load(name, version, pin=not make_default)
            except ModelLoadFailed:
                if fresh and self.store is not None:  # nothing of a refused version stays
                    shutil.rmtree(self.store / name / str(version), ignore_errors=True)
                raise
            if make_default:
                await self._set_default(name, version)
            self._pin_policy(name)
            self._persist()
            return info

    async def unload(self, name: str, version: int | None = None) -> list[int]:
        """Retire one version, or every version when None; returns those retired."""
        async with self.lock:
            if version is not None and self._forget_failed(name, version):
                return [version]
            model = self._model(name)
            targets = list(model.versions) if version is None else [version]
            removed = await self._unload(name, targets)
            self._pin_policy(name)
            self._persist()
            return removed

    def _forget_failed(self, name: str, version: int) -> bool:
        """Drop the record of a version that failed to load (there is nothing to retire)."""
        info = self.versions.get((name, version))
        if info is None or info.state != "failed":
            return False
        del self.versions[(name, version)]
        return True

    async def set_default(self, name: str, version: int) -> None:
        """Send every unversioned request to ``version`` (traffic weights are cleared: they
        would otherwise go on deciding)."""
        async with self.lock:
            self._loaded(name, version)
            self._no_rollout(name)
            await self._set_default(name, version)
            self._persist()

    async def set_weights(self, name: str, weights: dict[int, int] | None) -> Routes:
        """Split unversioned requests between loaded versions; None or {} clears the split."""
        async with self.lock:
            model = self._model(name)
            self._no_rollout(name)
            for version in weights or {}:
                self._loaded_for(name, version, "traffic weights")
            routes = routes_with(model.routes, weights=dict(weights or {}))
            await self._apply_routes(name, routes)
            self._persist()
            return model.routes

    async def set_shadow(self, name: str, shadow: Shadow | None) -> Routes:
        """Mirror a share of the traffic to a loaded version (None: stop)."""
        async with self.lock:
            model = self._model(name)
            self._no_rollout(name)
            if shadow is not None:
                self._loaded_for(name, shadow.version, "a shadow")
            await self._apply_routes(name, model.routes.model_copy(update={"shadow": shadow}))
            self._persist()
            return model.routes

    async def set_policy(self, name: str, policy: VersionPolicy) -> list[int]:
        """Load what ``policy`` selects from the store and unload the rest; the poller keeps
        following it."""
        return (await self.converge(name, policy)).versions

    async def load_model(self, name: str) -> list[int]:
        """Triton's repository load: the model's policy (its own, else the server's) over
        the store's versions."""
        return (
            await self.converge(name, self.state.policy(name, self.settings.policy_for))
        ).versions

    async def converge(
        self, name: str, policy: VersionPolicy | None = None, *, strict: bool = True
    ) -> Convergence:
        """Converge a model on ``policy`` (default: the one it has, else the server's for a
        model not seen yet; a model with none keeps what it has). Versions gone from the
        store are unloaded; other unwanted ones only once every wanted one has loaded (never
        fewer versions serving). ``strict``: the first failure raises; else the failures are
        returned and the rest goes on (the poller)."""
        store = self._need_store("a version policy")
        check_model_name(name)
        async with self.lock:
            available = [v for v in store_versions(store, name) if (name, v) not in self._claimed]
            model = self.state.models.get(name)
            loaded = list(model.versions) if model is not None else []
            if not available and not loaded:
                raise ModelNotFound(f"model {name} is not in the store")
            chosen = policy or (self.settings.policy_for(name) if model is None else model.policy)
            wanted = chosen.select(available) if chosen else [v for v in loaded if v in available]
            if chosen is not None and available and not wanted:
                message = (
                    f"version policy {chosen} selects none of model {name}'s versions in the "
                    f"store ({available}): nothing would serve it"
                )
                if strict:
                    raise InvalidInput(message)
                log.warning("%s", message)
                return Convergence(versions=loaded)
            outcome = Convergence()
            before = self.state.model_dump()
            converged = False
            try:
                for version in wanted:
                    if version not in loaded:
                        try:
                            await self._load(name, version, pin=False)
                        except ModelLoadFailed as exc:
                            if strict:
                                raise
                            outcome.failures[version] = exc.message
                gone = [v for v in loaded if v not in available]
                extra = [v for v in loaded if v not in wanted and v not in gone]
                drop = gone + ([] if outcome.failures else extra)
                if drop:
                    try:
                        await self._unload(name, drop)
                    except Conflict as exc:  # a rollout uses it: a later poll retries
                        if strict:
                            raise
                        log.info("%s", exc.message)
                converged = True
            finally:
                model = self.state.models.get(name)
                if converged and model is not None and chosen is not None:
                    model.policy = chosen
                if self.state.model_dump() != before:  # a poll that changes nothing writes nothing
                    self._persist()
            outcome.versions = list(model.versions) if model is not None else []
            return outcome
