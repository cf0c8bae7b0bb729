"""What tracing costs the request path: microseconds per finished record in
``Observers.finish``, with tracing off (``tracing_observer`` answers None, so no observer is
added) and on (the tracing observer, its spans queued to a ``BatchSpanProcessor`` over the
SDK's in-memory exporter), for a new trace, a client's sampled trace, and a client's trace
that is not sampled.

The figure is the time on the calling thread (the event loop, in the server); the export
itself runs on the processor's thread. Usage: ``python bench/tracing_cost.py [--records N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from torchferry.serving.observe import Observers
from torchferry.serving.tracing import tracing_observer

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-"


def per_record_us(observers: Observers, records: int, traceparent: str | None) -> float:
    """Median over 5 rounds of the mean CPU time of start + marks + finish on this thread
    (the export thread's work and other processes' are not counted), in microseconds."""
    rounds = []
    for _ in range(5):
        began = time.thread_time()
        for _ in range(records):
            record = observers.start("v2", "/v2/models/{model_name}/infer", None, traceparent)
            record.method = "POST"
            record.decoded = record.queued = record.started
            record.compute_started = record.compute_ended = record.started
            record.model, record.version, record.rows, record.batch_size = "m", "1", 1, 1
            observers.finish(record, "200")
        rounds.append((time.thread_time() - began) / records * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2000)
    args = parser.parse_args()
    # a queue large enough that no span is dropped while the export thread catches up
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(args.records * 5 * 5))
    off = tracing_observer(False)
    assert off is None
    baseline = per_record_us(Observers([]), args.records, None)
    print(f"tracing off (no observer):            {baseline:7.2f} us/record")
    exporter = InMemorySpanExporter()
    traced = tracing_observer(True, exporters=[exporter])
    assert traced is not None
    cases: list[tuple[str, Callable[[], float]]] = [
        ("on, new trace", lambda: per_record_us(Observers([traced]), args.records, None)),
        ("on, client's sampled trace", lambda: per_record_us(Observers([traced]), args.records, PARENT + "01")),
        ("on, client's trace not sampled", lambda: per_record_us(Observers([traced]), args.records, PARENT + "00")),
    ]  # fmt: skip
    for name, run in cases:
        cost = run()
        traced.provider.force_flush()
        print(f"{name + ':':38s}{cost:7.2f} us/record  (+{cost - baseline:.2f})")
        exporter.clear()
    traced.shutdown()


if __name__ == "__main__":
    main()
