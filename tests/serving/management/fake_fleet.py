"""An in-memory stand-in for the supervisor's fleet (``lifecycle/fleet.py``), keeping the
contract's semantics (one lock over every change, two-phase loads that leave a failed
version with its reason, the default pinned when a version joins a serving model,
rollouts that refuse a second one) without workers, so that the management app and the CLI
are tested alone. Tests script it: which loads fail, how long they take, what the stats
say, how a rollout ends."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from torchferry.errors import Conflict, ModelLoadFailed, ModelNotFound
from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.lifecycle.state import (
    DesiredState,
    Figures,
    ModelState,
    RolloutDecision,
    RolloutSpec,
    RolloutStatus,
    Routes,
    Shadow,
)
from torchferry.serving.lifecycle.steps import VersionInfo  # the fleet's own record
from torchferry.serving.management.app import management_app
from torchferry.serving.process import free_ports, serve_in_thread
from torchferry.serving.settings import ServerSettings


def record_of(name: str, version: int) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "runtime": "onnxruntime",
        "platform": "onnxruntime_onnx",
        "handler": "tensor",
        "device": "cpu",
        "max_batch_size": 8,
        "max_delay_ms": 2.0,
        "max_queue_rows": 4096,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
        "path": f"/store/{name}/{version}",
        "size_bytes": 1024,
        "signed": False,
        "load_seconds": 0.01,
    }


class FakeRollouts:
    def __init__(self, fleet: FakeFleet) -> None:
        self.fleet = fleet
        self.current: dict[str, RolloutStatus] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: How the next rollouts end: "promote", "rollback" (at the second step) or "hang".
        self.outcome = "promote"

    async def start(self, name: str, spec: RolloutSpec) -> RolloutStatus:
        fleet = self.fleet
        async with fleet.lock:
            running = self.current.get(name)
            if running is not None and running.running:
                raise Conflict(f"model {name} already has a rollout running")
            if (name, spec.version) not in fleet.ready():
                raise Conflict(f"load version {spec.version} of model {name} first")
            stable = fleet.effective_default(name)
            if stable == spec.version:
                raise Conflict(f"version {spec.version} already takes the traffic of {name}")
            now = time.time()
            status = RolloutStatus(
                spec=spec, stable=stable, phase="stepping", started_at=now, updated_at=now
            )
            self.current[name] = status
            self.tasks[name] = asyncio.create_task(self._run(name, status))
            return status.model_copy(deep=True)

    def _decide(self, status: RolloutStatus, verdict: Any, reason: str) -> None:
        canary = Figures(requests=120, errors=0 if verdict != "rollback" else 30)
        status.history.append(
            RolloutDecision(
                at=time.time(),
                step=status.step,
                weight=status.weight,
                verdict=verdict,
                reason=reason,
                canary=canary,
                stable=Figures(requests=900),
            )
        )
        status.updated_at = time.time()

    async def _run(self, name: str, status: RolloutStatus) -> None:
        spec = status.spec
        for index, weight in enumerate(spec.steps):
            status.step, status.weight = index, weight
            if weight < 100:
                await self.fleet.set_weights(
                    name, {status.stable: 100 - weight, spec.version: weight}
                )
            await asyncio.sleep(spec.interval_s)
            if self.outcome == "hang":
                await asyncio.sleep(3600)
            if self.outcome == "rollback" and index == 1:
                await self.fleet.set_weights(name, None)
                await self.fleet.set_default(name, status.stable)
                status.phase, status.weight = "rolled_back", 0
                status.reason = "canary error rate 0.25 > 0.01"
                self._decide(status, "rollback", status.reason)
                return
            if weight == 100:
                await self.fleet.set_weights(name, None)
                await self.fleet.set_default(name, spec.version)
                status.phase, status.reason = "promoted", "every step passed"
                self._decide(status, "promote", status.reason)
                return
            self._decide(status, "advance", f"step {index} passed: error rate 0.0")

    def status(self, name: str) -> RolloutStatus | None:
        current = self.current.get(name)
        return current.model_copy(deep=True) if current is not None else None

    def _stop(self, name: str) -> RolloutStatus:
        """The running rollout, its loop stopped (409 when none runs)."""
        status = self.current.get(name)
        if status is None or not status.running:
            raise Conflict(f"model {name} has no rollout running")
        self.tasks[name].cancel()
        return status

    async def abort(self, name: str) -> RolloutStatus:
        status = self._stop(name)
        await self.fleet.set_weights(name, None)
        await self.fleet.set_default(name, status.stable)
        status.phase, status.weight, status.reason = "aborted", 0, "aborted by request"
        self._decide(status, "abort", status.reason)
        return status.model_copy(deep=True)

    async def promote(self, name: str) -> RolloutStatus:
        status = self._stop(name)
        await self.fleet.set_weights(name, None)
        await self.fleet.set_default(name, status.spec.version)
        status.step, status.weight = len(status.spec.steps) - 1, 100
        status.phase, status.reason = "promoted", "promoted by a management call"
        self._decide(status, "promote", status.reason)
        return status.model_copy(deep=True)

    async def wait(self, name: str) -> RolloutStatus:
        while (status := self.current[name]).running:
            await asyncio.sleep(0.01)
        return status.model_copy(deep=True)


class FakeFleet:
    def __init__(
        self, store: dict[str, list[int]] | None = None, loaded: dict[str, list[int]] | None = None
    ) -> None:
        self.state = DesiredState()
        self.versions: dict[tuple[str, int], VersionInfo] = {}
        self.rollouts = FakeRollouts(self)
        self.lock = asyncio.Lock()
        #: The store: model -> versions on disk.
        self.store: dict[str, list[int]] = {k: sorted(v) for k, v in (store or {}).items()}
        #: (name, version) -> why its load fails.
        self.failing: dict[tuple[str, int], str] = {}
        self.load_delay_s = 0.0
        self.figures: dict[str, dict[int, dict[str, Any]]] = {}
        self.staged: list[tuple[Path, str | None]] = []
        self.calls: list[tuple[Any, ...]] = []
        for name, versions in (loaded or {}).items():
            for version in versions:
                self._activate(name, version, None)

    # -- helpers the contract does not name -------------------------------------------------

    def ready(self) -> set[tuple[str, int]]:
        return {k for k, info in self.versions.items() if info.state == "ready"}

    def _model(self, name: str) -> ModelState:
        return self.state.models.setdefault(name, ModelState())

    def _activate(self, name: str, version: int, source: str | None) -> VersionInfo:
        self.store.setdefault(name, [])
        if version not in self.store[name]:
            self.store[name] = sorted([*self.store[name], version])
        info = VersionInfo(name, version, "ready", record=record_of(name, version), source=source)
        self.versions[(name, version)] = info
        model = self._model(name)
        model.versions = sorted({*model.versions, version})
        return info

    def _loaded(self, name: str) -> list[int]:
        return sorted(v for n, v in self.ready() if n == name)

    def _require_loaded(self, name: str, version: int) -> None:
        if not self._loaded(name):
            raise ModelNotFound(f"model {name} is not loaded")
        if version not in self._loaded(name):
            raise ModelNotFound(f"model {name} has no loaded version {version}")

    # -- the contract -------------------------------------------------------------------------

    async def stage(
        self, source: Path, name: str | None, *, shown: str | None = None
    ) -> tuple[str, int]:
        self.calls.append(("stage", source, name))
        self.staged.append((source, name))
        if (source / "manifest.json").is_file():
            manifest = json.loads((source / "manifest.json").read_text())
            name = name or manifest["name"]
            if source.parent.name == name and source.name.isdigit():
                return name, int(source.name)
        name = name or source.stem
        version = max(self.store.get(name, []), default=0) + 1
        self.store[name] = [*self.store.get(name, []), version]
        return name, version

    async def load(self, name: str, version: int, *, make_default: bool = False) -> VersionInfo:
        self.calls.append(("load", name, version))
        async with self.lock:
            info = self.versions.get((name, version))
            if info is not None and info.state == "ready":
                return info
            if version not in self.store.get(name, []):
                raise ModelNotFound(f"model {name} has no version {version} in the store")
            self.versions[(name, version)] = VersionInfo(name, version, "loading")
            await asyncio.sleep(self.load_delay_s)
            reason = self.failing.get((name, version))
            if reason is not None:
                self.versions[(name, version)] = VersionInfo(name, version, "failed", reason)
                raise ModelLoadFailed(f"model {name} version {version}: {reason}")
            serving = self._loaded(name)
            if serving and not make_default and self._model(name).routes.default is None:
                self._model(name).routes.default = max(serving)
            info = self._activate(name, version, None)
            if make_default:
                self._model(name).routes.default = version
            return info

    async def load_model(self, name: str) -> list[int]:
        if not self.store.get(name):
            raise ModelNotFound(f"model {name} is not in the store")
        model = self._model(name)
        wanted = (model.policy or VersionPolicy()).select(self.store[name])
        for version in wanted:
            await self.load(name, version)
        for version in self._loaded(name):
            if version not in wanted:
                await self.unload(name, version)
        return self._loaded(name)

    async def unload(self, name: str, version: int | None = None) -> list[int]:
        self.calls.append(("unload", name, version))
        async with self.lock:
            loaded = self._loaded(name)
            if not loaded:
                raise ModelNotFound(f"model {name} is not loaded")
            targets = loaded if version is None else [version]
            if version is not None and version not in loaded:
                raise ModelNotFound(f"model {name} has no loaded version {version}")
            rollout = self.rollouts.current.get(name)
            used = {rollout.stable, rollout.spec.version} if rollout is not None else set()
            if rollout is not None and rollout.running and used & set(targets):
                raise Conflict(f"a rollout of model {name} uses version(s) {targets}")
            model = self._model(name)
            routes = model.routes
            for target in targets:
                del self.versions[(name, target)]
                routes.weights.pop(target, None)
                if routes.default == target:
                    routes.default = None
                if routes.shadow is not None and routes.shadow.version == target:
                    routes.shadow = None
            model.versions = [v for v in model.versions if v not in targets]
            return targets

    async def set_default(self, name: str, version: int) -> None:
        self._require_loaded(name, version)
        self._model(name).routes.default = version

    async def set_weights(self, name: str, weights: dict[int, int] | None) -> Routes:
        model = self._model(name)
        for version in weights or {}:
            self._require_loaded(name, version)
        model.routes = Routes(
            default=model.routes.default, weights=weights or {}, shadow=model.routes.shadow
        )
        return model.routes

    async def set_shadow(self, name: str, shadow: Shadow | None) -> Routes:
        model = self._model(name)
        if shadow is not None:
            self._require_loaded(name, shadow.version)
        model.routes = Routes(
            default=model.routes.default, weights=model.routes.weights, shadow=shadow
        )
        return model.routes

    async def set_policy(self, name: str, policy: VersionPolicy) -> list[int]:
        self._model(name).policy = policy
        return await self.load_model(name)

    def effective_default(self, name: str) -> int:
        loaded = self._loaded(name)
        if not loaded:
            raise ModelNotFound(f"model {name} is not loaded")
        default = self._model(name).routes.default
        return default if default in loaded else max(loaded)

    def index(self) -> list[dict[str, Any]]:
        states = {"ready": "READY", "loading": "LOADING", "unloading": "UNLOADING"}
        entries = {}
        for name, versions in self.store.items():
            for version in versions:
                entries[(name, version)] = {
                    "name": name,
                    "version": version,
                    "state": "UNAVAILABLE",
                    "reason": "unloaded",
                }
        for (name, version), info in self.versions.items():
            entries[(name, version)] = {
                "name": name,
                "version": version,
                "state": states.get(info.state, "UNAVAILABLE"),
                "reason": info.reason or "",
            }
        return [entries[k] for k in sorted(entries)]

    async def stats(self, name: str, drain: bool) -> dict[int, dict[str, Any]]:
        return self.figures.get(name, {})


@contextmanager
def management_client(fleet: FakeFleet, settings: ServerSettings) -> Iterator[httpx.Client]:
    """A real HTTP client of the management app over ``fleet``, served by uvicorn on a free
    port in a thread of this process (background work, async registrations and rollouts,
    runs on between calls, as in the supervisor)."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    with (
        serve_in_thread(management_app(fleet, settings), port),
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield client


def write_archive(folder: Path, name: str, version: int = 1) -> Path:
    """A folder that looks like an archive to the source checks (a manifest.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"name": name, "version": version}))
    (folder / "model.onnx").write_bytes(b"onnx")
    return folder
