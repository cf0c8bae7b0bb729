"""``torchferry serve --workers N``: throughput and latency per worker count, against raw.

Two models, each served by its own ``torchferry serve --model NAME --workers N`` (N = 1, 2):

- an MLP 784->128->10 (ONNX), over ``/predict`` JSON (one row of 784 floats) and over V2
  binary (``POST /v2/models/mlp/infer``, Triton's raw binary request: the body is the FP32
  row, ``Inference-Header-Content-Length: 0``);
- ResNet-18 (random weights, ONNX, image handler) over ``/predict`` with a JPEG body;

each driven by ``wrk`` at concurrency 1, 8 and 32 (one wrk thread up to 8 connections, two
at 32), reporting req/s, p50, p99 and errors. Raw rows run the same ONNX Runtime in-process
at batch 1..32 with the threads each server worker gets (cores / N), in N processes at once
for N > 1 (their items/s summed); ResNet-18's raw batches include JPEG decode and
preprocessing by the image handler, as the server must do. Each served row is compared
with the raw best batch for the same N, and the issue's targets are checked.

Each figure is the median of ``--repeats`` runs of ``--seconds`` after a warm-up run; after
each run the server gets about one p99 to finish what wrk left in flight. ResNet-18 is
measured in a window inside each run instead (``--window-seconds``, at least 20 s, after
``--window-warmup``): at c=32 its answers come in batches ~2 s after the request on 2 cores,
so a short run from idle connections would lose a whole batch at each end. p50 and p99 are
wrk's, which corrects for coordinated omission (synthetic samples for answers slower than
the mean interval), as the issue's targets were measured. Metrics stay on (a free
``--metrics-port``) unless ``--no-metrics``; gRPC is off (not measured).
Usage: ``python bench/workers.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    Request,
    Wrk,
    WrkResult,
    machine_line,
    median,
    served_process,
    server_threads,
    serving_pids,
    wrk_threads,
)
from serve_vs_raw import BATCH_SIZES, export_resnet18, make_jpeg

import torchferry
from torchferry.archive.store import Archive
from torchferry.cores import default_threads
from torchferry.handlers import load_handler
from torchferry.handlers.base import HandlerRequest
from torchferry.runtimes import load_runtime

# wide enough for the tables when the output is a file or a pipe
console = Console() if sys.stdout.isatty() else Console(width=160)
CONCURRENCIES = [1, 8, 32]
#: Models measured in a window inside each wrk run (``Wrk.skip``): slow and batched.
WINDOWED = {"resnet18"}
MLP_FEATURES = 784
MAX_BATCH_SIZE = 32


# -- models and requests (soak.py uses these too) -----------------------------------------


def export_mlp(root: Path) -> Archive:
    """The MLP 784->128->10 (fixed seed), exported to ONNX as ``mlp`` (input ``x``)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(MLP_FEATURES, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    ).eval()
    return torchferry.export(
        model,
        torch.randn(2, MLP_FEATURES),
        name="mlp",
        store=root,
        format="onnx",
        input_names=["x"],
        output_names=["logits"],
    )


def mlp_row() -> np.ndarray:
    return np.random.default_rng(0).random(MLP_FEATURES, dtype=np.float32)


def mlp_v2_binary(row: np.ndarray) -> Request:
    """Triton's raw binary request: the whole body is the one FP32 row."""
    return Request(
        "/v2/models/mlp/infer",
        row.astype("<f4").tobytes(),
        "application/octet-stream",
        (("Inference-Header-Content-Length", "0"),),
    )


def mlp_predict_json(row: np.ndarray) -> Request:
    return Request("/predict/mlp", orjson.dumps({"data": [row.tolist()]}), "application/json")


def check_request(url: str, request: Request) -> None:
    """One request before the load: a wrong body fails here with the server's answer."""
    headers = {"Content-Type": request.content_type, **dict(request.headers)}
    reply = httpx.post(url + request.path, content=request.body, headers=headers, timeout=60)
    if reply.status_code != 200:
        raise RuntimeError(f"{request.path} answered {reply.status_code}: {reply.text[:500]}")


