"""Server CPU per request on the inference routes, for a model so small that the serving
path is nearly all of the cost.

An MLP 784→128→10 (random weights) is exported to ONNX through ``torchferry.export`` and
served by ``torchferry serve`` in its own process; a load generator (``wrk`` when installed,
else the asyncio one in ``harness.py``) keeps ``--concurrency`` connections busy on each
route in turn:

- ``v2-binary``: ``POST /v2/models/mlp/infer`` with ``Inference-Header-Content-Length`` and one
  784-float row as raw bytes, the output asked for as binary;
- ``v2-json``: the same request as V2 JSON;
- ``predict``: ``POST /predict`` with ``{"data": [[784 floats]]}`` through the tensor handler.

The server's CPU time (user + system, from ``/proc/PID/stat``, summed over the server process
and every process below it, so that worker processes count) is read before and after each
run; the table gives requests, requests/s, server CPU µs per request (and its kernel part)
and the load generator's CPU µs per request, each the median of ``--runs`` runs (routes
interleaved, so that a noisy moment hits every route alike). The server's idle CPU per second is measured
first and printed, since background spinning is charged to requests too.

Usage: ``PYTHONPATH=src python bench/hot_path.py [--runs 3] [--seconds 5] [--concurrency 8]
[--serve-arg=--threads=1 ...] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Request, machine_line, median
from harness import _drive as drive_asyncio

import torchferry
from torchferry.serving.process import serve_in_subprocess

console = Console()
MODEL = "mlp"
FEATURES = 784
WRK = shutil.which("wrk")
_TICKS = os.sysconf("SC_CLK_TCK")


# -- the model and the requests ----------------------------------------------------------------


def build_store(root: Path) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(FEATURES, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    torchferry.export(
        mlp,
        torch.randn(2, FEATURES),
        name=MODEL,
        store=root,
        format="onnx",
        input_names=["x"],
        output_names=["y"],
    )


def requests(row: np.ndarray) -> dict[str, Request]:
    raw = row.astype("<f4").tobytes()
    tensor = {"name": "x", "shape": [1, FEATURES], "datatype": "FP32"}
    header = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    infer = f"/v2/models/{MODEL}/infer"
    as_json = orjson.dumps({"inputs": [{**tensor, "data": row}]}, option=orjson.OPT_SERIALIZE_NUMPY)
    predict = orjson.dumps({"data": row[None, :]}, option=orjson.OPT_SERIALIZE_NUMPY)
    return {
        "v2-binary": Request(
            infer,
            header + raw,
            "application/octet-stream",
            (("Inference-Header-Content-Length", str(len(header))),),
        ),
        "v2-json": Request(infer, as_json, "application/json"),
        "predict": Request("/predict", predict, "application/json"),
    }


def check(url: str, request: Request) -> None:
    """One request by a real client first: the load generator only counts statuses."""
    answer = httpx.post(
        url + request.path,
        content=request.body,
        headers={"content-type": request.content_type, **dict(request.headers)},
        timeout=30,
    )
    if answer.status_code != 200:
        raise SystemExit(f"{request.path} answered {answer.status_code}: {answer.text[:300]}")


# -- CPU of a process tree ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cpu:
    """CPU seconds in user and in system (kernel) mode."""

    user: float = 0.0
    system: float = 0.0

    def __add__(self, other: Cpu) -> Cpu:
        return Cpu(self.user + other.user, self.system + other.system)

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)

    @property
    def total(self) -> float:
        return self.user + self.system


def _stat(pid: int) -> tuple[int, Cpu] | None:
    """(parent pid, utime and stime) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return int(fields[1]), Cpu(int(fields[11]) / _TICKS, int(fields[12]) / _TICKS)


def tree_cpu(root: int) -> Cpu:
    """User and system CPU of ``root`` and every live process below it (threads included)."""
    parents: dict[int, int] = {}
    cpus: dict[int, Cpu] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)], cpus[int(entry)] = stat
    total = Cpu()
    for pid, cpu in cpus.items():
        ancestor: int | None = pid
        while ancestor is not None and ancestor != root:
            ancestor = parents.get(ancestor)
        if ancestor == root:
            total += cpu
    return total


# -- load generators ---------------------------------------------------------------------------

_WRK_SCRIPT = """
local f = assert(io.open(os.getenv("HOT_PATH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("HOT_PATH_TYPE")
local extra = os.getenv("HOT_PATH_HEADER")
if extra ~= "" then
  local name, value = extra:match("^([^:]+): (.*)$")
  wrk.headers[name] = value
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("HOT_PATH %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass
class Load:
    requests: int
    errors: int
    seconds: float


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    url: str, request: Request, concurrency: int, seconds: float, work: Path
) -> tuple[Load, float]:
    """``wrk`` over one keep-alive connection per concurrent request; its CPU seconds too."""
    body, script = work / "body.bin", work / "post.lua"
    body.write_bytes(request.body)
    script.write_text(_WRK_SCRIPT)
    header = "; ".join(f"{n}: {v}" for n, v in request.headers)
    env = {
        **os.environ,
        "HOT_PATH_BODY": str(body),
        "HOT_PATH_TYPE": request.content_type,
        "HOT_PATH_HEADER": header,
    }
    command = [WRK or "wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "-s", str(script)]
    before = _children_cpu()
    out = subprocess.run(
        [*command, url + request.path], env=env, capture_output=True, text=True, check=True
    )
    spent = _children_cpu() - before
    match = re.search(r"HOT_PATH (\d+) (\d+) (\d+)", out.stdout)
    if match is None:
        raise RuntimeError(f"wrk said:\n{out.stdout}\n{out.stderr}")
    done, micros, errors = (int(g) for g in match.groups())
    return Load(done, errors, micros / 1e6), spent


def run_asyncio(
    port: int, request: Request, concurrency: int, seconds: float
) -> tuple[Load, float]:
    """The harness's lean asyncio generator, in this process; its CPU seconds too."""
    before = time.process_time()
    result = asyncio.run(drive_asyncio("127.0.0.1", port, request, concurrency, seconds))
    spent = time.process_time() - before
    return Load(result.requests, result.errors, result.seconds), spent


