"""The console's JSON API, under ``/console/api/`` on the management app: who the caller
is, the models (``overview``), a model's live figures (``metrics``), the server, the sources
a load may offer, and the try-it forwarder. Errors are ``{"error": message}`` with their
status; changes go through the management routes, never through here."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Request
from prometheus_client.core import Metric
from starlette.responses import Response

from torchferry.errors import InvalidInput
from torchferry.serving.auth.guard import management_needs, principal_of
from torchferry.serving.console.figures import version_figures
from torchferry.serving.console.overview import overview
from torchferry.serving.console.proxy import Forwarder
from torchferry.serving.console.server_page import server_page
from torchferry.serving.console.server_view import ServerView
from torchferry.serving.console.sources import list_sources
from torchferry.serving.management.answers import JSONResponse, TritonRoute
from torchferry.serving.management.context import management_of
from torchferry.serving.metrics_render import workers_metrics
from torchferry.serving.settings import ServerSettings

#: Left out of the management API's OpenAPI document: the console's page is its one client
#: (and the document's fuzz run in CI stays the size it was).
router = APIRouter(
    prefix="/console/api",
    tags=["torchferry console"],
    route_class=TritonRoute,
    include_in_schema=False,
)

#: The console's calls that are not the management API's reads (``app.console_needs``).
WHOAMI_PATH = f"{router.prefix}/whoami"
TRY_PREFIX = f"{router.prefix}/try/"
TRY_GRPC_PREFIX = f"{router.prefix}/try-grpc/"

UNDER_RAY = "under Ray Serve, scrape Ray's metrics"
METRICS_OFF = "the server runs without metrics (--no-metrics)"


@dataclass
class Console:
    """What the console's routes read beside the management state."""

    #: The supervisor; None under Ray Serve (no workers, no metrics files of its own).
    server: ServerView | None
    forwarder: Forwarder
    metrics: MetricsReading = field(default_factory=lambda: MetricsReading())
    #: When the app was made: the start shown where there is no supervisor.
    made_at: float = field(default_factory=time.time)


def console_state(server: ServerView | None) -> Console:
    def target() -> ServerSettings | None:
        return server.worker_settings if server is not None else None

    return Console(server, Forwarder(target))


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


@router.get("/whoami", summary="The caller's token and what it may do")
async def whoami(request: Request) -> Response:
    principal = principal_of(request.scope)
    if principal is None:
        return JSONResponse(
            {"auth": False, "token": None, "scopes": [], "can_read": True, "can_manage": True}
        )
    scopes = principal.scopes
    return JSONResponse(
        {
            "auth": True,
            "token": principal.id,
            "scopes": scopes.texts(),
            # as the management API judges a read and a change
            "can_read": management_needs(scopes, "GET", "/models") is None,
            "can_manage": management_needs(scopes, "POST", "/models") is None,
        }
    )


@router.get("/overview", summary="Every model, its routes, rollout and versions")
async def models_overview(request: Request) -> Response:
    return JSONResponse(overview(management_of(request)))


@router.get("/metrics", summary="A model's cumulative figures per version")
async def model_metrics(request: Request, model: str | None = None) -> Response:
    if not model:
        raise InvalidInput("metrics: name the model, as ?model=NAME")
    management_of(request).require(model)
    console = console_of(request)
    server = console.server
    if server is None or server.metrics_dir is None:
        reason = UNDER_RAY if server is None else METRICS_OFF
        answer = {"at": time.time(), "available": False, "reason": reason, "versions": {}}
        return JSONResponse(answer)
    at, metrics = await console.metrics.read(server.metrics_dir)
    versions = version_figures(metrics, model)
    return JSONResponse({"at": at, "available": True, "reason": None, "versions": versions})


class MetricsReading:
    """The workers' metrics, read in a thread at most once per ``MAX_AGE_S`` whatever the
    number of open pages (each polls every ~2 s and every reading opens every worker's
    file); concurrent callers share one reading."""

    MAX_AGE_S = 1.0

    def __init__(self) -> None:
        self._last: tuple[float, float, list[Metric]] | None = None  # (monotonic, time, metrics)
        self._reading: asyncio.Future[tuple[float, float, list[Metric]]] | None = None

    async def read(self, directory: Path) -> tuple[float, list[Metric]]:
        """``(time.time() of the reading, the metrics)``."""
        last = self._last
        if last is not None and time.monotonic() - last[0] < self.MAX_AGE_S:
            return last[1], last[2]
        if self._reading is None or self._reading.get_loop() is not asyncio.get_running_loop():
            self._reading = asyncio.ensure_future(self._take(directory))
        reading = self._reading
        try:
            taken = await asyncio.shield(reading)
        finally:
            if reading.done() and self._reading is reading:
                self._reading = None
        return taken[1], taken[2]

    async def _take(self, directory: Path) -> tuple[float, float, list[Metric]]:
        at = time.time()
        metrics = await asyncio.to_thread(workers_metrics, directory)
        self._last = (time.monotonic(), at, metrics)
        return self._last


@router.get("/server", summary="The server: build, workers, listeners, load policies")
async def server(request: Request) -> Response:
    console = console_of(request)
    settings = management_of(request).settings
    address = request.scope.get("server")
    port = address[1] if address else settings.management_port
    return JSONResponse(server_page(settings, console.server, console.made_at, port))


@router.get("/sources", summary="Models a load may offer, under the model source roots")
async def sources(request: Request) -> Response:
    settings = management_of(request).settings
    return JSONResponse(await asyncio.to_thread(list_sources, settings))


@router.post("/try/{path:path}", summary="Send an inference request through the console")
async def try_request(request: Request, path: str) -> Response:
    return await console_of(request).forwarder.forward(request, path, TRY_PREFIX)


@router.post("/try-grpc/{model}", summary="Send a V2 JSON request over gRPC through the console")
async def try_grpc_request(request: Request, model: str) -> Response:
    from torchferry.serving.console.grpc_try import try_grpc  # grpcio only when used

    console = console_of(request)
    return await try_grpc(request, model, console.server, console.forwarder)