# -- rows --------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    protocol: str
    workers: int
    mode: str  # "raw" or "served"
    #: Batch size (raw) or concurrency (served).
    setting: int
    #: items/s (raw) or successful req/s (served).
    throughput: float
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    errors: int = 0
    threads: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)


# -- raw: the runtime in-process ------------------------------------------------------------


@dataclass(frozen=True)
class RawSpec:
    model: str
    archive: str
    threads: int
    sizes: tuple[int, ...]
    seconds: float
    repeats: int
    jpegs: tuple[bytes, ...] = ()


def _raw_stepper(spec: RawSpec) -> tuple[Callable[[int], Callable[[], None]], Callable[[], None]]:
    archive = Archive.open(Path(spec.archive))
    runtime = load_runtime(archive, threads=spec.threads)
    if spec.model == "resnet18":
        handler = load_handler(archive, trust_code=False)

        def make(size: int) -> Callable[[], None]:
            files = [spec.jpegs[i % len(spec.jpegs)] for i in range(size)]
            request = HandlerRequest(files={"file": files})

            def step() -> None:
                runtime.infer(handler.preprocess(request)[0])

            return step
    else:
        rows = np.random.default_rng(0).random((max(spec.sizes), MLP_FEATURES), dtype=np.float32)

        def make(size: int) -> Callable[[], None]:
            batch = {"x": np.ascontiguousarray(rows[:size])}

            def step() -> None:
                runtime.infer(batch)

            return step

    return make, runtime.close


def raw_loop(spec: RawSpec, barrier: Any, put: Callable[[tuple[int, int, float]], None]) -> None:
    """Time every batch size ``repeats`` times; each timed run starts at the barrier (so N
    processes measure together); ``put`` gets (size, repeat, items/s)."""
    make, close = _raw_stepper(spec)
    try:
        for size in spec.sizes:
            step = make(size)
            for _ in range(3):  # warm-up: the first runs allocate
                step()
            for repeat in range(spec.repeats):
                barrier.wait(timeout=900)
                done, started = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - started) < spec.seconds or done == 0:
                    step()
                    done += size
                put((size, repeat, done / elapsed))
    finally:
        close()


def _raw_child(spec: RawSpec, barrier: Any, results: Any) -> None:
    raw_loop(spec, barrier, results.put)


def raw_rates(spec: RawSpec, processes: int) -> dict[int, float]:
    """items/s per batch size: the median over repeats of the sum over ``processes``."""
    items: list[tuple[int, int, float]] = []
    if processes == 1:
        raw_loop(spec, threading.Barrier(1), items.append)
    else:
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(processes), context.Queue()
        children = [
            context.Process(target=_raw_child, args=(spec, barrier, results))
            for _ in range(processes)
        ]
        for child in children:
            child.start()
        try:
            expected = processes * len(spec.sizes) * spec.repeats
            while len(items) < expected:
                try:
                    items.append(results.get(timeout=5))
                except queue.Empty:
                    if any(c.exitcode not in (None, 0) for c in children):
                        codes = [c.exitcode for c in children]
                        raise RuntimeError(f"a raw process failed (exit codes {codes})") from None
        finally:
            for child in children:
                child.join(timeout=30)
                if child.is_alive():
                    child.kill()
    sums: dict[tuple[int, int], float] = {}
    for size, repeat, rate in items:
        sums[(size, repeat)] = sums.get((size, repeat), 0.0) + rate
    return {size: median([sums[(size, r)] for r in range(spec.repeats)]) for size in spec.sizes}


