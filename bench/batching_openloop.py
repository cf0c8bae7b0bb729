"""Fixed against adaptive batching under open-loop (Poisson) load, for a small and a large
model: which holds a p99 latency objective at the highest rate?

Models (random weights, ONNX Runtime, built in a temporary store):

- ``mlp``: bench/hot_path's MLP 784->128->10, one row per request over V2 binary
  (``POST /v2/models/mlp/infer``), objective p99 <= 50 ms;
- ``resnet18``: bench/serve_vs_raw's ResNet-18 behind the image handler, objective p99 <=
  500 ms. By default a JPEG (500x375) to ``/predict/resnet18``, as users send it: the decode
  is per request and cannot be batched, which is the cost an adaptive batcher must see
  through. ``--resnet-input v2`` sends a preprocessed 1x3x224x224 FP32 tensor over V2
  binary instead (no decode: the model's batching alone, at 600 KB a request).

For each configuration a server of its own (``torchferry serve --workers 1``):

- fixed: ``--batching fixed --max-delay-ms D`` for D in (MLP) 0, 1, 2, 5 and (ResNet-18)
  0, 5, 10, 25. A server without ``--batching fixed`` (before adaptive batching landed)
  runs ``--max-delay-ms D`` alone: its batcher is the fixed window;
- adaptive: ``--batching adaptive --max-latency-ms L``, L the objective. A server that
  refuses the flags is reported as such, and the other configurations still run.

The saturation throughput comes first, from a short closed-loop run against the D=0
server (or ``--saturation``, to compare runs at the same rates); the rates are a geometric sweep from ``--low`` to ``--high`` times it. Each rate's
figures are those of the median run (by p99, failures counted as misses) of
``--repeats``. A configuration holds the objective at a rate when that p99 is within the
objective: a shed request (503) or a timeout is a miss. The summary gives each
configuration's highest such rate (and the highest up to which every rate holds, which a
lone noisy hold does not move) and adaptive's ratio to the best fixed one, and the
largest batch each server ran (V2 statistics: exact batch sizes), to show that
``max_batch_size`` was never exceeded.

Usage: ``PYTHONPATH=src python bench/batching_openloop.py [--quick] [--models mlp,resnet18]
[--repeats 3] [--seconds 5] [--rates 6] [--json out.json]``. On a shared machine read the
ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine_line, served_process

from torchferry.loadtest.generator import GrpcRequest, HttpRequest
from torchferry.loadtest.openrun import OpenRun, OpenSettings, RateStep, run_open
from torchferry.loadtest.payloads import Payload, encode
from torchferry.loadtest.pool import GeneratorPool
from torchferry.loadtest.target import Target

#: Wide enough for the rate table when the output is a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass(frozen=True)
class ModelPlan:
    name: str
    objective_ms: float
    delays_ms: tuple[float, ...]
    #: Closed-loop concurrency that saturates the server (for the saturation throughput).
    saturate_at: int
    timeout_s: float


PLANS = {
    "mlp": ModelPlan("mlp", 50.0, (0, 1, 2, 5), 32, 2.0),
    "resnet18": ModelPlan("resnet18", 500.0, (0, 5, 10, 25), 8, 5.0),
}


@dataclass(frozen=True)
class Config:
    label: str
    flags: tuple[str, ...]
    #: Flags for a server that predates them (None: no fallback).
    fallback: tuple[str, ...] | None = None


def configs(plan: ModelPlan) -> list[Config]:
    fixed = [
        Config(
            f"fixed {d:g} ms",
            ("--batching", "fixed", "--max-delay-ms", f"{d:g}"),
            ("--max-delay-ms", f"{d:g}"),
        )
        for d in plan.delays_ms
    ]
    objective = ("--batching", "adaptive", "--max-latency-ms", f"{plan.objective_ms:g}")
    adaptive = Config(f"adaptive {plan.objective_ms:g} ms", objective)
    # the batching policy alone: nothing refused, every request waits its turn
    unshed = Config(f"adaptive {plan.objective_ms:g} ms, no shed", (*objective, "--shed", "never"))
    return [*fixed, adaptive, unshed]


@dataclass
class ConfigResult:
    config: Config
    flags_used: tuple[str, ...] = ()
    refused: str | None = None
    steps: list[RateStep] = field(default_factory=list)
    max_batch: int | None = None
    #: Rows per batch over the whole sweep.
    mean_batch: float | None = None
    max_batch_size: int | None = None
    note: str = ""

    def highest_holding(self, objective_ms: float) -> float | None:
        held = [s.offered for s in self.steps if s.holds(objective_ms)]
        return max(held) if held else None

    def holding_throughout(self, objective_ms: float) -> float | None:
        """The highest rate up to which every rate holds (a lone hold above a miss, as
        noise on a busy machine makes, does not count here)."""
        best = None
        for step in sorted(self.steps, key=lambda s: s.offered):
            if not step.holds(objective_ms):
                break
            best = step.offered
        return best


# -- models and requests -----------------------------------------------------------------------


def build_store(root: Path, models: list[str]) -> None:
    """The models, exported here (torch is imported only in this process, not in the
    generator processes, which import this module again when they spawn)."""
    if "mlp" in models:
        from hot_path import build_store as build_mlp

        build_mlp(root)
    if "resnet18" in models:
        from serve_vs_raw import export_resnet18

        export_resnet18(root)


def payload_for(model: str, resnet_input: str) -> tuple[str, Payload]:
    """(protocol, payload) for a model."""
    if model == "mlp":
        row = np.random.default_rng(0).normal(size=(1, 784)).astype(np.float32)
        return "v2-binary", Payload(arrays={"x": row})
    if resnet_input == "v2":
        return "v2-binary", Payload(arrays={"image": np.zeros((1, 3, 224, 224), np.float32)})
    from serve_vs_raw import make_jpeg

    return "predict", Payload(image=make_jpeg(0), image_type="image/jpeg")


def request_for(
    url: str, model: str, protocol: str, payload: Payload
) -> tuple[Target, HttpRequest | GrpcRequest]:
    target = Target.parse(url, model, None, None, grpc=False)
    return target, encode(protocol, target, payload, target.metadata())


# -- one server ----------------------------------------------------------------------------------


def start_server(
    stack: contextlib.ExitStack, store: Path, model: str, config: Config, log: Path
) -> tuple[Any, tuple[str, ...]]:
    """A server with the configuration's flags, or its fallback when it refuses them, open
    until ``stack`` closes; (server, flags used). RuntimeError (the server's own words)
    when it refuses both."""
    base = ["--workers", "1", "--model", model, "--no-grpc"]
    tries = [config.flags] + ([config.fallback] if config.fallback is not None else [])
    last = ""
    for flags in tries:
        try:
            server = stack.enter_context(served_process(store, [*base, *flags], log=log))
        except RuntimeError as exc:
            if "server exited" not in str(exc):
                raise
            last = _refusal(str(exc))
            continue
        return server, flags
    raise RuntimeError(last)


def _refusal(text: str) -> str:
    """The server's own error line, from its output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["the server exited"])[-1]


def saturation(url: str, model: str, protocol: str, payload: Payload, plan: ModelPlan) -> float:
    """Requests/s of a short closed loop at ``plan.saturate_at`` in flight."""
    target, request = request_for(url, model, protocol, payload)
    seconds = 3.0
    with GeneratorPool(1) as pool:
        while True:
            result = pool.start(target.endpoint, request, plan.saturate_at, 1.0, seconds).result()
            if not result.ok:
                raise SystemExit(f"saturation run: no request succeeded ({dict(result.errors)})")
            # a slow model answers few requests in a short window: run until each of the
            # requests in flight has gone round several times
            needed = 8 * plan.saturate_at / result.throughput
            if needed <= seconds or seconds >= 30:
                return result.throughput
            seconds = min(30.0, needed)


def geometric(low: float, high: float, count: int) -> list[float]:
    if count == 1:
        return [high]
    ratio = (high / low) ** (1 / (count - 1))
    return [round(low * ratio**i, 1) for i in range(count)]


def max_batch_size(url: str, model: str) -> int | None:
    return Target.parse(url, model, None, None, grpc=False).max_batch_size()


def sweep(
    url: str,
    model: str,
    protocol: str,
    payload: Payload,
    plan: ModelPlan,
    rates: list[float],
    args: argparse.Namespace,
) -> list[RateStep]:
    """Every rate, ``args.repeats`` times; the median run (by p99 with misses) of each."""
    target, request = request_for(url, model, protocol, payload)
    runs: dict[float, list[RateStep]] = {rate: [] for rate in rates}
    for repeat in range(args.repeats):
        settings = OpenSettings(
            protocol=protocol,
            rates=rates,
            seconds=args.seconds,
            warmup_s=args.warmup,
            processes=args.processes,
            timeout_s=plan.timeout_s,
            seed=repeat,
            objective_ms=plan.objective_ms,
            min_requests=args.min_requests,
        )
        run = run_open(OpenRun(target, settings, payload), request, lambda line: None)
        if run.interrupted:
            raise SystemExit(f"{model}: {run.interrupted}")
        for step in run.steps:
            runs[step.offered].append(step)
            console.print(f"    {_line(step, plan)}")
    return [_median_run(steps) for steps in runs.values()]


def _median_run(steps: list[RateStep]) -> RateStep:
    ordered = sorted(steps, key=lambda s: s.p99_all_ms)
    return ordered[(len(ordered) - 1) // 2]


def _line(step: RateStep, plan: ModelPlan) -> str:
    held = "holds" if step.holds(plan.objective_ms) else "misses"
    if not step.scheduled:
        return f"rate {step.offered:g}/s: no request scheduled"
    return (
        f"rate {step.offered:g}/s: ok {step.achieved:.0f}/s, p50 {_ms(step.p50_ms)}, "
        f"p99 {_ms(step.p99_all_ms)} ms (misses counted), failed "
        f"{step.scheduled - step.ok}, batch {_batch(step.mean_batch)}: {held}"
    )


def _ms(value: float) -> str:
    return "inf" if math.isinf(value) else ("" if math.isnan(value) else f"{value:.1f}")


def _batch(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def run_model(store: Path, model: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    plan = PLANS[model]
    protocol, payload = payload_for(model, args.resnet_input)
    chosen = [c for c in configs(plan) if not args.only or any(o in c.label for o in args.only)]
    results = [ConfigResult(config) for config in chosen]
    rates: list[float] = []
    for result in results:
        console.print(f"[bold]{model}[/]: {result.config.label}")
        log = work / f"{model}-{results.index(result)}.log"
        with contextlib.ExitStack() as stack:
            try:
                server, flags = start_server(stack, store, model, result.config, log)
            except RuntimeError as exc:
                result.refused = str(exc)
                console.print(f"  [red]not run[/]: {result.refused}")
                continue
            result.flags_used = flags
            if flags != result.config.flags:
                result.note = "the server has no --batching fixed: its batcher is fixed"
            if not rates:
                top = args.saturation or saturation(server.url, model, protocol, payload, plan)
                rates = geometric(args.low * top, args.high * top, args.rates)
                console.print(f"  saturation {top:.0f} req/s (closed loop); rates {rates}")
            before = _counts(server.url, model)
            result.steps = sweep(server.url, model, protocol, payload, plan, rates, args)
            ran = _counts(server.url, model) - before
            result.max_batch = max((s for s, n in ran.items() if n > 0), default=None)
            batches = sum(n for n in ran.values() if n > 0)
            if batches:
                result.mean_batch = sum(s * n for s, n in ran.items() if n > 0) / batches
            result.max_batch_size = max_batch_size(server.url, model)
    console.print(rate_table(model, plan, results))
    console.print(summary_table(model, plan, results))
    return as_dict(model, plan, protocol, payload, rates, results)


def _counts(url: str, model: str) -> Counter[int]:
    return Target.parse(url, model, None, None, grpc=False).batch_counts() or Counter()


# -- tables --------------------------------------------------------------------------------------


def rate_table(model: str, plan: ModelPlan, results: list[ConfigResult]) -> Table:
    table = Table(
        title=f"{model}: open loop (Poisson), p99 objective {plan.objective_ms:g} ms",
        caption="latencies in ms from each request's scheduled start; p99*: failures "
        "counted as misses; lag: the generator's own p99 lateness",
    )
    for heading in ("config", "rate/s", "ok/s", "p50", "p99", "p99*", "shed", "errors"):
        table.add_column(heading, justify="right")
    for heading in ("batch", "max batch", "lag", "holds"):
        table.add_column(heading, justify="right")
    for result in results:
        if result.refused:
            table.add_row(result.config.label, *[""] * 10, "not run")
            continue
        for step in result.steps:
            others = ", ".join(f"{k}: {v}" for k, v in step.other_errors.items()) or "0"
            table.add_row(
                result.config.label,
                f"{step.offered:g}",
                f"{step.achieved:.0f}",
                _ms(step.p50_ms),
                _ms(step.p99_ms),
                _ms(step.p99_all_ms),
                str(step.shed),
                others,
                _batch(step.mean_batch),
                "" if step.max_batch is None else str(step.max_batch),
                _ms(step.lag_p99_ms),
                "yes" if step.holds(plan.objective_ms) else "no",
                style=None if step.holds(plan.objective_ms) else "red",
            )
    return table


def best_fixed(plan: ModelPlan, results: list[ConfigResult]) -> ConfigResult | None:
    fixed = [r for r in results if r.config.label.startswith("fixed") and not r.refused]
    return max(fixed, key=lambda r: r.highest_holding(plan.objective_ms) or 0.0, default=None)


def summary_table(model: str, plan: ModelPlan, results: list[ConfigResult]) -> Table:
    best = best_fixed(plan, results)
    best_rate = best.highest_holding(plan.objective_ms) if best else None
    table = Table(title=f"{model}: highest rate holding p99 <= {plan.objective_ms:g} ms")
    headings = ("config", "flags", "highest rate/s", "vs best fixed", "every rate up to/s")
    for heading in (*headings, "mean batch", "max batch ran"):
        table.add_column(heading)
    for result in results:
        if result.refused:
            row = (result.config.label, " ".join(result.config.flags), "not run")
            table.add_row(*row, "", "", "", "")
            continue
        rate = result.highest_holding(plan.objective_ms)
        ratio = f"{rate / best_rate:.2f}" if rate and best_rate else ""
        mark = " (best fixed)" if result is best else ""
        limit = f" of {result.max_batch_size}" if result.max_batch_size else ""
        table.add_row(
            result.config.label + mark,
            " ".join(result.flags_used),
            "none" if rate is None else f"{rate:g}",
            ratio,
            _rate(result.holding_throughout(plan.objective_ms)),
            "" if result.mean_batch is None else f"{result.mean_batch:.2f}",
            f"{result.max_batch}{limit}" if result.max_batch is not None else "",
        )
    return table


def _rate(rate: float | None) -> str:
    return "none" if rate is None else f"{rate:g}"


def as_dict(
    model: str,
    plan: ModelPlan,
    protocol: str,
    payload: Payload,
    rates: list[float],
    results: list[ConfigResult],
) -> dict[str, Any]:
    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {
        "model": model,
        "protocol": protocol,
        "payload": payload.describe(),
        "objective_ms": plan.objective_ms,
        "rates": rates,
        "configs": [
            {
                "label": r.config.label,
                "flags": list(r.flags_used or r.config.flags),
                "refused": r.refused,
                "note": r.note,
                "highest_rate_holding": r.highest_holding(plan.objective_ms),
                "holding_at_every_rate_up_to": r.holding_throughout(plan.objective_ms),
                "max_batch_ran": r.max_batch,
                "mean_batch": r.mean_batch,
                "max_batch_size": r.max_batch_size,
                "steps": [
                    {
                        "rate": s.offered,
                        "achieved": s.achieved,
                        "scheduled": s.scheduled,
                        "ok": s.ok,
                        "p50_ms": finite(s.p50_ms),
                        "p99_ms": finite(s.p99_ms),
                        "p99_with_misses_ms": finite(s.p99_all_ms),
                        "errors": s.errors,
                        "shed": s.shed,
                        "mean_batch": s.mean_batch,
                        "max_batch": s.max_batch,
                        "lag_p99_ms": finite(s.lag_p99_ms),
                        "holds": s.holds(plan.objective_ms),
                    }
                    for s in r.steps
                ],
            }
            for r in results
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,resnet18")
    parser.add_argument("--resnet-input", choices=("jpeg", "v2"), default="jpeg")
    parser.add_argument("--rates", type=int, default=6, help="rates in the sweep")
    parser.add_argument("--low", type=float, default=0.2, help="lowest rate / saturation")
    parser.add_argument("--high", type=float, default=1.3, help="highest rate / saturation")
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate")
    parser.add_argument(
        "--saturation", type=float, metavar="REQ_PER_S",
        help="the rates' base instead of a closed-loop run (the same rates across runs)",
    )  # fmt: skip
    parser.add_argument(
        "--min-requests", type=int, default=100,
        help="a rate runs longer than --seconds if it needs to, to schedule this many",
    )  # fmt: skip
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="generator processes")
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke run: 3 rates, 2 s (or 20 requests) each, once",
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--only", action="append", metavar="TEXT",
        help="run only the configurations whose label contains TEXT (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in PLANS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(PLANS)}")
    if args.quick:
        args.rates, args.seconds, args.warmup, args.repeats = 3, 2.0, 0.5, 1
        args.min_requests = min(args.min_requests, 20)
    console.print(f"machine: {machine_line()}")
    started = time.monotonic()
    document: dict[str, Any] = {"machine": machine_line(), "argv": sys.argv, "models": []}
    with tempfile.TemporaryDirectory(prefix="batching-openloop-") as tmp:
        store, work = Path(tmp) / "store", Path(tmp)
        build_store(store, models)
        for model in models:
            document["models"].append(run_model(store, model, args, work))
    document["seconds"] = round(time.monotonic() - started, 1)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
