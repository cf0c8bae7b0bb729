"""Shedding: refuse early what cannot be answered in time, rather than compute it late.

A request's limit is the sooner of its own timeout (the data plane's: V2 ``timeout``, the
gRPC deadline, ``--request-timeout``; reason ``deadline``) and the latency objective
(``max_latency_ms``; reason ``objective``). With ``shed="early"`` and once the batch cost
is known (never on a cold model):

- at submit, the predicted wait is the time left of the batches in flight plus the cost of
  the rows queued ahead of it (its priority level and the ones before it), shared among
  the instances, plus its own batch; past its limit it is refused at once (503);
- when its batch forms, a request whose batch would end past its limit is refused (503),
  if the batch's compute is a real share (``WORTH_SHEDDING``) of that limit. A batch that
  costs a fraction of a millisecond is late because the event loop is (HTTP-bound), not
  because of the model: refusing its requests then saves the others nothing, and turns
  late answers into failures (open loop, a 50 us MLP at 2000 req/s: 492 answers/s with
  that shedding, 1922 without). Such requests are answered, late.

A request with nothing ahead of it (no batch computing, nothing queued) is never shed: only
batches that run refresh the cost, so shedding it would refuse every request of an idle
model forever once the estimate ever exceeded the limit; run alone, it corrects the estimate.
Only queueing the batcher sees makes a shed: time spent before ``submit`` (the HTTP layer)
is not predicted.

Whatever ``shed`` says, a request already past its own deadline when its batch forms is
answered 504, as its timer would (the timer may fire late on a busy event loop).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Literal

from torchferry.errors import InferenceTimeout, Overloaded, TorchferryError
from torchferry.serving.batchcost import BatchCost
from torchferry.serving.batchqueue import BatchQueue, QueuedRequest

log = logging.getLogger("torchferry.batcher")

Shed = Literal["early", "never"]
#: When a batch forms, a late request is shed only if the batch's compute is at least this
#: share of that request's own limit.
WORTH_SHEDDING = 0.02


def timed_out(name: str, timeout_s: float) -> InferenceTimeout:
    """The 504 of a request that was not answered within its own ``timeout_s``."""
    return InferenceTimeout(f"model {name!r} did not answer within {timeout_s:.3g} s")


class Shedder:
    """One batcher's shedding rule; ``count(reason)`` hears of every request shed."""

    def __init__(
        self,
        name: str,
        policy: Shed,
        objective_s: float | None,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.policy: Shed = policy
        self.objective = objective_s
        self._count = count

    def limit(self, timeout_s: float | None) -> float:
        """Seconds from arrival the request may take: the sooner of its own timeout and
        the objective (``math.inf`` without either)."""
        objective = self.objective
        if timeout_s is None:
            return math.inf if objective is None else objective
        return timeout_s if objective is None or timeout_s <= objective else objective

    def _reason(self, timeout_s: float | None) -> str:
        objective = self.objective
        if timeout_s is not None and (objective is None or timeout_s <= objective):
            return "deadline"
        return "objective"

    def active(self, cost: BatchCost) -> bool:
        return self.policy == "early" and cost.ready

    def sheds_on_objective(self, cost: BatchCost) -> bool:
        """Whether a batch without deadlines may still be shed (by the objective)."""
        return self.objective is not None and self.active(cost)

    def admit(
        self,
        rows: int,
        level: int,
        timeout_s: float | None,
        now: float,
        cost: BatchCost,
        busy: dict[int, tuple[float, int]],
        queue: BatchQueue,
        max_batch_size: int,
        instances: int,
    ) -> None:
        """At submit: refuse (raise 503) a request of ``rows`` rows at priority ``level``
        predicted to miss its limit: the time left of the batches in flight (``busy``:
        started, rows) and of the rows queued ahead of it, shared among the ``instances``,
        then its own batch (a request above ``max_batch_size`` rows runs alone, whole)."""
        if self.policy != "early" or not cost.ready or (not busy and not queue.requests):
            return  # nothing ahead of it: it runs, and refreshes the estimate
        limit = self.limit(timeout_s)
        if limit == math.inf:
            return
        ahead = 0.0
        if busy:
            for started, running in busy.values():
                left = started + cost.seconds(running) - now
                if left > 0:
                    ahead += left
        if queue.rows:
            ahead += cost.seconds_for_rows(queue.rows_ahead(level), max_batch_size)
        wait_s = ahead / instances + cost.seconds(rows)
        if wait_s > limit:
            raise self.refusal(self._reason(timeout_s), wait_s, limit)

    def recheck(
        self, batch: list[QueuedRequest], now: float, cost: BatchCost, alone: bool
    ) -> list[QueuedRequest]:
        """When ``batch`` forms: the requests to compute. A request past its own deadline is
        answered 504; one whose batch would end past its limit, while that batch's compute
        is at least ``WORTH_SHEDDING`` of the limit, is shed (503); the others are kept,
        late or not. ``alone``: no other batch computes and nothing else is queued (then
        nothing is shed, see the module's docstring)."""
        shedding = self.active(cost) and not alone
        if (self.objective is None or not shedding) and all(r.deadline is None for r in batch):
            return batch
        compute_s = cost.seconds(sum(r.rows for r in batch)) if shedding else 0.0
        done_at = now + compute_s
        kept = []
        for request in batch:
            own = None if request.deadline is None else request.deadline - request.arrived
            error: TorchferryError
            if own is not None and request.deadline is not None and request.deadline <= now:
                error = timed_out(self.name, own)
            elif (
                shedding
                and done_at - request.arrived > (limit := self.limit(own))
                and compute_s >= WORTH_SHEDDING * limit
            ):
                error = self.refusal(self._reason(own), done_at - request.arrived, limit)
            else:
                kept.append(request)
                continue
            if not request.future.done():
                request.future.set_exception(error)
        return kept

    def refusal(self, reason: str, wait_s: float, limit_s: float) -> Overloaded:
        """The 503 of a shed request (counted; logged at DEBUG: under overload, INFO would
        flood). Its message is built once, and only formatted again by a DEBUG log."""
        if self._count is not None:
            self._count(reason)
        what = "its deadline" if reason == "deadline" else "the latency objective"
        message = (
            f"model {self.name!r} is overloaded: predicted wait {wait_s * 1000:.1f} ms "
            f"exceeds {what} of {limit_s * 1000:.1f} ms"
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("shed: %s", message)
        return Overloaded(message, retry_after=max(0.1, wait_s))
