"""Changing models while serving: what a hot swap and a traffic split cost the traffic.

An MLP 784->128->10 (ONNX) is served by ``torchferry serve --workers 2``; ``wrk`` drives
V2 binary requests (Triton's raw binary request: one FP32 row, all outputs binary) at
``--connections`` for ``--seconds`` per run, in four kinds of run, interleaved so that a
noisy moment hits every kind alike:

- ``steady``: nothing changes;
- ``swapping``: meanwhile a management client loops over *load a new version* (staged
  from an archive folder, verified, built and warmed up in both workers), *make it the
  default* and *unload the old one* (drained first), as fast as the calls return;
- ``split``: two versions loaded, weights 50/50 (a weighted choice per request);
- ``sticky``: the same split, routed by an ``X-Traffic-Key`` header.

Read ``split`` and ``sticky`` together: every request of ``sticky`` carries one key, so all
go to one version, as in ``steady``, and the difference is the cost of routing itself (a
``crc32`` and a bisect); ``split`` sends each request to either version at random, so each
version's batcher sees half the traffic and forms smaller batches, which is what a split
costs a batching server whatever routes it.

The table gives req/s, wrk's p50 and p99 (corrected for coordinated omission), failed
answers (non-2xx and socket errors: a swap must drop nothing), and each kind's ratio to
``steady``; then the management calls' durations (median and max over every swap).
Figures are medians over ``--repeats`` runs.

Usage: ``python bench/swap.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Request, Wrk, WrkResult, machine_line, median, served_process
from workers import export_mlp, mlp_row, mlp_v2_binary

KINDS = ("steady", "swapping", "split", "sticky")


class Swapper:
    """Loads a new version, makes it the default and unloads the old one, in a loop."""

    def __init__(self, management: str, source: Path) -> None:
        self.client = httpx.Client(base_url=management, timeout=120)
        self.source = source
        self.durations: dict[str, list[float]] = {"load": [], "set-default": [], "unload": []}
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _call(self, kind: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        answer = self.client.request(method, path, **kwargs)
        self.durations[kind].append(time.perf_counter() - started)
        if not answer.is_success:
            self.failures.append(f"{method} {path}: {answer.status_code} {answer.text}")
        return answer

    def versions(self) -> list[int]:
        return sorted(int(m["modelVersion"]) for m in self.client.get("/models/mlp/all").json())

    def swap_once(self) -> None:
        old = self.versions()
        params = {"url": str(self.source), "model_name": "mlp"}
        new = int(self._call("load", "POST", "/models", params=params).json()["modelVersion"])
        self._call("set-default", "PUT", f"/models/mlp/{new}/set-default")
        for version in old:
            self._call("unload", "DELETE", f"/models/mlp/{version}")

    def run(self) -> None:
        while not self.stop.is_set():
            self.swap_once()

    def __enter__(self) -> Swapper:
        self.stop.clear()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join()


def split(management: httpx.Client, source: Path, on: bool) -> None:
    """Two versions at 50/50 (loading a second one when needed), or no split."""
    if not on:
        management.delete("/models/mlp/traffic").raise_for_status()
        return
    versions = sorted(int(m["modelVersion"]) for m in management.get("/models/mlp/all").json())
    if len(versions) < 2:
        params = {"url": str(source), "model_name": "mlp"}
        management.post("/models", params=params).raise_for_status()
        versions = sorted(int(m["modelVersion"]) for m in management.get("/models/mlp/all").json())
    weights = {str(versions[-2]): 50, str(versions[-1]): 50}
    management.put("/models/mlp/traffic", json=weights).raise_for_status()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="tf-bench-swap-"))
    try:
        store = work / "store"
        archive = export_mlp(store)
        source = work / "sources" / "mlp"
        shutil.copytree(archive.path, source)
        row = mlp_row()
        plain = mlp_v2_binary(row)
        sticky = Request(plain.path, plain.body, plain.content_type, (
            *plain.headers, ("X-Traffic-Key", "user-42"),
        ))  # fmt: skip
        extra = ["--workers", "2", "--model-source-root", str(source.parent), "--no-grpc"]
        runs: dict[str, list[WrkResult]] = {kind: [] for kind in KINDS}
        with served_process(store, extra) as server:
            management = httpx.Client(base_url=server.management_url, timeout=120)
            swapper = Swapper(server.management_url, source)
            warm = Wrk(server.port, plain, args.connections, 2).start()
            warm.result()
            for repeat in range(args.repeats):
                for kind in KINDS:
                    split(management, source, kind in ("split", "sticky"))
                    request = sticky if kind == "sticky" else plain
                    load = Wrk(server.port, request, args.connections, args.seconds).start()
                    if kind == "swapping":
                        with swapper:
                            result = load.result()
                    else:
                        result = load.result()
                    runs[kind].append(result)
                    console.print(
                        f"run {repeat + 1}/{args.repeats} {kind}: {result.throughput:.0f} req/s,"
                        f" p99 {result.p99_ms:.1f} ms, {result.error_count} failed"
                    )
            alive = server.alive()
        return {
            "machine": machine_line(),
            "connections": args.connections,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "server_alive": alive,
            "swaps": len(swapper.durations["load"]),
            "management_failures": swapper.failures,
            "durations": swapper.durations,
            "runs": {kind: [r.as_dict() for r in results] for kind, results in runs.items()},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(figures: dict[str, Any]) -> None:
    console = Console()
    console.print(figures["machine"])
    steady = median([r["throughput"] for r in figures["runs"]["steady"]])
    table = Table(
        title=f"MLP over V2 binary, 2 workers, c={figures['connections']}, "
        f"median of {figures['repeats']} x {figures['seconds']} s"
    )
    for column in ("run", "req/s", "p50 ms", "p99 ms", "failed", "vs steady"):
        table.add_column(column, justify="right")
    for kind, results in figures["runs"].items():
        throughput = median([r["throughput"] for r in results])
        failed = sum(sum(r["errors"].values()) for r in results)
        table.add_row(
            kind,
            f"{throughput:,.0f}",
            f"{median([r['p50_ms'] for r in results]):.2f}",
            f"{median([r['p99_ms'] for r in results]):.2f}",
            str(failed),
            f"{throughput / steady:.2f}",
        )
    console.print(table)
    calls = Table(title=f"management calls during {figures['swaps']} swaps (2 workers)")
    for column in ("call", "count", "median s", "max s"):
        calls.add_column(column, justify="right")
    for call, seconds in figures["durations"].items():
        if seconds:
            calls.add_row(call, str(len(seconds)), f"{median(seconds):.3f}", f"{max(seconds):.3f}")
    console.print(calls)
    if figures["management_failures"]:
        console.print(f"[red]management failures: {figures['management_failures'][:3]}")
    if not figures["server_alive"]:
        console.print("[red]the server died")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="1 repeat of 4 s")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 4.0, 1
    figures = measure(args)
    report(figures)
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    failed = sum(sum(r["errors"].values()) for results in figures["runs"].values() for r in results)
    return 0 if failed == 0 and not figures["management_failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
