"""One model, three wire formats: V2 JSON, V2 binary tensors and V2 gRPC, in one run.

ResNet-18 (random weights, tensor input 3x224x224 FP32, no image handler) is served by
``torchferry serve`` in its own process and driven at concurrency 1, 8 and 32 over each
protocol; the table gives throughput, p50 and p99 latency, and each protocol's throughput
relative to V2 JSON at the same concurrency. The same request tensor is sent every time.
Each protocol gets a fresh server; each figure is the median of ``--repeats`` runs. Usage: ``python bench/protocols.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import orjson
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import LoadResult, Request, drive, free_port, machine_line, served, timed_loop

import torchferry
from torchferry.serving.protos import inference_pb2, inference_pb2_grpc
from torchferry.zoo.resnet import resnet18

console = Console()
CONCURRENCIES = [1, 8, 32]
PROTOCOLS = ["v2-json", "v2-binary", "grpc"]
MODEL = "resnet18"
SHAPE = [1, 3, 224, 224]


def json_request(tensor: np.ndarray) -> Request:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "image", "shape": SHAPE, "datatype": "FP32", "data": tensor.ravel()}
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": False}}],
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return Request(f"/v2/models/{MODEL}/infer", body, "application/json")


def binary_request(tensor: np.ndarray) -> Request:
    raw = tensor.astype("<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": SHAPE,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    )
    return Request(
        f"/v2/models/{MODEL}/infer",
        header + raw,
        "application/octet-stream",
        (("Inference-Header-Content-Length", str(len(header))),),
    )


def drive_grpc(port: int, tensor: np.ndarray, concurrency: int, seconds: float) -> LoadResult:
    request = inference_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image", datatype="FP32", shape=SHAPE)
    request.outputs.add(name="output")
    request.raw_input_contents.append(tensor.astype("<f4").tobytes())
    limit = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

    async def run(duration: float) -> LoadResult:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=limit) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def call() -> bool:
                try:
                    reply = await stub.ModelInfer(request)
                except grpc.aio.AioRpcError:
                    return False
                return len(reply.raw_output_contents) == 1

            return await timed_loop(call, concurrency, duration)

    asyncio.run(run(1.0))
    return asyncio.run(run(seconds))


def measure(
    protocol: str, port: int, grpc_port: int, tensor: np.ndarray, concurrency: int, seconds: float
) -> LoadResult:
    if protocol == "grpc":
        return drive_grpc(grpc_port, tensor, concurrency, seconds)
    request = json_request(tensor) if protocol == "v2-json" else binary_request(tensor)
    return drive(port, request, concurrency, seconds)


def median_result(run: Callable[[], LoadResult], repeats: int) -> LoadResult:
    results = sorted((run() for _ in range(repeats)), key=lambda r: r.throughput)
    return results[len(results) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 s, 1 repeat: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 2.0, 1
    tensor = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    results: dict[tuple[str, int], LoadResult] = {}
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        store = Path(tmp)
        console.print("[bold]exporting resnet18[/] (tensor input, ONNX Runtime)")
        torchferry.export(
            resnet18(), torch.randn(2, 3, 224, 224), name=MODEL, store=store, format="onnx",
            input_names=["image"], output_names=["output"], tolerance=1e-2,
        )  # fmt: skip
        for protocol in PROTOCOLS:
            # a fresh server per protocol: JSON's large transient heap would otherwise
            # slow the protocols measured after it
            grpc_port = free_port()
            with served(store, ["--max-batch-size", "32", "--grpc-port", str(grpc_port)]) as port:
                for concurrency in CONCURRENCIES:
                    result = median_result(
                        lambda p=protocol, c=concurrency, h=port, g=grpc_port: measure(
                            p, h, g, tensor, c, args.seconds
                        ),
                        args.repeats,
                    )
                    if result.errors:
                        console.print(f"  [red]{result.errors} failed requests[/]")
                    results[(protocol, concurrency)] = result
                    console.print(f"  {protocol} c={concurrency}: {result.throughput:.1f}/s")
    table = Table(title=f"ResNet-18 (1x3x224x224 FP32) per protocol — {machine_line()}")
    for column in ("protocol", "concurrency", "req/s", "p50 ms", "p99 ms", "vs V2 JSON"):
        table.add_column(column, justify="left" if column == "protocol" else "right")
    for protocol in PROTOCOLS:
        for concurrency in CONCURRENCIES:
            result = results[(protocol, concurrency)]
            baseline = results[("v2-json", concurrency)].throughput
            table.add_row(
                protocol, str(concurrency), f"{result.throughput:.1f}",
                f"{result.percentile(50):.1f}", f"{result.percentile(99):.1f}",
                f"{result.throughput / baseline:.2f}x",
            )  # fmt: skip
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
