"""Where do gRPC requests wait? The MLP over gRPC and over HTTP (V2 binary), closed loop.

One ``torchferry serve --workers 1`` of bench/hot_path's MLP; for each protocol and
concurrency, a closed-loop run (the bench's own generator) and, around it, the server's
own view: the mean time a request spends inside the server (``torchferry_request_
duration_seconds``, from the servicer or route to the answer), the mean batch it ran (V2
statistics) and the worker's CPU per request. A client latency far above the server's
own time means requests wait before they reach the server's code: for gRPC, in gRPC's
core, whose ``grpc.aio`` server hands the servicer one new call per event-loop turn.

Usage: ``PYTHONPATH=src python bench/grpc_batching.py [--seconds 5] [--rounds 2]
[--concurrency 1,32] [--processes 1] [--serve-arg=--max-delay-ms=2 ...]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine_line, served_process

from torchferry.loadtest.payloads import Payload, encode
from torchferry.loadtest.pool import GeneratorPool
from torchferry.loadtest.run import percentile
from torchferry.loadtest.target import Target

console = Console(width=None if sys.stdout.isatty() else 150)
DURATION = "torchferry_request_duration_seconds"


def request_seconds(metrics_url: str) -> tuple[float, float]:
    """(sum, count) of the server's request durations for the model ``mlp``."""
    total = count = 0.0
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if 'model="mlp"' not in line:
            continue
        if line.startswith(DURATION + "_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(DURATION + "_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2, help="protocols interleaved")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--processes", type=int, default=1, help="generator processes")
    parser.add_argument("--serve-arg", action="append", default=[])
    args = parser.parse_args()
    from hot_path import build_store, tree_cpu  # torch: in this process only

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    table = Table(title=f"MLP, closed loop, {args.seconds:g} s per run: {machine_line()}")
    headings = ("protocol", "conc.", "req/s", "client p50 ms", "server time ms", "mean batch")
    for heading in (*headings, "worker CPU us/req"):
        table.add_column(heading, justify="right")
    row = np.random.default_rng(0).normal(size=(1, 784)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, GeneratorPool(args.processes) as pool:
        build_store(Path(tmp))
        serve = ["--workers", "1", *args.serve_arg]
        with served_process(Path(tmp), serve) as server:
            metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
            stats = Target.parse(server.url, "mlp", None, None, grpc=False)
            for _ in range(args.rounds):
                for protocol in ("grpc", "v2-binary"):
                    grpc = protocol == "grpc"
                    url = f"127.0.0.1:{server.grpc_port}" if grpc else server.url
                    target = Target.parse(url, "mlp", None, None, grpc=grpc)
                    request = encode(protocol, target, Payload(arrays={"x": row}), None)
                    for concurrency in concurrencies:
                        before = (stats.batch_counts(), request_seconds(metrics))
                        cpu = tree_cpu(server.process.pid).total
                        result = pool.start(
                            target.endpoint, request, concurrency, 1.0, args.seconds
                        ).result()
                        cpu = tree_cpu(server.process.pid).total - cpu
                        batches = (stats.batch_counts() or Counter()) - (before[0] or Counter())
                        spent, count = (
                            a - b for a, b in zip(request_seconds(metrics), before[1], strict=True)
                        )
                        rows = sum(size * n for size, n in batches.items())
                        runs = sum(batches.values())
                        table.add_row(
                            protocol,
                            str(concurrency),
                            f"{result.throughput:.0f}",
                            f"{percentile(sorted(result.latencies_ms), 50):.1f}",
                            f"{1000 * spent / count:.2f}" if count else "",
                            f"{rows / runs:.2f}" if runs else "",
                            # warm-up included: CPU over every request of the run
                            f"{1e6 * cpu / rows:.0f}" if rows else "",
                        )
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
