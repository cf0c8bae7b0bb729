"""What a batch costs: ``t(n) = a·n + b`` seconds for ``n`` rows, learnt online.

One ``BatchCost`` per batcher (per model version, per worker): every batch the model
answers adds its (rows, compute seconds); the last ``WINDOW`` batches are refitted by least
squares every ``REFIT_EVERY`` batches, so that the estimate follows a model whose cost
drifts (a warming cache, a neighbour on the same cores) without a refit per batch.

The fit is constrained to ``a >= 0`` and ``b >= 0`` (a batch never costs less with more
rows, nor less than nothing when empty):

- fewer than ``MIN_SAMPLES`` batches: no estimate (``ready`` is false; the batcher then
  behaves as the fixed window does, and never sheds);
- every sample with the same ``n`` (an idle server sees only single rows): the line cannot
  be told from its intercept, so all of the cost goes to ``a`` (``a = mean t / n``,
  ``b = 0``): no reason to wait for more rows until batches of other sizes show that a
  batch has a fixed part;
- an unconstrained fit with ``b < 0``: refit through the origin (``b = 0``,
  ``a = Σnt / Σn²``); one with ``a < 0`` (noise on a cost that hardly depends on ``n``):
  ``a = 0``, ``b = mean t``.
"""

from __future__ import annotations

from collections import deque

#: Batches remembered for the fit.
WINDOW = 64
#: Batches before the first estimate.
MIN_SAMPLES = 4
#: Refit after this many new batches.
REFIT_EVERY = 4


class BatchCost:
    """The learnt cost of a batch (seconds), from the batches the model answered.

    The sums the fit needs are kept as batches come and go (a refit costs a few float
    operations, not a pass over the window: this runs on the event loop, per batch)."""

    __slots__ = ("_samples", "_since_exact", "_since_fit", "_sums", "a", "b", "ready")

    def __init__(self) -> None:
        self._samples: deque[tuple[int, float]] = deque()
        #: Σn, Σt, Σn², Σnt over the window.
        self._sums = [0.0, 0.0, 0.0, 0.0]
        self._since_fit = self._since_exact = 0
        #: Seconds per row and seconds per batch; meaningful once ``ready``.
        self.a = 0.0
        self.b = 0.0
        self.ready = False

    def add(self, rows: int, seconds: float) -> None:
        """One batch of ``rows`` rows computed in ``seconds`` (the model alone)."""
        if rows <= 0 or seconds < 0:
            return
        samples, sums = self._samples, self._sums
        samples.append((rows, seconds))
        _accumulate(sums, rows, seconds, 1)
        if len(samples) > WINDOW:
            _accumulate(sums, *samples.popleft(), -1)
        self._since_fit += 1
        self._since_exact += 1
        if self._since_exact >= WINDOW:  # now and then, from scratch: no rounding drift
            self._since_exact = 0
            self._sums = sums = [0.0, 0.0, 0.0, 0.0]
            for n, t in samples:
                _accumulate(sums, n, t, 1)
        if len(samples) >= MIN_SAMPLES and (not self.ready or self._since_fit >= REFIT_EVERY):
            self.a, self.b = fit_sums(len(samples), *sums)
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


def _accumulate(sums: list[float], n: int, t: float, sign: int) -> None:
    sums[0] += sign * n
    sums[1] += sign * t
    sums[2] += sign * n * n
    sums[3] += sign * n * t


def fit(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``t = a·n + b`` over ``(n, t)`` samples, with ``a, b >= 0`` (see the
    module's docstring for the fallbacks)."""
    sums = [0.0, 0.0, 0.0, 0.0]
    for n, t in samples:
        _accumulate(sums, n, t, 1)
    return fit_sums(len(samples), *sums)


def fit_sums(
    count: int, sum_n: float, sum_t: float, sum_nn: float, sum_nt: float
) -> tuple[float, float]:
    """``fit`` from the samples' count and sums."""
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
