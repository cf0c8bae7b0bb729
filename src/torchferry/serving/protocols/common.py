"""What the protocols share: the plug-in interface, the data plane behind an HTTP request,
JSON responses, the one way an error becomes an HTTP answer, and the one rule for a
request's traffic key."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response

from torchferry.codecs.jsonio import dumps
from torchferry.errors import (
    InvalidInput,
    Overloaded,
    TorchferryError,
    error_headers,
    internal_error,
)
from torchferry.redact import exception_types, kind_of, traceback_without_messages
from torchferry.serving.dataplane import DataPlane
from torchferry.serving.settings import ServerSettings

log = logging.getLogger("torchferry.protocols")


class Protocol:
    """A wire protocol: HTTP routes on the shared app, and/or a listener of its own.

    One instance is made per app, over its data plane; ``start`` runs once the models are
    serving, ``stop`` before they drain. A new protocol is a module with a subclass of this
    plus one line in ``torchferry.serving.protocols.PROTOCOLS``.
    """

    name: ClassVar[str]
    #: The routes this protocol adds to the HTTP app (None: no HTTP routes).
    router: ClassVar[APIRouter | None] = None

    def __init__(self, plane: DataPlane, settings: ServerSettings) -> None:
        self.plane = plane
        self.settings = settings

    async def start(self) -> None:
        """Open this protocol's own listener, if it has one."""

    async def stop(self) -> None:
        """Finish in-flight calls and close the listener."""


class BytesResponse(Response):
    """A 200 response of ready bytes. Its header list is written here, in the order
    Starlette's ``Response`` writes it (the given headers, ``content-length``,
    ``content-type``): Starlette's general-purpose header building costs more than the rest
    of a small answer's response object."""

    def __init__(
        self, body: bytes, content_type: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            *headers,
            (b"content-length", b"%d" % len(body)),
            (b"content-type", content_type),
        ]


class JSONResponse(StarletteJSONResponse):
    """orjson's JSON, with a lean path for the usual answer. A subclass of Starlette's
    ``JSONResponse`` so that FastAPI documents a route's ``response_model`` as its answer's
    schema (it documents any other response class as a string)."""

    media_type = "application/json"

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        if headers is not None or media_type is not None or background is not None:
            super().__init__(content, status_code, headers, media_type, background)
            return
        # the usual answer: the same headers Starlette writes, without its general path
        self.status_code = status_code
        self.background = None
        self.body = dumps(content)
        self.raw_headers = (
            []
            if status_code < 200 or status_code in (204, 304)
            else [(b"content-length", b"%d" % len(self.body))]
        )
        self.raw_headers.append((b"content-type", b"application/json"))

    def render(self, content: Any) -> bytes:
        return dumps(content)


#: Where a client puts its sticky routing key: an HTTP header (gRPC: metadata of the same
#: name), or a request parameter where the protocol has parameters (V2 JSON, binary, gRPC).
TRAFFIC_KEY_HEADER = "x-traffic-key"
TRAFFIC_KEY_PARAMETER = "traffic_key"


def traffic_key(header: str | None, parameter: object = None) -> str | None:
    """The key a request is routed by when its model's traffic is weighted: the request's
    ``traffic_key`` parameter if it has one, else the header; empty means none."""
    if parameter is not None:
        if isinstance(parameter, bool) or not isinstance(parameter, str | int):
            raise InvalidInput(
                f"parameters.{TRAFFIC_KEY_PARAMETER} must be a string, received "
                f"{kind_of(parameter)}"
            )
        return str(parameter) or None
    return header or None


def http_traffic_key(request: Request) -> str | None:
    """An HTTP request's traffic key, from its header (V2 also reads its body's parameter)."""
    return traffic_key(request.headers.get(TRAFFIC_KEY_HEADER))


def plane_of(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


def as_error(exc: BaseException, where: str) -> TorchferryError:
    """Whatever a request raised, as the error every protocol answers with; server faults
    are logged (``where`` names the route or call), an unexpected one with its traceback."""
    if isinstance(exc, TorchferryError):
        # a 503 Overloaded (queue full, shed) is the server working as meant, and comes by
        # the thousand per second under overload: a log line each would cost more than the
        # answer (metrics count them; the batcher logs sheds at DEBUG)
        if exc.status_code >= 500 and not isinstance(exc, Overloaded):
            log.warning("%s -> %d %s: %s", where, exc.status_code, exc.grpc_code, exc.log_message)
        return exc
    if isinstance(exc, RequestValidationError):
        # pydantic's "msg" states the rule; its "input" (the value) is never shown
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return InvalidInput("; ".join(parts) or "invalid request")
    if isinstance(exc, ClientDisconnect):  # it went away, or was cut off (--body-timeout)
        return InvalidInput("the connection closed before the request body arrived")
    # the messages of an unexpected exception may quote the request: types and frames only
    log.error(
        "unexpected error in %s: %s\n%s",
        where,
        exception_types(exc),
        traceback_without_messages(exc),
    )
    return internal_error(exc, quote=False)


def error_response(error: TorchferryError, body: Any = None) -> Response:
    """The HTTP answer to ``error``: its status, ``Retry-After`` when it has one, and
    ``WWW-Authenticate`` on a 401, and ``{"error": message}`` unless the protocol gives its own ``body`` shape."""
    return JSONResponse(
        {"error": error.message} if body is None else body,
        status_code=error.status_code,
        headers=error_headers(error),
    )
