"""Keeps web browsers out of the management API.

The API changes what the server serves, and on loopback it has no token yet. A page in a
browser on the same machine could still reach it: a cross-site ``POST`` is a "simple
request" the browser sends without asking, and DNS rebinding makes an attacker's name
resolve to 127.0.0.1. So, in front of every route:

- a request with an ``Origin`` other than the listener's own is refused (browsers send
  ``Origin`` on every cross-site write; curl, SDKs and CI jobs send none);
- on a loopback listener, a ``Host`` that is not a loopback name is refused (a rebound
  name arrives with the attacker's host name).

Refusals are 403 in the shape of the API the path belongs to (``answers.error_for``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from torchferry.errors import SourceRefused
from torchferry.serving.management.answers import error_for

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class Forbidden(SourceRefused):
    """403 for a request a browser page may have made."""


class RefuseBrowsers:
    def __init__(self, app: ASGIApp, loopback: bool) -> None:
        self.app = app
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            reason = self.refusal(scope)
            if reason is not None:
                await error_for(scope, Forbidden(reason))(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        headers = Request(scope).headers
        host = headers.get("host", "")
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != host:
            return (
                f"requests from web pages of another origin ({origin}) are refused: the "
                "management API and its console answer only their own pages and clients "
                "that send no cross-site Origin"
            )
        if self.loopback and _hostname(host) not in LOOPBACK_NAMES:
            return (
                f"the management API listens on loopback and answers only loopback names, "
                f"not {host!r}"
            )
        return None


def _hostname(host: str) -> str:
    """``Host`` without its port (``[::1]:8081`` -> ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
