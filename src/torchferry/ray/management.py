"""Management on Ray: one manager replica holds the fleet (``lifecycle.fleet.Fleet``, the
supervisor's own) and serves the management API; the serving replicas are its workers.

The fleet talks to workers through two calls (``lifecycle.workers.Workers``); here they go
over Serve handles the other way round, since the manager cannot call a particular replica:
each replica joins (``join``), then long-polls the manager for the commands addressed to it
(``poll``) and posts each reply (``reply``). A replica that stops polling (it died, or was
stopped) is gone after ``GONE_AFTER_S``: what it was asked fails with ``WorkerGone``, as a
dead worker's commands do.

A replica starts from the store's state file, which the fleet writes after every change;
one that joins while a change is made catches up when the change ends (``admit``), under
the fleet's lock, with the same commands."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve import Deployment
from starlette.types import ASGIApp

from torchferry.errors import TorchferryError, store_unreadable
from torchferry.serving.auth.guard import open_key_ring
from torchferry.serving.console.app import management_with_console
from torchferry.serving.lifecycle.fleet import Fleet
from torchferry.serving.lifecycle.poll import StorePoller
from torchferry.serving.lifecycle.state import Routes
from torchferry.serving.lifecycle.steps import LOAD_TIMEOUT_S, QUICK_TIMEOUT_S
from torchferry.serving.lifecycle.workers import WorkerGone
from torchferry.serving.logs import configure_logging
from torchferry.serving.settings import ServerSettings

log = logging.getLogger("torchferry.ray")

#: The longest a poll waits for a command before it returns empty (and is sent again).
POLL_S = 2.0
#: A replica that has not polled for this long is gone.
GONE_AFTER_S = 3 * POLL_S
MANAGER_DEPLOYMENT = "manager"


class ReplicaRefused(Exception):
    """A replica's refusal of a command, with its own message."""


@dataclass
class Link:
    index: int
    replica_id: str
    commands: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    replies: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    polled_at: float = field(default_factory=time.monotonic)
    #: Caught up with the desired state: changes include it from now on.
    admitted: bool = False


class ReplicaLinks:
    """The replicas as the fleet's workers (``serving`` and ``ask``)."""

    def __init__(self) -> None:
        self.links: dict[int, Link] = {}
        self._numbers = itertools.count(1)
        self._ids = itertools.count(1)

    def serving(self) -> list[int]:
        return sorted(index for index, link in self.links.items() if link.admitted)

    async def ask(self, index: int, op: str, timeout: float, **args: Any) -> Any:
        link = self.links.get(index)
        if link is None:
            raise WorkerGone(f"replica {index} is gone")
        number = next(self._ids)
        reply = asyncio.get_running_loop().create_future()
        link.replies[number] = reply
        link.commands.put_nowait({"id": number, "op": op, "args": args})
        try:
            return await asyncio.wait_for(reply, timeout)
        finally:
            link.replies.pop(number, None)

    def join(self, replica_id: str) -> Link:
        for link in list(self.links.values()):  # a replica joining again (the manager
            if link.replica_id == replica_id:  # forgot it) is a new worker
                self.drop(link.index, "joined again")
        link = Link(next(self._numbers), replica_id)
        self.links[link.index] = link
        return link

    async def poll(self, index: int) -> list[dict[str, Any]] | None:
        """The commands for replica ``index``, waiting up to ``POLL_S`` for the first;
        None when the replica is not known (it must join again)."""
        link = self.links.get(index)
        if link is None:
            return None
        link.polled_at = time.monotonic()
        try:
            first = await asyncio.wait_for(link.commands.get(), POLL_S)
        except TimeoutError:
            return []
        batch = [first]
        while not link.commands.empty():
            batch.append(link.commands.get_nowait())
        return batch

    def reply(self, index: int, number: int, error: str | None, value: Any) -> None:
        link = self.links.get(index)
        waiting = link.replies.get(number) if link is not None else None
        if waiting is None or waiting.done():
            return
        if error is not None:
            waiting.set_exception(ReplicaRefused(error))
        else:
            waiting.set_result(value)

    def drop(self, index: int, why: str) -> None:
        link = self.links.pop(index, None)
        if link is None:
            return
        log.info("replica %d (%s) left: %s", index, link.replica_id, why)
        for waiting in link.replies.values():
            if not waiting.done():
                waiting.set_exception(WorkerGone(f"replica {index} {why}"))

    async def sweep(self) -> None:
        """Forever: drop the replicas that stopped polling."""
        while True:
            await asyncio.sleep(POLL_S / 2)
            now = time.monotonic()
            for index, link in list(self.links.items()):
                if now - link.polled_at > GONE_AFTER_S:
                    self.drop(index, f"stopped polling for {now - link.polled_at:.0f} s")


