"""Dynamic batching: one queue per model version, coalesced along dimension 0.

Requests queue by priority, then arrival (``batchqueue``). Whenever one of the model's
instances is free, the batcher decides whether to dispatch the queued rows now or to wait
for more (``batchpolicy``): in ``adaptive`` mode by the learnt cost of a batch
(``batchcost``) and the arrival rate, under an optional latency objective; in ``fixed`` mode
(and in ``adaptive`` mode before the cost is known) it waits at most ``max_delay`` after the
oldest queued request, or until ``max_batch_size`` rows are queued. One inference then runs
on the instance's own worker thread (or on the event loop, for a batch predicted to take
under a millisecond: ``batchinline``) and its outputs are split back, row for row, to each
request. While a batch computes, new requests queue up, so under load batches fill without
waiting at all.

Only requests whose tensors agree on everything but dimension 0 are merged; others run in
a batch of their own. A request with more rows than ``max_batch_size`` runs alone. When a
merged batch raises, each of its requests is retried alone so that only the request that
causes the failure sees it.

Shedding (``shed="early"``): once the cost is known, a request whose predicted answer comes
after its deadline (its own timeout, else the objective) is refused at once with 503, and
a queued request that can no longer make it is refused when its batch forms; one already
past its own deadline is answered 504 there. ``shed="never"`` sheds nothing.

A request may come with a ``finish`` step (a handler's postprocess) and the executor to run
it on. The step never runs on the event loop: for a lone request with nothing queued behind
it the worker thread runs it right after the model (no hand-off, the lowest latency when
idle); otherwise the worker thread hands the batch's steps to the executor as one task (one
hand-off per batch, not per request), so that the next batch starts at once.

Each request keeps the record of the request that submitted it (``observe.current_record``)
and the batcher writes what only it knows there: when the request was queued, when its
batch computed, and the batch's size. A ``BatchObserver`` (the metrics) hears of every batch
executed, every change in the number of requests waiting, and every request shed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import numpy as np

from torchferry.errors import ModelNotReady, Overloaded
from torchferry.serving.batchcost import BatchCost
from torchferry.serving.batchinline import InlineGate
from torchferry.serving.batchpolicy import ArrivalGap, Mode, adaptive_wait, fixed_wait
from torchferry.serving.batchqueue import (
    DEFAULT_PRIORITY,
    BatchQueue,
    Finish,
    QueuedRequest,
    priority_level,
    shape_key,
)
from torchferry.serving.batchrun import (
    PENDING,
    Computed,
    compute,
    model_failure,
    settle,
    settle_all,
)
from torchferry.serving.batchshed import Shed, Shedder, timed_out
from torchferry.serving.batchstats import BatcherStats
from torchferry.serving.observe import current_record

__all__ = ["DEFAULT_PRIORITY", "BatchObserver", "Batcher", "InferFn"]

InferFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
_T = TypeVar("_T")


class BatchObserver(Protocol):
    """Hears of one batcher's work, on the event loop; must cost next to nothing."""

    def executed(self, rows: int, compute_s: float) -> None:
        """A batch of ``rows`` rows ran, for ``compute_s`` seconds (the model answered)."""

    def pending(self, requests: int) -> None:
        """``requests`` requests now wait in the queue."""

    def shed(self, reason: str) -> None:
        """A request was refused because it would miss its ``deadline`` or ``objective``."""


