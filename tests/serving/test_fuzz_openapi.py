"""Schemathesis against the OpenAPI documents of the inference listener and the management
listener of one real server, while good requests run alongside.

The server serves a throwaway copy of the test store with two extra models that belong to
the fuzzer (``fz_adder``, ``fz_spare``): the management fuzz may load, unload, re-route and
delete anything but ``adder``, which no management request may name (the hooks replace the
name; see ``fuzz_openapi_hooks``). The good requests (``fuzz_support.GoodTraffic``) call
``adder`` version 1 over V2 JSON and gRPC and check every answer, and the injected fault
(the ``faulty`` model) answers 500 with its own message all along.

Invariants: no 5xx but the injected fault, the server stays up, every good answer is right,
and at least 1,000 cases in all. The run is bounded: a fixed seed, a fixed number of examples
per operation, one schemathesis worker, no shrinking, and a time limit on the whole CLI.
The inference API runs every check that its document must pass (``DOCUMENTED``); the
management API only the server-error one (its document is not yet typed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fuzz_support import FUZZ_OWNED, GOOD_MODEL, SERVED, GoodTraffic, fuzz_store

HERE = Path(__file__).resolve().parent
#: Examples per operation in the fuzzing phase (the coverage phase adds its own cases).
EXAMPLES = 3
SEED = 20261130
TIME_LIMIT_S = 120
#: The inference API's document holds (issue 16): every answer matches its schema and every
#: status is declared, with every other check Schemathesis has, but three: the injected
#: fault's 500 (our own check allows exactly that one), and its generic request schemas,
#: which cannot know a model's inputs (the per-model documents, tests/demo, pass those).
DOCUMENTED = (
    "--checks", "all,no_server_error_but_the_fault", "--exclude-checks",
    "not_a_server_error,positive_data_acceptance,negative_data_rejection",
)  # fmt: skip
#: Cases each run sent, by API: the total is checked last.
CASES: dict[str, int] = {}


def run_schemathesis(
    schema_url: str, record: Path, env: dict[str, str], examples: int = EXAMPLES,
    seed: int = SEED, phases: str = "coverage,fuzzing", timeout: float = TIME_LIMIT_S,
    workers: int = 1, checks: tuple[str, ...] = ("--checks", "no_server_error_but_the_fault"),
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The schemathesis CLI against ``schema_url`` with the hooks of fuzz_openapi_hooks;
    every response lands in ``record``, one JSON line each."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", schema_url,
        *checks, "--phases", phases,
        "--max-examples", str(examples), "--seed", str(seed), "--workers", str(workers),
        "--no-shrink", "--generation-database", "none", "--request-timeout", "30",
        "--suppress-health-check", "all", "--warnings", "off", "--no-color",
    ]  # fmt: skip
    inherited = [
        str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
    ]
    pythonpath = os.pathsep.join([str(HERE), *inherited])
    environment = {
        **os.environ, **env, "PYTHONPATH": pythonpath,
        "SCHEMATHESIS_HOOKS": "fuzz_openapi_hooks", "FUZZ_RECORD": str(record),
    }  # fmt: skip
    # in the record's folder: schemathesis keeps a cache of past failures in its working
    # directory and would replay them, so each run starts from none
    return subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=timeout, check=False,
        cwd=record.parent,
    )  # fmt: skip


def read_record(record: Path) -> list[dict]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory, start_server):
    root = tmp_path_factory.mktemp("fuzz")
    store = fuzz_store(model_store.root, root / "store")
    args = ["--store", str(store), "--threads", "1", "--log-level", "warning"]
    with start_server(args, root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def workers(server):
    """The worker PIDs at the start: a worker that crashed comes back with a new one."""
    return server.worker_pids()


@pytest.fixture(scope="module")
def traffic(server, workers):
    with GoodTraffic(server.url, server.grpc_target) as good:
        yield good


def check_run(server, traffic, workers, result, cases: list[dict]) -> None:
    problems = [case["problem"] for case in cases if case["problem"]]
    assert not problems, "\n".join(problems[:20])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert server.alive(), server.output()[-4000:]
    assert server.worker_pids() == workers, server.output()[-4000:]
    assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
    assert not traffic.wrong, traffic.failures()


def test_inference_api(server, traffic, workers, tmp_path):
    record = tmp_path / "inference.jsonl"
    result = run_schemathesis(
        f"{server.url}/openapi.json", record, {"FUZZ_MODELS": ",".join(SERVED)},
        checks=DOCUMENTED,
    )  # fmt: skip
    cases = read_record(record)
    check_run(server, traffic, workers, result, cases)
    CASES["inference"] = len(cases)
    statuses = Counter(case["status"] for case in cases)
    # the fuzz reached past routing: some answers, some refusals, some unknown models
    assert statuses[200] and statuses[400] and statuses[404], statuses


def test_management_api(server, traffic, workers, tmp_path):
    record = tmp_path / "management.jsonl"
    sources = [f"{FUZZ_OWNED[0]}/1", f"{FUZZ_OWNED[1]}/2", "mlp/1", "../..", "http://x/m.mar"]
    env = {
        "FUZZ_MODELS": ",".join([*FUZZ_OWNED, "mlp", "strings"]),
        "FUZZ_SOURCES": ",".join(sources),
        "FUZZ_PROTECT": GOOD_MODEL,
        "FUZZ_STANDIN": FUZZ_OWNED[0],
    }
    result = run_schemathesis(server.management_url + "/openapi.json", record, env)
    cases = read_record(record)
    check_run(server, traffic, workers, result, cases)
    statuses = Counter(case["status"] for case in cases)
    assert statuses[200] and statuses[400] and statuses[404], statuses
    assert httpx.get(f"{server.management_url}/models", timeout=30).status_code == 200
    # no management request named the good model, and it still serves version 1
    assert not any(f"/{GOOD_MODEL}/" in c["target"] or c["target"].endswith(f"/{GOOD_MODEL}")
                   for c in cases)  # fmt: skip
    CASES["management"] = len(cases)


def test_good_requests_went_on_throughout(server, traffic):
    traffic.stop()
    assert not traffic.wrong, traffic.failures()
    assert traffic.sent > 50 and traffic.faults > 0, (traffic.sent, traffic.faults)
    assert server.alive()
    assert sum(CASES.values()) >= 1000, CASES
