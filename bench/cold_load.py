"""What a cold load costs a request under ``--memory-budget``.

Each model (the digits CNN and ResNet-18, random weights: the size is what counts) is
exported once (ONNX and TorchScript) and served twice under two names, ``a`` and ``b``, by
one worker whose budget fits one of them: requests alternate between the two, so each one
loads its model again (and evicts the other). The table gives, per model and runtime, the
size the budget counts (the graph on disk), the median ``X-Torchferry-Cold-Load`` (load +
warm-up), the median whole cold request and the median warm request (the same request on
a resident model), and the median RSS the worker grew by during a load (from the
``model_resident`` log event: the engine's own memory, as far as the allocator says).

Usage: ``python bench/cold_load.py [--loads N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchferry.archive import ModelStore
from torchferry.cores import cpu_name
from torchferry.export import export
from torchferry.serving.process import serve_in_subprocess
from torchferry.serving.residency import estimate_bytes
from torchferry.zoo.digits import DigitsCNN
from torchferry.zoo.resnet import resnet18

MODELS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "digits": (DigitsCNN, (1, 64)),
    "resnet18": (resnet18, (1, 3, 224, 224)),
}
RUNTIMES = ("onnxruntime", "torchscript")


def build(root: Path, model: str) -> ModelStore:
    """``a`` and ``b``: the same exported model under two names."""
    factory, shape = MODELS[model]
    torch.manual_seed(0)
    store = ModelStore(root)
    archive = export(factory().eval(), torch.zeros(shape), name="a", store=root, format="both")
    shutil.copytree(archive.path.parent, root / "b")
    return store


def body(shape: tuple[int, ...], name: str) -> dict[str, Any]:
    x = np.zeros(shape, np.float32)
    return {
        "inputs": [
            {"name": name, "shape": list(shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }


def measure(model: str, runtime: str, loads: int, work: Path) -> dict[str, Any]:
    store = build(work / f"{model}-{runtime}", model)
    archive = store.open("a", 1)
    size = estimate_bytes(archive, runtime)
    shape = MODELS[model][1]
    request = body(shape, archive.manifest.signature.inputs[0].name)
    log = work / f"{model}-{runtime}.log"
    args = [
        "--store", str(store.root), "--runtime", runtime, "--memory-budget", str(size + size // 2),
        "--no-management", "--log-format", "json", "--no-access-log",
    ]  # fmt: skip
    cold, total, warm = [], [], []
    with serve_in_subprocess(args, log) as server, server.client() as http:
        for index in range(2 * loads):
            name = "ab"[index % 2]
            started = time.perf_counter()
            answer = http.post(f"/v2/models/{name}/infer", json=request)
            total.append(time.perf_counter() - started)
            answer.raise_for_status()
            cold.append(float(answer.headers["x-torchferry-cold-load"]))
            for _ in range(3):
                started = time.perf_counter()
                again = http.post(f"/v2/models/{name}/infer", json=request)
                warm.append(time.perf_counter() - started)
                assert "x-torchferry-cold-load" not in again.headers
    growth = [
        event["rss_growth_bytes"]
        for line in log.read_text().splitlines()
        if line.startswith("{") and (event := json.loads(line)).get("event") == "model_resident"
    ]
    return {
        "model": model,
        "runtime": runtime,
        "size_mib": size / 2**20,
        "cold_load_ms": 1000 * statistics.median(cold),
        "cold_request_ms": 1000 * statistics.median(total),
        "warm_request_ms": 1000 * statistics.median(warm),
        "rss_growth_mib": statistics.median(growth) / 2**20 if growth else float("nan"),
        "loads": len(cold),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=5, help="cold loads per model (x2)")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for model in MODELS:
            for runtime in RUNTIMES:
                rows.append(measure(model, runtime, args.loads, Path(work)))
    print(f"cold loads on {cpu_name()}, one worker, medians of {rows[0]['loads']} loads")
    print(
        "| model | runtime | size (MiB) | cold load (ms) | cold request (ms) | warm request (ms) | RSS growth (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['runtime']} | {r['size_mib']:.2f} | {r['cold_load_ms']:.1f} | "
            f"{r['cold_request_ms']:.1f} | {r['warm_request_ms']:.1f} | {r['rss_growth_mib']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
