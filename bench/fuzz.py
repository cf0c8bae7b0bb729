"""The fuzz of the test suite, at length: N cases (default 10,000) per protocol against one
fresh server, with good requests alongside, by hand (not in CI).

Protocols:

- ``inference``: schemathesis over the inference listener's OpenAPI (V2 HTTP, V1, TorchServe,
  ``/predict``), hooks and check of ``tests/serving/fuzz_openapi_hooks.py``;
- ``management``: schemathesis over the management listener's OpenAPI, the good model
  shielded from it (the server's store is a throwaway copy);
- ``grpc``: Hypothesis' malformed ``ModelInferRequest``s over a real channel;
- ``binary``: Hypothesis' malformed V2 binary-extension bodies over httpx.

The server is the test suite's (``tests/conftest.py``'s store, ``fuzz_support.fuzz_store``):
the same models, the same injected fault (``faulty``). The table gives, per protocol, the
cases sent, server errors other than the injected fault, crashes (the server gone, or a
worker restarted: a changed worker PID), wrong answers to the good requests sent meanwhile,
and seconds. Exit status 1 when any of those is not zero.

Usage: ``python bench/fuzz.py [--cases N] [--protocols grpc,binary,...] [--seed S]``
(``PYTHONPATH=src``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as seeded
from rich.console import Console
from rich.table import Table

# the fuzz tests' own pieces: one definition of the cases and of what counts as a bug
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "serving"))
from conftest import build_store
from fuzz_strategies import BinaryCase, binary_cases, grpc_problem, grpc_requests
from fuzz_support import FUZZ_OWNED, GOOD_MODEL, SERVED, GoodTraffic, fuzz_store
from harness import machine_line
from test_fuzz_openapi import read_record, run_schemathesis

from torchferry.serving.process import ServerProcess, serve_in_subprocess
from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub

PROTOCOLS = ("inference", "management", "grpc", "binary")


@dataclass
class Outcome:
    protocol: str
    cases: int = 0
    problems: list[str] = field(default_factory=list)
    crashes: int = 0
    wrong: int = 0
    seconds: float = 0.0
    #: how the server answered: HTTP status or gRPC code, and how often
    answers: Counter[str] = field(default_factory=Counter)


def hypothesis_run(count: int, seed: int, strategy: object, send: Callable[[object], None]) -> None:
    """``count`` examples of ``strategy`` through ``send``, seeded, never stopping early."""

    @settings(max_examples=count, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=strategy)
    def run(case: object) -> None:
        send(case)

    seeded(seed)(run)()


def fuzz_grpc(server: ServerProcess, count: int, seed: int, outcome: Outcome) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)

        def send(request: object) -> None:
            assert isinstance(request, pb.ModelInferRequest)
            outcome.cases += 1
            try:
                stub.ModelInfer(request, timeout=30)
                outcome.answers["OK"] += 1
            except grpc.RpcError as error:
                outcome.answers[error.code().name] += 1
                if problem := grpc_problem(request, error):
                    outcome.problems.append(f"{problem}\n    {str(request)[:300]!r}")

        hypothesis_run(count, seed, grpc_requests(), send)


def fuzz_binary(server: ServerProcess, count: int, seed: int, outcome: Outcome) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:

        def send(case: object) -> None:
            assert isinstance(case, BinaryCase)
            outcome.cases += 1
            answer = client.post(case.path, content=case.body, headers=case.headers)
            outcome.answers[str(answer.status_code)] += 1
            if problem := case.problem(answer.status_code, answer.text):
                outcome.problems.append(f"{problem}\n    {case.headers} {case.body[:200]!r}")

        hypothesis_run(count, seed, binary_cases(), send)


def fuzz_openapi(
    schema_url: str, env: dict[str, str], count: int, seed: int, outcome: Outcome, work: Path
) -> None:
    """Schemathesis runs (coverage and fuzzing, then fuzzing with new seeds) until ``count``
    responses are recorded."""
    operations = len(httpx.get(schema_url, timeout=30).json()["paths"]) or 1
    phases = "coverage,fuzzing"
    attempt = 0
    while outcome.cases < count:
        record = work / f"{outcome.protocol}-{attempt}.jsonl"
        missing = count - outcome.cases
        examples = max(1, math.ceil(missing / operations / 1.6))
        result = run_schemathesis(schema_url, record, env, examples=examples, seed=seed + attempt,
                                  phases=phases, timeout=3600, workers=2)  # fmt: skip
        cases = read_record(record)
        outcome.cases += len(cases)
        outcome.problems += [c["problem"] for c in cases if c["problem"]]
        outcome.answers.update(str(c["status"]) for c in cases)
        if result.returncode not in (0, 1) or not cases:
            outcome.problems.append(f"schemathesis failed: {result.stdout[-2000:]}")
            return
        phases, attempt = "fuzzing", attempt + 1


def run(protocols: list[str], count: int, seed: int, console: Console) -> list[Outcome]:
    work = Path(tempfile.mkdtemp(prefix="torchferry-fuzz-"))
    source = work / "built"
    build_store(source)
    store = fuzz_store(source, work / "store")
    args = ["--store", str(store), "--threads", "1", "--log-level", "warning"]
    outcomes = []
    with serve_in_subprocess(args, work / "server.log") as server:
        for protocol in protocols:
            outcome = Outcome(protocol)
            workers = server.worker_pids()
            started = time.perf_counter()
            with GoodTraffic(server.url, server.grpc_target) as good:
                if protocol == "grpc":
                    fuzz_grpc(server, count, seed, outcome)
                elif protocol == "binary":
                    fuzz_binary(server, count, seed, outcome)
                elif protocol == "inference":
                    env = {"FUZZ_MODELS": ",".join(SERVED)}
                    fuzz_openapi(f"{server.url}/openapi.json", env, count, seed, outcome, work)
                else:
                    sources = [f"{FUZZ_OWNED[0]}/1", f"{FUZZ_OWNED[1]}/2", "mlp/1", "../.."]
                    env = {"FUZZ_MODELS": ",".join([*FUZZ_OWNED, "mlp", "strings"]),
                           "FUZZ_SOURCES": ",".join(sources), "FUZZ_PROTECT": GOOD_MODEL,
                           "FUZZ_STANDIN": FUZZ_OWNED[0]}  # fmt: skip
                    url = f"{server.management_url}/openapi.json"
                    fuzz_openapi(url, env, count, seed, outcome, work)
            outcome.seconds = time.perf_counter() - started
            outcome.wrong = len(good.wrong) + (good.sent == 0)
            outcome.crashes = (not server.alive()) + (server.worker_pids() != workers)
            outcomes.append(outcome)
            console.print(f"{protocol}: {outcome.cases} cases, {len(outcome.problems)} server "
                          f"errors, {outcome.crashes} crashes, {outcome.wrong} wrong good answers "
                          f"of {good.sent}, {outcome.seconds:.0f} s; answers "
                          f"{dict(outcome.answers.most_common())}")  # fmt: skip
            for problem in outcome.problems[:10]:
                console.print(f"  [red]{problem}[/red]", markup=True, highlight=False)
            if not server.alive():
                console.print(server.output()[-3000:])
                break
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per protocol")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--seed", type=int, default=20261130)
    options = parser.parse_args()
    protocols = [p for p in options.protocols.split(",") if p]
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        parser.error(f"unknown protocols {sorted(unknown)}; choose from {PROTOCOLS}")
    console = Console()
    outcomes = run(protocols, options.cases, options.seed, console)
    table = Table(title=f"fuzz: {options.cases} cases per protocol, seed {options.seed}")
    for column in ("protocol", "cases", "server errors", "crashes", "wrong good answers", "s"):
        table.add_column(column, justify="left" if column == "protocol" else "right")
    for o in outcomes:
        table.add_row(o.protocol, str(o.cases), str(len(o.problems)), str(o.crashes),
                      str(o.wrong), f"{o.seconds:.0f}")  # fmt: skip
    console.print(table)
    console.print(machine_line())
    bad = any(o.problems or o.crashes or o.wrong for o in outcomes)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
