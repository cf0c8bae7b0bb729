"""A batcher's counters, in the spirit of Triton's statistics extension (which the V2
statistics routes render)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class BatchSizeStats:
    count: int = 0
    compute_ns: int = 0


@dataclass
class BatcherStats:
    """Counts follow Triton: ``inference_count`` counts rows, ``execution_count`` batches;
    ``success``/``queue`` count requests."""

    inference_count: int = 0  # rows answered successfully
    execution_count: int = 0  # batches run
    success_count: int = 0  # requests answered
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    last_inference_ms: int = 0
    by_batch_size: dict[int, BatchSizeStats] = field(default_factory=dict)

    def record_batch(
        self, rows: int, arrivals: list[float], started: float, computed: float
    ) -> None:
        """One batch of ``rows`` rows, its requests arrived at ``arrivals``, that started at
        ``started`` and whose model finished at ``computed`` (``time.perf_counter``)."""
        now = time.perf_counter()
        compute_ns = int((computed - started) * 1e9)
        self.execution_count += 1
        self.inference_count += rows
        self.success_count += len(arrivals)
        self.compute_ns += compute_ns
        self.last_inference_ms = int(time.time() * 1000)
        for arrived in arrivals:
            self.success_ns += int((now - arrived) * 1e9)
            self.queue_ns += int((started - arrived) * 1e9)
        per_size = self.by_batch_size.setdefault(rows, BatchSizeStats())
        per_size.count += 1
        per_size.compute_ns += compute_ns

    def record_failure(self, arrived: float) -> None:
        self.fail_count += 1
        self.fail_ns += int((time.perf_counter() - arrived) * 1e9)
