"""A replica's side of management (``management.py``): join the manager, long-poll it for
commands, run each with the worker's own command table, post the reply; join again when the
manager has forgotten this replica (it restarted) or cannot be reached."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from torchferry.ray.management import MANAGER_DEPLOYMENT
from torchferry.serving.repository import ModelRepository
from torchferry.serving.worker import MODEL_COMMANDS, worker_status

log = logging.getLogger("torchferry.ray")

#: Between two attempts to reach a manager that did not answer.
RETRY_S = 1.0


def replica_status(repository: ModelRepository, index: int) -> dict[str, Any]:
    """A worker's ``status``, for the fleet; a replica drains through Serve, never here."""
    return worker_status(repository, index, repository.started, draining=False)


class ManagerLink:
    def __init__(self, repository: ModelRepository, manager_app: str, replica_id: str) -> None:
        self.repository = repository
        self.replica_id = replica_id
        self.handle = serve.get_deployment_handle(MANAGER_DEPLOYMENT, app_name=manager_app)
        self.index: int | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Forever (until cancelled): joined and polling, or trying to be."""
        while not self.repository.started:  # the app's lifespan starts the batchers
            await asyncio.sleep(0.05)
        warned = False
        while True:
            try:
                status = replica_status(self.repository, 0)
                self.index = await self.handle.join.remote(self.replica_id, status)
                log.info("joined the manager as replica %d", self.index)
                warned = False
                while (commands := await self.handle.poll.remote(self.index)) is not None:
                    for command in commands:  # each at once: a slow load blocks no poll
                        task = asyncio.create_task(self._run(self.index, command))
                        self._running.add(task)
                        task.add_done_callback(self._running.discard)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not warned:
                    log.warning("cannot reach the manager (retrying): %s", exc)
                    warned = True
                await asyncio.sleep(RETRY_S)

    async def _run(self, index: int, command: dict[str, Any]) -> None:
        op, args = str(command["op"]), dict(command.get("args") or {})
        error: str | None = None
        value: Any = None
        try:
            if op == "status":
                value = replica_status(self.repository, index)
            elif op in MODEL_COMMANDS:
                value = await MODEL_COMMANDS[op](self.repository, args)
            else:
                raise ValueError(f"unknown command {op!r}")
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        try:
            await self.handle.reply.remote(index, command["id"], error, value)
        except Exception as exc:
            log.warning("the manager did not take the reply to %s: %s", op, exc)

    async def leave(self) -> None:
        """Stop the commands still running (the replica is going), then tell the manager,
        whose fleet fails what it was waiting for as a dead worker's."""
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self.index is not None:
            try:
                await self.handle.leave.remote(self.index)
            except Exception as exc:
                log.debug("the manager did not hear that replica %d left: %s", self.index, exc)
