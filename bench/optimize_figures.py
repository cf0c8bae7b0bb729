"""The autotune figures: every candidate's latency, throughput, size and accuracy on this
machine, for the digits demo model and for ResNet-18.

    python bench/optimize_figures.py [--store DIR] [--only digits|resnet18] [--quick]

digits: the demo's DigitsCNN, trained as the demo trains it, scored by top-1 on the held-out
test split (450 images, with labels). ResNet-18: ``torchferry.zoo.resnet:resnet18`` (random
weights, no torchvision here) exported with the image handler, scored by agreement with
the fp32 original on 32 random-normal 3x224x224 inputs (no labels). Each run writes its
winner and ``optimize-report.html`` into the store (a temporary one unless ``--store``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from torchferry.export import export
from torchferry.optimize import autotune
from torchferry.optimize.measure import QUICK, MeasureSettings
from torchferry.optimize.report import rich_table

RESNET_ROWS = 32


def build_digits(store: Path, scratch: Path, log: Console) -> tuple[Path, Path]:
    from torchferry.demo.digits import export_digits, write_test_data
    from torchferry.zoo.digits import digits_split, train_digits

    started = time.perf_counter()
    model, accuracy = train_digits()
    archive = export_digits(model, store)
    data = write_test_data(scratch / "digits-test.npz")
    x_test = digits_split()[1]
    log.print(
        f"digits: trained (test accuracy {accuracy:.2%}) and exported in "
        f"{time.perf_counter() - started:.1f} s; data: {len(x_test)} test images with labels"
    )
    return archive.path, data


def build_resnet18(store: Path, scratch: Path, log: Console) -> tuple[Path, Path]:
    from torchferry.zoo.resnet import resnet18

    started = time.perf_counter()
    torch.manual_seed(0)
    archive = export(
        resnet18(),
        torch.randn(2, 3, 224, 224),
        name="resnet18",
        store=store,
        input_names=["x"],
        output_names=["logits"],
        handler="image",
        factory="torchferry.zoo.resnet:resnet18",
    )
    images = np.random.default_rng(0).standard_normal((RESNET_ROWS, 3, 224, 224))
    data = scratch / "resnet18-random.npz"
    np.savez(data, x=images.astype(np.float32))
    log.print(
        f"resnet18: exported in {time.perf_counter() - started:.1f} s; data: {RESNET_ROWS} "
        "random-normal 3x224x224 inputs, no labels (metric: agreement with fp32)"
    )
    return archive.path, data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="model store (default: a temporary one)")
    parser.add_argument("--only", choices=["digits", "resnet18"], action="append")
    parser.add_argument("--quick", action="store_true", help="shorter, noisier measurements")
    parser.add_argument("--candidates", help="comma-separated names or globs (default: all)")
    parser.add_argument("--budget", default="1%")
    args = parser.parse_args(argv)

    console = Console(width=200) if not sys.stdout.isatty() else Console()
    settings = QUICK if args.quick else MeasureSettings()
    patterns = args.candidates.split(",") if args.candidates else None
    models = args.only or ["digits", "resnet18"]
    builders = {"digits": build_digits, "resnet18": build_resnet18}
    with tempfile.TemporaryDirectory(prefix="torchferry-figures-") as scratch:
        store = args.store or Path(scratch) / "store"
        store.mkdir(parents=True, exist_ok=True)
        for name in models:
            source, data = builders[name](store, Path(scratch), console)
            started = time.perf_counter()

            def progress(done: int, total: int, what: str) -> None:
                elapsed = time.perf_counter() - started  # noqa: B023 - read at call time
                print(f"  [{done}/{total}] {elapsed:6.1f} s  {what}", file=sys.stderr)

            result = autotune(
                source,
                data,
                budget=args.budget,
                candidates=patterns,
                settings=settings,
                progress=progress,
            )
            console.print(rich_table(result))
            console.print(result.summary)
            for warning in result.warnings:
                console.print(f"warning: {warning}")
            if result.metric != "max-abs":
                console.print(
                    "max abs difference to the original's outputs: "
                    + ", ".join(
                        f"{row.name} {row.scores['max-abs']:.2g}"
                        for row in result.rows
                        if row.measured and "max-abs" in row.scores
                    )
                )
            console.print(f"autotune took {result.seconds:.1f} s; report: {result.report_path}")
            console.print(f"machine: {result.machine['cpu']}; gpu: {result.machine['gpu']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
