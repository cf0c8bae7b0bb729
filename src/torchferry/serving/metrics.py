"""Prometheus metrics of a serving process: Triton's per-model counters and a few histograms.

Per model version (labels ``model``, ``version``), with Triton's names, types and meanings:

- ``nv_inference_request_success`` / ``nv_inference_request_failure``: inference requests
  that the model answered / that failed once they reached the data plane (a bad shape, a full
  queue, a timeout, a model error); requests for an unknown model count nowhere here.
- ``nv_inference_count``: rows answered; ``nv_inference_exec_count``: batches executed, so
  that ``count / exec_count`` is the mean batch size.
- ``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
  ``nv_inference_compute_infer_duration_us``: cumulative microseconds over successful
  requests (counters, as Triton's: rate() of one over rate() of success is a mean).
- ``nv_inference_pending_request_count``: requests waiting in the batcher's queue (a gauge,
  summed over live workers).

Shadow traffic (``shadow.py``), per shadow version: ``torchferry_shadow_rows_total`` (rows
compared with the routed version's answer), ``torchferry_shadow_agreed_rows_total`` (rows
whose argmax agreed) and ``torchferry_shadow_max_abs_diff`` (the largest absolute difference
seen; the largest across workers).

And ``torchferry_request_duration_seconds`` (every request, by ``protocol``, ``model``, empty
for non-inference routes, and ``status``), ``torchferry_inference_duration_seconds`` (the
duration of each successful inference request, by model version: the console's p50 and p99
per version), ``torchferry_queue_duration_seconds`` (by model version) and
``torchferry_batch_size`` (rows per executed batch, by model version), and
``torchferry_shed_total`` (requests the batcher refused early, by model version and
``reason``: ``deadline`` or ``objective``).

With ``PROMETHEUS_MULTIPROC_DIR`` set (before ``prometheus_client`` is first imported: the
supervisor sets it in each worker's environment), every process writes its values to files
there and the supervisor sums them (``metrics_render``); without it they live in the default
registry of this process.

The hot path stays off Prometheus: every request adds to plain numbers (a microsecond or
two), and those are written to the Prometheus values at most every ``FLUSH_INTERVAL_S``, on
the event loop (a Prometheus update costs ~1.5 µs, and a request would need ten of them).
So a scrape may lag the last requests by that interval; :func:`flush` writes at once (at
shutdown, and in tests).
"""

from __future__ import annotations

import asyncio
import threading
from bisect import bisect_left
from collections.abc import Sequence
from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from torchferry.serving.observe import RequestRecord

#: Longest delay between a request and its appearance in the Prometheus values.
FLUSH_INTERVAL_S = 0.2
REQUEST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
QUEUE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MODEL_LABELS = ("model", "version")


class _Families:
    """The Prometheus metrics, made once per process on first use (so that importing this
    module registers nothing, and a process that serves nothing writes no files)."""

    def __init__(self) -> None:
        def counter(name: str, help_text: str) -> Counter:
            return Counter(name, help_text, MODEL_LABELS)

        # Triton's help texts, word for word
        self.success = counter(
            "nv_inference_request_success",
            "Number of successful inference requests, all batch sizes",
        )
        self.failure = counter(
            "nv_inference_request_failure", "Number of failed inference requests, all batch sizes"
        )
        self.count = counter(
            "nv_inference_count",
            "Number of inferences performed (does not include cached requests)",
        )
        self.exec_count = counter(
            "nv_inference_exec_count",
            "Number of model executions performed (does not include cached requests)",
        )
        self.request_us = counter(
            "nv_inference_request_duration_us",
            "Cumulative inference request duration in microseconds (includes cached requests)",
        )
        self.queue_us = counter(
            "nv_inference_queue_duration_us",
            "Cumulative inference queuing duration in microseconds (includes cached requests)",
        )
        self.compute_us = counter(
            "nv_inference_compute_infer_duration_us",
            "Cumulative compute inference duration in microseconds "
            "(does not include cached requests)",
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            MODEL_LABELS,
            multiprocess_mode="livesum",
        )
        self.request_seconds = Histogram(
            "torchferry_request_duration_seconds",
            "Time from a request's arrival to its answer, every route and protocol",
            ("protocol", "model", "status"),
            buckets=REQUEST_BUCKETS,
        )
        self.inference_seconds = Histogram(
            "torchferry_inference_duration_seconds",
            "Time from a successful inference request's arrival to its answer, per version",
            MODEL_LABELS,
            buckets=REQUEST_BUCKETS,
        )
        self.queue_seconds = Histogram(
            "torchferry_queue_duration_seconds",
            "Time a successful inference request waited in the batcher's queue",
            MODEL_LABELS,
            buckets=QUEUE_BUCKETS,
        )
        self.batch_size = Histogram(
            "torchferry_batch_size",
            "Rows in each batch the model executed",
            MODEL_LABELS,
            buckets=BATCH_BUCKETS,
        )
        self.shed = Counter(
            "torchferry_shed",
            "Requests refused because their predicted answer would miss their deadline "
            "(reason deadline) or the latency objective (reason objective)",
            (*MODEL_LABELS, "reason"),
        )


