"""Assembles the ASGI app from the protocol registry: every protocol's routes over one data
plane, one error mapping, the body limit, and a lifecycle that starts the protocols' own
listeners (gRPC) once the models serve and stops them before the models drain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import torchferry
from torchferry.errors import TorchferryError
from torchferry.serving.dataplane import DataPlane
from torchferry.serving.hotpath import HotPath
from torchferry.serving.limits import BodyLimit
from torchferry.serving.protocols import PROTOCOLS
from torchferry.serving.protocols.common import JSONResponse, as_error, error_response
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings


async def _error(request: Request, exc: Exception) -> Response:
    return error_response(as_error(exc, f"{request.method} {request.url.path}"))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors: an unknown route (404) or method (405)."""
    assert isinstance(exc, StarletteHTTPException)
    headers = getattr(exc, "headers", None)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=headers)


def build_app(settings: ServerSettings, repository: ModelRepository) -> HotPath:
    """The HTTP app over an already loaded repository; batchers start with the app.

    FastAPI holds every route (and describes them at ``/docs``); the inference routes are
    called from the lean path in front of it (``hotpath.py``), which also applies the body
    limit. The app's state is ``HotPath.state``."""
    plane = DataPlane(repository, settings.request_timeout_s)
    protocols = [protocol(plane, settings) for protocol in PROTOCOLS]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await repository.start()
        async with AsyncExitStack() as stack:
            stack.push_async_callback(repository.close)
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
    app.state.repository = repository
    app.state.plane = plane
    app.state.settings = settings
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
    return HotPath(app, routes, BodyLimit(settings.max_body_bytes))
