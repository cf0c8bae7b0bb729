"""Dynamic batching: one queue per model version, coalesced along dimension 0.

Requests wait at most ``max_delay`` after the oldest queued one arrived, or until
``max_batch_size`` rows are queued; then one inference runs on the batcher's own worker
thread and its outputs are split back, row for row, to each request. While a batch
computes, new requests queue up, so under load batches fill without waiting at all.

Only requests whose tensors agree on everything but dimension 0 are merged; others run in
a batch of their own. A request with more rows than ``max_batch_size`` runs alone. When a
merged batch raises, each of its requests is retried alone so that only the request that
causes the failure sees it.

A request may come with a ``finish`` step (a handler's postprocess) and the executor to run
it on. The step never runs on the event loop: for a lone request with nothing queued behind
it the worker thread runs it right after the model (no hand-off, the lowest latency when
idle); otherwise the worker thread hands the batch's steps to the executor as one task (one
hand-off per batch, not per request), so that the next batch starts at once.

Each request keeps the record of the request that submitted it (``observe.current_record``)
and the batcher writes what only it knows there: when the request was queued, when its
batch computed, and the batch's size. A ``BatchObserver`` (the metrics) hears of every batch
executed and of every change in the number of requests waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from torchferry.errors import (
    InferenceTimeout,
    ModelError,
    ModelNotReady,
    Overloaded,
    TorchferryError,
)
from torchferry.serving.batchstats import BatcherStats
from torchferry.serving.observe import RequestRecord, current_record

InferFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
#: Batches that compute faster than this (on average) run on the event loop, no hand-off.
INLINE_COMPUTE_S = 0.0002
_T = TypeVar("_T")
#: A step to run on a request's own outputs, and the executor to run it on.
Finish = tuple[Executor, Callable[[dict[str, np.ndarray]], Any]]


class BatchObserver(Protocol):
    """Hears of one batcher's work, on the event loop; must cost next to nothing."""

    def executed(self, rows: int, compute_s: float) -> None:
        """A batch of ``rows`` rows ran, for ``compute_s`` seconds (the model answered)."""

    def pending(self, requests: int) -> None:
        """``requests`` requests now wait in the queue."""


@dataclass
class _Request:
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


def _shape_key(inputs: dict[str, np.ndarray]) -> tuple[object, ...]:
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())