@cache
def families() -> _Families:
    return _Families()


class _ShadowFamilies:
    """Made on the first shadow comparison: a server without shadows shows none."""

    def __init__(self) -> None:
        self.rows = Counter(
            "torchferry_shadow_rows",
            "Rows mirrored to a shadow version and compared with the routed version's answer",
            MODEL_LABELS,
        )
        self.agreed = Counter(
            "torchferry_shadow_agreed_rows",
            "Mirrored rows whose argmax (along the last axis) agreed with the routed version's",
            MODEL_LABELS,
        )
        self.max_abs_diff = Gauge(
            "torchferry_shadow_max_abs_diff",
            "Largest absolute difference between a shadow version's output and the routed one's",
            MODEL_LABELS,
            multiprocess_mode="max",
        )
        #: The gauge's value per version in this process (a gauge cannot be read back).
        self.seen: dict[tuple[str, str], float] = {}


@cache
def shadow_families() -> _ShadowFamilies:
    return _ShadowFamilies()


def shadow_compared(
    model: str, version: str, rows: int, agreed: int, max_abs_diff: float | None
) -> None:
    """Count one shadow comparison (a few per mirrored request, off the client's path)."""
    f = shadow_families()
    f.rows.labels(model, version).inc(rows)
    f.agreed.labels(model, version).inc(agreed)
    if max_abs_diff is not None:
        key = (model, version)
        if max_abs_diff > f.seen.get(key, -1.0):
            f.seen[key] = max_abs_diff
            f.max_abs_diff.labels(model, version).set(max_abs_diff)


COLD_LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _ResidencyFamilies:
    """Made when a memory budget is set (``residency.py``): a server without one shows none.
    Loads and evictions are rare: they go to Prometheus at once."""

    def __init__(self) -> None:
        self.cold_loads = Counter(
            "torchferry_cold_loads",
            "Loads of a version's engines on a request's demand (memory budget)",
            MODEL_LABELS,
        )
        self.cold_load_seconds = Histogram(
            "torchferry_cold_load_seconds",
            "Time a version's engines took to load on demand, warm-up included",
            MODEL_LABELS,
            buckets=COLD_LOAD_BUCKETS,
        )
        self.evictions = Counter(
            "torchferry_evictions",
            "Versions whose engines were released to make room under the memory budget",
            MODEL_LABELS,
        )
        self.resident_bytes = Gauge(
            "torchferry_resident_bytes",
            "Estimated bytes of the model engines loaded or loading, counted against the "
            "memory budget (summed over workers)",
            multiprocess_mode="livesum",
        )


@cache
def residency_families() -> _ResidencyFamilies:
    return _ResidencyFamilies()


def cold_loaded(model: str, version: str, seconds: float) -> None:
    f = residency_families()
    f.cold_loads.labels(model, version).inc()
    f.cold_load_seconds.labels(model, version).observe(seconds)


