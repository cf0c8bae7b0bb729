"""``torchferry serve``: check what is asked, then run the supervisor until it has drained."""

from __future__ import annotations

import asyncio
import logging

from torchferry.serving.settings import ServerSettings
from torchferry.serving.supervisor import Supervisor


def serve(settings: ServerSettings) -> int:
    """Serve until SIGINT/SIGTERM, then drain every worker; the exit code of the server."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    settings.check_sources()
    return asyncio.run(Supervisor(settings).run())
