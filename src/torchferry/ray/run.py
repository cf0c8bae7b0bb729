"""``torchferry serve --ray``: start (or join) Ray, run the application behind Serve's HTTP
proxy on ``--host``/``--port``, and take it down again on SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import re
import signal
import threading
from types import FrameType

import ray
from ray import serve
from rich.console import Console
from rich.markup import escape

from torchferry.ray.builders import deploy
from torchferry.ray.config import RaySettings
from torchferry.serving.listen import reserve
from torchferry.serving.logs import configure_logging

log = logging.getLogger("torchferry.ray")
#: A traceback's line that names one of torchferry's errors, up to its message.
OUR_ERROR = re.compile(r"^(?:.*\s)?torchferry\.errors\.\w+: ", re.MULTILINE)
console = Console(stderr=True, soft_wrap=True)


def describe(settings: RaySettings) -> str:
    if settings.autoscaling is not None:
        scale = settings.autoscaling
        return f"{scale.min_replicas} to {scale.max_replicas} replicas (autoscaling)"
    return f"{settings.num_replicas or 1} replica(s)"


def serve_on_ray(settings: RaySettings, address: str | None = None) -> int:
    """Serve until SIGINT/SIGTERM; the exit code. Without ``address`` a Ray of this machine
    is started and shut down again; with one (``auto``, ``ray://HOST:10001``) the app joins
    that cluster, and only the app is deleted at the end (Serve keeps running there)."""
    server = settings.server
    configure_logging(server.log_level, server.log_format)
    own_cluster = address is None
    if own_cluster:  # the store must be here; on a cluster, it must be where the replicas are
        server.check_sources()
        server.check_tls()
        # free now (Serve's proxies bind them later), and port 0 resolved to a free one
        ports = {"port": _free(server.host, server.port, "HTTP", "--port")}
        if server.grpc_port is not None:
            ports["grpc_port"] = _free(server.host, server.grpc_port, "gRPC", "--grpc-port")
        server = server.model_copy(update=ports)
        settings = settings.model_copy(update={"server": server})
    try:
        ray.init(address=address, logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:  # no cluster at ADDRESS
        console.print(f"[bold red]error:[/] cannot reach Ray at {address}: {escape(str(exc))}")
        return 1
    stop = threading.Event()
    try:
        try:
            serve.start(**settings.proxy_options())
        except Exception as exc:  # the proxy's port taken, options this Serve refuses...
            console.print(f"[bold red]error:[/] Serve did not start: {escape(_last_line(exc))}")
            return 1
        console.print(f"deploying {settings.name} with {describe(settings)} on Ray...")
        try:
            deploy(settings)
        except Exception as exc:  # a replica could not start: Serve's status says why
            console.print(f"[bold red]error:[/] {escape(_deploy_failure(settings, exc))}")
            if not own_cluster:  # nothing of it stays behind on a cluster that lives on
                _delete(settings)
            return 1

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        url = f"{server.scheme}://{server.host}:{server.port}"
        console.print(
            f"serving on {url}{settings.route_prefix.rstrip('/')} through Ray Serve with "
            f"{describe(settings)}; Ctrl+C stops"
        )
        if server.grpc_port is not None:
            console.print(
                f"KServe V2 gRPC on {server.host}:{server.grpc_port} (Serve's gRPC proxy; "
                f"metadata application={settings.name} when several applications run)"
            )
        if settings.management:
            console.print(f"management API on {url}{settings.manager_route}")
        while not stop.wait(0.5):
            pass
        console.print("stopping: deleting the application")
        _delete(settings)
        return 0
    finally:
        if own_cluster:
            serve.shutdown()
        ray.shutdown()


def _delete(settings: RaySettings) -> None:
    """Delete the application and its manager (``deploy`` runs both at once, so either may
    be there after a failed deploy)."""
    names = [settings.name] + ([settings.manager_name] if settings.management else [])
    for name in names:
        try:
            serve.delete(name)
        except Exception as exc:  # one that is not there, or a Serve going down
            log.warning("could not delete the application %s: %s", name, _last_line(exc))


def _free(host: str, port: int, what: str, flag: str) -> int:
    guard = reserve(host, port, what, flag)  # PortInUse (exit 1) names the option
    guard.close()
    return guard.port


def _deploy_failure(settings: RaySettings, exc: BaseException) -> str:
    """Why a deploy failed: ``serve.run``'s error names only the deployment, while the
    deployment's status message holds the replica's traceback, and the reason in it."""
    try:
        applications = serve.status().applications
        messages = [
            deployment.message
            for name in (settings.name, settings.manager_name)
            if name in applications
            for deployment in applications[name].deployments.values()
            if deployment.message
        ]
    except Exception:  # the reason is lost, not the failure
        messages = []
    reasons = [_last_line(RuntimeError(message)) for message in messages]
    ours = [
        reason
        for reason, message in zip(reasons, messages, strict=True)
        if OUR_ERROR.search(message)
    ]
    return (ours or reasons or [_last_line(exc)])[0]


def _last_line(exc: BaseException) -> str:
    """Serve's deployment errors carry the replica's whole traceback: the last torchferry
    error in it is the reason (``torchferry.errors.ArchiveError: ...``), else its last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    ours = [line for line in lines if OUR_ERROR.match(line)]
    if ours:
        return OUR_ERROR.sub("", ours[-1])
    return lines[-1] if lines else type(exc).__name__
