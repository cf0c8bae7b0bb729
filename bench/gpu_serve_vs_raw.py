"""ResNet-18 on a GPU: how close does ``torchferry serve --device cuda`` come to the same
runtime called in-process?

For each runtime asked (default on a GPU: ``onnxruntime`` on its CUDA provider,
``onnxruntime-trt`` and ``torchscript``; on the CPU: ``onnxruntime``), in one run:

- raw: ``load_runtime(archive, runtime, device)`` called in this process on ready float32
  batches of 1, 2, 4 ... 64 images (``--payload tensor``: no decode, the device's own rate)
  or on JPEGs through the image handler (``--payload jpeg``: decode included, as the server
  must do it);
- served: ``torchferry serve --device D --runtime R --max-batch-size 64`` in its own
  process, driven over HTTP (V2 binary tensors of one image each, or one JPEG per
  ``/predict`` call) at concurrency 1, 8, 32 and 64; the batcher forms the batches;

and prints one table per runtime with each row's ratio to the best raw batch. ResNet-18 has
random weights (speed does not depend on them). The TensorRT engine is built at the first
raw load (a minute or so) into the TensorRT cache, where the server finds it.

Usage: ``python bench/gpu_serve_vs_raw.py [--device cuda[:N]] [--runtime R ...]
[--payload tensor|jpeg] [--seconds S] [--quick] [--json FILE]``; ``--device cpu --quick``
is a smoke run of the same code on any machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Request, drive, machine_line, served_process
from serve_vs_raw import make_jpeg

import torchferry
from torchferry.archive import BatchingSpec
from torchferry.archive.store import Archive
from torchferry.handlers import load_handler
from torchferry.handlers.base import HandlerRequest
from torchferry.runtimes import load_runtime
from torchferry.zoo.resnet import resnet18

console = Console(width=150)
MAX_BATCH = 64
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64]
CONCURRENCIES = [1, 8, 32, 64]
GPU_RUNTIMES = ["onnxruntime", "onnxruntime-trt", "torchscript"]


@dataclass
class Row:
    runtime: str
    mode: str
    setting: int
    throughput: float
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    errors: int = 0


def export_resnet18(root: Path, payload: str) -> Archive:
    """ResNet-18, random weights, ONNX and TorchScript, batching up to ``MAX_BATCH`` (the
    TensorRT profile's largest batch); behind the image handler for JPEGs."""
    torch.manual_seed(0)
    return torchferry.export(
        resnet18().eval(),
        torch.randn(2, 3, 224, 224),
        name="resnet18",
        store=root,
        format="both",
        input_names=["image"],
        output_names=["logits"],
        handler="image" if payload == "jpeg" else "tensor",
        batching=BatchingSpec(max_batch_size=MAX_BATCH),
        tolerance=1e-2,
    )


def rate(step: Callable[[], object], items: int, seconds: float) -> float:
    step()  # warm-up: the first run of a shape allocates (and TorchScript profiles)
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done == 0:
        step()
        done += items
    return done / elapsed


def raw_rows(
    archive: Archive, runtime: str, device: str, payload: str, sizes: list[int], seconds: float
) -> list[Row]:
    engine = load_runtime(archive, runtime=runtime, device=device)
    handler = load_handler(archive, trust_code=False) if payload == "jpeg" else None
    jpegs = [make_jpeg(seed) for seed in range(8)] if handler else []
    images = np.random.default_rng(0).normal(size=(max(sizes), 3, 224, 224)).astype(np.float32)

    def step_of(size: int) -> Callable[[], object]:
        if handler is None:
            batch = {"image": np.ascontiguousarray(images[:size])}
            return lambda: engine.infer(batch)
        request = HandlerRequest(files={"file": [jpegs[i % len(jpegs)] for i in range(size)]})
        return lambda: engine.infer(handler.preprocess(request)[0])

    rows = []
    try:
        for size in sizes:
            rows.append(Row(runtime, "raw", size, rate(step_of(size), size, seconds)))
            console.print(f"  raw {runtime} batch {size}: {rows[-1].throughput:.1f}/s")
    finally:
        engine.close()
    return rows


def request_for(payload: str) -> Request:
    if payload == "jpeg":
        return Request("/predict/resnet18", make_jpeg(0), "image/jpeg")
    image = np.random.default_rng(1).normal(size=(1, 3, 224, 224)).astype(np.float32)
    raw = image.tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 3, 224, 224],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    )
    return Request(
        "/v2/models/resnet18/infer",
        header + raw,
        "application/octet-stream",
        (("Inference-Header-Content-Length", str(len(header))),),
    )


