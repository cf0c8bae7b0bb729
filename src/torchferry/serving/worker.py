"""A worker process: serve what the supervisor says on the shared ports, until told to drain.

Started by the supervisor as ``python -m torchferry.serving.worker --control-fd FD``. It
waits on the control channel for ``start`` (the settings to serve, and the supervisor's
desired state if it has one), loads the models, binds
its own HTTP socket on the shared port (``SO_REUSEPORT``; gRPC does the same), and answers
``start`` once it serves. It drains on ``drain``, on SIGTERM, or when the supervisor goes
away; SIGINT is the supervisor's to handle (a terminal's Ctrl+C reaches every process of
the group, and the drain must start from one place).

A drain loses no accepted request: the listening sockets close first; each open connection
gets its next answer with ``Connection: close``, so a client learns to reconnect instead of
sending into a closing socket; connections still idle after a short grace are closed;
requests in flight and queued in the batchers are answered (up to ``--drain-timeout``),
then the process exits.

While it serves, the supervisor changes its models with commands, each idempotent: ``load``
(build and warm up a version, pending), ``activate``, ``discard``, ``unload`` (answered once
the version has answered its requests and is released), ``routes``, ``stats`` and
``stage`` (put a source into the store).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console
from rich.markup import escape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from torchferry.errors import TorchferryError
from torchferry.serving.app import build_app
from torchferry.serving.control import Channel
from torchferry.serving.dataplane import DataPlane
from torchferry.serving.describe import version_record
from torchferry.serving.http_guard import GuardedServer, http_config
from torchferry.serving.lifecycle.state import DesiredState, Routes
from torchferry.serving.listen import listen_shared
from torchferry.serving.loading import load_repository
from torchferry.serving.logs import configure_logging
from torchferry.serving.protocols.common import Protocol
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings
from torchferry.serving.staging import stage_source

#: How long a drain waits for an idle keep-alive connection's next request (which is then
#: answered with ``Connection: close``) before closing it.
IDLE_GRACE_S = 1.0

err_console = Console(stderr=True)


class CloseWhenDraining:
    """Answers with ``Connection: close`` once the worker's listeners have closed, so that
    clients reconnect (to a worker that serves, or to a refused port) instead of reusing a
    closing socket. Not before they close: a client told to reconnect while the port still
    listens could land in the kernel's accept queue, which closing the port resets."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.closing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # a request that began before the close gets it on its connection's next answer
        if not self.closing or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if self.closing and message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, closing_send)


class WorkerServer(GuardedServer):
    """uvicorn with a drain that gives keep-alive connections their ``Connection: close``
    answer before it closes them."""

    def __init__(self, config: uvicorn.Config, front: CloseWhenDraining) -> None:
        super().__init__(config)
        self.front = front

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        self.front.closing = True
        deadline = time.monotonic() + IDLE_GRACE_S
        while self.server_state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await super().shutdown(sockets)


class Worker:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.settings: asyncio.Future[ServerSettings] | None = None
        #: The supervisor's desired state from ``start`` (None: serve what the settings say).
        self.state: DesiredState | None = None
        self.index = 0
        self.server: WorkerServer | None = None
        self.plane: DataPlane | None = None
        self.protocols: list[Protocol] = []
        self.serving = asyncio.Event()
        self.listening_stopped = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: Whether the supervisor has said the server is up (readiness waits for it).
        self.released = False
        self.draining = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        loop.add_signal_handler(signal.SIGTERM, self.drain)
        self.settings = loop.create_future()
        channel = await Channel.open(self.control)
        reading = asyncio.create_task(channel.serve(on_command=self.command))
        reading.add_done_callback(lambda _: self.drain())  # the supervisor is gone
        waiting: asyncio.Future[Any] = asyncio.ensure_future(asyncio.shield(self.settings))
        await asyncio.wait([waiting, reading], return_when=asyncio.FIRST_COMPLETED)
        if not self.settings.done() or self.settings.cancelled():
            return 0  # drained, or the supervisor left, before it said what to serve
        settings = self.settings.result()
        try:
            code = await self.serve(settings)
        finally:
            channel.close()
        return code

    async def serve(self, settings: ServerSettings) -> int:
        configure_logging(settings.log_level, settings.log_format)
        try:
            # logs a model_loaded event per version
            repository = load_repository(settings, self.state)
        except TorchferryError as exc:
            err_console.print(f"[bold red]error:[/] {escape(exc.message)}")
            return 1
        app = build_app(settings, repository)
        self.plane = app.state.plane
        self.plane.held = not self.released
        self.protocols = app.state.protocols
        # torch and the engines leave millions of long-lived objects; a full collection that
        # walks them all stalls every request for ~100 ms, so move them out of the GC's sight.
        gc.collect()
        gc.freeze()
        front = CloseWhenDraining(app)
        config = http_config(
            front,
            settings,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            # uvicorn's lines go through the root logger, in the server's format; the access
            # log is torchferry's own (request ids, route templates, models)
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=max(1, round(settings.drain_timeout_s)),
            lifespan="on",
        )
        self.server = WorkerServer(config, front)
        if self.draining:  # told to drain while loading
            return 0
        sockets = [listen_shared(settings.host, settings.port)]
        watch = asyncio.create_task(self._watch_startup(self.server))
        try:
            await self.server.serve(sockets)
        finally:
            watch.cancel()
        return 0

    async def _watch_startup(self, server: WorkerServer) -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        self.serving.set()
        if self.listening_stopped:  # told while uvicorn started: its listener opened since
            self._close_listeners()

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        if op == "start":
            assert self.settings is not None
            self.index = int(args.get("worker", 0))
            if not self.settings.done():
                state = args.get("state")
                self.state = DesiredState.model_validate(state) if state is not None else None
                self.settings.set_result(ServerSettings.model_validate(args["settings"]))
            await self.serving.wait()
            return self.status()
        if op == "release":
            self.released = True
            if self.plane is not None:
                self.plane.held = False
            return self.status()
        if op == "status":
            return self.status()
        if op == "stop_listening":
            self.stop_listening()
            return self.status()
        if op == "drain":
            self.drain()
            return self.status()
        if op in MODEL_COMMANDS:
            return await MODEL_COMMANDS[op](self._repository(op), args)
        raise ValueError(f"unknown command {op!r}")

    def _repository(self, op: str) -> ModelRepository:
        if self.plane is None:
            raise RuntimeError(f"{op}: worker {self.index} is not serving yet")
        return self.plane.repository

    def status(self) -> dict[str, Any]:
        repository = self.plane.repository if self.plane else None
        return worker_status(repository, self.index, self.serving.is_set(), self.draining)

    def stop_listening(self) -> None:
        """A drain's first step: refuse new connections and gRPC calls, answer "not ready",
        and keep serving the connections already open.

        The supervisor has every worker do this before any of them tells its clients to
        reconnect; otherwise a client sent away by one worker could connect to a sibling
        that is about to close its port, and be reset there."""
        if self.plane is not None:
            self.plane.draining = True
        if not self.listening_stopped:
            self.listening_stopped = True
            self._close_listeners()
            for protocol in self.protocols:  # gRPC: no new calls, in-flight ones finish
                task = asyncio.get_running_loop().create_task(protocol.stop())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _close_listeners(self) -> None:
        if self.server is not None:
            for server in self.server.servers:
                server.close()

    def drain(self) -> None:
        """Stop listening, answer what was accepted (``Connection: close`` on each open
        connection's next answer), finish the batchers' queues, then exit."""
        if self.draining:
            return
        self.draining = True
        self.stop_listening()
        if self.server is not None:
            self.server.front.closing = True
            self.server.should_exit = True
        if self.settings is not None and not self.settings.done():
            self.settings.cancel()


