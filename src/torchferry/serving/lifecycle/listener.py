"""The management API's listener: loopback unless ``--management-host`` says otherwise
(then a warning: whoever reaches it can change the models)."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from torchferry.serving.auth.keyring import KeyRing
from torchferry.serving.lifecycle.fleet import Fleet
from torchferry.serving.listen import LOOPBACK, is_loopback, listen_exclusive
from torchferry.serving.settings import ServerSettings

if TYPE_CHECKING:
    from torchferry.serving.console.server_view import ServerView

log = logging.getLogger("torchferry.supervisor")


def management_listener(
    fleet: Fleet,
    settings: ServerSettings,
    keys: KeyRing | None = None,
    server: ServerView | None = None,
) -> tuple[Any, socket.socket] | None:
    """The management app and its bound socket (bound before the workers start, so that a
    taken port fails the start at once), or None when the API is off. ``server`` is what
    the console shows of the supervisor."""
    if settings.management_port is None:
        return None
    # imported here: a server without the API never builds its routes
    from torchferry.serving.console.app import management_with_console

    host = settings.management_host or LOOPBACK
    if not is_loopback(host):
        log.warning(
            "the management API listens on %s: anyone who reaches it can change the models",
            host,
            extra={"event": "management_exposed", "host": host},
        )
    sock = listen_exclusive(host, settings.management_port, "management", "--management-port")
    return management_with_console(fleet, settings, keys, server), sock
