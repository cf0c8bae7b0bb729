"""One bench run: calibrate the generator, drive each concurrency, set it against raw speed."""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torchferry.errors import TorchferryError
from torchferry.loadtest.calibrate import LIMITED_SHARE, trivial_endpoint
from torchferry.loadtest.generator import GrpcRequest, HttpRequest, LoadResult
from torchferry.loadtest.payloads import Payload
from torchferry.loadtest.pool import Endpoint, GeneratorPool
from torchferry.loadtest.target import BenchError, Target

PAYLOAD_ROUTES = {"predict": "predict", "torchserve": "torchserve"}
#: ``BenchRun.interrupted`` when the user pressed Ctrl-C.
CTRL_C = "interrupted (Ctrl-C)"


@dataclass(frozen=True)
class Settings:
    protocol: str
    concurrencies: list[int]
    seconds: float
    warmup_s: float
    processes: int
    timeout_s: float = 30.0
    calibrate: bool = True
    raw_store: Path | None = None
    raw_seconds: float = 2.0


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted values (NaN for none)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class Step:
    """One concurrency's figures."""

    concurrency: int
    ok: int
    seconds: float
    throughput: float  # successful requests per second
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    #: The generator's own rate with this request and concurrency against a trivial
    #: endpoint (None when not calibrated).
    ceiling: float | None = None
    generator_limited: bool = False
    #: Batches the server ran in this step, by size (V2 statistics), when it reports them.
    batches: dict[int, int] | None = None
    raw_rows_per_s: float | None = None
    ratio: float | None = None
    raw_note: str = ""

    @classmethod
    def of(cls, concurrency: int, result: LoadResult, rows_per_request: int) -> Step:
        ordered = sorted(result.latencies_ms)
        return cls(
            concurrency=concurrency,
            ok=result.ok,
            seconds=result.seconds,
            throughput=result.throughput,
            rows_per_s=result.throughput * rows_per_request,
            p50_ms=percentile(ordered, 50),
            p90_ms=percentile(ordered, 90),
            p99_ms=percentile(ordered, 99),
            mean_ms=sum(ordered) / len(ordered) if ordered else math.nan,
            max_ms=ordered[-1] if ordered else math.nan,
            errors=dict(sorted(result.errors.items())),
        )

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class BenchRun:
    target: Target
    settings: Settings
    payload: Payload
    steps: list[Step] = field(default_factory=list)
    raw_rates: dict[int, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Why the run stopped before its last step (None when it ran them all).
    interrupted: str | None = None


class _Raw:
    """The raw side of a run: the engine, and how to read the server's batches."""

    def __init__(self, run: BenchRun, request: HttpRequest | GrpcRequest) -> None:
        from torchferry.loadtest.raw import RawEngine

        settings, target = run.settings, run.target
        assert settings.raw_store is not None
        http_request = request if isinstance(request, HttpRequest) else None
        self.engine = RawEngine(
            settings.raw_store,
            target.model,
            target.version,
            run.payload,
            http_request,
            PAYLOAD_ROUTES.get(settings.protocol),
            settings.raw_seconds,
        )
        self.target = target
        self._fallback: list[int] | None = None
        self.has_stats = target.batch_counts() is not None
        if not self.has_stats:
            run.notes.append(
                "the server reports no V2 batch statistics (GET .../stats), so the raw rate "
                f"is the best of batch sizes {self.fallback}, not the batches the server ran"
            )

    @property
    def fallback(self) -> list[int]:
        """Batch 1 and the max batch: the raw sizes when the server's batches are unknown
        (asked for only then, since it may be the first time: a read that failed mid-run)."""
        if self._fallback is None:
            largest = self.target.max_batch_size() or self.engine.max_batch_size
            self._fallback = sorted({1, largest})
        return self._fallback

    def counts(self) -> Counter[int] | None:
        return self.target.batch_counts() if self.has_stats else None

    def fill(self, step: Step, before: Counter[int] | None, after: Counter[int] | None) -> None:
        from torchferry.loadtest.raw import equivalent_rate

        if before is not None and after is not None:
            batches = after - before
            step.raw_note = "at the server's batch sizes"
            if any(count > after[size] for size, count in before.items()):
                # several workers each answer for themselves, and the two reads reached
                # different ones: the later worker's whole history is the nearest sample
                batches = after
                step.raw_note = "at one worker's batch sizes since it started"
            step.batches = dict(sorted(batches.items()))
            step.raw_rows_per_s = equivalent_rate(self.engine, batches)
            if step.raw_rows_per_s is None:
                step.raw_note = "the server ran no batch in this step"
        else:
            step.raw_rows_per_s = max(self.engine.rate(size) for size in self.fallback)
            step.raw_note = f"best of batch {self.fallback}"
            if self.has_stats:
                # the server has statistics, but a read in this step failed
                step.raw_note = f"no batch statistics this step; {step.raw_note}"
        if step.raw_rows_per_s:
            step.ratio = step.rows_per_s / step.raw_rows_per_s


def _calibrate(
    pool: GeneratorPool,
    calibration: Endpoint | None,
    request: HttpRequest | GrpcRequest,
    concurrency: int,
    settings: Settings,
) -> float | None:
    if calibration is None:
        return None
    seconds = min(settings.seconds, 2.0)
    result = pool.start(calibration, request, concurrency, min(0.3, seconds), seconds).result()
    return result.throughput


#: Failures after some steps that end a run but keep the steps measured.
STOPS = (BenchError, TorchferryError, OSError, RuntimeError, KeyboardInterrupt)


def stop_reason(exc: BaseException) -> str:
    """Why a run stopped, in one line."""
    if isinstance(exc, KeyboardInterrupt):
        return CTRL_C
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


class _Stoppable(Protocol):
    @property
    def steps(self) -> Sized: ...

    interrupted: str | None
    notes: list[str]


def keeping_steps(run: _Stoppable, measure: Callable[[], None], total: int, unit: str) -> None:
    """Run ``measure``; an error (or Ctrl-C) after some of ``total`` ``unit`` does not lose
    them: the run stops, says why in ``run.interrupted`` and its notes, and keeps what it
    measured. Before the first, the error propagates: there is nothing to keep."""
    try:
        measure()
    except STOPS as exc:
        if not run.steps:
            raise
        run.interrupted = stop_reason(exc)
        run.notes.append(
            f"the run stopped after {len(run.steps)} of {total} {unit}: {run.interrupted}; "
            f"the figures are those of the {unit} measured"
        )


def _wait_until(instant: float) -> None:
    time.sleep(max(0.0, instant - time.time()))


def run_bench(
    run: BenchRun, request: HttpRequest | GrpcRequest, progress: Callable[[str], None]
) -> BenchRun:
    """Measure every concurrency of ``run.settings`` and fill ``run.steps`` (an error after
    some steps keeps them: ``keeping_steps``)."""
    total = len(run.settings.concurrencies)
    keeping_steps(run, lambda: _run_steps(run, request, progress), total, "steps")
    return run


def _run_steps(
    run: BenchRun, request: HttpRequest | GrpcRequest, progress: Callable[[str], None]
) -> None:
    settings, target = run.settings, run.target
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(GeneratorPool(settings.processes))
        calibration = (
            stack.enter_context(
                trivial_endpoint(grpc=target.endpoint.grpc, processes=settings.processes)
            )
            if settings.calibrate
            else None
        )
        raw = _Raw(run, request) if settings.raw_store is not None else None
        if raw is not None:
            engine = raw.engine
            stack.callback(engine.close)
            # the rates measured so far go in the report even if a later step fails
            stack.callback(lambda: run.raw_rates.update(engine.rates))
        for concurrency in settings.concurrencies:
            ceiling = _calibrate(pool, calibration, request, concurrency, settings)
            running = pool.start(
                target.endpoint,
                request,
                concurrency,
                settings.warmup_s,
                settings.seconds,
                settings.timeout_s,
            )
            before = after = None
            if raw is not None:
                _wait_until(running.window.measure_from)
                before = raw.counts()
            result = running.result()
            if raw is not None:
                after = raw.counts()
            step = Step.of(concurrency, result, run.payload.rows)
            step.ceiling = ceiling
            step.generator_limited = bool(ceiling) and step.throughput >= LIMITED_SHARE * (
                ceiling or 0.0
            )
            if raw is not None:
                raw.fill(step, before, after)
            run.steps.append(step)
            progress(_progress_line(step))


def _progress_line(step: Step) -> str:
    line = (
        f"concurrency {step.concurrency}: {step.throughput:.1f} req/s, "
        f"p50 {step.p50_ms:.2f} ms, p99 {step.p99_ms:.2f} ms, {step.error_count} errors"
    )
    if step.ratio is not None:
        line += f", served/raw {step.ratio:.2f}"
    return line


def target_fields(target: Target, protocol: str, payload: Payload) -> dict[str, Any]:
    """What a run measured, as both loops' JSON files begin."""
    return {
        "url": target.url,
        "model": target.model,
        "version": target.version,
        "protocol": protocol,
        "payload": payload.describe(),
    }


def as_dict(run: BenchRun) -> dict[str, Any]:
    """Every figure of the run, for the JSON file."""
    settings = run.settings
    return {
        **target_fields(run.target, settings.protocol, run.payload),
        "rows_per_request": run.payload.rows,
        "settings": {
            "concurrency": settings.concurrencies,
            "duration_s": settings.seconds,
            "warmup_s": settings.warmup_s,
            "processes": settings.processes,
            "timeout_s": settings.timeout_s,
            "raw_store": str(settings.raw_store) if settings.raw_store else None,
            "raw_seconds": settings.raw_seconds,
        },
        "calibration": {
            "endpoint": "trivial gRPC servicer"
            if run.target.endpoint.grpc
            else "trivial HTTP responder",
            "limited_share": LIMITED_SHARE,
            "ceilings": {str(s.concurrency): s.ceiling for s in run.steps},
        },
        "raw_rows_per_s_by_batch": {str(k): v for k, v in run.raw_rates.items()},
        "notes": run.notes,
        "interrupted": run.interrupted,
        "steps": [
            {
                **{k: v for k, v in vars(step).items() if k != "batches"},
                "batches": {str(k): v for k, v in (step.batches or {}).items()}
                if step.batches is not None
                else None,
            }
            for step in run.steps
        ],
    }
