"""Soak: ``torchferry serve --workers N`` under steady mixed load for minutes; errors, p99
and each process's memory over time. Not run in CI.

The MLP 784->128->10 (as in ``workers.py``) is served with ``--workers N`` (gRPC and metrics
on). First its capacity is measured briefly (closed loop, 16 connections, ``--capacity-seconds``
each) for each of the three load sources:

- V2 binary over HTTP (Triton's raw binary request), by ``wrk``;
- ``/predict`` JSON over HTTP, by ``wrk``;
- V2 gRPC ``ModelInfer`` (raw FP32 contents), by this process (``grpc.aio``);

then each source runs at a third of ``--fraction`` of its own capacity (so the three
together load the server to about ``--fraction``), for ``--minutes``. The HTTP sources are
paced by wrk's Lua ``delay()`` hook, each request claiming the next slot of a fixed
schedule (stock wrk has no rate option); gRPC by an open-loop asyncio schedule
(``harness.paced_loop``). wrk reports at its end, so it runs once per ``--interval``.

Every interval: requests, errors and p99 per source (as its client saw it), the server's
own p99 per protocol (the upper bound of its bucket in ``torchferry_request_duration_seconds``
on /metrics, which tells a slow server from a slow client; the JSON also has how late this
process started its gRPC calls, ``start_lag_p99_ms``), the RSS (VmRSS) of each serving
worker (pids from the server's ``worker N serving (pid P)`` lines), of the supervisor and
of the warm spare. At the end: the series (every k-th interval when long), total errors,
p99 min/median/max, and each process's RSS first vs last with its slope in MB/min, fitted
after the warm-up (the first quarter of the run): flat RSS is a slope of about zero.

Usage: ``python bench/soak.py --minutes 10 [--workers 2] [--fraction 0.8] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    LoadResult,
    PacedResult,
    Request,
    Wrk,
    WrkResult,
    machine_line,
    median,
    paced_loop,
    rss_mb,
    served_process,
    server_threads,
    serving_pids,
    timed_loop,
)
from workers import (
    MLP_FEATURES,
    check_request,
    export_mlp,
    mlp_predict_json,
    mlp_row,
    mlp_v2_binary,
)

import torchferry
from torchferry.serving.process import ServerProcess
from torchferry.serving.protos import inference_pb2, inference_pb2_grpc

console = Console() if sys.stdout.isatty() else Console(width=160)
SOURCES = ["v2-binary", "grpc", "predict-json"]
#: The ``protocol`` label of torchferry_request_duration_seconds for each source.
SERVER_LABEL = {"v2-binary": "v2", "grpc": "v2-grpc", "predict-json": "predict"}
_BUCKET = re.compile(r"^torchferry_request_duration_seconds_bucket\{(.*)\}\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
CAPACITY_CONNECTIONS = 16


class GrpcSource:
    """V2 gRPC ``ModelInfer`` for the MLP over one channel (HTTP/2 multiplexes the calls)."""

    def __init__(self, target: str, row: np.ndarray) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.request = inference_pb2.ModelInferRequest(model_name="mlp")
        self.request.inputs.add(name="x", datatype="FP32", shape=[1, MLP_FEATURES])
        self.request.outputs.add(name="logits")
        self.request.raw_input_contents.append(row.astype("<f4").tobytes())
        #: The first few failures, as ``CODE: details``.
        self.failures: list[str] = []

    async def call(self) -> bool:
        try:
            reply = await self.stub.ModelInfer(self.request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            if len(self.failures) < 5:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            return False
        return len(reply.raw_output_contents) == 1

    async def close(self) -> None:
        await self.channel.close()


def process_rss(server: ServerProcess) -> dict[str, Any]:
    """RSS of each serving worker (by index), the supervisor and the spare(s), in MiB."""
    pids = serving_pids(server.output())
    workers = {str(i): {"pid": pids[i], "rss_mb": rss_mb(pids[i])} for i in sorted(pids)}
    spares = [pid for pid in server.worker_pids() if pid not in pids.values()]
    return {
        "workers": workers,
        "supervisor": {"pid": server.process.pid, "rss_mb": rss_mb(server.process.pid)},
        "spare": [{"pid": pid, "rss_mb": rss_mb(pid)} for pid in spares],
    }


Buckets = dict[str, dict[float, float]]


def scrape_buckets(metrics_port: int | None) -> Buckets:
    """The server's request-duration histogram from /metrics, summed per protocol label:
    protocol -> {upper bound in s: cumulative count}; empty without metrics."""
    if metrics_port is None:
        return {}
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    buckets: Buckets = {}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match[1]))
        bound = math.inf if labels.get("le") == "+Inf" else float(labels.get("le", "nan"))
        per = buckets.setdefault(labels.get("protocol", "?"), {})
        per[bound] = per.get(bound, 0.0) + float(match[2])
    return buckets


def server_p99(now: Buckets, before: Buckets) -> dict[str, dict[str, float]]:
    """Per protocol label, over the interval between two scrapes: requests answered, and
    the upper bound of the bucket that holds the 99th percentile (ms; inf past the last)."""
    out = {}
    for protocol, counts in now.items():
        earlier = before.get(protocol, {})
        delta = {bound: count - earlier.get(bound, 0.0) for bound, count in counts.items()}
        total = delta.get(math.inf, 0.0)
        if total <= 0:
            continue
        bound = next(b for b in sorted(delta) if delta[b] >= 0.99 * total)
        out[protocol] = {"requests": total, "p99_le_ms": bound * 1000}
    return out


def http_entry(result: WrkResult, target: float) -> dict[str, Any]:
    return {
        "target_rate": target,
        "requests": result.requests,
        "ok": result.ok,
        "errors": result.error_count,
        "error_kinds": {k: v for k, v in result.errors.items() if v},
        "rate": result.throughput,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "max_ms": result.max_ms,
    }


def grpc_entry(result: PacedResult, target: float, seconds: float) -> dict[str, Any]:
    return {
        "target_rate": target,
        "requests": result.requests + result.errors,
        "ok": result.requests,
        "errors": result.errors,
        "missed": result.missed,
        "rate": result.requests / seconds,
        "p50_ms": result.percentile(50),
        "p99_ms": result.percentile(99),
        "max_ms": max(result.latencies_ms, default=float("nan")),
        "start_lag_p99_ms": float(np.percentile(result.start_lag_ms, 99))
        if result.start_lag_ms
        else float("nan"),
    }


async def measure_capacity(
    server: ServerProcess, requests: dict[str, Request], source: GrpcSource, seconds: float
) -> dict[str, float]:
    """Closed-loop req/s of each source alone at 16 connections (after a 2 s warm-up)."""
    capacity = {}
    for name in ("v2-binary", "predict-json"):
        request = requests[name]
        await asyncio.to_thread(Wrk(server.port, request, CAPACITY_CONNECTIONS, 2).start().result)
        result = await asyncio.to_thread(
            Wrk(server.port, request, CAPACITY_CONNECTIONS, seconds).start().result
        )
        capacity[name] = result.throughput
        console.print(
            f"  capacity {name}: {result.throughput:,.0f} req/s "
            f"(p99 {result.p99_ms:.1f} ms, {result.error_count} errors)"
        )
    await timed_loop(source.call, CAPACITY_CONNECTIONS, 2.0)
    grpc_result: LoadResult = await timed_loop(source.call, CAPACITY_CONNECTIONS, seconds)
    capacity["grpc"] = grpc_result.throughput
    console.print(
        f"  capacity grpc (this Python client, {CAPACITY_CONNECTIONS} in flight): "
        f"{grpc_result.throughput:,.0f} req/s (p99 {grpc_result.percentile(99):.1f} ms, "
        f"{grpc_result.errors} errors)"
    )
    return capacity


async def soak(
    server: ServerProcess,
    requests: dict[str, Request],
    source: GrpcSource,
    rates: dict[str, float],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    count = max(1, math.ceil(args.minutes * 60 / args.interval))
    buckets = await asyncio.to_thread(scrape_buckets, server.metrics_port)
    began = time.monotonic()
    for index in range(count):
        loads = {
            name: Wrk(server.port, requests[name], args.connections, args.interval, rates[name])
            for name in ("v2-binary", "predict-json")
        }
        for load in loads.values():
            load.start()
        paced = await paced_loop(source.call, rates["grpc"], args.interval)
        results = {name: await asyncio.to_thread(load.result) for name, load in loads.items()}
        before, buckets = buckets, await asyncio.to_thread(scrape_buckets, server.metrics_port)
        on_server = server_p99(buckets, before)
        sample: dict[str, Any] = {
            "interval": index + 1,
            "t_s": round(time.monotonic() - began, 1),
            "sources": {
                "v2-binary": http_entry(results["v2-binary"], rates["v2-binary"]),
                "grpc": grpc_entry(paced, rates["grpc"], args.interval),
                "predict-json": http_entry(results["predict-json"], rates["predict-json"]),
            },
            "rss": process_rss(server),
            "server": on_server,
        }
        for name, label in SERVER_LABEL.items():
            entry = on_server.get(label)
            sample["sources"][name]["server_p99_le_ms"] = entry["p99_le_ms"] if entry else None
        samples.append(sample)
        console.print(live_line(sample))
        if not server.alive():
            console.print(f"[red]the server exited (code {server.process.returncode})[/]")
            break
    return samples


def live_line(sample: dict[str, Any]) -> str:
    parts = [f"t={sample['t_s']:>6.0f}s"]
    for name in SOURCES:
        entry = sample["sources"][name]
        errors = f" [red]{entry['errors']} err[/]" if entry["errors"] else ""
        bound = entry.get("server_p99_le_ms")
        on_server = f" (server ≤{bound:g})" if bound is not None else ""
        parts.append(
            f"{name} {entry['rate']:,.0f}/s p99 {entry['p99_ms']:.1f}{on_server} ms{errors}"
        )
    rss = sample["rss"]
    memory = " ".join(f"w{i} {w['rss_mb']:.0f}" for i, w in rss["workers"].items())
    parts.append(f"RSS {memory} sup {rss['supervisor']['rss_mb']:.0f} MB")
    return " | ".join(parts)


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    points = [(t, v) for t, v in points if v == v]
    if len(points) < 2:
        return float("nan")
    ts, vs = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    if np.ptp(ts) == 0:
        return float("nan")
    return float(np.polyfit(ts, vs, 1)[0] * 60)


def memory_series(samples: list[dict[str, Any]]) -> dict[str, list[tuple[float, float, int]]]:
    """(t, MiB, pid) per process: ``worker N`` and ``supervisor``."""
    series: dict[str, list[tuple[float, float, int]]] = {}
    for sample in samples:
        rss = sample["rss"]
        for index, worker in rss["workers"].items():
            series.setdefault(f"worker {index}", []).append(
                (sample["t_s"], worker["rss_mb"], worker["pid"])
            )
        supervisor = rss["supervisor"]
        series.setdefault("supervisor", []).append(
            (sample["t_s"], supervisor["rss_mb"], supervisor["pid"])
        )
    return series


def summarise(samples: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    sources = {}
    for name in SOURCES:
        entries = [s["sources"][name] for s in samples]
        p99s = [e["p99_ms"] for e in entries if e["p99_ms"] == e["p99_ms"]]
        bounds = [e["server_p99_le_ms"] for e in entries if e.get("server_p99_le_ms") is not None]
        seconds = len(entries) * args.interval
        sources[name] = {
            "target_rate": entries[0]["target_rate"] if entries else float("nan"),
            "rate": sum(e["ok"] for e in entries) / seconds if seconds else float("nan"),
            "requests": sum(e["requests"] for e in entries),
            "errors": sum(e["errors"] for e in entries),
            "missed": sum(e.get("missed", 0) for e in entries),
            "p99_ms_min": min(p99s, default=float("nan")),
            "p99_ms_median": median(p99s),
            "p99_ms_max": max(p99s, default=float("nan")),
            "server_p99_le_ms_median": median(bounds),
            "server_p99_le_ms_max": max(bounds, default=float("nan")),
        }
    warm_up_s = (samples[-1]["t_s"] if samples else 0) / 4
    memory = {}
    for name, points in memory_series(samples).items():
        last_pid = points[-1][2]
        current = [(t, v) for t, v, pid in points if pid == last_pid]  # since its last restart
        after = [(t, v) for t, v in current if t > warm_up_s] or current[-2:]
        memory[name] = {
            "pid": last_pid,
            "pids": sorted({pid for _, _, pid in points}),
            "first_mb": points[0][1],
            "last_mb": points[-1][1],
            "max_mb": max(v for _, v, _ in points),
            "slope_mb_per_min": slope_mb_per_min(after),
            "fitted_from_s": after[0][0] if after else float("nan"),
        }
    return {"sources": sources, "memory": memory, "warm_up_s": warm_up_s}


def print_report(samples: list[dict[str, Any]], summary: dict[str, Any], args: argparse.Namespace):
    every = max(1, math.ceil(len(samples) / args.rows))
    shown = [s for i, s in enumerate(samples) if i % every == 0 or i == len(samples) - 1]
    workers = sorted({i for s in samples for i in s["rss"]["workers"]}, key=int)
    title = f"soak, --workers {args.workers}, every {every * args.interval} s — {machine_line()}"
    table = Table(title=title)
    table.add_column("t s", justify="right")
    for name in SOURCES:
        table.add_column(f"{name} req/s", justify="right")
        table.add_column("err", justify="right")
        table.add_column("p99 ms", justify="right")
    for index in workers:
        table.add_column(f"w{index} MB", justify="right")
    table.add_column("sup MB", justify="right")
    for sample in shown:
        cells = [f"{sample['t_s']:.0f}"]
        for name in SOURCES:
            entry = sample["sources"][name]
            cells += [
                f"{entry['rate']:,.0f}",
                f"[red]{entry['errors']}[/]" if entry["errors"] else "0",
                f"{entry['p99_ms']:.1f}",
            ]
        rss = sample["rss"]
        cells += [
            f"{rss['workers'][i]['rss_mb']:.1f}" if i in rss["workers"] else "" for i in workers
        ]
        cells.append(f"{rss['supervisor']['rss_mb']:.1f}")
        table.add_row(*cells)
    console.print(table)

    totals = Table(title="per source, whole run")
    for column in ("source", "target req/s", "achieved", "requests", "errors", "missed"):
        totals.add_column(column, justify="left" if column == "source" else "right")
    for column in ("p99 min ms", "p99 median ms", "p99 max ms", "server p99 ≤ ms (median, max)"):
        totals.add_column(column, justify="right")
    for name, entry in summary["sources"].items():
        totals.add_row(
            name,
            f"{entry['target_rate']:,.0f}",
            f"{entry['rate']:,.0f}",
            f"{entry['requests']:,}",
            f"[red]{entry['errors']}[/]" if entry["errors"] else "0",
            str(entry["missed"]) if name == "grpc" else "",
            f"{entry['p99_ms_min']:.1f}",
            f"{entry['p99_ms_median']:.1f}",
            f"{entry['p99_ms_max']:.1f}",
            f"{entry['server_p99_le_ms_median']:g}, {entry['server_p99_le_ms_max']:g}",
        )
    console.print(totals)

    memory = Table(
        title=f"RSS (VmRSS, MiB); slope fitted after {summary['warm_up_s']:.0f} s of warm-up"
    )
    for column in ("process", "pid(s)", "first", "last", "max", "slope MB/min", "flat"):
        memory.add_column(column, justify="left" if column in ("process", "pid(s)") else "right")
    for name, entry in summary["memory"].items():
        slope = entry["slope_mb_per_min"]
        flat = "" if slope != slope else ("✓" if slope <= args.flat else "[red]✗[/]")
        memory.add_row(
            name,
            ", ".join(map(str, entry["pids"])),
            f"{entry['first_mb']:.1f}",
            f"{entry['last_mb']:.1f}",
            f"{entry['max_mb']:.1f}",
            f"{slope:+.2f}",
            flat,
        )
    console.print(memory)
    errors = sum(e["errors"] for e in summary["sources"].values())
    console.print(f"total errors: {'[red]' if errors else '[green]'}{errors}[/]")


async def run(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    row = mlp_row()
    requests = {"v2-binary": mlp_v2_binary(row), "predict-json": mlp_predict_json(row)}
    for request in requests.values():
        check_request(server.url, request)
    source = GrpcSource(server.grpc_target, row)
    try:
        if not await source.call():
            raise RuntimeError(f"gRPC ModelInfer failed: {source.failures}")
        console.print("[bold]capacity[/]")
        capacity = await measure_capacity(server, requests, source, args.capacity_seconds)
        rates = {name: max(1.0, args.fraction / 3 * capacity[name]) for name in SOURCES}
        console.print(
            f"[bold]soak[/] {args.minutes:g} min at {args.fraction:.0%} of capacity, a third "
            "per source: "
            + ", ".join(f"{name} {rate:,.0f} req/s" for name, rate in rates.items())
            + f" (wrk -t1 -c{args.connections} per HTTP source, paced by Lua delay(); "
            "gRPC paced by asyncio)"
        )
        source.failures.clear()
        samples = await soak(server, requests, source, rates, args)
        grpc_failures = list(source.failures)
    finally:
        await source.close()
    return {
        "capacity": capacity,
        "rates": rates,
        "samples": samples,
        "grpc_failures": grpc_failures,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.8, help="of the measured capacity")
    parser.add_argument("--interval", type=int, default=10, help="seconds per sample (whole)")
    parser.add_argument("--capacity-seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8, help="per paced HTTP source")
    parser.add_argument("--rows", type=int, default=30, help="at most this many table rows")
    parser.add_argument(
        "--flat", type=float, default=1.0, help="RSS growth (MB/min) still called flat"
    )
    parser.add_argument("--no-metrics", action="store_true", help="serve with --no-metrics")
    parser.add_argument("--json", type=Path, help="write the series and the summary here")
    args = parser.parse_args()
    command = shlex.join([os.path.basename(sys.executable), *sys.argv])
    console.print(f"[bold]{machine_line()}[/]")
    console.print(f"command: {command}")
    extra = ["--model", "mlp", "--workers", str(args.workers), "--max-batch-size", "32"]
    if args.no_metrics:
        extra.append("--no-metrics")
    with tempfile.TemporaryDirectory(prefix="tf-soak-") as tmp:
        store = Path(tmp) / "store"
        console.print("[bold]exporting[/] mlp (784->128->10)")
        export_mlp(store)
        log = Path(tmp) / "server.log"
        with served_process(store, extra, log=log, log_level="info") as server:
            settings = {
                "args": extra,
                "threads_per_worker": server_threads(server.output()),
                "worker_pids": serving_pids(server.output()),
                "supervisor_pid": server.process.pid,
                "grpc_port": server.grpc_port,
                "metrics_port": server.metrics_port,
            }
            console.print(
                f"torchferry {torchferry.__version__}: serve {shlex.join(extra)}; "
                f"{settings['threads_per_worker']} thread(s) per worker, workers "
                f"{settings['worker_pids']}, supervisor {server.process.pid}, metrics "
                + ("off" if server.metrics_port is None else f"on :{server.metrics_port}")
            )
            outcome = asyncio.run(run(server, args))
            server_log = server.output()
    samples = outcome["samples"]
    summary = summarise(samples, args)
    print_report(samples, summary, args)
    if outcome["grpc_failures"]:
        console.print(f"[red]gRPC failures[/] (first {len(outcome['grpc_failures'])}):")
        for failure in outcome["grpc_failures"]:
            console.print(f"  {failure}")
    incidents = [
        line
        for line in server_log.splitlines()
        if any(word in line for word in (" died ", "restarting worker", "Traceback", "ERROR"))
    ]
    if incidents:
        console.print("[red]server incidents:[/]")
        for line in incidents[:20]:
            console.print(f"  {line}")
    if args.json:
        data = {
            "machine": machine_line(),
            "command": command,
            "settings": settings,
            "fraction": args.fraction,
            "interval_s": args.interval,
            **outcome,
            "summary": summary,
            "incidents": incidents,
        }
        args.json.write_bytes(
            orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
