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

Priorities above ``MAX_PRIORITY`` count as ``MAX_PRIORITY``, so that clients cannot create
an unbounded number of levels for the per-request scans to walk. A level's deque stays
alive when it empties (a lone request then neither creates nor deletes one); empty levels
other than the default are dropped only once more than ``KEEP_LEVELS`` levels exist.
"""

from __future__ import annotations

import asyncio
from bisect import insort
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchferry.serving.observe import RequestRecord

#: The level of a request that gives no priority (or 0): 1..99 run before it, 101+ after.
DEFAULT_PRIORITY = 100
#: The highest level: larger priorities share it (bounds the levels a client can create).
MAX_PRIORITY = 1000
#: Levels kept alive while empty before the empty non-default ones are dropped.
KEEP_LEVELS = 8
#: A step to run on a request's own outputs, and the executor to run it on.
Finish = tuple[Executor, Callable[[dict[str, np.ndarray]], Any]]


@dataclass(eq=False, slots=True)
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
    """The queue level of a request's priority (0: the default level; at most
    ``MAX_PRIORITY``)."""
    return min(priority, MAX_PRIORITY) or DEFAULT_PRIORITY


def shape_key(inputs: dict[str, np.ndarray]) -> tuple[object, ...]:
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())


class BatchQueue:
    """Queued requests by level; ``rows`` and ``requests`` count only live ones (a plain
    attribute, not ``__bool__``: it is read per request)."""

    def __init__(self) -> None:
        self._levels: dict[int, deque[QueuedRequest]] = {DEFAULT_PRIORITY: deque()}
        self._order: list[int] = [DEFAULT_PRIORITY]
        self._rows_at: dict[int, int] = {DEFAULT_PRIORITY: 0}
        self.rows = 0
        self.requests = 0

    def push(self, request: QueuedRequest) -> None:
        level = request.level
        queue = self._levels.get(level)
        if queue is None:
            queue = self._levels[level] = deque()
            self._rows_at[level] = 0
            insort(self._order, level)
        queue.append(request)
        self.rows += request.rows
        self.requests += 1
        self._rows_at[level] += request.rows

    def remove(self, request: QueuedRequest) -> None:
        """Stop counting ``request`` (taken into a batch, or abandoned)."""
        if request.queued:
            request.queued = False
            self.rows -= request.rows
            self.requests -= 1
            self._rows_at[request.level] -= request.rows

    def rows_ahead(self, level: int) -> int:
        """Rows that run before a new request of ``level`` (its level and every lower one)."""
        if not self.rows:
            return 0
        return sum(rows for at, rows in self._rows_at.items() if at <= level)

    def drop_done(self) -> None:
        """Forget the requests at the head of each level whose callers gave up."""
        levels = self._levels
        for level in self._order:
            queue = levels[level]
            while queue and queue[0].future.done():
                self.remove(queue.popleft())
        self._prune()

    def oldest_arrival(self) -> float | None:
        """When the longest-waiting live request at the head of a level arrived."""
        levels = self._levels
        heads = [levels[level][0].arrived for level in self._order if levels[level]]
        return min(heads) if heads else None

    def take(self, max_batch_size: int) -> list[QueuedRequest]:
        """The next batch (see the module's docstring); may be empty if every request seen
        was abandoned."""
        batch: list[QueuedRequest] = []
        rows = 0
        key: tuple[object, ...] | None = None
        full = False
        for level in self._order:
            queue = self._levels[level]
            if not queue:
                continue
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
            if skipped:
                queue.extendleft(reversed(skipped))
            if full:
                break
        self._prune()
        return batch

    def _prune(self) -> None:
        """Drop the empty non-default levels, only once there are too many (lazily: a
        level used by a steady stream of lone requests is not recreated per request)."""
        if len(self._order) <= KEEP_LEVELS:
            return
        levels = self._levels
        for level in [at for at in self._order if at != DEFAULT_PRIORITY and not levels[at]]:
            del levels[level]
            self._order.remove(level)
            del self._rows_at[level]
