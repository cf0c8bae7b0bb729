"""What autotune measures, the same way for every candidate: latency at batch 1, throughput
at the best batch size, size on disk, and the outputs on every row for the metrics.

Every number comes from the archive served through ``load_runtime``, as ``torchferry serve``
would run it, on this machine, in this run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchferry.archive.formats import ONNXRUNTIME, graph_runtime
from torchferry.archive.store import Archive
from torchferry.optimize.data import Arrays, EvalData
from torchferry.runtimes import Runtime, load_runtime


@dataclass(frozen=True)
class MeasureSettings:
    """How long to measure: bounded, so that a run over every candidate stays short."""

    #: Threads each runtime may use (default: this process's cores).
    threads: int | None = None
    #: Untimed runs at batch 1 before timing latency.
    warmup_runs: int = 3
    #: Time spent timing batch-1 runs (at least ``latency_min_runs``, at most ``_max_runs``).
    latency_seconds: float = 0.5
    latency_min_runs: int = 5
    latency_max_runs: int = 500
    #: Time spent at each batch size of the throughput search (at least ``_min_runs`` runs).
    throughput_seconds: float = 0.25
    throughput_min_runs: int = 3
    #: The throughput search starts no batch size it expects to end past this.
    search_seconds: float = 6.0
    #: Largest batch size tried (the model's ``max_batch_size`` bounds it too).
    max_batch: int = 64
    #: Rows per run when computing the outputs for the metrics.
    eval_batch: int = 32

    def with_threads(self, threads: int | None) -> MeasureSettings:
        return dataclasses.replace(self, threads=threads)


#: A fraction of the default time: for a first look, and for tests.
QUICK = MeasureSettings(
    warmup_runs=2,
    latency_seconds=0.15,
    latency_min_runs=5,
    throughput_seconds=0.05,
    throughput_min_runs=1,
    search_seconds=1.5,
)


@dataclass
class Measurement:
    latency_ms: float
    latency_p90_ms: float
    latency_runs: int
    throughput: float
    best_batch: int
    #: Batch size -> rows per second, for every size tried.
    throughput_by_batch: dict[int, float]
    size_bytes: int
    size_files: list[str]
    #: The outputs on every row of the data, in signature order.
    outputs: list[np.ndarray] = field(repr=False)


def serving_files(archive: Archive) -> list[str]:
    """The files the archive's runtime loads: its graph, and an ONNX graph's external data."""
    manifest = archive.manifest
    graph = manifest.graph_file()
    files = [graph]
    if graph_runtime(manifest.runtime) == ONNXRUNTIME:  # TensorRT's too: the same graph
        import onnx
        from onnx.external_data_helper import uses_external_data

        model = onnx.load_model(str(archive.file(graph)), load_external_data=False)
        for tensor in model.graph.initializer:
            if uses_external_data(tensor):
                location = next(e.value for e in tensor.external_data if e.key == "location")
                relative = (Path(graph).parent / location).as_posix()
                if relative not in files:
                    files.append(relative)
    return files


def _infer(runtime: Runtime, names: list[str], feed: Arrays) -> list[np.ndarray]:
    result = runtime.infer(feed)
    return [result[name] for name in names]


def outputs_on(runtime: Runtime, names: list[str], data: EvalData, batch: int) -> list[np.ndarray]:
    """The runtime's outputs on every row of the data, run ``batch`` rows at a time."""
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, data.rows, batch):
        for part, output in zip(
            parts, _infer(runtime, names, data.rows_slice(start, start + batch)), strict=True
        ):
            part.append(np.asarray(output))
    return [np.concatenate(part) for part in parts]


def time_latency(
    runtime: Runtime, feed: Arrays, settings: MeasureSettings
) -> tuple[float, float, int, float]:
    """Median and 90th percentile of batch-1 latency (ms), runs, and time spent (s)."""
    for _ in range(settings.warmup_runs):
        runtime.infer(feed)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < settings.latency_max_runs:
        begin = time.perf_counter()
        runtime.infer(feed)
        times.append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - started
        if len(times) >= settings.latency_min_runs and elapsed >= settings.latency_seconds:
            break
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return statistics.median(times) * 1e3, p90 * 1e3, len(times), sum(times)


