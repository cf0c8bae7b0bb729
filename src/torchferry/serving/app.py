"""Assembles the ASGI app: protocols' routers, error mapping, body limit, lifecycle (which
also starts and stops the gRPC server)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

import torchferry
from torchferry.errors import Overloaded, TorchferryError
from torchferry.serving.grpc import start_grpc_server, stop_grpc_server
from torchferry.serving.jsonio import JSONResponse
from torchferry.serving.limits import BodySizeLimit
from torchferry.serving.protocols import PROTOCOLS
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings

log = logging.getLogger("torchferry.app")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Every protocol's error body is ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _torchferry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TorchferryError)
    headers = None
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    if exc.status_code >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc)
    return error_response(exc.status_code, exc.message, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return error_response(400, "; ".join(parts) or "invalid request")


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def build_app(settings: ServerSettings, repository: ModelRepository) -> FastAPI:
    """The HTTP app over an already loaded repository; batchers start with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # gRPC runs on this same event loop, over the same batchers: it starts once they
        # run, and stops (finishing its in-flight calls) before they drain
        await repository.start()
        grpc_server = None
        try:
            if settings.grpc_port is not None:
                grpc_server = await start_grpc_server(settings, repository)
            yield
        finally:
            if grpc_server is not None:
                await stop_grpc_server(grpc_server)
            await repository.close()

    app = FastAPI(
        title="torchferry",
        version=torchferry.__version__,
        description="KServe V2 / Open Inference Protocol, TF-Serving/KServe V1 REST, and /predict.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.repository = repository
    app.state.settings = settings
    app.add_exception_handler(TorchferryError, _torchferry_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    for protocol in PROTOCOLS:
        app.include_router(protocol.router)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    return app
