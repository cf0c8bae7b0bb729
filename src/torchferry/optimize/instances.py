"""How many instances of the winner a worker should run (``batching.instances``).

For N = 1, 2, 4: N runtimes, each with ``threads // N`` intra-op threads (the worker's
threads, shared, as ``serve --instances N`` splits them), and N threads each driving one
runtime at the best batch size for the throughput window; rows per second over all of
them. More instances must beat fewer by ``MARGIN`` to be chosen: each one has its own
engine state, threads and activations (the weights are mapped once where the engine
allows), so a tie goes to fewer. Measured without the shared weights' cache, as
``measure.py`` does: the candidates are throwaway.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from torchferry.archive.store import Archive
from torchferry.optimize.data import Arrays, EvalData
from torchferry.optimize.measure import MeasureSettings
from torchferry.runtimes import Runtime, load_runtime

COUNTS = (1, 2, 4)
#: How much more throughput one more step of instances must bring to be chosen.
MARGIN = 0.05


def measure_instances(
    archive: Archive,
    data: EvalData,
    settings: MeasureSettings,
    batch: int,
    device: str = "cpu",
    counts: tuple[int, ...] = COUNTS,
) -> dict[int, float]:
    """Rows per second with each number of instances in ``counts``, at ``batch`` rows."""
    threads = settings.threads or 1
    feed = data.batch(batch)
    rates: dict[int, float] = {}
    for count in counts:
        runtimes: list[Runtime] = []
        try:
            for _ in range(count):
                runtimes.append(
                    load_runtime(
                        archive,
                        device=device,
                        threads=max(1, threads // count),
                        share_weights=False,
                    )
                )
            rates[count] = _rows_per_second(runtimes, feed, batch, settings)
        finally:
            for runtime in runtimes:
                runtime.close()
    return rates


def best_instances(rates: dict[int, float]) -> int:
    """The fewest instances within ``MARGIN`` of the next step up's throughput."""
    best = min(rates)
    for count in sorted(rates):
        if rates[count] > rates[best] * (1 + MARGIN):
            best = count
    return best


def _rows_per_second(
    runtimes: list[Runtime], feed: Arrays, rows: int, settings: MeasureSettings
) -> float:
    for runtime in runtimes:  # warm-up: each engine allocates for the shape
        runtime.infer(feed)
        runtime.infer(feed)
    start = threading.Barrier(len(runtimes) + 1)
    stop = threading.Event()

    def drive(runtime: Runtime) -> int:
        start.wait()
        runs = 0
        while runs < settings.throughput_min_runs or not stop.is_set():
            runtime.infer(feed)
            runs += 1
        return runs

    with ThreadPoolExecutor(len(runtimes), thread_name_prefix="instance") as pool:
        futures = [pool.submit(drive, runtime) for runtime in runtimes]
        start.wait()
        began = time.perf_counter()
        time.sleep(settings.throughput_seconds)
        stop.set()
        runs = sum(future.result() for future in futures)
        elapsed = time.perf_counter() - began
    return rows * runs / elapsed
