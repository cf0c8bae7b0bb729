"""The console's Server page (``GET /console/api/server``): the build, the process, its
workers, its listeners with their TLS and auth, and the policies models are loaded under."""

from __future__ import annotations

import functools
import os
import platform
import time
from importlib import metadata
from typing import Any

from torchferry._version import __version__
from torchferry.serving.console.server_view import ServerView, WorkerView
from torchferry.serving.listen import LOOPBACK, host_port
from torchferry.serving.settings import ServerSettings

#: The packages whose versions the page shows, where installed (never imported here).
PACKAGES = (
    "onnxruntime", "torch", "numpy", "fastapi", "uvicorn", "grpcio", "prometheus-client",
    "httpx", "pydantic",
)  # fmt: skip


@functools.cache
def package_versions() -> dict[str, str]:
    """Read once (each look-up scans sys.path; the page polls): the installed versions do
    not change under a running server."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def worker_view(worker: WorkerView, now: float, monotonic_now: float) -> dict[str, Any]:
    """A worker, its monotonic times as wall-clock times."""

    def wall(at: float | None) -> float | None:
        return None if at is None or at <= 0 else round(now - (monotonic_now - at), 3)

    return {
        "index": worker.index,
        "pid": worker.pid,
        "state": worker.state,
        "restarts": worker.restarts,
        "started_at": wall(worker.started_at),
        "serving_since": wall(worker.serving_since),
    }


def listeners(
    settings: ServerSettings, server: ServerView | None, management_port: int | None
) -> list[dict[str, Any]]:
    """Every listener this process knows, with its real port (none under Ray Serve, whose
    proxy listens)."""
    if server is None:
        return []
    ws = server.worker_settings
    tls, mtls = ws.tls_cert is not None, ws.tls_client_ca is not None

    def listener(name: str, host: str, port: int | None, scheme: str) -> dict[str, Any]:
        return {
            "name": name,
            "address": host_port(host, port),
            "scheme": scheme,
            "tls": tls,
            "mtls": mtls,
            "auth": ws.auth,
        }

    found = [listener("http", ws.host, ws.port, ws.scheme)]
    if ws.grpc_port is not None:
        found.append(listener("grpc", ws.host, ws.grpc_port, "grpcs" if tls else "grpc"))
    management_host = settings.management_host or LOOPBACK
    found.append(listener("management", management_host, management_port, ws.scheme))
    if server.metrics_dir is not None and ws.metrics_port is not None:
        found.append(listener("metrics", ws.host, ws.metrics_port, ws.scheme))
    return found


def server_page(
    settings: ServerSettings,
    server: ServerView | None,
    started_at: float,
    management_port: int | None,
) -> dict[str, Any]:
    now, monotonic_now = time.time(), time.monotonic()
    if server is not None:
        started_at = server.started_at
    workers = (
        None if server is None else [worker_view(w, now, monotonic_now) for w in server.workers]
    )
    return {
        "version": __version__,
        "python": platform.python_version(),
        "packages": dict(package_versions()),
        "pid": os.getpid(),
        "started_at": started_at,
        "uptime_s": round(now - started_at, 3),
        "restarts": sum(w["restarts"] for w in workers or ()),
        "workers": workers,
        "listeners": listeners(settings, server, management_port),
        "store": str(settings.store) if settings.store is not None else None,
        "require_signed": settings.require_signed,
        "trusted_keys": len(settings.trusted_keys),
        "model_source_roots": [str(root) for root in settings.source_roots()],
        "allowed_urls": list(settings.allowed_urls),
    }
