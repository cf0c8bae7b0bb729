"""Canary rollouts and shadow traffic on a real server (2 workers) under live traffic:
a canary that fails on some inputs is rolled back within one interval, and clients see
errors only from the canary; a healthy one is promoted to 100%; the deploy command exits
non-zero when its rollout rolls back; shadow agreement is 100% for an identical version
and less for a perturbed one."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import torch
from lifecycle_load import Traffic

import torchferry.cli as cli
from torchferry.importers import import_model
from torchferry.serving.process import ServerProcess
from torchferry.signature import TensorSpec

GOOD = [1.0, 2.0, 3.0, 4.0]
#: Rows the picky model refuses: every fifth request sends one.
BAD = [-1000.0, 2.0, 3.0, 4.0]


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class Picky(torch.nn.Module):
    """Doubles, but raises on a row whose first value is below -100 (never a random one:
    the import runs the model once on random inputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] < -100).any()):
            raise RuntimeError("first feature out of range")
        return x * 2


class Tilted(torch.nn.Module):
    """Doubles, then pushes the first column up: its argmax differs for the test's rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 + torch.tensor([100.0, 0.0, 0.0, 0.0])


def archive(module: torch.nn.Module, name: str, root: Path) -> Path:
    """``module`` scripted and imported as an archive folder under ``root``."""
    graph = root / f"{name}.pt"
    torch.jit.script(module).save(str(graph))
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, 4))
    return import_model(graph, name=name, store=root / "archives", inputs=[spec]).path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    for module, name in ((Double(), "double"), (Picky(), "picky"), (Tilted(), "tilted")):
        archive(module, name, root)
    return root


@pytest.fixture(scope="module")
def server(sources, start_server, tmp_path_factory):
    """One server for the module; each test rolls out under a model name of its own."""
    root = tmp_path_factory.mktemp("rollouts")
    store = root / "store"
    store.mkdir()
    args = ["--store", str(store), "--model-source-root", str(sources), "--workers", "2"]
    # one request per batch: a refused row must fail only its own request
    args += ["--max-batch-size", "1", "--threads", "1"]
    with start_server(args, root / "server.log") as served:
        yield served


@pytest.fixture
def gate(server, sources, request) -> str:
    """A model of this test's own, with ``double`` as its stable version 1."""
    name = f"gate_{request.node.name.removeprefix('test_')[:40]}"
    assert register(manage(server), sources, "double", name) == 1
    return name


def manage(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.management_url, timeout=60)


def register(mgmt: httpx.Client, sources: Path, name: str, gate: str) -> int:
    url = str(sources / "archives" / name / "1")
    answer = mgmt.post("/models", params={"url": url, "model_name": gate})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["modelVersion"])


def every_fifth_bad(index: int) -> list[float]:
    return BAD if index % 5 == 0 else GOOD


def test_a_failing_canary_rolls_back_within_one_interval(server, sources, gate):
    mgmt = manage(server)
    picky = register(mgmt, sources, "picky", gate)
    spec = {"version": picky, "steps": [50, 100], "interval_s": 8, "max_error_rate": 0.05}
    spec["min_requests"] = 20
    traffic = Traffic(server, gate, ("v2", "predict", "torchserve"), row=every_fifth_bad)
    with traffic.running():
        time.sleep(1)
        started = mgmt.post(f"/models/{gate}/rollouts", json=spec)
        assert started.status_code == 201, started.text
        began = time.monotonic()
        while (state := mgmt.get(f"/models/{gate}/rollout").json())["phase"] in (
            "pending",
            "stepping",
        ):
            assert time.monotonic() - began < 8 + 5, state
            time.sleep(0.2)
        decided = time.monotonic()
        time.sleep(2)
    assert state["phase"] == "rolled_back", state
    assert decided - began <= 8 + 1, f"rolled back after {decided - began:.1f} s"
    last = state["history"][-1]
    assert last["verdict"] == "rollback" and "error rate" in last["reason"], last
    assert last["canary"]["error_rate"] > 0.05 and last["canary"]["requests"] >= 20
    failures = traffic.failures()
    assert failures, "the canary never failed: the test sends no bad rows?"
    assert {a.version for a in failures} == {picky}, failures[:5]
    after = [a for a in traffic.answers if a.sent > decided + 0.5]
    assert after and all(a.ok and a.version == 1 for a in after)
    assert mgmt.get(f"/models/{gate}/traffic").json() == {
        "model": gate,
        "default": 1,
        "weights": {},
    }
    metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    assert f'torchferry_rollout_state{{model="{gate}",version="{picky}"}} 3.0' in metrics


def test_a_healthy_canary_is_promoted_to_all_traffic(server, sources, gate):
    mgmt = manage(server)
    canary = register(mgmt, sources, "double", gate)
    spec = {"version": canary, "steps": [25, 50, 100], "interval_s": 2, "min_requests": 10}
    with Traffic(server, gate, ("v2", "v2-grpc", "v1")).running() as traffic:
        time.sleep(0.5)
        assert mgmt.post(f"/models/{gate}/rollouts", json=spec).status_code == 201
        began = time.monotonic()
        while (state := mgmt.get(f"/models/{gate}/rollout").json())["phase"] == "stepping":
            assert time.monotonic() - began < 30, state
            time.sleep(0.2)
        promoted = time.monotonic()
        time.sleep(1.5)
    assert state["phase"] == "promoted", state
    assert [d["verdict"] for d in state["history"]] == ["advance", "promote"]
    assert traffic.failures() == []
    after = [a for a in traffic.answers if a.sent > promoted + 0.2]
    assert after and {a.version for a in after} == {canary}


def test_deploy_exits_non_zero_when_its_rollout_rolls_back(server, sources, gate, capsys):
    picky = sources / "archives" / "picky" / "1"
    url = server.management_url
    with Traffic(server, gate, ("v2",), row=every_fifth_bad).running():
        code = cli.main(
            ["deploy", str(picky), "--url", url, "--name", gate, "--rollout", "50,100",
             "--interval", "6", "--min-requests", "15", "--max-error-rate", "0.05"]
        )  # fmt: skip
    assert code == 3, capsys.readouterr()
    assert "rolled back" in capsys.readouterr().out.lower()


def test_shadow_agreement_is_full_for_a_twin_and_partial_for_a_perturbed_version(
    server, sources, gate
):
    mgmt = manage(server)
    twin = register(mgmt, sources, "double", gate)
    tilted = register(mgmt, sources, "tilted", gate)
    figures = {}
    for shadow in (twin, tilted):
        assert mgmt.put(f"/models/{gate}/shadow", json={"version": shadow, "share": 1.0}).is_success
        with Traffic(server, gate, ("v2", "predict")).running() as traffic:
            deadline = time.monotonic() + 20
            while (seen := mgmt.get(f"/models/{gate}/shadow").json()["figures"])["compared"] < 50:
                assert time.monotonic() < deadline, seen
                time.sleep(0.2)
        assert traffic.failures() == []
        # the mirrored version never answers a client
        assert {a.version for a in traffic.answers} == {1}
        figures[shadow] = seen
        assert mgmt.delete(f"/models/{gate}/shadow").is_success
    assert figures[twin]["agreement"] == 1.0 and figures[twin]["max_abs_diff"] == 0.0
    assert figures[tilted]["agreement"] < 1.0 and figures[tilted]["max_abs_diff"] >= 100
    metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    assert "torchferry_shadow_rows_total" in metrics
