"""``RequireToken``: the supervisor's listeners (``/metrics``, the management API) behind a
bearer token, refused before any route runs: 401 (with ``WWW-Authenticate``) without a valid
token, 403 when its scopes do not allow the call, 429 over its rate. A request let through
carries its caller in the ASGI scope (:func:`principal_of`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from torchferry.errors import PermissionDenied, TorchferryError, error_headers
from torchferry.serving.auth.keyfile import KeyFileError
from torchferry.serving.auth.keyring import KeyRing, Principal, authorization_of
from torchferry.serving.auth.scopes import Scopes

#: None when scopes allow a request (given its method and path), else the scope it needs.
Needs = Callable[[Scopes, str, str], str | None]
#: An error as the listener's API writes its errors.
Render = Callable[[Scope, TorchferryError], Response]


#: The ASGI scope key under which ``RequireToken`` leaves the caller's ``Principal``.
PRINCIPAL_KEY = "torchferry.principal"
#: The console's calls any valid token may make: who am I, and the try-it forwarder (the
#: inference listener then checks the ``infer`` scope itself).
_WHOAMI = "/console/api/whoami"
_TRY = ("/console/api/try/", "/console/api/try-grpc/")


def principal_of(scope: Scope) -> Principal | None:
    """The caller ``RequireToken`` let through; None where no token is checked."""
    principal = scope.get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else None


class AuthSetupError(TorchferryError):
    """``--auth`` cannot start: no key file, or one that is not valid."""


def open_key_ring(path: Path, share: int = 1) -> KeyRing:
    """The key ring of ``path``, or an :class:`AuthSetupError` that says how to make one."""
    try:
        return KeyRing(path, share)
    except KeyFileError as exc:
        if path.exists():
            raise AuthSetupError(f"--auth: {exc}") from None
        raise AuthSetupError(
            f"--auth needs a key file, and {path} does not exist: create a token with "
            f"'torchferry token create --key-file {path} --scope infer' (or --store STORE)"
        ) from None


def plain_error(scope: Scope, error: TorchferryError) -> Response:
    """``{"error": message}`` with the error's status and headers."""
    return Response(
        json.dumps({"error": error.message}),
        status_code=error.status_code,
        headers=error_headers(error),
        media_type="application/json",
    )


def metrics_needs(scopes: Scopes, method: str, path: str) -> str | None:
    return None if scopes.metrics else "the metrics scope"


def management_needs(scopes: Scopes, method: str, path: str) -> str | None:
    """Reading needs ``manage`` or ``metadata``; anything that changes state, ``manage``;
    the console's ``whoami`` and try-it forwarder, any valid token."""
    if (method == "GET" and path == _WHOAMI) or (method == "POST" and path.startswith(_TRY)):
        return None
    if method in ("GET", "HEAD"):
        return None if scopes.manage or scopes.metadata else "the manage or metadata scope"
    return None if scopes.manage else "the manage scope"


def route_path(scope: Scope) -> str:
    """The path the app routes on: without the prefix it is mounted under (Ray Serve's
    route prefix arrives as ``root_path``, and ``path`` starts with it)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _what(method: str, path: str) -> str:
    return f"{method} {path}" if len(path) <= 200 else f"{method} {path[:200]}..."


class RequireToken:
    """ASGI wrapper: a request passes only with a token that has the scope it ``needs``."""

    def __init__(
        self, app: ASGIApp, keys: KeyRing, needs: Needs, render: Render = plain_error
    ) -> None:
        self.app = app
        self.keys = keys
        self.needs = needs
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            grant = self.keys.authenticate(authorization_of(scope["headers"]))
            method, path = scope["method"], scope.get("path", "")
            if isinstance(grant, Principal):
                missing = self.needs(grant.scopes, method, route_path(scope))
                if missing is not None:
                    grant = PermissionDenied(
                        f"token {grant.id} may not call {_what(method, path)}: that needs {missing}"
                    )
            if not isinstance(grant, Principal):
                await self.render(scope, grant)(scope, receive, send)
                return
            scope = {**scope, PRINCIPAL_KEY: grant}
        await self.app(scope, receive, send)
