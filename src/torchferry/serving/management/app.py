"""``management_app(fleet, settings)``: the management API as one ASGI app, which the
supervisor serves on its own listener (``--management-port``, loopback unless
``--management-host`` says otherwise). What is served beside it (the web console) is added
by the caller that assembles the listener (``console.app``): routes, a wrapper inside the
browser checks, and the scope rules of its paths."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp

from torchferry._version import __version__
from torchferry.errors import InvalidInput, TorchferryError
from torchferry.serving.auth.guard import Needs, RequireToken, management_needs
from torchferry.serving.auth.keyring import KeyRing
from torchferry.serving.listen import LOOPBACK, is_loopback
from torchferry.serving.management import rollouts, torchserve, traffic, triton
from torchferry.serving.management.answers import JSONResponse, error_for, validation_message
from torchferry.serving.management.api import FleetAPI
from torchferry.serving.management.context import Management
from torchferry.serving.management.guard import RefuseBrowsers
from torchferry.serving.settings import ServerSettings


class _RouteError(TorchferryError):
    """An unknown path or a method a path does not take, with the status routing gave."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code  # type: ignore[misc]
        #: TorchServe's names for these
        self.torchserve_type = {
            404: "ResourceNotFoundException",
            405: "MethodNotAllowedException",
        }.get(status_code, "BadRequestException")


def _render(request: Request, error: TorchferryError) -> Response:
    return error_for(request.scope, error)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 404:
        message = f"no such management resource: {request.url.path}"
    else:
        message = str(exc.detail)
    return _render(request, _RouteError(message, exc.status_code))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _render(request, InvalidInput(validation_message(exc)))


def management_app(
    fleet: FleetAPI,
    settings: ServerSettings,
    keys: KeyRing | None = None,
    *,
    extend: Callable[[FastAPI], None] | None = None,
    inner: Callable[[ASGIApp], ASGIApp] | None = None,
    needs: Needs = management_needs,
) -> RefuseBrowsers:
    """The API; with ``keys`` (``--auth``), every call needs a token: reading ones the
    ``manage`` or ``metadata`` scope, the rest ``manage`` (``needs``, by default
    ``auth.guard.management_needs``). ``extend`` adds routes (and their state) before the
    API's own; ``inner`` wraps the guarded app inside the browser checks (what needs no
    token goes there)."""
    app = FastAPI(
        title="torchferry management",
        version=__version__,
        description="TorchServe's management API, Triton's model repository extension, "
        "traffic, shadow, version policies and rollouts.",
        default_response_class=JSONResponse,
    )
    app.state.management = Management(fleet, settings)
    if extend is not None:
        extend(app)
    # the literal routes (/models/{m}/traffic...) first: /models/{m}/{v} would take them
    for module in (traffic, rollouts, triton, torchserve):
        app.include_router(module.router)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    guarded: ASGIApp = app
    if keys is not None:
        guarded = RequireToken(app, keys, needs, error_for)
    if inner is not None:
        guarded = inner(guarded)
    return RefuseBrowsers(guarded, loopback=is_loopback(settings.management_host or LOOPBACK))
