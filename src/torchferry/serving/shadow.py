"""Shadow traffic: a share of the requests a model's routes answer is mirrored to its shadow
version, whose answers are only compared, never sent.

The mirror starts after the primary answer is computed, in a task of its own with a fresh
context (the client's request record is not the mirror's), so it can neither delay nor fail
the client's answer. At most ``MAX_IN_FLIGHT`` mirrors per model run at once; past that,
requests are not mirrored. The comparison takes the first output both versions have (in
the primary's signature order) and counts, per row, whether the argmax along the last axis
agrees (equality for one-dimensional or non-numeric outputs), and the largest absolute
difference, into the shadow version's ``VersionStats`` and, with metrics on, Prometheus.
The mirrored inputs live only until the comparison ends: nothing is stored or logged.
Under a memory budget, a mirror to a shadow version that is not resident loads it first (in
the mirror's task), and counts as that version's use.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time

import numpy as np

from torchferry.errors import TorchferryError
from torchferry.serving import metrics
from torchferry.serving.repository import LoadedModel
from torchferry.serving.residency import Residency

log = logging.getLogger("torchferry.shadow")

#: Mirrors in flight per model; past this, requests are not mirrored (never queued).
MAX_IN_FLIGHT = 64
#: The longest a mirror may wait for the shadow version, when the server sets no timeout.
MIRROR_TIMEOUT_S = 60.0

Arrays = dict[str, np.ndarray]


class Shadows:
    """The mirrors of one data plane."""

    def __init__(
        self, metrics_on: bool, timeout_s: float | None, residency: Residency | None = None
    ) -> None:
        self.metrics_on = metrics_on
        #: With a memory budget: a mirror to a shadow version that is not resident loads it
        #: first (the client's answer never waits for it; one that cannot load is dropped).
        self.residency = residency
        self.timeout_s = min(timeout_s, MIRROR_TIMEOUT_S) if timeout_s else MIRROR_TIMEOUT_S
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def chosen(share: float) -> bool:
        """Whether this request is in the mirrored share."""
        return share >= 1.0 or random.random() < share

    def mirror(
        self, primary: LoadedModel, shadow: LoadedModel, inputs: Arrays, outputs: Arrays
    ) -> None:
        """Send ``inputs`` to ``shadow`` in the background and compare its answer with the
        primary's ``outputs`` (skipped when the model has too many mirrors in flight)."""
        name = primary.name
        running = self._in_flight.get(name, 0)
        if running >= MAX_IN_FLIGHT or shadow.retired:
            return
        self._in_flight[name] = running + 1
        shadow.inflight += 1  # a retirement of the shadow waits for its mirrors
        names = [n for n in primary.signature.output_names if n in outputs]
        task = asyncio.get_running_loop().create_task(
            self._run(shadow, inputs, outputs, names), context=contextvars.Context()
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._done(name, shadow))

    def _done(self, name: str, shadow: LoadedModel) -> None:
        self._in_flight[name] -= 1
        shadow.inflight -= 1
        if shadow.retired and not shadow.inflight:
            shadow.left()

    async def _run(
        self, shadow: LoadedModel, inputs: Arrays, primary: Arrays, names: list[str]
    ) -> None:
        try:
            if self.residency is not None:
                await self.residency.ensure(shadow, time.monotonic() + self.timeout_s)
            answer = await shadow.batcher.submit(inputs, self.timeout_s)
        except Exception as exc:  # the shadow's failure is nobody's answer
            reason = exc.log_message if isinstance(exc, TorchferryError) else type(exc).__name__
            log.debug("shadow %s version %d: %s", shadow.name, shadow.version, reason)
            return
        for name in names:
            if name in answer:
                rows, agreed, diff = compare(primary[name], answer[name])
                shadow.stats.compared_rows(rows, agreed, diff)
                if self.metrics_on:
                    metrics.shadow_compared(shadow.name, str(shadow.version), rows, agreed, diff)
                return

    async def close(self, timeout_s: float) -> None:
        """Wait for the mirrors in flight, at most ``timeout_s`` seconds, then cancel the rest
        (a mirror is nobody's answer). The app's drain calls it before the batchers close."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(list(self._tasks), timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
            log.warning("%d shadow mirror(s) cancelled at the drain timeout", len(late))


def compare(primary: np.ndarray, shadow: np.ndarray) -> tuple[int, int, float | None]:
    """(rows compared, rows that agree, max |shadow - primary| as float64 or None)."""
    rows = primary.shape[0] if primary.ndim else 1
    if primary.shape != shadow.shape:
        return rows, 0, None
    numeric = primary.dtype.kind in "biuf" and shadow.dtype.kind in "biuf"
    if numeric and primary.ndim >= 2:
        same = primary.argmax(axis=-1) == shadow.argmax(axis=-1)
    else:
        same = primary == shadow
    agreed = int(np.asarray(same).reshape(rows, -1).all(axis=1).sum())
    if not numeric or primary.size == 0:
        return rows, agreed, None
    diff = np.abs(primary.astype(np.float64) - shadow.astype(np.float64))
    return rows, agreed, float(diff.max())
