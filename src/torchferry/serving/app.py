"""Assembles the ASGI app from the protocol registry: every protocol's routes over one data
plane, one error mapping, the body limit, and a lifecycle that starts the protocols' own
listeners (gRPC) once the models serve and stops them before the models drain.

Outermost is ``RecordRequests``, which gives every HTTP request its record; the observers
that read finished records (metrics, the access log, and whatever a caller adds) are the
data plane's ``observers``, shared with gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

import torchferry
from torchferry.errors import TorchferryError
from torchferry.serving import metrics
from torchferry.serving.auth.guard import open_key_ring
from torchferry.serving.dataplane import DataPlane
from torchferry.serving.hotpath import HotPath
from torchferry.serving.limits import BodyLimit
from torchferry.serving.logs import AccessLog
from torchferry.serving.observe import Observer, Observers
from torchferry.serving.observe_http import RecordRequests
from torchferry.serving.protocols import PROTOCOLS
from torchferry.serving.protocols.common import JSONResponse, as_error, error_response
from torchferry.serving.protocols.openapi_schemas import without_validation_errors
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings
from torchferry.serving.tracing import tracing_observer


async def _error(request: Request, exc: Exception) -> Response:
    # the scope's path, not ``request.url`` (which parses a URL per error)
    return error_response(as_error(exc, f"{request.method} {request.scope['path']}"))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors: an unknown route (404) or method (405)."""
    assert isinstance(exc, StarletteHTTPException)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:  # Starlette's Allow names one route's methods: every route's
        headers = {**(headers or {}), "Allow": ", ".join(_allowed(request))}
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=headers)


def _allowed(request: Request) -> list[str]:
    """The methods of the routes with the path template of the first route that matches this
    path in routing order (TorchServe's POST and PUT are two routes of one path; a V1
    ``NAME:predict`` path also fits the template ``/v1/models/{model_name}``, a later one)."""
    routes: list[Route] = [r for r in request.app.state.routes if isinstance(r, Route)]
    template: str | None = None
    methods: set[str] = set()
    for route in routes:
        if not route.methods:
            continue
        match, _ = route.matches({**request.scope, "method": next(iter(route.methods))})
        if match is Match.FULL and template in (None, route.path):
            template = route.path
            methods |= route.methods
    return sorted(methods)


def standard_observers(settings: ServerSettings) -> list[Observer]:
    """What hears of every finished request unless the caller says otherwise."""
    observers: list[Observer] = []
    if settings.metrics:
        observers.append(metrics.RECORDER)
    if settings.access_log:
        observers.append(AccessLog())
    tracer = tracing_observer(settings)
    if tracer is not None:
        observers.append(tracer)
    return observers


def build_app(
    settings: ServerSettings, repository: ModelRepository, observers: Observers | None = None
) -> RecordRequests:
    """The HTTP app over an already loaded repository; batchers start with the app.

    FastAPI holds every route (and describes them at ``/docs``); the inference routes are
    called from the lean path in front of it (``hotpath.py``), which also applies the body
    limit. Outermost, ``RecordRequests`` gives every request its record: ``observers``
    (default: metrics, the access log and traces, as the settings say) hear of every
    finished request, HTTP and gRPC; the returned app's ``observers`` is that instance, and
    its ``state`` the FastAPI app's."""
    if observers is None:
        observers = Observers(standard_observers(settings))
    # with --auth, each worker reads the key file itself (and re-reads it when it changes)
    keys = open_key_ring(settings.key_path(), settings.workers) if settings.auth else None
    plane = DataPlane(repository, settings.request_timeout_s, observers, keys)
    protocols = [protocol(plane, settings) for protocol in PROTOCOLS]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await repository.start()
        async with AsyncExitStack() as stack:
            stack.callback(metrics.flush)  # last: the final requests' numbers
            stack.push_async_callback(repository.close)
            # before the batchers close: the mirrors in flight finish (bounded)
            stack.push_async_callback(plane.shadows.close, settings.drain_timeout_s)
            for protocol in protocols:
                await protocol.start()
                stack.push_async_callback(protocol.stop)
            yield

    app = FastAPI(
        title="torchferry",
        version=torchferry.__version__,
        description="KServe V2 / Open Inference Protocol (HTTP and gRPC), TF-Serving/KServe V1 "
        "REST, TorchServe's API, and /predict.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    generate = app.openapi
    app.openapi = lambda: without_validation_errors(generate())  # type: ignore[method-assign]
    app.state.repository = repository
    app.state.plane = plane
    app.state.settings = settings
    app.state.protocols = protocols
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error_class in (TorchferryError, RequestValidationError, Exception):
        app.add_exception_handler(error_class, _error)
    # FastAPI's own routes (docs, openapi.json) come first, then each protocol's, in the
    # order the app includes them: the order in which its router tries them
    routes: list[BaseRoute] = [r for r in app.router.routes if isinstance(r, Route)]
    for protocol in protocols:
        if protocol.router is not None:
            app.include_router(protocol.router)
            routes += protocol.router.routes
    app.state.observers = observers
    app.state.routes = routes  # FastAPI keeps included routers whole: this lists their routes
    hot_path = HotPath(app, routes, BodyLimit(settings.max_body_bytes))
    return RecordRequests(hot_path, observers, keys)