def _rows_per_second(runtime: Runtime, feed: Arrays, rows: int, settings: MeasureSettings) -> float:
    for _ in range(2):  # warm-up: engines allocate, and TorchScript profiles, a new shape
        runtime.infer(feed)
    runs = 0
    started = time.perf_counter()
    while True:
        runtime.infer(feed)
        runs += 1
        elapsed = time.perf_counter() - started
        if runs >= settings.throughput_min_runs and elapsed >= settings.throughput_seconds:
            return rows * runs / elapsed


def search_throughput(
    runtime: Runtime,
    data: EvalData,
    settings: MeasureSettings,
    max_batch: int,
    batch1: float,
) -> tuple[float, int, dict[int, float]]:
    """Rows per second at batch 1, 2, 4, ... up to ``max_batch``; the best and its size.

    ``batch1`` is batch 1's rate (from the latency runs). The search stops after two sizes in
    a row that do not beat the best, or before a size it expects to end past
    ``settings.search_seconds``.
    """
    by_batch = {1: batch1}
    best_batch = 1
    worse = 0
    started = time.perf_counter()
    size = 2
    while size <= max_batch:
        per_run = size / by_batch[size // 2] if by_batch.get(size // 2) else 0.0
        # twice the previous size's time per run, for the warm-up and the timed runs
        runs = 2 + settings.throughput_min_runs
        expected = max(per_run * 2 * runs, per_run * 2 * 2 + settings.throughput_seconds)
        if time.perf_counter() - started + expected > settings.search_seconds:
            break
        rate = _rows_per_second(runtime, data.batch(size), size, settings)
        by_batch[size] = rate
        if rate > by_batch[best_batch]:
            best_batch, worse = size, 0
        else:
            worse += 1
            if worse >= 2:
                break
        size *= 2
    return by_batch[best_batch], best_batch, by_batch


def measure(
    archive: Archive, data: EvalData, settings: MeasureSettings, device: str = "cpu"
) -> Measurement:
    """Load the archive's runtime and measure it; the runtime is closed afterwards."""
    manifest = archive.manifest
    files = serving_files(archive)
    size = sum(archive.file(name).stat().st_size for name in files)
    max_batch = max(1, min(settings.max_batch, manifest.batching.max_batch_size))
    names = manifest.signature.output_names
    # one process, and candidates are mostly thrown away: a shared-weights cache entry per
    # candidate would only fill the cache (sharing changes memory across workers, not speed)
    runtime = load_runtime(archive, device=device, threads=settings.threads, share_weights=False)
    try:
        outputs = outputs_on(runtime, names, data, min(settings.eval_batch, max_batch))
        latency, p90, runs, spent = time_latency(runtime, data.rows_slice(0, 1), settings)
        best, best_batch, by_batch = search_throughput(
            runtime, data, settings, max_batch, runs / spent if spent > 0 else 0.0
        )
    finally:
        runtime.close()
    return Measurement(
        latency_ms=latency,
        latency_p90_ms=p90,
        latency_runs=runs,
        throughput=best,
        best_batch=best_batch,
        throughput_by_batch=by_batch,
        size_bytes=size,
        size_files=files,
        outputs=outputs,
    )


def scores(
    outputs: list[np.ndarray], reference: list[np.ndarray], labels: np.ndarray | None
) -> dict[str, float]:
    """``top1`` (with labels), ``agreement`` and ``max-abs`` of ``outputs`` on the data.

    ``top1`` and ``agreement`` take the argmax over dim 1 of the first output, against the
    labels and against the fp32 original's outputs; ``max-abs`` is the largest absolute
    difference to the original over every output.
    """
    result: dict[str, float] = {}
    worst = 0.0
    for got, want in zip(outputs, reference, strict=True):
        if got.shape != want.shape:
            worst = float("inf")
            continue
        if got.size and got.dtype.kind in "fiub" and want.dtype.kind in "fiub":
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max()))
    result["max-abs"] = worst
    first, first_ref = outputs[0], reference[0]
    if first.ndim >= 2 and first.shape == first_ref.shape and first.dtype.kind == "f":
        predicted = first.argmax(axis=1)
        result["agreement"] = float((predicted == first_ref.argmax(axis=1)).mean())
        if labels is not None and labels.shape == predicted.shape:
            result["top1"] = float((predicted == labels).mean())
    return result
