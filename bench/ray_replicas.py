"""Requests per second through Ray Serve's proxy with 1 and then 2 replicas, beside the plain
server (one worker), from one client loop at a fixed concurrency: KServe V2 JSON, one digit
per request.

    python bench/ray_replicas.py [--store DIR] [--concurrency 8] [--seconds 10]

Each replica gets one CPU and one intra-op thread; the plain server gets one thread too. The
client runs in this process (asyncio, httpx), so on a small machine it competes with what it
measures: read the figures as a comparison between the setups, not as a limit."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import ray
from ray import serve

from torchferry.demo.digits import export_digits, sample_request
from torchferry.ray import RaySettings, deploy
from torchferry.serving.process import free_ports, serve_in_subprocess
from torchferry.serving.settings import ServerSettings
from torchferry.zoo.digits import DigitsCNN

PIXELS, _ = sample_request(count=1)
BODY = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": PIXELS["data"]}]
}


async def measure(url: str, concurrency: int, seconds: float) -> tuple[float, int]:
    """(requests per second, failures) over ``seconds`` after a 2 s warm-up."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        counts = [0, 0]
        stop_at = time.monotonic() + 2.0

        async def loop(count: bool) -> None:
            while time.monotonic() < stop_at:
                answer = await client.post("/v2/models/digits/infer", json=BODY)
                if count:
                    counts[answer.status_code != 200] += 1

        await asyncio.gather(*(loop(False) for _ in range(concurrency)))  # warm-up
        started = time.monotonic()
        stop_at = started + seconds
        await asyncio.gather(*(loop(True) for _ in range(concurrency)))
        return counts[0] / (time.monotonic() - started), counts[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp()) / "store"
    if not (store / "digits").is_dir():
        export_digits(DigitsCNN().eval(), store, format="onnx")
    run = lambda url: asyncio.run(measure(url, args.concurrency, args.seconds))  # noqa: E731
    off = ["--no-grpc", "--no-metrics", "--no-management", "--no-access-log"]
    with serve_in_subprocess(["--store", str(store), "--threads", "1", *off]) as plain:
        rate, failed = run(plain.url)
    print(f"plain server, 1 worker: {rate:.0f} req/s ({failed} failed)")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        port = free_ports(1)[0]
        server = ServerSettings(store=store, threads=1, port=port, grpc_port=None, access_log=False)
        settings = RaySettings(num_replicas=1, management=False, server=server)
        serve.start(**settings.proxy_options())
        for replicas in (1, 2):
            deploy(settings.model_copy(update={"num_replicas": replicas}))
            rate, failed = run(f"http://127.0.0.1:{port}")
            print(f"Ray Serve, {replicas} replica(s): {rate:.0f} req/s ({failed} failed)")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
