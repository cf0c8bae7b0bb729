"""Per-request cost of the observability hooks, in microseconds of CPU on this machine.

Runs N synthetic requests through what a real one touches, on an event loop: a record
started and finished (``Observers``), the fields the data plane and the batcher write, the
batcher's observer (pending twice, one executed batch per request), the metrics observer
and the access log (to /dev/null, text and JSON). Each part is timed alone and all
together, in this process's default registry, or in multiprocess mode with ``--multiproc``
(re-runs itself with ``PROMETHEUS_MULTIPROC_DIR`` set to a temporary directory).

    PYTHONPATH=src python bench/observe_cost.py [--requests 100000] [--multiproc]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time

from torchferry.serving import metrics
from torchferry.serving.logs import AccessLog, configure_logging
from torchferry.serving.observe import Observer, Observers


def one_request(observers: Observers, batch: metrics.ModelSeries | None) -> None:
    record = observers.start("v2", "unmatched", None, None, None, "POST")
    record.route = "/v2/models/{model_name}/infer"
    record.model, record.version = "adder", "1"
    record.decoded = record.queued = time.perf_counter()
    record.rows = 1
    if batch is not None:
        batch.pending(1)
        batch.pending(0)
        batch.executed(1, 0.0001)
    record.compute_started = record.compute_ended = time.perf_counter()
    record.batch_size = 1
    record.success = True
    observers.finish(record, "200")


async def timed(
    name: str, count: int, observers: list[Observer], batch: metrics.ModelSeries | None
) -> float:
    hub = Observers(observers)
    for _ in range(1000):  # warm up: series, children, caches
        one_request(hub, batch)
    started = time.process_time()
    for _ in range(count):
        one_request(hub, batch)
    per_request = (time.process_time() - started) / count * 1e6
    print(f"{name:<40} {per_request:7.2f} µs/request")
    return per_request


async def main(count: int) -> None:
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "default registry"
    print(f"{count} requests, metrics in the {mode}")
    devnull = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    series = metrics.batch_observer("adder", "1")
    parts: list[tuple[str, list[Observer], metrics.ModelSeries | None, str | None]] = [
        ("record only", [], None, None),
        ("record + batch observer", [], series, None),
        ("record + metrics (request and batch)", [metrics.RECORDER], series, None),
        ("record + access log (text)", [AccessLog()], None, "text"),
        ("record + access log (json)", [AccessLog()], None, "json"),
        ("record + access log (off: level warning)", [AccessLog()], None, "off"),
        ("all: metrics + access log (text)", [metrics.RECORDER, AccessLog()], series, "text"),
        ("all: metrics + access log (json)", [metrics.RECORDER, AccessLog()], series, "json"),
    ]
    for name, observers, batch, log_format in parts:
        if log_format == "off":
            configure_logging("warning", "text", devnull)
        elif log_format is not None:
            configure_logging("info", log_format, devnull)  # type: ignore[arg-type]
        await timed(name, count, observers, batch)
    metrics.flush()
    logging.shutdown()


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--multiproc", action="store_true")
    args = parser.parse_args(argv)
    if args.multiproc and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        with tempfile.TemporaryDirectory() as directory:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
            command = [sys.executable, __file__, "--requests", str(args.requests)]
            subprocess.run(command, env=env, check=True)
        return
    asyncio.run(main(args.requests))


if __name__ == "__main__":
    run()