def raw_rows(
    model: str, archive: Archive, workers: int, args: argparse.Namespace, jpegs: list[bytes]
) -> list[Row]:
    threads = args.threads or max(1, default_threads() // workers)
    spec = RawSpec(
        model,
        str(archive.path),
        threads,
        tuple(args.batch_sizes),
        args.raw_seconds,
        args.repeats,
        tuple(jpegs) if model == "resnet18" else (),
    )
    rates = raw_rates(spec, workers)
    rows = []
    for size, rate in rates.items():
        rows.append(Row(model, "in-process", workers, "raw", size, rate, threads=threads))
        console.print(
            f"  raw {model} x{workers} process(es), {threads} thread(s), batch {size}: "
            f"{rate:,.1f} items/s"
        )
    return rows


# -- served ----------------------------------------------------------------------------------


def settle(result: WrkResult) -> None:
    """Let the server finish what the last run left in flight (wrk does not wait for it)
    before the next run: about one latency, up to 30 s; 10 s when nothing completed."""
    if result.requests == 0 or result.p99_ms != result.p99_ms:
        time.sleep(10)
    else:
        time.sleep(min(30.0, max(0.3, 1.2 * result.p99_ms / 1000)))


def served_level(
    port: int,
    request: Request,
    concurrency: int,
    seconds: float,
    warmup: float,
    repeats: int,
    window: bool,
) -> tuple[WrkResult, list[WrkResult]]:
    """Warm up, then ``repeats`` wrk runs; the run with the median req/s, and all runs.
    With ``window`` each run warms up itself and counts answers only after it (see
    ``Wrk.skip``); else a separate warm-up run comes first."""
    if warmup > 0 and not window:
        settle(Wrk(port, request, concurrency, warmup).start().result())
    runs = []
    skip = warmup if window else 0.0
    for _ in range(repeats):
        runs.append(Wrk(port, request, concurrency, seconds, skip=skip).start().result())
        settle(runs[-1])
    middle = sorted(runs, key=lambda r: r.throughput)[len(runs) // 2]
    return middle, runs


def served_rows(
    store: Path,
    model: str,
    requests: list[tuple[str, Request]],
    workers: int,
    args: argparse.Namespace,
    settings: dict[str, Any],
) -> list[Row]:
    extra = ["--model", model, "--workers", str(workers), "--no-grpc"]
    extra += ["--max-batch-size", str(MAX_BATCH_SIZE)]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    if args.no_metrics:
        extra.append("--no-metrics")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tf-workers-") as tmp:
        log = Path(tmp) / "server.log"
        with served_process(store, extra, log=log, log_level="info") as server:
            text = server.output()
            threads = server_threads(text) or 0
            pids = serving_pids(text)
            settings[f"{model} --workers {workers}"] = {
                "args": extra,
                "threads_per_worker": threads,
                "worker_pids": pids,
                "metrics_port": server.metrics_port,
            }
            console.print(
                f"[bold]{model}[/] --workers {workers}: {threads} thread(s) per worker, "
                f"workers {pids}, metrics "
                + ("off" if server.metrics_port is None else f"on :{server.metrics_port}")
            )
            # a slow model is measured in a window inside each run, long enough for many of
            # its batches (ResNet-18 at c=32 answers ~2 s after the request on 2 cores)
            window = model in WINDOWED
            seconds = max(args.seconds, args.window_seconds) if window else args.seconds
            warmup = max(args.warmup, args.window_warmup) if window else args.warmup
            for protocol, request in requests:
                check_request(server.url, request)
                for concurrency in args.levels:
                    middle, runs = served_level(
                        server.port, request, concurrency, seconds, warmup, args.repeats, window
                    )
                    errors = sum(r.error_count for r in runs)
                    rows.append(
                        Row(
                            model,
                            protocol,
                            workers,
                            "served",
                            concurrency,
                            middle.throughput,
                            p50_ms=middle.p50_ms,
                            p99_ms=middle.p99_ms,
                            errors=errors,
                            threads=threads,
                            runs=[r.as_dict() for r in runs],
                        )
                    )
                    flag = f" [red]{errors} errors[/]" if errors else ""
                    console.print(
                        f"  {protocol} c={concurrency} (wrk -t{wrk_threads(concurrency)}): "
                        f"{middle.throughput:,.1f} req/s"
                        + (f" (in {seconds:g} s after {warmup:g} s)" if window else "")
                        + f", p50 {middle.p50_ms:.2f} ms, "
                        f"p99 {middle.p99_ms:.2f} ms{flag}"
                    )
            if not server.alive():
                raise RuntimeError(f"the server exited during the load:\n{server.output()}")
            died = [line for line in server.output().splitlines() if " died " in line]
            if died:
                console.print(f"  [red]worker deaths during the load:[/] {died}")
    return rows


# -- report ----------------------------------------------------------------------------------


def raw_best(rows: list[Row]) -> dict[tuple[str, int], float]:
    best: dict[tuple[str, int], float] = {}
    for row in rows:
        if row.mode == "raw":
            key = (row.model, row.workers)
            best[key] = max(best.get(key, 0.0), row.throughput)
    return best


def print_rows(rows: list[Row], metrics: bool) -> None:
    best = raw_best(rows)
    title = (
        f"torchferry serve --workers N vs raw — {machine_line()}; metrics "
        f"{'on' if metrics else 'off'}, gRPC off, max batch {MAX_BATCH_SIZE}, wrk load"
    )
    table = Table(title=title)
    left = ("model", "protocol", "mode")
    numbers = ("workers", "threads", "batch / c", "items or req/s", "p50 ms", "p99 ms")
    for column in (*left, *numbers, "errors", "vs raw best"):
        table.add_column(column, justify="left" if column in left else "right")
    for row in rows:
        reference = best.get((row.model, row.workers))
        served = row.mode == "served"
        table.add_row(
            row.model,
            row.protocol,
            row.mode,
            str(row.workers),
            str(row.threads),
            str(row.setting),
            f"{row.throughput:,.1f}",
            f"{row.p50_ms:.2f}" if served else "",
            f"{row.p99_ms:.2f}" if served else "",
            (f"[red]{row.errors}[/]" if row.errors else "0") if served else "",
            f"{row.throughput / reference:.2f}" if reference else "",
        )
    console.print(table)


@dataclass
class Target:
    name: str
    unit: str
    goal: float
    higher_is_better: bool
    values: dict[int, float | None]

    def met(self, workers: int) -> bool | None:
        value = self.values.get(workers)
        if value is None or value != value:  # not measured, or NaN
            return None
        return value >= self.goal if self.higher_is_better else value <= self.goal


def targets(rows: list[Row], workers: list[int]) -> list[Target]:
    best = raw_best(rows)

    def served(model: str, protocol: str, concurrency: int, n: int) -> Row | None:
        return next(
            (
                r
                for r in rows
                if r.mode == "served"
                and (r.model, r.protocol, r.setting, r.workers) == (model, protocol, concurrency, n)
            ),
            None,
        )

    def pick(
        model: str, protocol: str, concurrency: int, value: Callable[[Row], float]
    ) -> dict[int, float | None]:
        found = {n: served(model, protocol, concurrency, n) for n in workers}
        return {n: (value(r) if r is not None else None) for n, r in found.items()}

    def vs_raw(row: Row) -> float:
        reference = best.get((row.model, row.workers))
        return row.throughput / reference if reference else float("nan")

    def rate(row: Row) -> float:
        return row.throughput

    def p50(row: Row) -> float:
        return row.p50_ms

    def p99_s(row: Row) -> float:
        return row.p99_ms / 1000

    return [
        Target("MLP V2 binary req/s at c=32", "req/s", 8000, True,
               pick("mlp", "v2-binary", 32, rate)),
        Target("MLP /predict JSON req/s at c=32", "req/s", 4000, True,
               pick("mlp", "predict-json", 32, rate)),
        Target("MLP V2 binary p50 at c=1", "ms", 0.4, False, pick("mlp", "v2-binary", 1, p50)),
        Target("MLP /predict JSON p50 at c=1", "ms", 0.4, False,
               pick("mlp", "predict-json", 1, p50)),
        Target("ResNet-18 c=32 / raw best batch", "x", 0.95, True,
               pick("resnet18", "predict-jpeg", 32, vs_raw)),
        Target("ResNet-18 p99 at c=32", "s", 1.5, False,
               pick("resnet18", "predict-jpeg", 32, p99_s)),
    ]  # fmt: skip


def print_targets(found: list[Target], workers: list[int]) -> None:
    table = Table(title="the issue's targets")
    table.add_column("target", justify="left")
    table.add_column("goal", justify="right")
    for n in workers:
        table.add_column(f"--workers {n}", justify="right")
    for target in found:
        cells = []
        for n in workers:
            value, met = target.values.get(n), target.met(n)
            if met is None:
                cells.append("-")
                continue
            assert value is not None
            shown = f"{value:,.0f}" if target.unit == "req/s" else f"{value:.2f}"
            cells.append(f"{shown} {'[green]✓[/]' if met else '[red]✗[/]'}")
        sign = "≥" if target.higher_is_better else "≤"
        goal = f"{target.goal:,.0f}" if target.unit == "req/s" else f"{target.goal:g}"
        table.add_row(target.name, f"{sign} {goal} {target.unit}", *cells)
    console.print(table)


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run (whole s)")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up per level (s)")
    parser.add_argument("--raw-seconds", type=float, default=5.0, help="per raw batch size")
    parser.add_argument(
        "--window-seconds",
        type=float,
        default=20.0,
        help="ResNet-18: at least this long a window per run (its answers come in batches)",
    )
    parser.add_argument(
        "--window-warmup", type=float, default=5.0, help="ResNet-18: before the window (s)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--models", nargs="+", choices=["mlp", "resnet18"], default=["mlp", "resnet18"]
    )
    parser.add_argument("--no-metrics", action="store_true", help="serve with --no-metrics")
    parser.add_argument(
        "--threads", type=int, help="serve (and raw) with this many intra-op threads per worker"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 repeat, 2 s, c=1 and 32 only"
    )
    parser.add_argument("--json", type=Path, help="also write rows, targets and settings here")
    args = parser.parse_args()
    args.levels, args.batch_sizes = CONCURRENCIES, BATCH_SIZES
    if args.quick:
        args.seconds, args.repeats, args.warmup, args.raw_seconds = 2.0, 1, 1.0, 1.0
        args.window_seconds, args.window_warmup = 8.0, 4.0
        args.levels, args.batch_sizes = [1, 32], [1, 8, 32]
    command = shlex.join([os.path.basename(sys.executable), *sys.argv])
    console.print(f"[bold]{machine_line()}[/]")
    console.print(f"command: {command}")
    threads = (
        f"--threads {args.threads}"
        if args.threads
        else f"threads per worker default to {default_threads()} cores / N"
    )
    console.print(
        f"torchferry {torchferry.__version__}: serve --model NAME --workers N --no-grpc "
        f"--max-batch-size {MAX_BATCH_SIZE} (max delay: the manifest's 0 ms), "
        f"{'--no-metrics' if args.no_metrics else 'metrics on a free port'}; {threads}"
    )
    row = mlp_row()
    jpegs = [make_jpeg(seed) for seed in range(8)]
    requests = {
        "mlp": [("v2-binary", mlp_v2_binary(row)), ("predict-json", mlp_predict_json(row))],
        "resnet18": [("predict-jpeg", Request("/predict/resnet18", jpegs[0], "image/jpeg"))],
    }
    settings: dict[str, Any] = {}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        store = Path(tmp)
        console.print("[bold]exporting[/] mlp (784->128->10) and resnet18 (image handler)")
        archives = {"mlp": export_mlp(store)}
        if "resnet18" in args.models:
            archives["resnet18"] = export_resnet18(store)
        for model in args.models:
            for workers in args.workers:
                rows += raw_rows(model, archives[model], workers, args, jpegs)
        for model in args.models:
            for workers in args.workers:
                rows += served_rows(store, model, requests[model], workers, args, settings)
    print_rows(rows, not args.no_metrics)
    found = targets(rows, args.workers)
    print_targets(found, args.workers)
    if args.json:
        summary = {
            "machine": machine_line(),
            "command": command,
            "settings": settings,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "metrics": not args.no_metrics,
            "rows": [asdict(r) for r in rows],
            "targets": [{**asdict(t), "met": {n: t.met(n) for n in args.workers}} for t in found],
        }
        args.json.write_bytes(
            orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