def evicted(model: str, version: str) -> None:
    residency_families().evictions.labels(model, version).inc()


def resident_bytes(size: int) -> None:
    residency_families().resident_bytes.set(size)


class _LocalHistogram:
    """Observations kept as plain numbers, added to a Prometheus histogram on flush.

    Counts only grow; a flush sends what grew since the last one. So the one thread that
    observes never waits for, nor races with, the thread that flushes."""

    __slots__ = ("bounds", "child", "counts", "sent_counts", "sent_total", "total")

    def __init__(self, bounds: Sequence[float], child: Histogram) -> None:
        self.bounds = (*bounds, float("inf"))
        self.child = child
        self.counts = [0] * len(self.bounds)
        self.sent_counts = [0] * len(self.bounds)
        self.total = self.sent_total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        # Histogram keeps one value per bucket (made cumulative when collected) and its sum;
        # adding to those is what its ``observe`` does, once per observation.
        counts, total = list(self.counts), self.total
        if counts == self.sent_counts:
            return
        buckets: list[Any] = self.child._buckets
        for index, (count, sent) in enumerate(zip(counts, self.sent_counts, strict=True)):
            if count != sent:
                buckets[index].inc(count - sent)
        self.child._sum.inc(total - self.sent_total)
        self.sent_counts, self.sent_total = counts, total


#: ModelSeries' cumulative numbers, in the order of its Prometheus children.
_MODEL_FIELDS = (
    "success", "failure", "rows", "executions", "request_us", "queue_us", "compute_us",
)  # fmt: skip


class ModelSeries:
    """One model version's numbers, and the batcher's observer for it.

    The numbers only grow (``pending`` aside); ``flush`` sends what grew since the last."""

    __slots__ = (
        "_batch_sizes",
        "_children",
        "_durations",
        "_queue_times",
        "_sent",
        "compute_us",
        "executions",
        "failure",
        "labels",
        "pending_now",
        "pending_sent",
        "queue_us",
        "recorder",
        "request_us",
        "rows",
        "shed_counts",
        "shed_sent",
        "success",
    )

    def __init__(self, recorder: Recorder, model: str, version: str) -> None:
        f = families()
        labels = self.labels = (model, version)
        self.recorder = recorder
        self._children = tuple(
            family.labels(*labels)
            for family in (
                f.success, f.failure, f.count, f.exec_count, f.request_us, f.queue_us,
                f.compute_us,
            )
        )  # fmt: skip
        f.pending.labels(*labels)  # shows 0 from the start, as Triton does
        self._durations = _LocalHistogram(REQUEST_BUCKETS, f.inference_seconds.labels(*labels))
        self._queue_times = _LocalHistogram(QUEUE_BUCKETS, f.queue_seconds.labels(*labels))
        self._batch_sizes = _LocalHistogram(BATCH_BUCKETS, f.batch_size.labels(*labels))
        self.success = self.failure = self.rows = self.executions = 0
        self.request_us = self.queue_us = self.compute_us = 0.0
        self._sent: tuple[float, ...] = (0,) * len(_MODEL_FIELDS)
        self.pending_now = self.pending_sent = 0
        self.shed_counts: dict[str, int] = {}
        self.shed_sent: dict[str, int] = {}

    # -- BatchObserver (on the event loop) ----------------------------------------------------

    # A flush is already due whenever requests are moving; these only make sure of one
    # (a model stuck in a long batch still shows its queue growing).

    def executed(self, rows: int, compute_s: float) -> None:
        self.executions += 1
        self._batch_sizes.observe(rows)
        if self.recorder.flush_loop is None:
            self.recorder.wake()

    def pending(self, requests: int) -> None:
        self.pending_now = requests
        if self.recorder.flush_loop is None:
            self.recorder.wake()

    def shed(self, reason: str) -> None:
        self.shed_counts[reason] = self.shed_counts.get(reason, 0) + 1
        if self.recorder.flush_loop is None:
            self.recorder.wake()

    # -- requests -----------------------------------------------------------------------------

    def finished(self, record: RequestRecord, duration_s: float) -> None:
        """Count one inference request."""
        if not record.success:
            self.failure += 1
            return
        self.success += 1
        self.rows += record.rows
        self.request_us += duration_s * 1e6
        self._durations.observe(duration_s)
        queued, started, ended = record.queued, record.compute_started, record.compute_ended
        if queued is not None and started is not None:
            self.queue_us += (started - queued) * 1e6
            self._queue_times.observe(started - queued)
            if ended is not None:
                self.compute_us += (ended - started) * 1e6

    def flush(self) -> None:
        now = (
            self.success, self.failure, self.rows, self.executions, self.request_us,
            self.queue_us, self.compute_us,
        )  # fmt: skip
        for child, value, sent in zip(self._children, now, self._sent, strict=True):
            if value != sent:
                child.inc(value - sent)
        self._sent = now
        self._durations.flush()
        self._queue_times.flush()
        self._batch_sizes.flush()
        pending = self.pending_now
        if pending != self.pending_sent:
            families().pending.labels(*self.labels).set(pending)
            self.pending_sent = pending
        for reason, count in list(self.shed_counts.items()):
            sent = self.shed_sent.get(reason, 0)
            if count != sent:
                families().shed.labels(*self.labels, reason).inc(count - sent)
                self.shed_sent[reason] = count


