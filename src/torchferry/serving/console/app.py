"""``management_with_console(fleet, settings, keys, server)``: the management listener's app,
the management API with the web console added: its API routes (``api``), its files
(``files``, which need no token), the scope rules of its paths (``console_needs``) and the
headers every ``/console/`` answer carries (``ConsoleHeaders``). The supervisor's listener
and Ray Serve's manager both serve this."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from torchferry.serving.auth.guard import management_needs, route_path
from torchferry.serving.auth.keyring import KeyRing
from torchferry.serving.auth.scopes import Scopes
from torchferry.serving.console import api as console_api
from torchferry.serving.console.files import ConsoleFiles
from torchferry.serving.console.server_view import ServerView
from torchferry.serving.management.api import FleetAPI
from torchferry.serving.management.app import management_app
from torchferry.serving.settings import ServerSettings

CONSOLE_PREFIX = "/console/"
#: On every console answer that does not set its own (the files keep ``no-cache``).
CONSOLE_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"))


def console_needs(scopes: Scopes, method: str, path: str) -> str | None:
    """The management API's rules, plus the console's own: ``whoami`` for any valid token,
    try-it for a token with some infer scope (the inference listener then checks the model)."""
    if method == "GET" and path == console_api.WHOAMI_PATH:
        return None
    if method == "POST" and path.startswith((console_api.TRY_PREFIX, console_api.TRY_GRPC_PREFIX)):
        return None if scopes.may_infer_any() else "an infer scope (infer or infer:MODEL)"
    return management_needs(scopes, method, path)


class ConsoleHeaders:
    """Adds ``CONSOLE_HEADERS`` to every answer under ``/console/`` (refusals included),
    where the answer has not set that header itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not route_path(scope).startswith(CONSOLE_PREFIX):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in CONSOLE_HEADERS if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def management_with_console(
    fleet: FleetAPI,
    settings: ServerSettings,
    keys: KeyRing | None = None,
    server: ServerView | None = None,
) -> ConsoleHeaders:
    """The management API with the console under ``/console``; what the console shows of
    the server comes from ``server`` (the supervisor; None under Ray Serve)."""

    def extend(app: FastAPI) -> None:
        app.state.console = console_api.console_state(server)
        app.include_router(console_api.router)

    # the console's files hold no data: no token, but the browser checks still apply
    return ConsoleHeaders(
        management_app(
            fleet, settings, keys, extend=extend, inner=ConsoleFiles, needs=console_needs
        )
    )
