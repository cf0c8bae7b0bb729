"""``ConsoleFiles``: the console's page and its static files, served from the package.

``GET /console`` redirects to ``console/`` (a relative ``Location``, so the console also
works under a prefix such as Ray Serve's ``/manage``); ``GET /console/`` is ``index.html``;
``GET /console/static/NAME`` is the file ``static/NAME``. These hold no data, so they need
no token: the wrapper sits inside ``RefuseBrowsers`` (whose Host checks still apply) and
outside ``RequireToken``. Every other request goes on to the app it wraps.

A name with ``/``, ``..`` or a leading dot is refused with 404 before any file is looked
up: only the files of the one ``static`` folder can be reached. Each answer carries a
Content-Security-Policy that allows only the console's own scripts, styles and API.
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import PurePosixPath

from starlette.types import ASGIApp, Receive, Scope, Send

from torchferry.serving.auth.guard import route_path

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
ROOT = "/console"
STATIC = ROOT + "/static/"


def static_folder() -> Traversable:
    return resources.files("torchferry.serving.console") / "static"


def _allowed(name: str) -> bool:
    """A plain file name: not empty, not hidden, no folder, no way up."""
    return (
        bool(name)
        and not name.startswith(".")
        and not any(part in name for part in ("/", "\\", ".."))
    )


def _content_type(name: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")


class ConsoleFiles:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.folder = static_folder()
        #: The files read so far (package data: they do not change under a running server);
        #: only names that exist get here, so the cache is no larger than the folder.
        self._read: dict[str, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)  # under a prefix too (Ray Serve's /manage)
        if path == ROOT:
            await self._answer(scope, send, 307, b"", "text/plain", [(b"location", b"console/")])
        elif path == ROOT + "/":
            await self._file(scope, send, "index.html")
        elif path.startswith(STATIC):
            await self._file(scope, send, path[len(STATIC) :])
        else:
            await self.app(scope, receive, send)

    async def _file(self, scope: Scope, send: Send, name: str) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            message = f"{scope['method']} is not allowed on the console's files"
            await self._error(scope, send, 405, message, [(b"allow", b"GET, HEAD")])
            return
        body = self._read.get(name)
        if body is None:
            item = self.folder / name if _allowed(name) else None
            if item is None or not item.is_file():
                await self._error(scope, send, 404, f"no such console file: {name[:200]}")
                return
            body = self._read[name] = item.read_bytes()
        await self._answer(scope, send, 200, body, _content_type(name))

    async def _error(
        self,
        scope: Scope,
        send: Send,
        status: int,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        body = json.dumps({"error": message}).encode()
        await self._answer(scope, send, status, body, "application/json", headers)

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        status: int,
        body: bytes,
        content_type: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        all_headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            *SECURITY_HEADERS,
            *(headers or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
