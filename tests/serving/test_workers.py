"""Supervised workers under faults, on real ports with real clients: a worker killed with
SIGKILL under load, a SIGTERM drain under load, and a model that aborts its process.

The store holds only ONNX models here, so a replacement worker never imports torch and
comes back in well under the 5 s the supervisor promises; the aborting model is an eager
PyTorch model (``--trust-code``), given more time for torch's import.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest

import torchferry.cli as cli
from torchferry.serving.process import ServerProcess

ROW = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}
BODY = {"inputs": [ROW]}


def wait_for(condition, timeout: float, what: str) -> float:
    """Poll ``condition`` until it is true; the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def serving_pids(server: ServerProcess) -> dict[int, int]:
    """worker index -> pid of its latest "serving" line in the supervisor's log."""
    found = re.findall(r"worker (\d+) serving \(pid (\d+)\)", server.output())
    return {int(index): int(pid) for index, pid in found}


@dataclass
class Load:
    """Clients that each send requests in a loop over their own keep-alive connection."""

    url: str
    path: str
    body: dict
    clients: int = 4
    outcomes: list[tuple[float, int | str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    #: Stop a client at its first transport error (a drain closes the port for good).
    stop_on_error: bool = False

    def run_one(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    outcome: int | str = client.post(self.path, json=self.body).status_code
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                self.outcomes.append((time.monotonic(), outcome))
                if self.stop_on_error and isinstance(outcome, str):
                    return

    @contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self.run_one) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=60)

    def between(self, start: float, end: float = float("inf")) -> list[int | str]:
        return [outcome for t, outcome in list(self.outcomes) if start <= t < end]


@pytest.fixture(scope="module")
def store_root(model_store) -> str:
    return str(model_store.root)


def test_a_killed_worker_is_replaced_within_5_s_while_the_other_keeps_serving(
    store_root, start_server, tmp_path
):
    args = ["--store", store_root, "--model", "adder", "--workers", "2", "--no-grpc"]
    with start_server(args, tmp_path / "server.log", warm_spare=True) as server:
        wait_for(lambda: len(serving_pids(server)) == 2, 30, "both workers serve")
        before = serving_pids(server)
        with Load(server.url, "/v2/models/adder/infer", BODY, clients=4).running() as load:
            wait_for(lambda: len(load.outcomes) > 50, 30, "load is flowing")
            killed_at = time.monotonic()
            os.kill(before[1], signal.SIGKILL)
            back_after = wait_for(
                lambda: serving_pids(server).get(1, before[1]) != before[1], 10, "worker 1 back"
            )
            time.sleep(0.5)
            after_restart = time.monotonic()
            wait_for(lambda: len(load.between(after_restart)) > 50, 30, "load after restart")
        print(f"worker 1 came back after {back_after:.2f} s")
        assert back_after <= 5.0, f"worker 1 came back after {back_after:.1f} s"
        during = load.between(killed_at, after_restart)
        failed = [o for o in during if o != 200]
        # only requests that went to the killed worker may fail: the one on each client's
        # connection to it, and at most one more per client whose reconnection landed in its
        # accept queue while the kernel was still tearing the process down
        assert len(failed) <= 2 * load.clients, failed
        assert during.count(200) > 0, "the other worker stopped serving during the restart"
        assert set(load.between(after_restart)) == {200}
        assert set(load.between(0, killed_at)) == {200}
        assert server.alive()
        # the supervisor's children: both workers, and the warm spare for the next restart
        assert set(serving_pids(server).values()) < set(server.worker_pids())
        assert "worker 1 died (signal SIGKILL)" in server.output()


def test_sigterm_under_load_answers_every_accepted_request(store_root, start_server, tmp_path):
    # a batching window keeps requests queued at the moment the signal arrives
    args = ["--store", store_root, "--model", "adder", "--workers", "2", "--no-grpc"]
    args += ["--max-delay-ms", "20", "--max-batch-size", "64"]
    with start_server(args, tmp_path / "server.log") as server:
        load = Load(server.url, "/v2/models/adder/infer", BODY, clients=8, stop_on_error=True)
        with load.running():
            wait_for(lambda: len(load.outcomes) > 100, 30, "load is flowing")
            # --no-warm-spare (the test servers' default): the supervisor's children are
            # its two workers, and no spare waits beside them
            assert sorted(server.worker_pids()) == sorted(serving_pids(server).values())
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = server.process.wait(timeout=60)
            drained = time.monotonic()
        assert code == 0, server.output()
        outcomes = load.between(0)
        # every request the server read got its answer; the only failures are connections
        # the closed port refused, which no request reached
        answered = [o for o in outcomes if isinstance(o, int)]
        assert set(answered) == {200}, outcomes
        assert {o for o in outcomes if isinstance(o, str)} <= {"ConnectError"}, outcomes
        assert load.between(signalled, drained).count(200) > 0, "nothing was in flight"
        assert "SIGTERM: draining" in server.output()
        assert server.output().count("exited (exit code 0)") == 2


ABORTING = """
import os

import torch
from torch import nn


class Fragile(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 666).any()):
            os.abort()  # as a native crash would: no exception, the process is gone
        return x * 2


def make() -> nn.Module:
    return Fragile()
"""


@pytest.fixture(scope="module")
def aborting_store(tmp_path_factory) -> str:
    factory = tmp_path_factory.mktemp("user_code") / "fragile.py"
    factory.write_text(ABORTING)
    store = tmp_path_factory.mktemp("store")
    code = cli.main(
        ["export", f"{factory}:make", "--name", "fragile", "--input", "x:-1,4:float32",
         "--store", str(store), "--format", "eager"]
    )  # fmt: skip
    assert code == 0
    return str(store)


def test_a_model_that_aborts_takes_down_only_its_worker_which_comes_back(
    aborting_store, start_server, tmp_path
):
    args = ["--store", aborting_store, "--trust-code", "--workers", "2", "--no-grpc"]
    poison = {"inputs": [{**ROW, "data": [666.0, 0.0, 0.0, 0.0]}]}
    with start_server(args, tmp_path / "server.log", warm_spare=True) as server:
        wait_for(lambda: len(serving_pids(server)) == 2, 60, "both workers serve")
        before = serving_pids(server)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            with pytest.raises(httpx.TransportError):
                client.post("/v2/models/fragile/infer", json=poison)
            # the other worker answers at once, while the crashed one restarts
            with httpx.Client(base_url=server.url, timeout=30) as fresh:
                for _ in range(10):
                    answer = fresh.post("/v2/models/fragile/infer", json=BODY)
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
        died = re.search(r"worker (\d) died \(signal SIGABRT\)", server.output())
        assert died, server.output()
        index = int(died.group(1))
        wait_for(lambda: serving_pids(server)[index] != before[index], 30, "the worker comes back")
        assert serving_pids(server)[3 - index] == before[3 - index], "the other one survived"
        assert server.alive()


def test_a_second_server_on_a_served_port_fails_loudly_instead_of_sharing_it(
    store_root, start_server, tmp_path
):
    args = ["--store", store_root, "--model", "adder", "--no-grpc", "--no-metrics"]
    with start_server(args, tmp_path / "first.log") as first:
        command = [
            sys.executable,
            "-m",
            "torchferry.cli",
            "serve",
            *args,
            "--port",
            str(first.port),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        message = done.stdout + done.stderr
        assert f"cannot listen for HTTP on 127.0.0.1:{first.port}" in message, message
        assert "--port" in message
        # the first server never shared its port with the second
        assert httpx.post(f"{first.url}/v2/models/adder/infer", json=BODY).status_code == 200
