"""``torchferry serve``: check what is asked, then run the supervisor until it has drained."""

from __future__ import annotations

import asyncio

from torchferry.serving.logs import configure_logging
from torchferry.serving.settings import ServerSettings
from torchferry.serving.supervisor import Supervisor


def serve(settings: ServerSettings) -> int:
    """Serve until SIGINT/SIGTERM, then drain every worker; the exit code of the server."""
    configure_logging(settings.log_level, settings.log_format)
    settings.check_sources()
    settings.check_tls()
    return asyncio.run(Supervisor(settings).run())
