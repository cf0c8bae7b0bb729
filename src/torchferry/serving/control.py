"""The control channel between the supervisor and one worker.

One Unix stream socket per worker (a ``socketpair``; the worker inherits its end as a file
descriptor), carrying one JSON object per line in both directions:

- a **command**, supervisor → worker: ``{"id": 7, "op": "drain", "args": {...}}``;
- its **reply**, worker → supervisor: ``{"id": 7, "ok": true, "result": ...}`` or
  ``{"id": 7, "ok": false, "error": "why"}``;
- an **event**, worker → supervisor, unasked: ``{"event": "ready", ...}``.

Every command names what the worker must converge on, so sending the same command twice is
harmless, and the supervisor can ask every worker at once and wait for all the replies (the
management API's "one call changes every worker"). The supervisor's first command to a new
worker is ``start`` with the settings it must serve: the worker has nothing else to go on.
Either side seeing the other end close means the other side is gone: a worker whose
supervisor dies drains and exits, so no worker outlives its supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

log = logging.getLogger("torchferry.control")

#: Longest line either side accepts (settings and status documents are small).
LINE_LIMIT = 16 * 1024 * 1024


class ControlError(Exception):
    """A command the other side refused or could not answer."""


class Channel:
    """One end of a control channel: send commands and await replies, send and receive
    events; ``serve`` runs the read loop and hands commands and events to the callbacks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.closed = asyncio.Event()

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer)

    async def request(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        """Send a command and wait for its result (``ControlError`` if refused or if the
        other side goes away first)."""
        if self.closed.is_set():
            raise ControlError(f"{op}: the channel is closed")
        number = next(self._ids)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = reply
        try:
            try:
                await self._send({"id": number, "op": op, "args": args})
            except (ConnectionError, OSError) as exc:  # gone before the read loop noticed
                self.closed.set()
                raise ControlError(f"{op}: the other side of the channel is gone") from exc
            return await asyncio.wait_for(reply, timeout)
        finally:
            self._waiting.pop(number, None)

    async def event(self, name: str, **fields: Any) -> None:
        await self._send({"event": name, **fields})

    async def serve(
        self,
        on_command: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None,
        on_event: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        """Read until the other side closes; each command runs as its own task, so a slow
        one (a drain, a model load) does not hold up the others."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while line := await self._reader.readline():
                message = orjson.loads(line)
                if "event" in message and on_event is not None:
                    name = message.pop("event")
                    await on_event(name, message)
                elif "op" in message and on_command is not None:
                    task = asyncio.create_task(self._answer(message, on_command))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif "id" in message:
                    self._settle(message)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.warning("control channel closed: %s", exc)
        finally:
            self.closed.set()
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(ControlError("the other side of the channel is gone"))

    def close(self) -> None:
        self._writer.close()

    async def _answer(
        self, message: dict[str, Any], on_command: Callable[[str, dict[str, Any]], Awaitable[Any]]
    ) -> None:
        number = message.get("id")
        try:
            result = await on_command(message["op"], message.get("args") or {})
            reply: dict[str, Any] = {"id": number, "ok": True, "result": result}
        except Exception as exc:
            reply = {"id": number, "ok": False, "error": str(exc) or type(exc).__name__}
        with contextlib.suppress(ConnectionError):  # the other side is gone: serve() sees it
            await self._send(reply)

    def _settle(self, message: dict[str, Any]) -> None:
        waiting = self._waiting.get(message["id"])
        if waiting is None or waiting.done():
            return
        if message.get("ok"):
            waiting.set_result(message.get("result"))
        else:
            waiting.set_exception(ControlError(message.get("error", "refused")))

    async def _send(self, message: dict[str, Any]) -> None:
        self._writer.write(orjson.dumps(message) + b"\n")
        await self._writer.drain()