# -- the measurement ---------------------------------------------------------------------------


@dataclass
class Run:
    route: str
    requests: int
    errors: int
    rate: float
    server_us: float
    #: The part of ``server_us`` spent in the kernel (socket writes, wake-ups).
    system_us: float
    loadgen_us: float


def measure(
    pid: int, port: int, url: str, name: str, request: Request, args: argparse.Namespace, work: Path
) -> Run:
    cpu_before = tree_cpu(pid)
    if args.loadgen == "wrk":
        load, loadgen = run_wrk(url, request, args.concurrency, args.seconds, work)
    else:
        load, loadgen = run_asyncio(port, request, args.concurrency, args.seconds)
    server = tree_cpu(pid) - cpu_before
    done = max(1, load.requests)
    return Run(
        name,
        load.requests,
        load.errors,
        load.requests / load.seconds,
        server.total / done * 1e6,
        server.system / done * 1e6,
        loadgen / done * 1e6,
    )


def idle_cpu(pid: int, seconds: float = 2.0) -> float:
    """The server's CPU share while nothing is sent (threads spinning, pollers)."""
    before = tree_cpu(pid)
    time.sleep(seconds)
    return (tree_cpu(pid) - before).total / seconds


def summarize(runs: list[Run], routes: list[str]) -> list[Run]:
    rows = []
    for route in routes:
        mine = [r for r in runs if r.route == route]
        rows.append(
            Run(
                route,
                int(median([r.requests for r in mine])),
                sum(r.errors for r in mine),
                median([r.rate for r in mine]),
                median([r.server_us for r in mine]),
                median([r.system_us for r in mine]),
                median([r.loadgen_us for r in mine]),
            )
        )
    return rows


def print_table(rows: list[Run], args: argparse.Namespace, idle: float) -> None:
    title = (
        f"hot path: {MODEL} 784-128-10 ONNX, concurrency {args.concurrency}, {args.loadgen}, "
        f"median of {args.runs} runs of {args.seconds:g} s — {machine_line()}"
    )
    table = Table(title=title)
    columns = (
        "route",
        "requests",
        "req/s",
        "server CPU µs/req",
        "of which kernel",
        "loadgen µs/req",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "route" else "right")
    for row in rows:
        table.add_row(
            row.route + (f" [red]({row.errors} errors)[/]" if row.errors else ""),
            f"{row.requests:,}",
            f"{row.rate:,.0f}",
            f"{row.server_us:,.0f}",
            f"{row.system_us:,.0f}",
            f"{row.loadgen_us:,.0f}",
        )
    console.print(table)
    console.print(f"server CPU while idle: {idle * 100:.1f}% of a core (charged to requests too)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="median of this many runs")
    parser.add_argument("--seconds", type=float, default=5.0, help="per run and route")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per route, once")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--route", action="append", choices=["v2-binary", "v2-json", "predict"])
    parser.add_argument(
        "--loadgen", choices=["wrk", "asyncio"], default="wrk" if WRK else "asyncio"
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="one more argument for torchferry serve (repeat; e.g. --serve-arg=--threads=1)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    selected = requests(np.random.default_rng(0).random(FEATURES, dtype=np.float32))
    routes = args.route or list(selected)
    with tempfile.TemporaryDirectory(prefix="tf-hot-path-") as tmp:
        work = Path(tmp)
        console.print("[bold]exporting[/] the MLP")
        build_store(work / "store")
        serve = ["--store", str(work / "store"), "--log-level", "warning", "--no-grpc"]
        with serve_in_subprocess([*serve, *args.serve_arg], timeout=120) as server:
            pid = server.process.pid
            for name in routes:
                check(server.url, selected[name])
            idle = idle_cpu(pid)
            warm = argparse.Namespace(**{**vars(args), "seconds": args.warmup})
            for name in routes:
                measure(pid, server.port, server.url, name, selected[name], warm, work)
            runs = []
            for index in range(args.runs):
                for name in routes:
                    run = measure(pid, server.port, server.url, name, selected[name], args, work)
                    runs.append(run)
                    console.print(
                        f"  run {index + 1} {name}: {run.rate:,.0f} req/s, "
                        f"{run.server_us:,.0f} µs server CPU/req"
                    )
    rows = summarize(runs, routes)
    print_table(rows, args, idle)
    if args.json:
        document = {
            "idle_cpu": idle,
            "rows": [asdict(r) for r in rows],
            "runs": [asdict(r) for r in runs],
        }
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return 1 if any(r.errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
