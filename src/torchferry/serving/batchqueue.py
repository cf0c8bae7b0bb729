"""A batcher's queue: requests by priority level, then arrival, with rows counted.

Lower levels run first (V2's ``priority``: 1 before 100); 0 means the default level
``DEFAULT_PRIORITY``. Within a level, requests keep their arrival order. A batch is taken
from the head: the first request, then the following ones (across levels, in order) that
share its shape key, as long as they fit in ``max_batch_size`` rows; the first that does
not fit ends the batch, so that a request is never overtaken for long by smaller ones of
its own level. Requests of other shapes stay where they were. A steady stream of
higher-priority traffic can starve lower levels, as in Triton's priority queue.

A request whose caller gave up leaves the counts at once (``remove``) and the deques when a
scan meets it (its future is done).
"""

from __future__ import annotations

import asyncio
from bisect import insort
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchferry.serving.observe import RequestRecord

#: The level of a request that gives no priority (or 0): 1..99 run before it, 101+ after.
DEFAULT_PRIORITY = 100
#: A step to run on a request's own outputs, and the executor to run it on.
Finish = tuple[Executor, Callable[[dict[str, np.ndarray]], Any]]


@dataclass(eq=False)
class QueuedRequest:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple[object, ...]
    future: asyncio.Future[Any]
    arrived: float
    finish: Finish | None = None
    #: Whether its rows count in the queue (until taken into a batch, or abandoned).
    queued: bool = True
    #: The record of the request that submitted it, to write queue and compute times into.
    record: RequestRecord | None = None
    level: int = DEFAULT_PRIORITY
    #: ``time.perf_counter()`` by which it must be answered (its own timeout), if any.
    deadline: float | None = None


def priority_level(priority: int) -> int:
    """The queue level of a request's priority (0: the default level)."""
    return priority or DEFAULT_PRIORITY


def shape_key(inputs: dict[str, np.ndarray]) -> tuple[object, ...]:
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())


class BatchQueue:
    """Queued requests by level; ``rows`` and ``requests`` count only live ones."""

    def __init__(self) -> None:
        self._levels: dict[int, deque[QueuedRequest]] = {}
        self._order: list[int] = []
        self._rows_at: dict[int, int] = {}
        self.rows = 0
        self.requests = 0

    def __bool__(self) -> bool:
        return bool(self._order)

    def __iter__(self) -> Iterator[QueuedRequest]:
        for level in self._order:
            yield from self._levels[level]

    def push(self, request: QueuedRequest) -> None:
        level = request.level
        queue = self._levels.get(level)
        if queue is None:
            queue = self._levels[level] = deque()
            insort(self._order, level)
        queue.append(request)
        self.rows += request.rows
        self.requests += 1
        self._rows_at[level] = self._rows_at.get(level, 0) + request.rows

    def remove(self, request: QueuedRequest) -> None:
        """Stop counting ``request`` (taken into a batch, or abandoned)."""
        if request.queued:
            request.queued = False
            self.rows -= request.rows
            self.requests -= 1
            self._rows_at[request.level] -= request.rows

    def rows_ahead(self, level: int) -> int:
        """Rows that run before a new request of ``level`` (its level and every lower one)."""
        return sum(rows for at, rows in self._rows_at.items() if at <= level)

    def drop_done(self) -> None:
        """Forget the requests at the head of each level whose callers gave up."""
        for level in list(self._order):
            queue = self._levels[level]
            while queue and queue[0].future.done():
                self.remove(queue.popleft())
            if not queue:
                self._forget(level)

    def oldest_arrival(self) -> float | None:
        """When the longest-waiting live request at the head of a level arrived."""
        heads = [self._levels[level][0].arrived for level in self._order]
        return min(heads) if heads else None

    def head(self) -> QueuedRequest | None:
        return self._levels[self._order[0]][0] if self._order else None

    def take(self, max_batch_size: int) -> list[QueuedRequest]:
        """The next batch (see the module's docstring); may be empty if every request seen
        was abandoned."""
        batch: list[QueuedRequest] = []
        rows = 0
        key: tuple[object, ...] | None = None
        full = False
        for level in list(self._order):
            queue = self._levels[level]
            skipped: list[QueuedRequest] = []
            while queue and not full:
                request = queue.popleft()
                if request.future.done():
                    self.remove(request)
                    continue
                if key is None:
                    key = request.key
                elif request.rows + rows > max_batch_size:
                    queue.appendleft(request)
                    full = True
                    break
                elif request.key != key:
                    skipped.append(request)
                    continue
                self.remove(request)
                batch.append(request)
                rows += request.rows
                full = rows >= max_batch_size
            queue.extendleft(reversed(skipped))
            if not queue:
                self._forget(level)
            if full:
                break
        return batch

    def _forget(self, level: int) -> None:
        del self._levels[level]
        self._order.remove(level)
        self._rows_at.pop(level, None)