class Recorder:
    """Every series of this process, and the timer that flushes them to Prometheus.

    Requests and batches are counted on the event loop, with no lock: numbers only grow, and
    a flush (under a lock, from any thread) sends what grew since the last one."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._flush_lock = threading.Lock()
        self._models: dict[tuple[str, str], ModelSeries] = {}
        self._requests: dict[tuple[str, str, str], _LocalHistogram] = {}
        #: The loop a flush is scheduled on, if any (a loop that closed before its timer fired
        #: stays here until the next request on another loop replaces it).
        self.flush_loop: asyncio.AbstractEventLoop | None = None

    def model(self, model: str, version: str) -> ModelSeries:
        """The series of one model version (made, with its zeros, on first use)."""
        series = self._models.get((model, version))
        if series is None:
            with self._flush_lock:  # flush iterates this dict
                series = self._models.setdefault(
                    (model, version), ModelSeries(self, model, version)
                )
        return series

    def observe(self, record: RequestRecord) -> None:
        """The request observer: count one finished request."""
        duration = (record.ended or 0.0) - record.started
        model = record.model
        key = (record.protocol, model or "", record.status)
        histogram = self._requests.get(key)
        if histogram is None:
            histogram = self._request_histogram(key)
        histogram.observe(duration)
        if model is not None:
            series = self._models.get((model, record.version or ""))
            if series is None:
                series = self.model(model, record.version or "")
            series.finished(record, duration)
        self.wake()

    __call__ = observe

    def _request_histogram(self, key: tuple[str, str, str]) -> _LocalHistogram:
        with self._flush_lock:
            histogram = self._requests.get(key)
            if histogram is None:
                child = families().request_seconds.labels(*key)
                histogram = self._requests[key] = _LocalHistogram(REQUEST_BUCKETS, child)
        return histogram

    def wake(self) -> None:
        """Make sure a flush comes within the interval."""
        loop = asyncio._get_running_loop()  # None, where get_running_loop() would raise
        if loop is None:  # no event loop (a script, a test): write at once
            self.flush()
            return
        if loop is not self.flush_loop:
            self.flush_loop = loop
            loop.call_later(self.interval_s, self._timer)

    def _timer(self) -> None:
        self.flush_loop = None
        self.flush()

    def flush(self) -> None:
        """Write every number gathered since the last flush to the Prometheus values."""
        with self._flush_lock:
            for series in self._models.values():
                series.flush()
            for histogram in self._requests.values():
                histogram.flush()


#: This process's recorder: ``RECORDER`` is the request observer, ``RECORDER.model(...)`` a
#: batcher's observer.
RECORDER = Recorder()


def batch_observer(model: str, version: str) -> ModelSeries:
    return RECORDER.model(model, version)


def flush() -> None:
    RECORDER.flush()
