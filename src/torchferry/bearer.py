"""The bearer token torchferry's clients send to a server run with ``--auth``: given, or
read from ``$TORCHFERRY_TOKEN``. Standard library only, so that the commands that manage a
server (``deploy``, ``rollout``) need no numpy."""

from __future__ import annotations

import os

#: Where the client (and the ``torchferry`` commands that call a server) find a token when
#: none is given.
TOKEN_ENV = "TORCHFERRY_TOKEN"


def auth_headers(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``token``, else for ``$TORCHFERRY_TOKEN``; none
    when neither is set."""
    token = token or os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token.strip()}"} if token else {}