class Batcher:
    def __init__(
        self,
        infer: InferFn | Sequence[InferFn],
        *,
        name: str,
        max_batch_size: int = 32,
        max_delay_ms: float = 0.0,
        max_queue_rows: int = 4096,
        mode: Mode = "adaptive",
        max_latency_ms: float | None = None,
        shed: Shed = "early",
        observer: BatchObserver | None = None,
    ) -> None:
        #: One infer function per instance (each its own runtime and worker thread).
        self._infers: list[InferFn] = [infer] if callable(infer) else list(infer)
        if not self._infers:
            raise ValueError("a batcher needs at least one infer function")
        #: A plain attribute (read per request and per batch).
        self.instances = len(self._infers)
        self.observer = observer
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue_rows = max_queue_rows
        self.mode: Mode = mode
        self.shedder = Shedder(
            name,
            shed,
            None if max_latency_ms is None else max_latency_ms / 1000.0,
            None if observer is None else observer.shed,
        )
        self.stats = BatcherStats()
        self.cost = BatchCost()
        self._gap = ArrivalGap()
        self._queue = BatchQueue()
        self._inline = InlineGate()
        #: Requests submitted with a deadline whose batch has not formed yet: while none
        #: (and no objective to shed by), a batch skips the shedder's recheck.
        self._deadlined = 0
        #: Instances free to take a batch; busy ones -> (started, rows).
        self._free = list(range(len(self._infers)))
        self._busy: dict[int, tuple[float, int]] = {}
        self._running: set[asyncio.Task[None]] = set()
        #: The most batches that computed at once (instances in use together).
        self.peak_concurrent = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}-{i}")
            for i in range(len(self._infers))
        ]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher-{self.name}"
            )

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, then stop the loop and the workers."""
        self._closing = True
        if self._task is not None and self._wakeup is not None:
            self._wakeup.set()
            await self._task
            self._task = None
        if self._running:
            await asyncio.wait(list(self._running))
        for executor in self._executors:
            executor.shutdown(wait=True)

    @property
    def queued_rows(self) -> int:
        return self._queue.rows

    # -- requests ------------------------------------------------------------------------------

    async def submit(
        self, inputs: dict[str, np.ndarray], timeout_s: float | None = None, priority: int = 0
    ) -> dict[str, np.ndarray]:
        """Queue one request's validated inputs and wait for its outputs, at most
        ``timeout_s`` seconds (then 504; the request is dropped if it has not started).
        ``priority``: lower runs first, 0 is ``DEFAULT_PRIORITY``."""
        outputs: dict[str, np.ndarray] = await self._submit(inputs, timeout_s, None, priority)
        return outputs

    async def submit_then(
        self,
        inputs: dict[str, np.ndarray],
        timeout_s: float | None,
        executor: Executor,
        finish: Callable[[dict[str, np.ndarray]], _T],
        priority: int = 0,
    ) -> _T:
        """As ``submit``, then ``finish(outputs)`` on ``executor``, started by the worker
        thread as soon as the batch is computed; returns what ``finish`` returns."""
        result: _T = await self._submit(inputs, timeout_s, (executor, finish), priority)
        return result

    async def _submit(
        self,
        inputs: dict[str, np.ndarray],
        timeout_s: float | None,
        finish: Finish | None,
        priority: int,
    ) -> Any:
        if self._closing or self._task is None or self._wakeup is None:
            state = "is draining" if self._closing else "has not started"
            raise ModelNotReady(f"model {self.name!r} {state}", retry_after=1.0)
        first = next(iter(inputs.values()))
        rows = first.shape[0] if first.ndim else 1
        queued_rows = self._queue.rows
        if queued_rows + rows > self.max_queue_rows and queued_rows > 0:
            raise Overloaded(
                f"model {self.name!r} is overloaded: {queued_rows} rows already queued",
                retry_after=max(0.1, self.max_delay * 2),
            )
        arrived = time.perf_counter()
        level = priority_level(priority)
        self.shedder.admit(
            rows,
            level,
            timeout_s,
            arrived,
            self.cost,
            self._busy,
            self._queue,
            self.max_batch_size,
            self.instances,
        )
        self._gap.arrived(arrived, rows)  # after the shed check: a shed request never comes
        if timeout_s is not None:
            self._deadlined += 1
        record = current_record()
        if record is not None:
            record.queued = arrived
            record.rows = rows
        request = QueuedRequest(
            inputs,
            rows,
            shape_key(inputs),
            asyncio.get_running_loop().create_future(),
            arrived,
            finish,
            record=record,
            level=level,
            deadline=None if timeout_s is None else arrived + timeout_s,
        )
        self._queue.push(request)
        self._pending_changed()
        self._wakeup.set()
        try:
            if timeout_s is None:  # no timer: nothing to shield the future from
                return await request.future
            return await asyncio.wait_for(asyncio.shield(request.future), timeout_s)
        except TimeoutError:
            self._abandon(request)
            if timeout_s is None:  # not our timer's
                raise
            raise timed_out(self.name, timeout_s) from None
        except BaseException:  # the caller gave up (a cancelled call, a client's deadline)
            self._abandon(request)
            raise

    def _abandon(self, request: QueuedRequest) -> None:
        """A request whose caller gave up: it frees its place in the queue at once (the loop
        drops it when it reaches it), so that a stuck request cannot hold capacity."""
        request.future.cancel()
        if request.queued:
            if request.deadline is not None:
                self._deadlined -= 1
            self._queue.remove(request)
            self._pending_changed()
            if self._wakeup is not None:
                self._wakeup.set()

    def _pending_changed(self) -> None:
        if self.observer is not None:
            self.observer.pending(self._queue.requests)

    @property
    def computing(self) -> int:
        """Batches running on an instance now (their callers may have given up already)."""
        return len(self._busy)

    # -- shedding ------------------------------------------------------------------------------

    @property
    def objective(self) -> float | None:
        """The latency objective (seconds), if any."""
        return self.shedder.objective

    @objective.setter
    def objective(self, seconds: float | None) -> None:
        self.shedder.objective = seconds

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            queue.drop_done()
            if not queue.requests:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not self._free:  # every instance computes: the next one free wakes us
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_to_fill()
            if not queue.requests:  # every waiting request gave up
                continue
            batch = queue.take(self.max_batch_size)
            self._pending_changed()
            if batch and (self._deadlined or self.shedder.sheds_on_objective(self.cost)):
                batch = self._recheck(batch)
            if not batch:
                continue
            instance = self._free.pop()
            if self.instances == 1:  # no task of its own: the lowest latency, the common case
                await self._execute_on(loop, instance, batch)
            else:
                task = loop.create_task(self._execute_on(loop, instance, batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    def _recheck(self, batch: list[QueuedRequest]) -> list[QueuedRequest]:
        """The shedder's recheck of a batch just taken (``batchshed``)."""
        if self._deadlined:
            self._deadlined -= sum(1 for request in batch if request.deadline is not None)
        alone = not self._busy and not self._queue.requests
        return self.shedder.recheck(batch, time.perf_counter(), self.cost, alone)

    async def _wait_to_fill(self) -> None:
        assert self._wakeup is not None
        adaptive = self.mode == "adaptive" and self.cost.ready
        if self.cost.b <= 0 if adaptive else self.max_delay <= 0:
            return  # no fixed cost to share, or no window: never wait (the common case)
        queue = self._queue
        while queue.rows < self.max_batch_size and not self._closing:
            queue.drop_done()
            oldest = queue.oldest_arrival()
            if oldest is None:
                return
            now = time.perf_counter()
            waited = now - oldest
            if adaptive:
                remaining = adaptive_wait(
                    queue.rows,
                    self._gap.current(now),
                    waited,
                    self.cost,
                    self.max_batch_size,
                    self.objective,
                )
            else:
                remaining = fixed_wait(waited, self.max_delay)
            if remaining <= 0:
                return
            if not await self._woken_within(remaining):
                return

    async def _woken_within(self, seconds: float) -> bool:
        """Wait for the next wake-up (an arrival, a freed instance), at most ``seconds``;
        whether it came. A timer that sets the event, not ``asyncio.wait_for``: this runs
        once per arrival while a batch fills, and ``wait_for`` makes a task each time."""
        assert self._wakeup is not None
        wakeup = self._wakeup
        wakeup.clear()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            wakeup.set()

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            await wakeup.wait()
        finally:
            timer.cancel()
        return not expired

    async def _execute_on(
        self, loop: asyncio.AbstractEventLoop, instance: int, batch: list[QueuedRequest]
    ) -> None:
        rows = sum(r.rows for r in batch)
        self._busy[instance] = (time.perf_counter(), rows)
        self.peak_concurrent = max(self.peak_concurrent, len(self._busy))
        try:
            await self._execute(loop, instance, batch, rows)
        finally:
            del self._busy[instance]
            self._free.append(instance)
            if self._wakeup is not None:
                self._wakeup.set()

    def _runs_inline(self, batch: list[QueuedRequest], rows: int) -> bool:
        """Whether to run this batch on the event loop rather than the worker thread
        (``batchinline``). Never with a finish step (a handler's postprocess must not run on
        the loop), nor with several instances (they exist to compute side by side)."""
        if self.instances > 1 or any(r.finish is not None for r in batch):
            return False
        return self._inline.inline(rows, self.cost)

    async def _execute(
        self,
        loop: asyncio.AbstractEventLoop,
        instance: int,
        batch: list[QueuedRequest],
        rows: int,
    ) -> None:
        started = time.perf_counter()
        inline = self._runs_inline(batch, rows)
        try:
            if inline:
                done = self._compute(instance, batch)
            else:
                done = await loop.run_in_executor(
                    self._executors[instance], self._compute, instance, batch
                )
        except Exception as exc:  # the model raised: isolate the request responsible
            if inline:
                self._inline.ran_inline(None)
            if len(batch) > 1:
                for request in batch:
                    await self._execute(loop, instance, [request], request.rows)
                return
            self._fail(batch[0], exc, started)
            return
        answers, computed, model_s, finishing = done
        if inline:
            self._inline.ran_inline(model_s)
        self._record(batch, rows, started, computed, model_s)
        for request, answer in zip(batch, answers, strict=True):
            if answer is not PENDING:
                settle(request.future, answer)
        if finishing is not None:
            pending = [r for r, answer in zip(batch, answers, strict=True) if answer is PENDING]
            asyncio.wrap_future(finishing, loop=loop).add_done_callback(settle_all(pending))

    def _compute(self, instance: int, batch: list[QueuedRequest]) -> Computed:
        """On the instance's worker thread (``batchrun.compute``); a lone request with
        nothing queued behind it finishes there too."""
        return compute(self._infers[instance], batch, finish_here=not self._queue.requests)

    def _fail(self, request: QueuedRequest, exc: Exception, started: float) -> None:
        self.stats.record_failure(request.arrived)
        record = request.record
        if record is not None:
            record.compute_started, record.compute_ended = started, time.perf_counter()
            record.batch_size = request.rows
        if request.future.done():
            return
        error = model_failure(self.name, exc)
        request.future.set_exception(error)

    def _record(
        self,
        batch: list[QueuedRequest],
        rows: int,
        started: float,
        computed: float,
        model_s: float,
    ) -> None:
        """Count a batch the model answered (statistics are the model's: a handler's finish
        step is not part of its compute time, and does not make the model fail)."""
        arrivals = [request.arrived for request in batch]
        self.stats.record_batch(rows, arrivals, started, computed)
        self.cost.add(rows, model_s)
        for request in batch:
            record = request.record
            if record is not None:
                record.compute_started, record.compute_ended = started, computed
                record.batch_size = rows
        if self.observer is not None:
            self.observer.executed(rows, computed - started)
