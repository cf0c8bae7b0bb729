"""When to dispatch a batch: the adaptive rule, under an optional latency objective.

An instance is free, ``n`` rows are queued, the oldest request has waited ``w0``, rows
arrive every ``g`` seconds (an EWMA of the gaps), and a batch of ``n`` rows costs
``t(n) = a·n + b`` (``batchcost``). Dispatching now serves ``n`` rows in ``t(n)``; waiting
for one more row serves ``n + 1`` rows in ``g + t(n + 1)``. Waiting pays when it raises
throughput::

    (n + 1) / (g + t(n + 1)) > n / t(n)
    (n + 1)(a·n + b) > n(g + a·n + a + b)
    a·n² + a·n + b·n + b > g·n + a·n² + a·n + b·n
    b > g·n                          i.e.  g < b / n

So the batcher waits for the next arrival while ``n < max_batch_size`` and ``g·n < b``: the
fixed cost ``b`` of one more batch is worth more than the time the ``n`` queued rows spend
waiting for one more row. It re-decides on every arrival (``n`` and ``g`` change) and waits
at most ``b / n`` for one (an arrival later than that is no longer worth waiting for).

With an objective ``L`` (``max_latency_ms``) it also waits only while the oldest request
can still make it: ``w0 + g + t(n + 1) + margin <= L``, with a safety margin of
``SAFETY`` of ``L`` (the fit is an estimate, and the event loop wakes late under load).

Before the cost is known (a few batches), and in ``fixed`` mode, the rule is the fixed
window: wait at most ``max_delay_ms`` after the oldest request.
"""

from __future__ import annotations

import math
from typing import Literal

from torchferry.serving.batchcost import BatchCost

Mode = Literal["adaptive", "fixed"]
#: Share of the objective kept as a margin against estimation error and late wake-ups.
SAFETY = 0.1
#: Weight of the newest gap in the arrival EWMA.
GAP_WEIGHT = 0.2


class ArrivalGap:
    """Seconds between two rows, as an EWMA of the gaps between arrivals (per row)."""

    __slots__ = ("last", "seconds")

    def __init__(self) -> None:
        self.seconds = math.inf
        self.last: float | None = None

    def arrived(self, now: float, rows: int) -> None:
        if self.last is not None:
            gap = max(0.0, now - self.last) / max(1, rows)
            ema = self.seconds
            self.seconds = gap if ema == math.inf else ema + GAP_WEIGHT * (gap - ema)
        self.last = now

    def current(self, now: float) -> float:
        """The gap to expect now: a silence longer than the average says the rate fell."""
        if self.last is None:
            return math.inf
        return max(self.seconds, now - self.last)


def adaptive_wait(
    rows: int,
    gap_s: float,
    waited_s: float,
    cost: BatchCost,
    max_batch_size: int,
    objective_s: float | None,
) -> float:
    """Seconds to wait for the next arrival before dispatching ``rows`` queued rows (0:
    dispatch now), by the rule of the module's docstring."""
    if rows >= max_batch_size or gap_s * rows >= cost.b:
        return 0.0
    wait = cost.b / rows
    if objective_s is not None:
        slack = objective_s * (1 - SAFETY) - waited_s - cost.seconds(rows + 1)
        if slack < gap_s:
            return 0.0
        wait = min(wait, slack)
    return wait


def fixed_wait(waited_s: float, max_delay_s: float) -> float:
    """Seconds left of the fixed window (``max_delay`` after the oldest request)."""
    return max(0.0, max_delay_s - waited_s)