# -- model commands: the supervisor's changes, each idempotent -----------------------------------


async def _load(repository: ModelRepository, args: dict[str, Any]) -> dict[str, Any]:
    model = await repository.prepare(str(args["name"]), int(args["version"]), Path(args["path"]))
    return version_record(model)


async def _activate(repository: ModelRepository, args: dict[str, Any]) -> dict[str, Any]:
    return version_record(repository.activate(str(args["name"]), int(args["version"])))


async def _discard(repository: ModelRepository, args: dict[str, Any]) -> None:
    await repository.discard(str(args["name"]), int(args["version"]))


async def _unload(repository: ModelRepository, args: dict[str, Any]) -> None:
    await repository.retire(str(args["name"]), int(args["version"]))


async def _routes(repository: ModelRepository, args: dict[str, Any]) -> dict[str, Any]:
    name = str(args["name"])
    repository.set_routes(name, Routes.model_validate(args.get("routes") or {}))
    return repository.routes(name).model_dump(mode="json")


async def _stats(repository: ModelRepository, args: dict[str, Any]) -> dict[str, Any]:
    name, drain = str(args["name"]), bool(args.get("drain", False))
    return {str(m.version): m.stats.report(drain) for m in _versions(repository, name)}


async def _stage(repository: ModelRepository, args: dict[str, Any]) -> dict[str, Any]:
    name = args.get("name")
    archive = await asyncio.to_thread(
        stage_source, Path(args["source"]), Path(args["store"]), str(name) if name else None
    )
    manifest = archive.manifest
    return {"name": manifest.name, "version": manifest.version, "path": str(archive.path)}


def worker_status(
    repository: ModelRepository | None, index: int, serving: bool, draining: bool
) -> dict[str, Any]:
    """What the fleet knows a worker (or a Ray replica) by: its models and routes, read from
    the repository itself, not the data plane, so every model is listed whatever a
    request's token may see."""
    models = repository.all() if repository is not None else []
    routes = (
        {name: repository.routes(name).model_dump(mode="json") for name in repository.names()}
        if repository is not None
        else {}
    )
    status = {
        "worker": index,
        "pid": os.getpid(),
        "serving": serving,
        "draining": draining,
        "models": [version_record(m) for m in models],
        "routes": routes,
    }
    residency = repository.residency if repository is not None else None
    if residency is not None:  # --memory-budget: which versions are loaded now, in this worker
        status["memory"] = residency.status()
    return status


def _versions(repository: ModelRepository, name: str) -> list[Any]:
    """The model's active versions (none for a model that is not loaded)."""
    return (
        [repository.get(name, v) for v in repository.versions(name)]
        if name in repository.names()
        else []
    )


#: The model commands a worker takes on its control channel (a Ray replica takes the same
#: ones from the manager): op -> coroutine over the worker's repository and the arguments.
MODEL_COMMANDS: dict[str, Callable[[ModelRepository, dict[str, Any]], Awaitable[Any]]] = {
    "load": _load,
    "activate": _activate,
    "discard": _discard,
    "unload": _unload,
    "routes": _routes,
    "stats": _stats,
    "stage": _stage,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchferry-worker")
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    worker = Worker(control)
    try:
        import uvloop

        return uvloop.run(worker.run())
    except ImportError:  # pragma: no cover - uvloop is a dependency where it installs
        return asyncio.run(worker.run())


if __name__ == "__main__":
    sys.exit(main())
