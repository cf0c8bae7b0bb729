"""What a batch costs: ``t(n) = a·n + b`` seconds for ``n`` rows, learnt online.

One ``BatchCost`` per batcher (per model version, per worker): every batch the model
answers adds its (rows, compute seconds); every ``REFIT_EVERY`` batches, the fastest time
seen for each batch size among the last ``WINDOW`` batches (``lower_envelope``: contention
only ever adds time) is refitted by least squares, so that the estimate follows a model
whose cost drifts without a refit per batch.

The fit is constrained to ``a >= 0`` and ``b >= 0`` (a batch never costs less with more
rows, nor less than nothing when empty):

- fewer than ``MIN_SAMPLES`` batches: no estimate (``ready`` is false; the batcher then
  behaves as the fixed window does, and never sheds);
- every sample with the same ``n`` (an idle server sees only single rows): the line cannot
  be told from its intercept, so all of the cost goes to ``a`` (``a = t / n``,
  ``b = 0``): no reason to wait for more rows until batches of other sizes show that a
  batch has a fixed part;
- an unconstrained fit with ``b < 0``: refit through the origin (``b = 0``,
  ``a = Σnt / Σn²``); one with ``a < 0`` (noise on a cost that hardly depends on ``n``):
  ``a = 0``, ``b = mean t``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

#: Batches remembered for the fit.
WINDOW = 64
#: Batches before the first estimate.
MIN_SAMPLES = 4
#: Refit after this many new batches.
REFIT_EVERY = 4


class BatchCost:
    """The learnt cost of a batch (seconds), from the batches the model answered."""

    __slots__ = ("_samples", "_since_fit", "a", "b", "ready")

    def __init__(self) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=WINDOW)
        self._since_fit = 0
        #: Seconds per row and seconds per batch; meaningful once ``ready``.
        self.a = 0.0
        self.b = 0.0
        self.ready = False

    def add(self, rows: int, seconds: float) -> None:
        """One batch of ``rows`` rows computed in ``seconds`` (the model alone)."""
        if rows <= 0 or seconds < 0:
            return
        samples = self._samples
        samples.append((rows, seconds))
        self._since_fit += 1
        if len(samples) >= MIN_SAMPLES and (not self.ready or self._since_fit >= REFIT_EVERY):
            self.a, self.b = fit_below(lower_envelope(samples))
            self.ready = True
            self._since_fit = 0

    def seconds(self, rows: int) -> float:
        """The predicted compute time of one batch of ``rows`` rows."""
        return self.a * rows + self.b

    def seconds_for_rows(self, rows: int, max_batch_size: int) -> float:
        """The predicted time to compute ``rows`` rows in batches of at most
        ``max_batch_size`` (full batches first)."""
        full, rest = divmod(rows, max_batch_size)
        total = full * self.seconds(max_batch_size)
        return total + (self.seconds(rest) if rest else 0.0)


def fit_below(points: list[tuple[int, float]], rounds: int = 3) -> tuple[float, float]:
    """``fit`` of the points, refitted to those on or under the line a few times: with a
    handful of batches per size, even the fastest of a size may have waited, and those
    points sit above the model's line, never under it."""
    a, b = fit(points)
    for _ in range(rounds):
        under = [(n, t) for n, t in points if t <= a * n + b]
        if len({n for n, _ in under}) < 2 or len(under) == len(points):
            break
        points = under
        a, b = fit(points)
    return a, b


def lower_envelope(samples: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    """The fastest time seen for each batch size. A batch's measured time also holds what
    kept its thread from running: waiting for the GIL after the engine released it (up to
    Python's 5 ms switch interval while the event loop parses requests), a neighbour on the
    same cores. Those only ever add time, so the least time per size is the model's own;
    a mean would price a 50 us model at milliseconds on a busy server, and make it wait for
    rows and shed requests for nothing."""
    fastest: dict[int, float] = {}
    for n, t in samples:
        if t < fastest.get(n, math.inf):
            fastest[n] = t
    return list(fastest.items())


def fit(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``t = a·n + b`` over ``(n, t)`` samples, with ``a, b >= 0`` (see the
    module's docstring for the fallbacks)."""
    count = len(samples)
    sum_n = sum_t = sum_nn = sum_nt = 0.0
    for n, t in samples:
        sum_n += n
        sum_t += t
        sum_nn += n * n
        sum_nt += n * t
    mean_n, mean_t = sum_n / count, sum_t / count
    var_n = sum_nn - count * mean_n * mean_n
    if var_n <= 1e-9 * max(1.0, sum_nn):  # one distinct size: no intercept to tell
        return mean_t / mean_n, 0.0
    a = (sum_nt - count * mean_n * mean_t) / var_n
    b = mean_t - a * mean_n
    if a < 0:
        return 0.0, mean_t
    if b < 0:
        return sum_nt / sum_nn, 0.0
    return a, b
