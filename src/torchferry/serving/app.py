"""Assembles the ASGI app from the protocol registry: every protocol's routes over one data
plane, one error mapping, the body limit, and a lifecycle that starts the protocols' own
listeners (gRPC) once the models serve and stops them before the models drain."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

import torchferry
from torchferry.errors import InvalidInput, TorchferryError, internal_error
from torchferry.serving.dataplane import DataPlane
from torchferry.serving.limits import BodySizeLimit
from torchferry.serving.protocols import PROTOCOLS
from torchferry.serving.protocols.common import JSONResponse, error_response
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings

log = logging.getLogger("torchferry.app")


async def _torchferry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TorchferryError)
    if exc.status_code >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = getattr(exc, "headers", None)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return error_response(InvalidInput("; ".join(parts) or "invalid request"))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(internal_error(exc))


def build_app(settings: ServerSettings, repository: ModelRepository) -> FastAPI:
    """The HTTP app over an already loaded repository; batchers start with the app."""
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
    app.add_exception_handler(TorchferryError, _torchferry_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    for protocol in protocols:
        if protocol.router is not None:
            app.include_router(protocol.router)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    return app
