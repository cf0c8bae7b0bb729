"""``torchferry bench``: load-test a running server, optionally against the archive's raw speed."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from torchferry.cli import err_console
from torchferry.cores import default_threads
from torchferry.errors import TorchferryError

if TYPE_CHECKING:
    from torchferry.loadtest.generator import GrpcRequest, HttpRequest
    from torchferry.loadtest.payloads import Payload
    from torchferry.loadtest.target import Target

console = Console()

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "": 1.0}
#: An HTTP header name (RFC 9110 token); gRPC takes these too, lowercased.
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def _seconds(text: str) -> float | None:
    match = _DURATION.match(text)
    return float(match.group(1)) * _SECONDS[(match.group(2) or "").lower()] if match else None


def parse_duration(text: str) -> float:
    """``10s``, ``500ms``, ``1m``, ``2.5`` -> seconds (more than zero)."""
    seconds = _seconds(text)
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 10s or 500ms")
    return seconds


def parse_warmup(text: str) -> float:
    """A duration, or zero for no warm-up."""
    seconds = _seconds(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 2s or 0")
    return seconds


def parse_concurrency(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of concurrencies such as 1,8,32")
    return values


def parse_rates(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of rates such as 200,500,1000")
    return values


def parse_header(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (KEY, VALUE): an HTTP header, or gRPC metadata (key lowercased)."""
    key, sep, value = text.partition("=")
    if not sep or not _HEADER_NAME.match(key.strip()) or any(c in value for c in "\r\n"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a header such as application=torchferry")
    return key.strip(), value.strip()


def default_processes(concurrencies: list[int]) -> int:
    """Half the cores (the server under test often shares the machine), at most the
    largest concurrency, at least one."""
    return max(1, min(default_threads() // 2, max(concurrencies)))


def register(subparsers: argparse._SubParsersAction) -> None:
    from torchferry.loadtest.openloop import ARRIVALS, DEFAULT_MAX_CONNECTIONS
    from torchferry.loadtest.target import PROTOCOLS

    parser = subparsers.add_parser(
        "bench",
        help="load-test a running server (torchferry, Triton or TorchServe)",
        description=(
            "Measure requests/s, p50/p90/p99 latency and errors at each concurrency (closed "
            "loop) or at each rate of Poisson arrivals (--rates: open loop). Inputs "
            "come from --input (named arrays), --image (raw bytes), or else the model's V2 "
            "metadata. --raw STORE also runs the same archive in this process at the batch "
            "sizes the server ran and prints served/raw. For --protocol grpc, URL is the "
            "gRPC HOST:PORT."
        ),
    )
    parser.add_argument("url", metavar="URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="v2-json")
    parser.add_argument(
        "--concurrency", type=parse_concurrency, metavar="N[,N...]",
        help="closed loop: requests kept in flight, one step each (default 1,8,32)",
    )  # fmt: skip
    parser.add_argument(
        "--rates", type=parse_rates, metavar="R[,R...]",
        help="open loop: requests per second, one step each, started on schedule "
        "whether or not earlier ones answered; latency counts from the scheduled start",
    )  # fmt: skip
    parser.add_argument(
        "--arrivals", choices=ARRIVALS, default="poisson",
        help="open loop: exponential (poisson) or even (uniform) gaps",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="open loop: the schedule's seed")
    parser.add_argument(
        "--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
        help="open loop: connections (gRPC: calls in flight) at most; a request that "
        "finds none free is a client-side miss",
    )  # fmt: skip
    parser.add_argument(
        "--objective-ms", type=float, metavar="MS",
        help="open loop: the p99 objective (failures count as misses); reports the "
        "highest rate that holds it",
    )  # fmt: skip
    parser.add_argument("--duration", type=parse_duration, default=10.0, metavar="TIME")
    parser.add_argument("--warmup", type=parse_warmup, default=2.0, metavar="TIME")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", type=Path, metavar="FILE.npz")
    source.add_argument("--image", type=Path, metavar="FILE")
    parser.add_argument(
        "--raw", type=Path, metavar="STORE", help="also measure the archive in-process"
    )
    parser.add_argument(
        "--raw-duration", type=parse_duration, default=2.0, metavar="TIME",
        help="how long each raw batch size runs",
    )  # fmt: skip
    parser.add_argument("--processes", type=int, metavar="N", help="generator processes")
    parser.add_argument("--timeout", type=parse_duration, default=30.0, metavar="TIME")
    parser.add_argument(
        "--no-calibrate", action="store_true", help="skip the generator's calibration"
    )
    parser.add_argument("--token", help="bearer token (default: $TORCHFERRY_TOKEN)")
    parser.add_argument(
        "--header", type=parse_header, action="append", default=[], metavar="KEY=VALUE",
        help="sent with every request (HTTP header; gRPC metadata); repeatable",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="OUT.json")
    parser.add_argument("--html", type=Path, metavar="OUT.html")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from torchferry.loadtest.target import BenchError

    try:
        return _run(args)
    except (BenchError, TorchferryError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}")
        return 2


def _command_line(args: argparse.Namespace) -> list[str]:
    """The command as parsed (with its defaults filled in), for the report."""
    command = ["torchferry", "bench", args.url, "--model", args.model]
    command += ["--protocol", args.protocol]
    if args.rates is not None:
        command += ["--rates", ",".join(f"{r:g}" for r in args.rates)]
        command += ["--arrivals", args.arrivals, "--seed", str(args.seed)]
        command += ["--max-connections", str(args.max_connections)]
        if args.objective_ms is not None:
            command += ["--objective-ms", f"{args.objective_ms:g}"]
    else:
        command += ["--concurrency", ",".join(map(str, args.concurrency))]
    command += ["--duration", f"{args.duration:g}s", "--warmup", f"{args.warmup:g}s"]
    for flag in ("version", "input", "image", "raw", "processes"):
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    for key, value in args.header:
        command += ["--header", f"{key}={value}"]
    return command


def _run(args: argparse.Namespace) -> int:
    from torchferry.loadtest.payloads import Payload, encode, from_metadata, image_payload, load_npz
    from torchferry.loadtest.report import rich_table, write_html, write_json
    from torchferry.loadtest.run import CTRL_C, BenchRun, Settings, run_bench
    from torchferry.loadtest.target import BenchError, Target

    if args.processes is not None and args.processes < 1:
        raise BenchError("--processes must be 1 or more")
    if args.rates is not None:
        if args.concurrency is not None:
            raise BenchError("give --rates (open loop) or --concurrency (closed loop), not both")
        for flag in ("raw", "html"):
            if getattr(args, flag) is not None:
                raise BenchError(f"--{flag} is for the closed loop (--concurrency), not --rates")
        if args.max_connections < 1:
            raise BenchError("--max-connections must be 1 or more")
        if args.objective_ms is not None and args.objective_ms <= 0:
            raise BenchError("--objective-ms must be more than 0")
    elif args.objective_ms is not None:
        raise BenchError("--objective-ms is for the open loop: give --rates too")
    if args.concurrency is None:
        args.concurrency = [1, 8, 32]
    for path in (args.json, args.html):
        if path is not None and not path.parent.is_dir():
            raise BenchError(f"{path}: the directory {path.parent} does not exist")
    if args.raw is not None and not args.raw.is_dir():
        raise BenchError(f"--raw {args.raw}: not a model store directory")
    grpc = args.protocol == "grpc"
    headers = tuple(args.header)
    target = Target.parse(args.url, args.model, args.version, args.token, grpc, headers)
    target.check_reachable()
    metadata = target.metadata()
    if args.image is not None:
        payload = image_payload(args.image)
    elif args.input is not None:
        payload = Payload(arrays=load_npz(args.input, metadata))
    else:
        payload = Payload(arrays=from_metadata(metadata, args.model))
    request = encode(args.protocol, target, payload, metadata)
    if args.rates is not None:
        return _run_open(args, target, payload, request)
    settings = Settings(
        protocol=args.protocol,
        concurrencies=args.concurrency,
        seconds=args.duration,
        warmup_s=args.warmup,
        processes=args.processes or default_processes(args.concurrency),
        timeout_s=args.timeout,
        calibrate=not args.no_calibrate,
        raw_store=args.raw,
        raw_seconds=args.raw_duration,
    )
    bench = BenchRun(target, settings, payload)
    console.print(f"[bold]bench[/] {escape(args.model)} over {args.protocol}: {payload.describe()}")
    run_bench(bench, request, lambda line: console.print(f"  {escape(line)}"))
    console.print(rich_table(bench))
    command = _command_line(args)
    if args.json is not None:
        write_json(bench, args.json, command)
        console.print(f"wrote {args.json}")
    if args.html is not None:
        write_html(bench, args.html, command)
        console.print(f"wrote {args.html}")
    if bench.interrupted is None:
        return 0
    written = " and ".join(str(p) for p in (args.json, args.html) if p is not None)
    kept = f"; {written} hold(s) the steps measured" if written else ""
    message = (
        f"the run stopped after {len(bench.steps)} of {len(settings.concurrencies)} "
        f"steps: {bench.interrupted}{kept}"
    )
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    return 130 if bench.interrupted == CTRL_C else 2


def _run_open(
    args: argparse.Namespace, target: Target, payload: Payload, request: HttpRequest | GrpcRequest
) -> int:
    from torchferry.loadtest.openrun import (
        OpenRun,
        OpenSettings,
        open_as_dict,
        open_table,
        run_open,
    )
    from torchferry.loadtest.report import write_document
    from torchferry.loadtest.run import CTRL_C

    settings = OpenSettings(
        protocol=args.protocol,
        rates=args.rates,
        seconds=args.duration,
        warmup_s=args.warmup,
        processes=args.processes or max(1, default_threads() // 2),
        timeout_s=args.timeout,
        arrivals=args.arrivals,
        seed=args.seed,
        max_connections=args.max_connections,
        objective_ms=args.objective_ms,
    )
    bench = OpenRun(target, settings, payload)
    console.print(
        f"[bold]bench[/] {escape(args.model)} over {args.protocol}, open loop "
        f"({args.arrivals}): {payload.describe()}"
    )
    run_open(bench, request, lambda line: console.print(f"  {escape(line)}"))
    console.print(open_table(bench))
    if args.json is not None:
        write_document(open_as_dict(bench), args.json, _command_line(args))
        console.print(f"wrote {args.json}")
    if bench.interrupted is None:
        return 0
    err_console.print(f"[bold red]error:[/] {escape(bench.notes[-1])}")
    return 130 if bench.interrupted == CTRL_C else 2