async def admit(fleet: Fleet, links: ReplicaLinks, link: Link, status: dict[str, Any]) -> None:
    """Bring a replica that joined up to the desired state, then count it as serving.
    Under the fleet's lock: a change in progress ends first, and none starts meanwhile."""
    async with fleet.lock:
        await fleet.joined(link.index, status)
        has = {(str(r["name"]), int(r["version"])) for r in status.get("models") or []}
        state = fleet.state.models
        wants = {(name, version) for name, model in state.items() for version in model.versions}
        for name, version in sorted(wants - has):
            if fleet.store is None:  # model_dir mode: nothing to load a version from
                raise TorchferryError(
                    f"{name} version {version} cannot be staged in replica {link.index}: "
                    "the server has no store to load it from"
                )
            path = str(fleet.store / name / str(version))
            await links.ask(
                link.index, "load", LOAD_TIMEOUT_S, name=name, version=version, path=path
            )
            await links.ask(link.index, "activate", QUICK_TIMEOUT_S, name=name, version=version)
        for name, version in sorted(has - wants):
            await links.ask(link.index, "unload", LOAD_TIMEOUT_S, name=name, version=version)
        routes = status.get("routes") or {}
        for name, model in state.items():
            if name in routes and Routes.model_validate(routes[name]) != model.routes:
                await links.ask(
                    link.index,
                    "routes",
                    QUICK_TIMEOUT_S,
                    name=name,
                    routes=model.routes.model_dump(mode="json"),
                )
        link.admitted = True
    log.info("replica %d (%s) serves", link.index, link.replica_id)


class TorchferryManager:
    """The manager: the fleet, the management API over it, and the replicas' links."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServerSettings.model_validate(settings)
        self.links = ReplicaLinks()
        self.fleet = Fleet(self.links, self.settings)
        self._tasks: set[asyncio.Task[None]] = set()

    async def __serve_build_asgi_app__(self) -> ASGIApp:
        settings = self.settings
        configure_logging(settings.log_level, settings.log_format)
        try:
            self.fleet.restore()
        except PermissionError as exc:  # the supervisor's line, as Serve's reason
            raise store_unreadable(exc) from None
        self._spawn(self.links.sweep())
        self.fleet.rollouts.resume()
        if settings.poll_store_s is not None and self.fleet.store is not None:
            self._spawn(StorePoller(self.fleet, settings.poll_store_s).run())
        keys = open_key_ring(settings.key_path()) if settings.auth else None
        return management_with_console(self.fleet, settings, keys)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def join(self, replica_id: str, status: dict[str, Any]) -> int:
        link = self.links.join(replica_id)

        async def admitting() -> None:
            try:
                await admit(self.fleet, self.links, link, status)
            except Exception as exc:  # it cannot serve what the others serve: not counted
                log.error("replica %d could not catch up: %s", link.index, exc)
                self.links.drop(link.index, f"could not catch up: {exc}")

        self._spawn(admitting())
        return link.index

    async def poll(self, index: int) -> list[dict[str, Any]] | None:
        return await self.links.poll(index)

    async def reply(self, index: int, number: int, error: str | None, value: Any) -> None:
        self.links.reply(index, number, error, value)

    async def leave(self, index: int) -> None:
        self.links.drop(index, "stopped")

    async def __del__(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.fleet.rollouts.close()


#: One replica; many calls at once (every replica's poll, and the management calls).
MANAGER: Deployment = serve.deployment(
    name=MANAGER_DEPLOYMENT, num_replicas=1, max_ongoing_requests=1000
)(serve.ingress()(TorchferryManager))
