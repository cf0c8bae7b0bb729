"""In-process workers that follow the control-channel contract of the lifecycle commands
(``start``, ``load``, ``activate``, ``discard``, ``unload``, ``routes``, ``stats``,
``stage``), for testing the fleet, the rollouts and the poller without processes.

A store version is a directory with a ``manifest.json``; a manifest with ``"broken": true``
fails the worker's verification (a partly copied version does the same in a real worker).
Arguments travel through JSON as over the real channel (integer keys become strings).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from torchferry.serving.lifecycle.state import Routes
from torchferry.serving.lifecycle.workers import WorkerGone
from torchferry.store_layout import store_versions


def add_version(store: Path, name: str, version: int, *, broken: bool = False) -> Path:
    path = store / name / str(version)
    path.mkdir(parents=True, exist_ok=True)
    manifest = {"name": name, "version": version, "broken": broken}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


class FakeWorker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.alive = True
        self.pending: dict[tuple[str, int], dict[str, Any]] = {}
        self.active: dict[tuple[str, int], dict[str, Any]] = {}
        self.routes: dict[str, Routes] = {}
        #: Versions built (opened, verified, warmed up), counted.
        self.builds: Counter[tuple[str, int]] = Counter()
        #: Every command received, in order: (op, args).
        self.received: list[tuple[str, dict[str, Any]]] = []
        #: op -> the message to refuse it with.
        self.refuse: dict[str, str] = {}
        #: An op that kills this worker when it arrives.
        self.die_on: str | None = None
        self.load_delay_s = 0.0
        #: (name, version) -> cumulative counters; latencies kept until a drain.
        self.figures: dict[tuple[str, int], dict[str, Any]] = {}

    # -- what a test does to a worker ----------------------------------------------------------

    def serve(
        self,
        name: str,
        version: int,
        requests: int,
        errors: int = 0,
        latency_ms: float = 5.0,
        compared: int = 0,
        agreed: int = 0,
    ) -> None:
        figures = self._figures(name, version)
        figures["requests"] += requests
        figures["errors"] += errors
        figures["compared"] += compared
        figures["agreed"] += agreed
        figures["latencies_ms"].extend([latency_ms] * requests)
        if compared:
            figures["max_abs_diff"] = 0.0 if agreed == compared else 0.5

    def active_versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self.active if n == name)

    def ops(self) -> list[str]:
        return [op for op, _ in self.received]

    # -- the contract --------------------------------------------------------------------------

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        self.received.append((op, args))
        await asyncio.sleep(0)
        if op == self.die_on:
            self.alive = False
            raise WorkerGone(f"worker {self.index} died")
        if op in self.refuse:
            raise RuntimeError(self.refuse[op])
        handler = getattr(self, f"_{op}")
        return await handler(**args)

    async def _start(self, worker: int, settings: dict[str, Any], state: Any) -> Any:
        store = Path(settings["store"] or ".")
        for name, model in (state or {}).get("models", {}).items():
            for version in model["versions"]:
                path = store / name / str(version)
                self.active[(name, version)] = self._verify(name, version, path)
            self.routes[name] = Routes.model_validate(model["routes"])
        return self._status()

    async def _load(self, name: str, version: int, path: str) -> dict[str, Any]:
        key = (name, version)
        if key in self.active or key in self.pending:
            return self.active.get(key) or self.pending[key]
        await asyncio.sleep(self.load_delay_s)
        record = self._verify(name, version, Path(path))
        self.builds[key] += 1
        self.pending[key] = record
        return record

    async def _activate(self, name: str, version: int) -> None:
        key = (name, version)
        if key in self.pending:
            self.active[key] = self.pending.pop(key)
            self._figures(name, version)

    async def _discard(self, name: str, version: int) -> None:
        self.pending.pop((name, version), None)

    async def _unload(self, name: str, version: int) -> None:
        routes = self.routes.get(name)
        if routes is not None:
            weights = {v: w for v, w in routes.weights.items() if v != version}
            shadow = routes.shadow if routes.shadow and routes.shadow.version != version else None
            default = None if routes.default == version else routes.default
            self.routes[name] = Routes(default=default, weights=weights, shadow=shadow)
        self.active.pop((name, version), None)
        self.figures.pop((name, version), None)

    async def _routes(self, name: str, routes: dict[str, Any]) -> None:
        parsed = Routes.model_validate(routes)
        named = {*parsed.weights, parsed.default, parsed.shadow and parsed.shadow.version}
        for version in named - {None}:
            if (name, version) not in self.active:
                raise ValueError(f"model {name} version {version} is not loaded")
        self.routes[name] = parsed

    async def _stats(self, name: str, drain: bool) -> dict[str, Any]:
        reply = {}
        for (model, version), figures in self.figures.items():
            if model != name:
                continue
            reply[str(version)] = {**figures, "latencies_ms": list(figures["latencies_ms"])}
            if drain:
                figures["latencies_ms"].clear()
            else:
                reply[str(version)]["latencies_ms"] = []
        return reply

    async def _stage(self, source: str, name: str | None, store: str) -> dict[str, Any]:
        manifest = json.loads((Path(source) / "manifest.json").read_text())
        name = name or manifest["name"]
        version = max(store_versions(Path(store), name), default=0) + 1
        target = Path(store) / name / str(version)
        shutil.copytree(source, target)
        (target / "manifest.json").write_text(json.dumps({**manifest, "name": name}))
        return {"name": name, "version": version, "path": str(target)}

    # -- inside --------------------------------------------------------------------------------

    def _verify(self, name: str, version: int, path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"model {name} version {version}: no manifest at {path}") from None
        if manifest.get("broken"):
            raise RuntimeError(
                f"model {name} version {version}: integrity check failed: model.onnx hash "
                "does not match the manifest"
            )
        return {"name": name, "version": version, "path": str(path), "runtime": "fake"}

    def _figures(self, name: str, version: int) -> dict[str, Any]:
        empty = {"requests": 0, "errors": 0, "compared": 0, "agreed": 0, "max_abs_diff": None}
        return self.figures.setdefault((name, version), {**empty, "latencies_ms": []})

    def _status(self) -> dict[str, Any]:
        return {
            "worker": self.index,
            "pid": 0,
            "serving": True,
            "draining": False,
            "models": list(self.active.values()),
            "routes": {n: r.model_dump(mode="json") for n, r in self.routes.items()},
        }


async def started(
    store: Path, count: int = 2, *, tick_s: float = 0.02, **settings: Any
) -> tuple[Any, FakeWorkers]:
    """A fleet over ``store`` whose ``count`` workers have started from its state."""
    from torchferry.serving.lifecycle.fleet import Fleet
    from torchferry.serving.settings import ServerSettings

    workers = FakeWorkers(count)
    fleet = Fleet(workers, ServerSettings(store=store, **settings), rollout_tick_s=tick_s)
    fleet.restore()
    for index in list(workers.all):
        await workers.start(index, fleet)
    return fleet, workers


class FakeWorkers:
    """``lifecycle.workers.Workers`` over in-process workers."""

    def __init__(self, count: int = 2) -> None:
        self.all = {i: FakeWorker(i) for i in range(1, count + 1)}

    def __getitem__(self, index: int) -> FakeWorker:
        return self.all[index]

    def serving(self) -> list[int]:
        return [i for i, w in self.all.items() if w.alive]

    async def ask(self, index: int, op: str, timeout: float, **args: Any) -> Any:
        worker = self.all[index]
        if not worker.alive:
            raise WorkerGone(f"worker {index} is not running")
        args = orjson.loads(orjson.dumps(args))  # as the channel carries them
        reply = await asyncio.wait_for(worker.command(op, args), timeout)
        return orjson.loads(orjson.dumps(reply))

    async def start(self, index: int, fleet: Any) -> FakeWorker:
        """A (re)started worker: a fresh one started from the fleet's state, as the
        supervisor starts one."""
        worker = FakeWorker(index)
        self.all[index] = worker
        settings = fleet.settings.model_dump(mode="json")
        status = await worker.command("start", {"worker": index, "settings": settings,
                                                "state": fleet.start_state()})  # fmt: skip
        await fleet.joined(index, orjson.loads(orjson.dumps(status)))
        return worker