def served_rows(
    store: Path,
    runtime: str,
    device: str,
    payload: str,
    concurrencies: list[int],
    seconds: float,
    extra: list[str],
) -> list[Row]:
    args = ["--device", device, "--runtime", runtime, "--max-batch-size", str(MAX_BATCH)]
    request = request_for(payload)
    rows = []
    with served_process(store, [*args, "--no-grpc", *extra]) as server:
        for concurrency in concurrencies:
            result = drive(server.port, request, concurrency, seconds, warmup=1.0)
            rows.append(
                Row(
                    runtime,
                    "served",
                    concurrency,
                    result.throughput,
                    result.percentile(50),
                    result.percentile(99),
                    result.errors,
                )
            )
            console.print(f"  served {runtime} c={concurrency}: {result.throughput:.1f}/s")
            if result.errors:
                console.print(f"  [red]{result.errors} failed requests[/]")
    return rows


def print_table(rows: list[Row], title: str) -> None:
    for runtime in dict.fromkeys(r.runtime for r in rows):
        mine = [r for r in rows if r.runtime == runtime]
        best = max(r.throughput for r in mine if r.mode == "raw")
        table = Table(title=f"{runtime} — {title}")
        for column in ("mode", "batch / concurrency", "items/s", "p50 ms", "p99 ms", "vs raw best"):
            table.add_column(column, justify="left" if column == "mode" else "right")
        for row in mine:
            served = row.mode == "served"
            table.add_row(
                row.mode,
                str(row.setting),
                f"{row.throughput:.1f}",
                f"{row.p50_ms:.2f}" if served else "",
                f"{row.p99_ms:.2f}" if served else "",
                f"{row.throughput / best:.2f}",
            )
        console.print(table)


def device_line(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.partition(":")[2] or 0)
        return f"{torch.cuda.get_device_name(index)}, {machine_line()}"
    return machine_line()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--runtime", nargs="+", help="runtimes to compare (default: by device)")
    parser.add_argument("--payload", choices=["tensor", "jpeg"], default="tensor")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--quick", action="store_true", help="0.5 s, batches and clients to 4")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG")
    args = parser.parse_args()
    runtimes = args.runtime or (GPU_RUNTIMES if args.device != "cpu" else ["onnxruntime"])
    sizes, concurrencies = BATCH_SIZES, CONCURRENCIES
    if args.quick:
        args.seconds = 0.5
        sizes, concurrencies = [1, 4], [1, 4]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tf-gpu-bench-") as tmp:
        store = Path(tmp)
        console.print(f"[bold]exporting ResNet-18[/] ({args.payload} payload)")
        archive = export_resnet18(store, args.payload)
        for runtime in runtimes:
            console.print(f"[bold]{runtime}[/] on {args.device}")
            started = time.perf_counter()
            rows += raw_rows(archive, runtime, args.device, args.payload, sizes, args.seconds)
            rows += served_rows(
                store, runtime, args.device, args.payload, concurrencies, args.seconds,
                args.serve_arg,
            )  # fmt: skip
            console.print(f"  ({time.perf_counter() - started:.0f} s)")
    print_table(rows, f"{args.payload} payload, {device_line(args.device)}")
    if args.json:
        args.json.write_bytes(orjson.dumps([r.__dict__ for r in rows], option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