class Batcher:
    def __init__(
        self,
        infer: InferFn,
        *,
        name: str,
        max_batch_size: int = 32,
        max_delay_ms: float = 0.0,
        max_queue_rows: int = 4096,
        observer: BatchObserver | None = None,
    ) -> None:
        self._infer = infer
        self.observer = observer
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue_rows = max_queue_rows
        self.stats = BatcherStats()
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._queued_requests = 0
        #: Recent compute time per row (seconds; a small batch's fixed cost makes it an
        #: over-estimate for large ones): decides where a batch runs. Unknown at first, so
        #: the first batches run on the worker thread.
        self._row_compute_ema = float("inf")
        self._last_compute_s = 0.0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher-{self.name}"
            )

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, then stop the loop and the worker."""
        self._closing = True
        if self._task is not None and self._wakeup is not None:
            self._wakeup.set()
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    # -- requests ------------------------------------------------------------------------------

    async def submit(
        self, inputs: dict[str, np.ndarray], timeout_s: float | None = None
    ) -> dict[str, np.ndarray]:
        """Queue one request's validated inputs and wait for its outputs, at most
        ``timeout_s`` seconds (then 504; the request is dropped if it has not started)."""
        outputs: dict[str, np.ndarray] = await self._submit(inputs, timeout_s, None)
        return outputs

    async def submit_then(
        self,
        inputs: dict[str, np.ndarray],
        timeout_s: float | None,
        executor: Executor,
        finish: Callable[[dict[str, np.ndarray]], _T],
    ) -> _T:
        """As ``submit``, then ``finish(outputs)`` on ``executor``, started by the worker
        thread as soon as the batch is computed; returns what ``finish`` returns."""
        result: _T = await self._submit(inputs, timeout_s, (executor, finish))
        return result

    async def _submit(
        self, inputs: dict[str, np.ndarray], timeout_s: float | None, finish: Finish | None
    ) -> Any:
        if self._closing or self._task is None or self._wakeup is None:
            state = "is draining" if self._closing else "has not started"
            raise ModelNotReady(f"model {self.name!r} {state}", retry_after=1.0)
        first = next(iter(inputs.values()))
        rows = first.shape[0] if first.ndim else 1
        if self._queued_rows + rows > self.max_queue_rows and self._queued_rows > 0:
            raise Overloaded(
                f"model {self.name!r} is overloaded: {self._queued_rows} rows already queued",
                retry_after=max(0.1, self.max_delay * 2),
            )
        loop = asyncio.get_running_loop()
        arrived = time.perf_counter()
        record = current_record()
        if record is not None:
            record.queued = arrived
            record.rows = rows
        request = _Request(
            inputs, rows, _shape_key(inputs), loop.create_future(), arrived, finish, record=record
        )
        self._queue.append(request)
        self._queued_rows += rows
        self._queued_requests += 1
        if self.observer is not None:
            self.observer.pending(self._queued_requests)
        self._wakeup.set()
        try:
            if timeout_s is None:  # no timer: nothing to shield the future from
                return await request.future
            return await asyncio.wait_for(asyncio.shield(request.future), timeout_s)
        except TimeoutError:
            self._abandon(request)
            raise InferenceTimeout(
                f"model {self.name!r} did not answer within {timeout_s:.3g} s"
            ) from None
        except BaseException:  # the caller gave up (a cancelled call, a client's deadline)
            self._abandon(request)
            raise

    def _abandon(self, request: _Request) -> None:
        """A request whose caller gave up: it frees its place in the queue at once (the loop
        drops it when it reaches it), so that a stuck request cannot hold capacity."""
        request.future.cancel()
        if request.queued:
            self._dequeue(request)
            if self._wakeup is not None:
                self._wakeup.set()

    def _dequeue(self, request: _Request) -> None:
        if request.queued:
            request.queued = False
            self._queued_rows -= request.rows
            self._queued_requests -= 1
            if self.observer is not None:
                self.observer.pending(self._queued_requests)

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_to_fill(loop)
            if not self._queue:  # every waiting request gave up
                continue
            batch = self._take_batch()
            if batch:
                await self._execute(loop, batch)

    def _drop_abandoned(self) -> None:
        while self._queue and self._queue[0].future.done():
            self._dequeue(self._queue.popleft())

    async def _wait_to_fill(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._wakeup is not None
        deadline = self._queue[0].arrived + self.max_delay
        while self._queued_rows < self.max_batch_size and not self._closing:
            self._drop_abandoned()
            if not self._queue:
                return
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Request]:
        first = self._queue.popleft()
        self._dequeue(first)
        if first.future.done():
            return []
        batch, rows = [first], first.rows
        skipped: list[_Request] = []
        while self._queue and rows < self.max_batch_size:
            candidate = self._queue[0]
            if candidate.future.done():
                self._dequeue(self._queue.popleft())
                continue
            if candidate.rows + rows > self.max_batch_size:
                break
            self._queue.popleft()
            self._dequeue(candidate)
            if candidate.key == first.key:
                batch.append(candidate)
                rows += candidate.rows
            else:
                skipped.append(candidate)
        for request in reversed(skipped):
            self._queue.appendleft(request)
            request.queued = True
            self._queued_rows += request.rows
            self._queued_requests += 1
        if skipped and self.observer is not None:
            self.observer.pending(self._queued_requests)
        return batch

    def _runs_inline(self, batch: list[_Request]) -> bool:
        """Whether to run this batch on the event loop rather than the worker thread: for a
        batch expected (its rows times the recent time per row) to take less than
        ``INLINE_COMPUTE_S``, the hand-off to a thread and back costs more than the model (~350 us a request at concurrency 1, against ~40 us of
        ONNX Runtime for a small MLP). Never with a finish step (a handler's postprocess
        must not run on the loop)."""
        if any(r.finish is not None for r in batch):
            return False
        return self._row_compute_ema * sum(r.rows for r in batch) < INLINE_COMPUTE_S

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        started = time.perf_counter()
        try:
            if self._runs_inline(batch):
                done = self._compute(batch)
            else:
                done = await loop.run_in_executor(self._executor, self._compute, batch)
        except Exception as exc:  # the model raised: isolate the request responsible
            if len(batch) > 1:
                for request in batch:
                    await self._execute(loop, [request])
                return
            self._fail(batch[0], exc, started)
            return
        answers, computed, finishing = done
        self._record(batch, started, computed)
        for request, answer in zip(batch, answers, strict=True):
            if answer is not _PENDING:
                _settle(request.future, answer)
        if finishing is not None:
            pending = [r for r, answer in zip(batch, answers, strict=True) if answer is _PENDING]
            asyncio.wrap_future(finishing, loop=loop).add_done_callback(_settle_all(pending))

    def _compute(self, batch: list[_Request]) -> tuple[list[Any], float, Future[list[Any]] | None]:
        """On the worker thread: run the batch, split the outputs row for row, and finish the
        requests that have a finish step. Returns each request's answer (``_PENDING`` for a
        finish step still to come), when the model finished, and the pending steps' future.

        A lone request with nothing queued behind it finishes here, with no hand-off (the
        lowest latency when idle). Otherwise the batch's finish steps go to the executor as
        one task, one hand-off for the whole batch, so that the next batch starts at once."""
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: np.concatenate([r.inputs[name] for r in batch], axis=0)
                for name in batch[0].inputs
            }
        rows = sum(r.rows for r in batch)
        begun = time.perf_counter()
        outputs = self._infer(inputs)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != rows:
                raise ModelError(
                    f"output {name!r} has shape {list(array.shape)}, "
                    f"which does not keep the batch dimension of {rows} rows"
                )
        computed = time.perf_counter()
        self._last_compute_s = computed - begun  # the model alone, not the hand-off
        answers: list[Any] = [outputs]
        if len(batch) > 1:
            bounds = [0, *itertools.accumulate(r.rows for r in batch)]
            answers = [
                {name: array[start:end] for name, array in outputs.items()}
                for start, end in itertools.pairwise(bounds)
            ]
        steps = [(i, r.finish) for i, r in enumerate(batch) if r.finish is not None]
        if not steps:
            return answers, computed, None
        if len(batch) == 1 and not self._queue:
            return [_run_finish(steps[0][1][1], answers[0])], computed, None
        executor = steps[0][1][0]  # one model, one pool
        work = [(finish[1], answers[i]) for i, finish in steps]
        for i, _ in steps:
            answers[i] = _PENDING
        return answers, computed, executor.submit(_run_finishes, work)

    def _fail(self, request: _Request, exc: Exception, started: float) -> None:
        self.stats.record_failure(request.arrived)
        record = request.record
        if record is not None:
            record.compute_started, record.compute_ended = started, time.perf_counter()
            record.batch_size = request.rows
        if request.future.done():
            return
        # the client's answer carries the model's message; a log line only its kind, since a
        # model's (or its runtime's) message may quote the request's values
        failed = f"model {self.name!r} failed: "
        if isinstance(exc, ModelError):  # the runtime already put the model's message in words
            error: TorchferryError = ModelError(
                failed + exc.message, log_message=failed + exc.log_message
            )
        elif isinstance(exc, TorchferryError):
            error = exc
        else:
            message = str(exc) or type(exc).__name__
            error = ModelError(
                f"{failed}{type(exc).__name__}: {message}",
                log_message=failed + type(exc).__name__,
            )
        request.future.set_exception(error)

    def _record(self, batch: list[_Request], started: float, computed: float) -> None:
        """Count a batch the model answered (statistics are the model's: a handler's finish
        step is not part of its compute time, and does not make the model fail)."""
        arrivals = [request.arrived for request in batch]
        rows = sum(r.rows for r in batch)
        self.stats.record_batch(rows, arrivals, started, computed)
        ema, last = self._row_compute_ema, self._last_compute_s / rows
        self._row_compute_ema = last if ema == float("inf") else ema + 0.1 * (last - ema)
        for request in batch:
            record = request.record
            if record is not None:
                record.compute_started, record.compute_ended = started, computed
                record.batch_size = rows
        if self.observer is not None:
            self.observer.executed(rows, computed - started)


@dataclass
class _Failed:
    """A finish step's exception, carried back to the event loop."""

    error: BaseException


