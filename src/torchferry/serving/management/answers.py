"""How the management routes answer: JSON bodies, and every error in the body shape of the
API it belongs to (TorchServe's ``{"code", "type", "message"}``, Triton's ``{"error"}``),
with the status ``torchferry.errors`` gives it. Validation failures are 400s that say what
was wrong (never FastAPI's 422), and nothing unexpected leaves as a bare traceback."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Scope

from torchferry.codecs.jsonio import dumps, loads
from torchferry.errors import (
    InferenceTimeout,
    InvalidInput,
    TorchferryError,
    error_headers,
    internal_error,
)
from torchferry.serving.auth.guard import route_path
from torchferry.serving.torchserve_rules import VERSION, VersionNotFound, error_type

log = logging.getLogger("torchferry.management")

M = TypeVar("M", bound=BaseModel)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def parse_version(name: str, text: str) -> int:
    """A version from a URL path (``3``, ``3.0``); anything else names no version."""
    match = VERSION.fullmatch(text.strip())
    if match is None or int(match.group(1)) < 1:
        raise VersionNotFound(f"Model version: {text} does not exist for model: {name}")
    return int(match.group(1))


def validation_message(exc: ValidationError | RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def as_error(exc: BaseException, where: str) -> TorchferryError:
    """Whatever a call raised, as a TorchferryError; the unexpected is logged with its
    traceback and answered 500 with its message (never the traceback)."""
    if isinstance(exc, TorchferryError):
        if exc.status_code >= 500:
            log.warning("%s -> %d: %s", where, exc.status_code, exc.message)
        return exc
    if isinstance(exc, ValidationError | RequestValidationError):
        return InvalidInput(validation_message(exc))
    if isinstance(exc, TimeoutError):
        log.warning("%s: the workers did not answer in time", where)
        return InferenceTimeout(f"{where}: the workers did not answer in time; try again")
    log.error("unexpected error in %s", where, exc_info=exc)
    return internal_error(exc)


async def read_json(request: Request, required: bool = False) -> Any:
    """The request's JSON body; None when there is none and none is ``required`` (curl
    sends management calls with their arguments in the query and no body)."""
    body = await request.body()
    if not body.strip():
        if required:
            raise InvalidInput("the request body is empty; expected a JSON object")
        return None
    return loads(body)


def json_body(example: Any, model: type[BaseModel] | None = None) -> dict[str, Any]:
    """The OpenAPI description of a JSON body these routes read themselves (so that their
    errors are 400s in the API's shape rather than FastAPI's 422s)."""
    content: dict[str, Any] = {"example": example}
    if model is not None:
        content["schema"] = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


def parse_body(model: type[M], document: Any) -> M:
    if not isinstance(document, dict):
        raise InvalidInput(f"expected a JSON object, got {type(document).__name__}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None


# -- error bodies -------------------------------------------------------------------------


def _torchserve_type(error: TorchferryError) -> str:
    named = getattr(error, "torchserve_type", None)  # routing's own (404, 405)
    return named if isinstance(named, str) else error_type(error)


def _respond(error: TorchferryError, body: Any) -> Response:
    return JSONResponse(body, status_code=error.status_code, headers=error_headers(error))


def torchserve_error(error: TorchferryError) -> Response:
    body = {"code": error.status_code, "type": _torchserve_type(error), "message": error.message}
    return _respond(error, body)


def triton_error(error: TorchferryError) -> Response:
    return _respond(error, {"error": error.message})


#: Paths whose errors are ``{"error": message}`` (Triton's, and the console's); every other
#: path on the management listener answers in TorchServe's shape.
PLAIN_ERROR_PATHS = ("/v2/", "/console/")


def error_for(scope: Scope, error: TorchferryError) -> Response:
    """``error`` in the shape of the API its path belongs to, judged on the path the app
    routes on (without a prefix such as Ray Serve's ``/manage``): the one rule every
    refusal on the management listener follows (browser checks, tokens, routing)."""
    plain = route_path(scope).startswith(PLAIN_ERROR_PATHS)
    return triton_error(error) if plain else torchserve_error(error)


class _AnsweringRoute(APIRoute):
    """Catches whatever the endpoint (or FastAPI's parameter parsing) raised and answers it
    in this API's error shape."""

    render_error: ClassVar[Callable[[TorchferryError], Response]]

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        render = type(self).render_error

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return render(as_error(exc, f"{request.method} {request.url.path}"))

        return route


class TorchServeRoute(_AnsweringRoute):
    render_error = torchserve_error


class TritonRoute(_AnsweringRoute):
    render_error = triton_error
