"""Shedding: refuse early what cannot be answered in time, rather than compute it late.

A request's limit is the sooner of its own timeout (the data plane's: V2 ``timeout``, the
gRPC deadline, ``--request-timeout``; reason ``deadline``) and the latency objective
(``max_latency_ms``; reason ``objective``). With ``shed="early"`` and once the batch cost
is known (never on a cold model):

- at submit, the predicted wait is the time left of the batches in flight plus the cost of
  the rows queued ahead of it (its priority level and the ones before it), shared among
  the instances, plus its own batch; past its limit it is refused at once (503);
- when its batch forms, a request whose batch would end past its limit is refused (503).

Whatever ``shed`` says, a request already past its own deadline when its batch forms is
answered 504, as its timer would (the timer may fire late on a busy event loop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from torchferry.errors import InferenceTimeout, Overloaded, TorchferryError
from torchferry.serving.batchcost import BatchCost
from torchferry.serving.batchqueue import QueuedRequest

log = logging.getLogger("torchferry.batcher")

Shed = Literal["early", "never"]


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

    def limit(self, timeout_s: float | None) -> tuple[float, str] | None:
        """Seconds from arrival the request may take (the sooner of its own timeout and the
        objective), and the reason that goes with it; None without either."""
        limits = []
        if timeout_s is not None:
            limits.append((timeout_s, "deadline"))
        if self.objective is not None:
            limits.append((self.objective, "objective"))
        return min(limits) if limits else None

    def active(self, cost: BatchCost) -> bool:
        return self.policy == "early" and cost.ready

    def check(self, wait_s: float, timeout_s: float | None) -> None:
        """At submit: refuse a request predicted to wait ``wait_s`` past its limit."""
        limit = self.limit(timeout_s)
        if limit is not None and wait_s > limit[0]:
            raise self.refusal(limit[1], wait_s, limit[0])

    def recheck(
        self, batch: list[QueuedRequest], now: float, cost: BatchCost
    ) -> list[QueuedRequest]:
        """When ``batch`` forms: the requests that can still be answered in time; the
        others are answered (504 past their own deadline, else 503 shed)."""
        shedding = self.active(cost)
        if (self.objective is None or not shedding) and all(r.deadline is None for r in batch):
            return batch
        done_at = now + cost.seconds(sum(r.rows for r in batch)) if shedding else now
        kept = []
        for request in batch:
            own = None if request.deadline is None else request.deadline - request.arrived
            limit = self.limit(own) if shedding else None
            error: TorchferryError
            if request.deadline is not None and request.deadline <= now:
                error = InferenceTimeout(f"model {self.name!r} did not answer within {own:.3g} s")
            elif limit is not None and done_at - request.arrived > limit[0]:
                error = self.refusal(limit[1], done_at - request.arrived, limit[0])
            else:
                kept.append(request)
                continue
            if not request.future.done():
                request.future.set_exception(error)
        return kept

    def refusal(self, reason: str, wait_s: float, limit_s: float) -> Overloaded:
        """The 503 of a shed request (counted; logged at DEBUG: under overload, INFO would
        flood)."""
        if self._count is not None:
            self._count(reason)
        what = "its deadline" if reason == "deadline" else "the latency objective"
        message = (
            f"model {self.name!r} is overloaded: predicted wait {wait_s * 1000:.1f} ms "
            f"exceeds {what} of {limit_s * 1000:.1f} ms"
        )
        log.debug("shed: %s", message)
        return Overloaded(message, retry_after=max(0.1, wait_s))