#: The answer of a request whose finish step is still running on its executor.
_PENDING = object()


def _run_finish(finish: Callable[[dict[str, np.ndarray]], Any], outputs: dict[str, Any]) -> Any:
    try:
        return finish(outputs)
    except Exception as exc:
        return _Failed(exc)


def _run_finishes(work: list[tuple[Callable[[dict[str, np.ndarray]], Any], Any]]) -> list[Any]:
    return [_run_finish(finish, outputs) for finish, outputs in work]


def _settle(future: asyncio.Future[Any], answer: Any) -> None:
    """Answer a request, unless its caller gave up."""
    if future.done():
        return
    if isinstance(answer, _Failed):
        future.set_exception(answer.error)
    else:
        future.set_result(answer)


def _settle_all(pending: list[_Request]) -> Callable[[asyncio.Future[list[Any]]], None]:
    """Answer the requests whose finish steps ran together on the executor."""

    def settle(finished: asyncio.Future[list[Any]]) -> None:
        if finished.cancelled():  # the executor shut down first
            answers: list[Any] = [_Failed(ModelNotReady("the server is shutting down"))] * len(
                pending
            )
        elif (error := finished.exception()) is not None:
            answers = [_Failed(error)] * len(pending)
        else:
            answers = finished.result()
        for request, answer in zip(pending, answers, strict=True):
            _settle(request.future, answer)

    return settle
