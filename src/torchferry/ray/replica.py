"""The deployment: each replica loads the store and serves the same ASGI app a worker
serves (every HTTP protocol), behind Serve's HTTP proxy.

The app is built in ``__serve_build_asgi_app__``, which Serve calls in the replica after
the constructor and before it runs the app's lifespan (the batchers start there); loading
the models in the constructor instead would load them in the driver too."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import Any

from ray import serve
from ray.serve import Deployment
from starlette.types import ASGIApp

from torchferry.errors import store_unreadable
from torchferry.ray.config import APP_NAME
from torchferry.ray.grpc_proxy import RPCS, rpc_method
from torchferry.ray.link import ManagerLink
from torchferry.serving.app import build_app
from torchferry.serving.lifecycle.restore import initial_state
from torchferry.serving.lifecycle.state import DesiredState
from torchferry.serving.loading import load_repository
from torchferry.serving.logs import configure_logging
from torchferry.serving.protocols.grpc import InferenceServicer
from torchferry.serving.settings import ServerSettings

log = logging.getLogger("torchferry.ray")


def start_state(settings: ServerSettings) -> DesiredState | None:
    """What a replica starts from: the store's saved state (what the management API last
    set) when there is one, else each model's version policy over the store; None for
    ``model_dir`` mode (the folder as it is)."""
    if settings.store is None:
        return None
    return initial_state(settings, settings.store)


class TorchferryReplica:
    """One replica. ``settings`` is ``ServerSettings`` as JSON; Serve restarts the replicas
    (rolling) when it or ``revision`` changes, which is all ``revision`` is for."""

    def __init__(
        self, settings: dict[str, Any], revision: str | None = None, manager: str | None = None
    ) -> None:
        self.settings = ServerSettings.model_validate(settings)
        #: The manager's application name (management on), else None.
        self.manager = manager
        self.link: ManagerLink | None = None
        self._linking: asyncio.Task[None] | None = None

    async def __serve_build_asgi_app__(self) -> ASGIApp:
        settings = self.settings
        configure_logging(settings.log_level, settings.log_format)
        try:
            state = start_state(settings)
            # loading builds and warms up every version: off the replica's event loop
            repository = await asyncio.to_thread(load_repository, settings, state)
        except PermissionError as exc:  # Serve reports the last line: the supervisor's
            raise store_unreadable(exc) from None
        app = build_app(settings, repository)
        # the methods Serve's gRPC proxy calls (grpc_proxy.rpc_method) answer through it
        self.grpc_servicer = InferenceServicer(app.state.plane)
        # as in a worker: torch's long-lived objects out of the collector's sight
        gc.collect()
        gc.freeze()
        if self.manager is not None:
            replica_id = serve.get_replica_context().replica_id.unique_id
            self.link = ManagerLink(repository, self.manager, replica_id)
            self._linking = asyncio.get_running_loop().create_task(self.link.run())
        log.info(
            "replica serving %s",
            ", ".join(f"{m.name}:{m.version}" for m in repository.all()),
            extra={"event": "replica_serving"},
        )
        return app

    async def __del__(self) -> None:
        """After the app's lifespan has ended (its queues answered): out of the fleet now,
        rather than when the manager notices the polls stopped."""
        if self._linking is not None:
            self._linking.cancel()
            with contextlib.suppress(BaseException):
                await self._linking
        if self.link is not None:
            await self.link.leave()


for _rpc in RPCS:  # KServe V2 gRPC through Serve's gRPC proxy
    setattr(TorchferryReplica, _rpc, rpc_method(_rpc))

#: The deployment (Serve's ingress wrapper around the class: the app's lifespan runs in each
#: replica).
REPLICAS: Deployment = serve.deployment(name=APP_NAME)(serve.ingress()(TorchferryReplica))
