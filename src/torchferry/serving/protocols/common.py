"""What the protocols share: the plug-in interface, the data plane behind an HTTP request,
JSON responses, and the one way an error becomes an HTTP answer."""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import APIRouter, Request
from starlette.responses import Response

from torchferry.codecs.jsonio import dumps
from torchferry.errors import TorchferryError, retry_after_header
from torchferry.serving.dataplane import DataPlane
from torchferry.serving.settings import ServerSettings


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


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def plane_of(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


def error_response(error: TorchferryError, body: Any = None) -> Response:
    """The HTTP answer to ``error``: its status, ``Retry-After`` when it has one, and
    ``{"error": message}`` unless the protocol gives its own ``body`` shape."""
    retry_after = retry_after_header(error)
    return JSONResponse(
        {"error": error.message} if body is None else body,
        status_code=error.status_code,
        headers={"Retry-After": retry_after} if retry_after else None,
    )
