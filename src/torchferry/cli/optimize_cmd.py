"""``torchferry optimize DIR/NAME[/VERSION] --data FILE.npz``: autotune a model on your data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from torchferry.errors import InvalidInput


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "optimize",
        help="try quantization, pruning and runtime settings; keep the fastest within budget",
        description=(
            "Build every candidate (the original in each runtime, ONNX Runtime at each graph "
            "optimization level, int8 quantization in ONNX Runtime and PyTorch, pruning, half "
            "precision on a GPU), measure its latency, throughput, size and accuracy on the "
            "data, and write the fastest one within the accuracy budget as the model's next "
            "version, with optimize-report.html beside it."
        ),
    )
    parser.add_argument(
        "path",
        type=Path,
        nargs="?",
        metavar="DIR/NAME[/VERSION]",
        help="the model to optimize (DIR/NAME: its latest version)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="FILE.npz",
        help="one array per model input, named as the inputs, and optionally 'labels'",
    )
    parser.add_argument(
        "--budget",
        default="1%",
        help="largest accepted loss: '1%%' is one point of top1/agreement (default); "
        "for max-abs an absolute bound such as 0.01",
    )
    parser.add_argument(
        "--metric",
        choices=["top1", "agreement", "max-abs"],
        help="top1 against labels (default with labels), agreement with the original's "
        "argmax (default without), or the largest absolute difference to its outputs",
    )
    parser.add_argument(
        "--candidates",
        metavar="NAMES",
        help="comma-separated names or glob patterns, e.g. 'fp32-*,ort-*' (default: all; "
        "--list-candidates shows them)",
    )
    parser.add_argument("--threads", type=int, help="threads per runtime (default: the cores)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="measure for a fraction of the time (noisier numbers; for a first look)",
    )
    parser.add_argument("--store", type=Path, help="store to write to (default: the model's)")
    parser.add_argument("--no-report", action="store_true", help="write no HTML report")
    parser.add_argument(
        "--list-candidates", action="store_true", help="list the candidates and exit"
    )
    parser.set_defaults(func=run)


def _candidates_table() -> Table:
    from torchferry.optimize.candidates import CANDIDATES

    table = Table(title="autotune candidates", title_justify="left")
    table.add_column("name")
    table.add_column("what")
    for candidate in CANDIDATES:
        table.add_row(candidate.name, candidate.description)
    return table


def run(args: argparse.Namespace) -> int:
    # piped output keeps whole rows: the table is wide
    console = Console() if sys.stdout.isatty() else Console(width=220)
    if args.list_candidates:
        console.print(_candidates_table())
        return 0
    if args.path is None or args.data is None:
        raise InvalidInput("give the model, DIR/NAME or DIR/NAME/VERSION, and --data FILE.npz")
    if args.threads is not None and args.threads < 1:
        raise InvalidInput(f"--threads must be at least 1, got {args.threads}")

    from torchferry.optimize.autotune import autotune
    from torchferry.optimize.measure import QUICK, MeasureSettings
    from torchferry.optimize.report import rich_table

    patterns = [p.strip() for p in (args.candidates or "").split(",") if p.strip()] or None
    # bound to the stream now: builders silence sys.stderr while they run
    progress_console = Console(file=sys.stderr)
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=progress_console,
        transient=True,
    ) as bar:
        task = bar.add_task("autotune", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        result = autotune(
            args.path,
            args.data,
            budget=args.budget,
            metric=args.metric,
            candidates=patterns,
            store=args.store,
            report=not args.no_report,
            settings=(QUICK if args.quick else MeasureSettings()).with_threads(args.threads),
            progress=progress,
        )
    console.print(rich_table(result))
    style = "green" if result.archive is not None else "yellow"
    console.print(f"[bold {style}]{escape(result.summary)}[/]")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if result.archive is not None:
        console.print(f"new version: {result.archive.path}")
    if result.report_path is not None:
        console.print(f"report: {result.report_path}")
    console.print(f"took {result.seconds:.1f} s")
    return 0
