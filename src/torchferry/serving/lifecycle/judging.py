"""Judging a rollout's step: the figures a step accumulates from the workers' reads
(``Window``), the nearest-rank p99, and the verdict on them (``judge``)."""

from __future__ import annotations

import math
import time
from typing import Any

from torchferry.serving.lifecycle.state import Figures, RolloutStatus

COUNTERS = ("requests", "errors", "compared", "agreed")


def p99(samples: list[float]) -> float | None:
    """The nearest-rank 99th percentile (None without samples)."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


#: Each worker's figures of each version: worker index -> version -> figures.
WorkerFigures = dict[int, dict[int, dict[str, Any]]]


class Window:
    """Figures accumulated over one step. Counters are each worker's own, read as the
    difference from that worker's previous read: a worker that missed a read adds its
    requests when it answers again, never twice; a counter that went down belongs to a
    restarted worker, whose counts began again from zero. Latency samples are joined."""

    def __init__(self, last: WorkerFigures) -> None:
        self.started = time.monotonic()
        self._last: dict[tuple[int, int], dict[str, int]] = {
            (worker, version): {c: int(f.get(c) or 0) for c in COUNTERS}
            for worker, versions in last.items()
            for version, f in versions.items()
        }
        self._sums: dict[int, dict[str, int]] = {}
        self._latencies: dict[int, list[float]] = {}
        self._diff: dict[int, float | None] = {}

    def add(self, figures: WorkerFigures) -> None:
        for worker, versions in figures.items():
            for version, current in versions.items():
                last = self._last.setdefault((worker, version), dict.fromkeys(COUNTERS, 0))
                sums = self._sums.setdefault(version, dict.fromkeys(COUNTERS, 0))
                restarted = int(current.get("requests") or 0) < last["requests"]
                for counter in COUNTERS:
                    value = int(current.get(counter) or 0)
                    sums[counter] += value if restarted else max(0, value - last[counter])
                    last[counter] = value
                latencies = current.get("latencies_ms") or []
                self._latencies.setdefault(version, []).extend(latencies)
                diff = current.get("max_abs_diff")
                if diff is not None:
                    self._diff[version] = max(float(diff), self._diff.get(version) or 0.0)

    def fresh(self) -> Window:
        """The next step's window, starting from the counters read last."""
        window = Window({})
        window._last = {key: dict(c) for key, c in self._last.items()}
        return window

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def figures(self, version: int) -> Figures:
        sums = self._sums.get(version, dict.fromkeys(COUNTERS, 0))
        requests, compared = sums["requests"], sums["compared"]
        return Figures(
            requests=requests,
            errors=sums["errors"],
            error_rate=sums["errors"] / requests if requests else 0.0,
            p99_ms=p99(self._latencies.get(version, [])),
            compared=compared,
            agreement=sums["agreed"] / compared if compared else None,
            max_abs_diff=self._diff.get(version),
        )


def judge(
    status: RolloutStatus, canary: Figures, stable: Figures, elapsed: float
) -> tuple[str, str] | None:
    """The verdict on the step in progress and why; None: keep waiting."""
    spec = status.spec
    if status.phase == "pending":
        if canary.compared < spec.min_requests or canary.agreement is None:
            return None
        agreement = f"shadow agreement {canary.agreement:.2%} over {canary.compared} rows"
        if spec.min_agreement is not None and canary.agreement < spec.min_agreement:
            return "rollback", f"{agreement}, below {spec.min_agreement:.2%}"
        return "advance", agreement
    if canary.requests < spec.min_requests:
        return None
    where = f"at {status.weight}% ({canary.requests} requests)"
    if canary.error_rate > spec.max_error_rate:
        return "rollback", (
            f"error rate {canary.error_rate:.2%} ({canary.errors} errors) above "
            f"{spec.max_error_rate:.2%} {where}"
        )
    if (
        canary.p99_ms is not None
        and spec.max_p99_ms is not None
        and canary.p99_ms > spec.max_p99_ms
    ):
        return "rollback", f"p99 {canary.p99_ms:.1f} ms above {spec.max_p99_ms:g} ms {where}"
    if (
        spec.max_p99_ratio is not None
        and canary.p99_ms is not None
        and stable.p99_ms is not None
        and stable.requests >= spec.min_requests
        and canary.p99_ms > spec.max_p99_ratio * stable.p99_ms
    ):
        return "rollback", (
            f"p99 {canary.p99_ms:.1f} ms above {spec.max_p99_ratio:g} x the stable version's "
            f"{stable.p99_ms:.1f} ms {where}"
        )
    if elapsed < spec.interval_s:
        return None
    latency = f", p99 {canary.p99_ms:.1f} ms" if canary.p99_ms is not None else ""
    return "advance", f"error rate {canary.error_rate:.2%}{latency} {where}"
