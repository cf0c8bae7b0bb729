"""Rollout calls on the management app: start (201), follow, abort, and refusals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_fleet import FakeFleet, management_client
from httpx import Client

from torchferry.serving.settings import ServerSettings


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet(loaded={"iris": [1, 2]})


@pytest.fixture
def client(fleet: FakeFleet, tmp_path: Path) -> Iterator[Client]:
    with management_client(fleet, ServerSettings(store=tmp_path)) as client:
        fleet.state.models["iris"].routes.default = 1
        yield client


def test_start_follow_and_promote(client: Client, fleet: FakeFleet) -> None:
    assert client.get("/models/iris/rollout").status_code == 404
    spec = {"version": 2, "steps": [50, 100], "interval_s": 0.05, "min_requests": 1}
    response = client.post("/models/iris/rollouts", json=spec)
    assert response.status_code == 201, response.text
    status = response.json()
    assert status["stable"] == 1 and status["spec"]["steps"] == [50, 100]
    assert status["phase"] in ("pending", "stepping")
    deadline = time.monotonic() + 5
    while (status := client.get("/models/iris/rollout").json())["phase"] == "stepping":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert status["phase"] == "promoted"
    assert [d["verdict"] for d in status["history"]] == ["advance", "promote"]
    assert fleet.effective_default("iris") == 2


def test_abort(client: Client, fleet: FakeFleet) -> None:
    fleet.rollouts.outcome = "hang"
    assert client.post("/models/iris/rollouts", json={"version": 2}).status_code == 201
    again = client.post("/models/iris/rollouts", json={"version": 2})
    assert again.status_code == 409 and "already" in again.json()["message"]
    aborted = client.post("/models/iris/rollout/abort")
    assert aborted.status_code == 200
    assert aborted.json()["phase"] == "aborted"
    assert client.post("/models/iris/rollout/abort").status_code == 409
    assert fleet.effective_default("iris") == 1


def test_promote(client: Client, fleet: FakeFleet) -> None:
    fleet.rollouts.outcome = "hang"
    assert client.post("/models/iris/rollouts", json={"version": 2}).status_code == 201
    promoted = client.post("/models/iris/rollout/promote")
    assert promoted.status_code == 200
    assert (promoted.json()["phase"], promoted.json()["weight"]) == ("promoted", 100)
    assert fleet.effective_default("iris") == 2
    refused = client.post("/models/iris/rollout/promote")
    assert refused.status_code == 409 and "no rollout running" in refused.json()["message"]
    assert client.post("/models/nope/rollout/promote").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"version": 2, "steps": [10, 50]}, 400, "ending at 100"),
        ({"version": 2, "steps": [50, 10, 100]}, 400, "ascending"),
        ({"version": 2, "max_error_rate": 2}, 400, "max_error_rate"),
        ({"steps": [100]}, 400, "version"),
        ({"version": 5}, 409, "load version 5"),
    ],
)
def test_start_refusals(client: Client, body: dict[str, object], status: int, words: str) -> None:
    response = client.post("/models/iris/rollouts", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["message"]


def test_rollouts_of_an_unknown_model_are_404(client: Client) -> None:
    assert client.post("/models/nope/rollouts", json={"version": 2}).status_code == 404
    assert client.get("/models/nope/rollout").status_code == 404
    assert client.post("/models/nope/rollout/abort").status_code == 404
