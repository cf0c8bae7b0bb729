"""``torchferry serve`` in a child process, ready on entry: for end-to-end tests, benchmarks
and scripts that need a real server on real ports.

Each server gets free HTTP and gRPC ports unless its arguments say otherwise, so servers
run side by side and never take the default ports.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (the sockets are held together, so they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclass
class ServerProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    #: Where the server's output goes; None when it is discarded.
    log: Path | None
    #: The KServe V2 gRPC port; None when the server runs with ``--no-grpc``.
    grpc_port: int | None = None
    #: The Prometheus port; None when the server runs with ``--no-metrics``.
    metrics_port: int | None = None
    #: The management API's port; None when the server runs with ``--no-management``.
    management_port: int | None = None
    #: ``https`` when the server runs with ``--tls-cert``.
    scheme: str = "http"
    #: What clients verify the server with (and, under mutual TLS, present): httpx's
    #: ``verify``, an ``ssl.SSLContext`` for a TLS server.
    verify: ssl.SSLContext | bool = True

    @property
    def management_url(self) -> str:
        assert self.management_port is not None, "this server runs without a management API"
        return f"{self.scheme}://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        assert self.metrics_port is not None, "this server runs without metrics"
        return f"{self.scheme}://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def grpc_target(self) -> str:
        """``host:port`` for gRPC clients (tritonclient's ``url``, ``grpc.insecure_channel``)."""
        assert self.grpc_port is not None, "this server runs without gRPC"
        return f"127.0.0.1:{self.grpc_port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **{"verify": self.verify, **kwargs})

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def worker_pids(self) -> list[int]:
        """The supervisor's live child processes (its workers), from Linux's /proc."""
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []
        return sorted(int(child) for child in children)


def _port_option(args: list[str], command: list[str], flag: str, off: str, free: int) -> int | None:
    """The port ARGS give with ``flag`` (None with ``off``), else ``free``, added to COMMAND."""
    if off in args:
        return None
    if flag in args:
        return int(args[args.index(flag) + 1])
    command += [flag, str(free)]
    return free


@contextmanager
def serve_in_thread(app: ASGIApp, port: int) -> Iterator[asyncio.AbstractEventLoop]:
    """An ASGI app on uvicorn in a thread of this process, on ``127.0.0.1:port``, started on
    entry, yielding its event loop: for tests that reach into the app's objects (its
    repository, its observers) while real clients call it. Stopped on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    loops: list[asyncio.AbstractEventLoop] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        loops.append(loop)
        loop.run_until_complete(server.serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.05)
    try:
        yield loops[0]
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def serve_in_subprocess(
    args: list[str],
    log: Path | None = None,
    port_flag: str = "--port",
    timeout: float = 90.0,
    env: dict[str, str] | None = None,
    verify: ssl.SSLContext | None = None,
    warm_spare: bool = False,
) -> Iterator[ServerProcess]:
    """Run ``torchferry serve ARGS --port FREE --grpc-port FREE --metrics-port FREE
    --management-port FREE`` until the block ends.

    No warm spare unless ``warm_spare`` (``--no-warm-spare``): a server that lives for one
    test would spend a core-second importing a process that replaces nobody, and the tests
    of restarts ask for one.

    ARGS with ``--no-grpc``/``--no-metrics``/``--no-management`` or their own ports keep those; ``env`` adds to
    the server's environment. ARGS with ``--tls-cert`` make an https server: ``verify`` (a
    client context that trusts its CA, with a client certificate under ``--tls-client-ca``)
    is what the readiness check and ``ServerProcess.client`` use. On exit the server gets SIGTERM (a graceful drain), then SIGKILL
    after 30 s.
    """
    port, free_grpc_port, free_metrics_port, free_management_port = free_ports(4)
    command = [sys.executable, "-m", "torchferry.cli", "serve", *args, port_flag, str(port)]
    if not warm_spare:
        command.append("--no-warm-spare")
    grpc_port = _port_option(args, command, "--grpc-port", "--no-grpc", free_grpc_port)
    metrics_port = _port_option(args, command, "--metrics-port", "--no-metrics", free_metrics_port)
    management_port = _port_option(
        args, command, "--management-port", "--no-management", free_management_port
    )
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with ExitStack() as files:
        sink = files.enter_context(log.open("wb")) if log else subprocess.DEVNULL
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment)
    scheme = "https" if "--tls-cert" in args else "http"
    server = ServerProcess(
        f"{scheme}://127.0.0.1:{port}",
        port,
        process,
        log,
        grpc_port,
        metrics_port,
        management_port,
        scheme,
        verify if verify is not None else True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()}")
            try:
                ready = httpx.get(f"{server.url}/v2/health/ready", timeout=2, verify=server.verify)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout} s:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
