"""Live figures per model version, for the supervisor's rollouts and shadow checks.

Each loaded version has a :class:`VersionStats` from the moment it is loaded in this worker:
requests and server-side errors (counted by :class:`StatsObserver` from each finished
request record), a reservoir sample of request latencies since the last drain, and the
shadow comparisons made against it (``shadow.py``). The supervisor reads them with the
``stats`` control command; a drain hands over the latency sample and starts a new one.

The observer runs for every request, after its answer has gone: one dict lookup, two
integer additions and, while the sample is not full, one list append.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from torchferry.serving.observe import RequestRecord

#: Latencies kept per version between two drains (a uniform sample of those answered).
RESERVOIR = 2000
#: gRPC codes that are the server's fault (HTTP: every 5xx).
SERVER_GRPC_CODES = frozenset(
    {"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
)


def server_error(status: str) -> bool:
    """Whether a finished request's status is a server-side failure (client errors are not)."""
    return status[:1] == "5" if status[:1].isdigit() else status in SERVER_GRPC_CODES


class VersionStats:
    """One version's counters since it was loaded, and its latency sample since the last
    drain."""

    __slots__ = ("agreed", "compared", "errors", "latencies_ms", "max_abs_diff", "requests", "seen")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.compared = 0
        self.agreed = 0
        self.max_abs_diff: float | None = None
        self.latencies_ms: list[float] = []
        #: Latencies offered to the sample since the last drain (reservoir sampling).
        self.seen = 0

    def finished(self, status: str, latency_s: float) -> None:
        self.requests += 1
        if server_error(status):
            self.errors += 1
        self.seen += 1
        sample = self.latencies_ms
        if len(sample) < RESERVOIR:
            sample.append(latency_s * 1000.0)
            return
        slot = random.randrange(self.seen)
        if slot < RESERVOIR:
            sample[slot] = latency_s * 1000.0

    def compared_rows(self, rows: int, agreed: int, max_abs_diff: float | None) -> None:
        """A shadow comparison against this version: ``rows`` compared, ``agreed`` agreed."""
        self.compared += rows
        self.agreed += agreed
        if max_abs_diff is not None and (
            self.max_abs_diff is None or max_abs_diff > self.max_abs_diff
        ):
            self.max_abs_diff = max_abs_diff

    def report(self, drain: bool) -> dict[str, Any]:
        """The ``stats`` reply for this version; with ``drain`` the latency sample is handed
        over and a new one starts, else it is left alone and not sent."""
        latencies: list[float] = []
        if drain:
            latencies, self.latencies_ms, self.seen = self.latencies_ms, [], 0
        return {
            "requests": self.requests,
            "errors": self.errors,
            "compared": self.compared,
            "agreed": self.agreed,
            "max_abs_diff": self.max_abs_diff,
            "latencies_ms": latencies,
        }


class StatsObserver:
    """The request observer that feeds each version's :class:`VersionStats`; ``lookup`` finds
    a version's stats by model name and version text (None: not loaded any more)."""

    __slots__ = ("lookup",)

    def __init__(self, lookup: Callable[[tuple[str, str]], VersionStats | None]) -> None:
        self.lookup = lookup

    def __call__(self, record: RequestRecord) -> None:
        model = record.model
        if model is None:
            return
        stats = self.lookup((model, record.version or ""))
        if stats is not None:
            stats.finished(record.status, (record.ended or 0.0) - record.started)
