"""An open-loop bench run: each rate in turn, Poisson arrivals, the server's batches read
around each step; and its table and JSON document.

A step "holds the objective" when the p99 latency of every request scheduled in the step,
failures counted as misses (an infinite latency), is within ``--objective-ms``: a server
that sheds load to keep its latency does not get credit for the requests it refused.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from torchferry.loadtest.generator import GrpcRequest, HttpRequest
from torchferry.loadtest.openloop import NO_CONNECTION, OpenResult
from torchferry.loadtest.payloads import Payload
from torchferry.loadtest.pool import GeneratorPool, OpenShare
from torchferry.loadtest.run import _wait_until, keeping_steps, percentile, target_fields
from torchferry.loadtest.target import Target
from torchferry.optimize.report import significant

#: Error kinds that are a server shedding load: HTTP 503, gRPC RESOURCE_EXHAUSTED.
SHED_KINDS = ("503", "RESOURCE_EXHAUSTED")


@dataclass(frozen=True)
class OpenSettings:
    protocol: str
    rates: list[float]
    seconds: float
    warmup_s: float
    processes: int
    timeout_s: float = 30.0
    arrivals: str = "poisson"
    seed: int = 0
    max_connections: int = 512
    objective_ms: float | None = None
    #: A rate's step lasts long enough to schedule this many requests on average (a low
    #: rate's p99 is otherwise the maximum of a handful).
    min_requests: int = 0

    def seconds_at(self, rate: float) -> float:
        return max(self.seconds, self.min_requests / rate)


@dataclass
class RateStep:
    """One rate's figures; latencies from each request's scheduled start."""

    offered: float  # the rate asked for
    scheduled_rate: float  # requests the schedule held in the window, per second
    achieved: float  # successful answers per second
    scheduled: int
    ok: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    #: p99 over every scheduled request, a failure counting as an infinite latency.
    p99_all_ms: float
    errors: dict[str, int]
    lag_p99_ms: float
    peak_connections: int
    #: Batches the server ran in this step by size (V2 statistics), when it reports them.
    batches: dict[int, int] | None = None

    @classmethod
    def of(cls, offered: float, result: OpenResult) -> RateStep:
        ordered = sorted(result.latencies_ms)
        failed = result.scheduled - result.ok
        with_misses = ordered + [math.inf] * failed
        return cls(
            offered=offered,
            scheduled_rate=result.scheduled / result.seconds if result.seconds else 0.0,
            achieved=result.ok / result.seconds if result.seconds else 0.0,
            scheduled=result.scheduled,
            ok=result.ok,
            p50_ms=percentile(ordered, 50),
            p90_ms=percentile(ordered, 90),
            p99_ms=percentile(ordered, 99),
            max_ms=ordered[-1] if ordered else math.nan,
            p99_all_ms=percentile(with_misses, 99),
            errors=dict(sorted(result.errors.items())),
            lag_p99_ms=percentile(sorted(result.lag_ms), 99),
            peak_connections=result.peak_connections,
        )

    @property
    def shed(self) -> int:
        return sum(self.errors.get(kind, 0) for kind in SHED_KINDS)

    @property
    def other_errors(self) -> dict[str, int]:
        return {k: v for k, v in self.errors.items() if k not in SHED_KINDS}

    @property
    def mean_batch(self) -> float | None:
        if not self.batches:
            return None
        return sum(size * n for size, n in self.batches.items()) / sum(self.batches.values())

    @property
    def max_batch(self) -> int | None:
        if not self.batches:
            return None
        return max(size for size, n in self.batches.items() if n > 0)

    def holds(self, objective_ms: float) -> bool:
        return self.scheduled > 0 and self.p99_all_ms <= objective_ms


@dataclass
class OpenRun:
    target: Target
    settings: OpenSettings
    payload: Payload
    steps: list[RateStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: str | None = None

    def highest_holding(self) -> float | None:
        """The highest offered rate whose step holds the objective (None: none does)."""
        objective = self.settings.objective_ms
        if objective is None:
            return None
        held = [step.offered for step in self.steps if step.holds(objective)]
        return max(held) if held else None


def run_open(
    run: OpenRun, request: HttpRequest | GrpcRequest, progress: Callable[[str], None]
) -> OpenRun:
    """Measure every rate of ``run.settings``; an error or Ctrl-C after some steps keeps
    them (``run.interrupted`` says why), before the first it propagates."""
    keeping_steps(run, lambda: _run_rates(run, request, progress), len(run.settings.rates), "rates")
    return run


def _run_rates(
    run: OpenRun, request: HttpRequest | GrpcRequest, progress: Callable[[str], None]
) -> None:
    settings, target = run.settings, run.target
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(GeneratorPool(settings.processes))
        for index, rate in enumerate(settings.rates):
            share = OpenShare(
                rate, settings.seed + index, settings.arrivals, settings.max_connections
            )
            running = pool.start_open(
                target.endpoint,
                request,
                share,
                settings.warmup_s,
                settings.seconds_at(rate),
                settings.timeout_s,
            )
            _wait_until(running.window.measure_from)
            before = target.batch_counts()
            result = running.result()
            after = target.batch_counts()
            step = RateStep.of(rate, result)
            if before is not None and after is not None:
                # from the end of the warm-up to the last answer of the step
                step.batches = dict(sorted((after - before).items()))
            run.steps.append(step)
            progress(_progress_line(step))
        if any(NO_CONNECTION in step.errors for step in run.steps):
            run.notes.append(
                f"{NO_CONNECTION}: the generator had {settings.max_connections} connections "
                "busy and none free (a client-side miss, counted against the objective)"
            )


def _ms(value: float) -> str:
    return "" if not math.isfinite(value) else significant(value)


def _progress_line(step: RateStep) -> str:
    return (
        f"rate {step.offered:g}/s: {step.achieved:.1f} ok/s, p50 {_ms(step.p50_ms)} ms, "
        f"p99 {_ms(step.p99_ms)} ms, {sum(step.errors.values())} failed, "
        f"lag p99 {_ms(step.lag_p99_ms)} ms"
    )


#: Latencies in ms; "lag" is the generator's p99 lateness, "batch" the server's mean.
COLUMNS = (
    "rate/s",
    "ok/s",
    "p50",
    "p90",
    "p99",
    "max",
    "shed",
    "errors",
    "batch",
    "max batch",
    "lag p99",
    "holds",
)


def cells(step: RateStep, objective_ms: float | None) -> list[str]:
    others = ", ".join(f"{k}: {v}" for k, v in step.other_errors.items()) or "0"
    mean = step.mean_batch
    holds = "" if objective_ms is None else ("yes" if step.holds(objective_ms) else "no")
    return [
        significant(step.offered),
        significant(step.achieved),
        _ms(step.p50_ms),
        _ms(step.p90_ms),
        _ms(step.p99_ms),
        _ms(step.max_ms),
        str(step.shed),
        others,
        "" if mean is None else f"{mean:.1f}",
        "" if step.max_batch is None else str(step.max_batch),
        _ms(step.lag_p99_ms),
        holds,
    ]


def open_table(run: OpenRun) -> Table:
    settings = run.settings
    title = f"{run.target.model} over {settings.protocol} at {run.target.url}, open loop"
    caption = [
        f"{settings.arrivals} arrivals, {settings.seconds:g} s per rate after "
        f"{settings.warmup_s:g} s warm-up, {settings.processes} generator process(es); "
        f"latencies in ms from each request's scheduled start; lag: how late the "
        f"generator sent (p99); batch: the server's mean; payload {run.payload.describe()}"
    ]
    if settings.objective_ms is not None:
        best = run.highest_holding()
        caption.append(
            f"objective: p99 <= {settings.objective_ms:g} ms, failures counted as misses; "
            + (f"held up to {best:g}/s" if best is not None else "held at no rate")
        )
    caption.extend(run.notes)
    table = Table(title=title, caption="\n".join(caption))
    for heading in COLUMNS:
        table.add_column(heading, justify="right")
    for step in run.steps:
        table.add_row(*cells(step, settings.objective_ms), style="red" if step.errors else None)
    return table


def open_as_dict(run: OpenRun) -> dict[str, Any]:
    settings = run.settings
    return {
        **target_fields(run.target, settings.protocol, run.payload),
        "loop": "open",
        "settings": {
            "rates": settings.rates,
            "arrivals": settings.arrivals,
            "duration_s": settings.seconds,
            "warmup_s": settings.warmup_s,
            "processes": settings.processes,
            "timeout_s": settings.timeout_s,
            "seed": settings.seed,
            "max_connections": settings.max_connections,
            "objective_ms": settings.objective_ms,
        },
        "highest_rate_holding_objective": run.highest_holding(),
        "notes": run.notes,
        "interrupted": run.interrupted,
        "steps": [
            {
                **{
                    k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                    for k, v in vars(step).items()
                    if k != "batches"
                },
                "shed": step.shed,
                "mean_batch": step.mean_batch,
                "max_batch": step.max_batch,
                "batches": None
                if step.batches is None
                else {str(k): v for k, v in step.batches.items()},
                "holds_objective": None
                if settings.objective_ms is None
                else step.holds(settings.objective_ms),
            }
            for step in run.steps
        ],
    }
