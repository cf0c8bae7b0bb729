"""autotune's GPU rows on ResNet-18: fp16 and bf16 (TorchScript on CUDA), ONNX Runtime's CUDA
provider, and TensorRT in fp32, fp16 and int8 (calibrated on the data), beside the original
(ONNX Runtime on the CPU), as ``torchferry optimize`` measures and prints them.

ResNet-18 has random weights and the data is random images: the table is about speed, and
``agreement`` (argmax agreement with the original on the same rows) is the accuracy check.
Where there is no GPU each GPU row is skipped with its reason, so ``--rows 8 --quick`` is a
smoke run anywhere.

Usage: ``python bench/gpu_autotune.py [--rows N] [--candidates 'fp16,bf16,cuda-*,trt-*']
[--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson
import torch
from rich.console import Console

import torchferry
from torchferry.archive import BatchingSpec
from torchferry.optimize import autotune
from torchferry.optimize.measure import QUICK, MeasureSettings
from torchferry.optimize.report import rich_table
from torchferry.zoo.resnet import resnet18

console = Console(width=200)
CANDIDATES = "fp16,bf16,cuda-fp32-onnxruntime,trt-*"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="random images in the data")
    parser.add_argument("--candidates", default=CANDIDATES, help=f"default {CANDIDATES!r}")
    parser.add_argument("--budget", default="2%", help="of agreement (default 2%%)")
    parser.add_argument("--quick", action="store_true", help="autotune's short measurements")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    settings = QUICK if args.quick else MeasureSettings(latency_seconds=0.3, search_seconds=3.0)
    with tempfile.TemporaryDirectory(prefix="tf-gpu-autotune-") as tmp:
        root = Path(tmp)
        console.print("[bold]exporting ResNet-18[/] (its factory kept, for fp16 and bf16)")
        torch.manual_seed(0)
        archive = torchferry.export(
            resnet18().eval(),
            torch.randn(2, 3, 224, 224),
            name="resnet18",
            store=root / "store",
            format="onnx",
            input_names=["image"],
            output_names=["logits"],
            factory="torchferry.zoo.resnet:resnet18",
            batching=BatchingSpec(max_batch_size=64),
            tolerance=1e-2,
        )
        images = np.random.default_rng(0).normal(size=(args.rows, 3, 224, 224))
        result = autotune(
            archive,
            {"image": images.astype(np.float32)},
            budget=args.budget,
            metric="agreement",
            candidates=[p.strip() for p in args.candidates.split(",") if p.strip()],
            store=root / "out",
            report=False,
            settings=settings,
            progress=lambda done, total, what: console.print(f"  [{done}/{total}] {what}"),
        )
    console.print(rich_table(result))
    console.print(result.summary)
    console.print(f"machine: {result.machine}")
    if args.json:
        rows = [
            {k: v for k, v in row.__dict__.items() if k != "throughput_by_batch"}
            for row in result.rows
        ]
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
