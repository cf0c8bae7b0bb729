"""Where a batch runs: on the event loop itself, or on its instance's worker thread.

For a model that answers in tens of microseconds (a small MLP on ONNX Runtime: ~40 us),
the hand-off to a thread and back costs more than the model: ~350 us a request at
concurrency 1 on 2 busy cores, and under load the thread also waits for the GIL when
the model hands it back, up to Python's switch interval (5 ms) while the loop parses
requests. So a batch predicted (by the learnt ``BatchCost``) to compute in under
``INLINE_COMPUTE_S`` runs inline, on the loop: the loop stalls that long, less than the
hand-off would cost the batch.

Only an inline batch's time says how fast the model is: a batch timed on the thread holds
that GIL wait too (a 40 us model timed at 300 us to 3 ms on a busy server). Judged by those
times alone, a fast model would stay on the thread for good, the slow path keeping itself
slow (an open-loop run answered 118 of 1600 req/s that way). So a batch whose predicted
time could still hide a fast model (under ``INLINE_COMPUTE_S`` plus one switch interval)
runs inline now and then; its time joins the cost's fit, whose lower envelope then follows
the inline times. A probe that finds the model slow doubles the interval to the next one
(``PROBE_EVERY`` up to ``PROBE_AT_MOST`` batches), so that a model of a few milliseconds
stalls the loop rarely; one that finds it fast resets it. A model slower than that never
blocks the loop.
"""

from __future__ import annotations

import sys

from torchferry.serving.batchcost import BatchCost

#: Batches predicted to compute faster than this run inline.
INLINE_COMPUTE_S = 0.001
#: A batch that could be fast, though timed slow on the thread, runs inline this often (in
#: batches), at first and after a probe found it fast; at most this rarely.
PROBE_EVERY = 32
PROBE_AT_MOST = 1024


class InlineGate:
    """One batcher's choice of where its batches run (see the module's docstring)."""

    __slots__ = ("_probe_every", "_probing", "_since_probe")

    def __init__(self) -> None:
        self._probe_every = PROBE_EVERY
        self._since_probe = PROBE_EVERY  # the first candidate is probed at once
        self._probing = False

    def inline(self, rows: int, cost: BatchCost) -> bool:
        """Whether a batch of ``rows`` rows runs on the loop (never before the cost is
        known: the first batches run on the thread)."""
        if not cost.ready:
            return False
        predicted = cost.seconds(rows)
        if predicted < INLINE_COMPUTE_S:
            return True
        self._since_probe += 1
        if self._since_probe >= self._probe_every and predicted < (
            INLINE_COMPUTE_S + sys.getswitchinterval()
        ):
            self._since_probe = 0
            self._probing = True
            return True
        return False

    def ran_inline(self, seconds: float | None) -> None:
        """An inline batch computed in ``seconds`` (``None``: the model raised): a probe's
        time sets the interval to the next probe; a probe that failed says nothing."""
        if self._probing:
            self._probing = False
            if seconds is None:
                return
            fast = seconds < INLINE_COMPUTE_S
            self._probe_every = PROBE_EVERY if fast else min(PROBE_AT_MOST, 2 * self._probe_every)
