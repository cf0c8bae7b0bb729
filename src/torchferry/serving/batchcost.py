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
        self._samples.append((rows, seconds))
        self._since_fit += 1
        if len(self._samples) >= MIN_SAMPLES and (not self.ready or self._since_fit >= REFIT_EVERY):
            self.a, self.b = fit(list(self._samples))
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


def fit(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``t = a·n + b`` over ``(n, t)`` samples, with ``a, b >= 0`` (see the
    module's docstring for the fallbacks)."""
    count = len(samples)
    mean_n = sum(n for n, _ in samples) / count
    mean_t = sum(t for _, t in samples) / count
    var_n = sum((n - mean_n) ** 2 for n, _ in samples)
    if var_n == 0:  # one distinct size: no intercept to tell
        return mean_t / mean_n, 0.0
    cov = sum((n - mean_n) * (t - mean_t) for n, t in samples)
    a = cov / var_n
    b = mean_t - a * mean_n
    if a < 0:
        return 0.0, mean_t
    if b < 0:
        return sum(n * t for n, t in samples) / sum(n * n for n, _ in samples), 0.0
    return a, b
