"""Memory of 2 workers serving ResNet-18, with and without shared weights, and their speed.

``torchferry serve --workers 2`` over one ResNet-18 (random weights, tensor handler), as
ONNX and as TorchScript (``--formats``), once as it serves by default (the workers map one
copy of the weights: the optimized graph's for ONNX, ``runtimes/onnx_shared``; the
archive's safetensors for TorchScript, ``runtimes/torch_shared``) and once with
``--no-share-weights`` (each worker loads its own).
Each run warms both workers up with ``--concurrency`` keep-alive connections of V2 binary
requests (Triton's raw binary body, one 1x3x224x224 FP32 image; ``SO_REUSEPORT`` spreads
the connections over the workers), measures requests/s, p50 and p99 for ``--seconds``,
then reads each worker's ``/proc/PID/smaps_rollup``:

- RSS counts every page the process maps, shared ones in every process;
- PSS divides each page by the processes that map it (sums to what the machine holds);
- private: pages only this process maps (``Private_Clean + Private_Dirty``);
- shared: pages other processes map too (``Shared_Clean + Shared_Dirty``).

The supervisor is not counted (it imports no engine). The modes alternate (each first every
other repeat), each run a fresh server; every figure is the median of ``--repeats`` runs. The cache is a temporary
directory built by the first shared run (one of its workers optimizes the graph while the
other waits), as a server's first start on a machine; later runs find it.
Usage: ``python bench/shared_weights.py [--formats onnx torchscript] [--repeats 3]
[--seconds 5] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Request, drive, machine_line, median, served_process, serving_pids

import torchferry
from torchferry.runtimes.weight_cache import CACHE_ENV
from torchferry.zoo.resnet import resnet18

console = Console(width=max(Console().width, 100))  # the table's 10 columns fit
MODES = {"shared": [], "private": ["--no-share-weights"]}
FIELDS = ("rss", "pss", "private", "shared")


@dataclass(frozen=True)
class Memory:
    """One process's smaps_rollup, in MiB."""

    rss: float
    pss: float
    private: float
    shared: float

    @classmethod
    def of(cls, pid: int) -> Memory:
        kib: dict[str, int] = {}
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                key, _, value = line.partition(":")
                if value.strip().endswith("kB"):
                    kib[key] = int(value.split()[0])
        return cls(
            rss=kib["Rss"] / 1024,
            pss=kib["Pss"] / 1024,
            private=(kib["Private_Clean"] + kib["Private_Dirty"]) / 1024,
            shared=(kib["Shared_Clean"] + kib["Shared_Dirty"]) / 1024,
        )


@dataclass(frozen=True)
class Run:
    format: str
    mode: str
    workers: list[Memory]
    throughput: float
    p50_ms: float
    p99_ms: float
    errors: int


def export_model(store: Path, graph_format: str) -> None:
    torch.manual_seed(0)
    torchferry.export(
        resnet18(),
        torch.randn(2, 3, 224, 224),
        name="resnet18",
        store=store,
        format=graph_format,
        input_names=["image"],
        tolerance=1e-2,
    )


def image_request() -> Request:
    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    return Request(
        "/v2/models/resnet18/infer",
        image.astype("<f4").tobytes(),
        "application/octet-stream",
        (("Inference-Header-Content-Length", "0"),),
    )


def one_run(store: Path, graph_format: str, mode: str, args: argparse.Namespace) -> Run:
    extra = ["--workers", "2", "--no-grpc", "--no-metrics", *MODES[mode]]
    log = store.parent / f"{graph_format}-{mode}.log"
    with served_process(store, extra, log=log, log_level="info") as server:
        pids = serving_pids(server.output())
        load = drive(server.port, image_request(), args.concurrency, args.seconds, args.warmup)
        workers = [Memory.of(pids[index]) for index in sorted(pids)]
    run = Run(
        graph_format,
        mode,
        workers,
        load.throughput,
        load.percentile(50),
        load.percentile(99),
        load.errors,
    )
    total = sum(w.pss for w in workers)
    console.print(
        f"  {graph_format} {mode}: PSS {total:.0f} MiB over {len(workers)} workers, "
        f"{run.throughput:.1f} req/s, p99 {run.p99_ms:.0f} ms, {run.errors} errors"
    )
    return run


COLUMNS = ("format", "mode", "process", "RSS", "PSS", "private", "shared", "req/s", "p50", "p99")


def print_table(runs: list[Run]) -> None:
    table = Table(title="2 workers serving ResNet-18: memory (MiB), req/s, latency (ms); medians")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in COLUMNS[:3] else "right")
    for graph_format, mode in dict.fromkeys((r.format, r.mode) for r in runs):
        mine = [r for r in runs if (r.format, r.mode) == (graph_format, mode)]
        for index in range(len(mine[0].workers)):
            cells = [median([getattr(r.workers[index], f) for r in mine]) for f in FIELDS]
            table.add_row(
                graph_format, mode, f"worker {index}", *(f"{c:.0f}" for c in cells), "", "", ""
            )
        totals = [median([sum(getattr(w, f) for w in r.workers) for r in mine]) for f in FIELDS]
        speed = [median([getattr(r, f) for r in mine]) for f in ("throughput", "p50_ms", "p99_ms")]
        table.add_row(
            graph_format,
            f"[bold]{mode}[/]",
            "[bold]total[/]",
            *(f"[bold]{c:.0f}[/]" for c in totals),
            f"{speed[0]:.1f}",
            f"{speed[1]:.0f}",
            f"{speed[2]:.0f}",
            end_section=True,
        )
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--formats", nargs="+", choices=["onnx", "torchscript"], default=["onnx", "torchscript"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured load per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="load before measuring")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--json", type=Path, help="write the runs here")
    args = parser.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    console.print(machine_line())
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="tf-share-") as tmp:
        root = Path(tmp)
        os.environ[CACHE_ENV] = str(root / "cache")  # the servers inherit it
        for graph_format in args.formats:
            console.print(f"[bold]exporting[/] resnet18 (random weights, {graph_format})")
            store = root / graph_format / "store"
            export_model(store, graph_format)
            for repeat in range(args.repeats):
                # each mode goes first every other time: a machine whose load drifts (other
                # work on it) favours neither
                modes = list(MODES) if repeat % 2 == 0 else list(reversed(MODES))
                for mode in modes:
                    runs.append(one_run(store, graph_format, mode, args))
    print_table(runs)
    if args.json:
        summary = {"machine": machine_line(), "command": command, "runs": [asdict(r) for r in runs]}
        args.json.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
