"""torchferry's traffic, shadow and version-policy calls, and that their literal paths win
over TorchServe's ``/models/{m}/{v}``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_fleet import FakeFleet, management_client
from httpx import Client

from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.settings import ServerSettings


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet(store={"iris": [1, 2, 3]}, loaded={"iris": [1, 2]})


@pytest.fixture
def client(fleet: FakeFleet, tmp_path: Path) -> Iterator[Client]:
    settings = ServerSettings(
        store=tmp_path,
        model_version_policies={"iris": VersionPolicy(kind="latest", num_versions=2)},
    )
    with management_client(fleet, settings) as client:
        yield client


def test_traffic_get_put_delete(client: Client, fleet: FakeFleet) -> None:
    assert client.get("/models/iris/traffic").json() == {
        "model": "iris",
        "default": 2,
        "weights": {},
    }
    response = client.put("/models/iris/traffic", json={"1": 90, "2": 10})
    assert response.status_code == 200
    assert response.json()["weights"] == {"1": 90, "2": 10}
    assert fleet.state.models["iris"].routes.weights == {1: 90, 2: 10}
    # what GET answers can be PUT back
    assert (
        client.put(
            "/models/iris/traffic", json=client.get("/models/iris/traffic").json()
        ).status_code
        == 200
    )
    cleared = client.delete("/models/iris/traffic")
    assert cleared.status_code == 200 and cleared.json()["weights"] == {}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"[90, 10]", 400, "JSON object"),
        (b'{"1": 90, "2": 20}', 400, "sum to 110"),
        (b'{"one": 100}', 400, "not a version number"),
        (b'{"1": -10, "2": 110}', 400, "not a percentage"),
        (b'{"1": 50.5, "2": 49.5}', 400, "not a percentage"),
        (b'{"1": 50, "3": 50}', 409, "no loaded version 3"),
    ],
)
def test_traffic_refusals(client: Client, body: bytes, status: int, words: str) -> None:
    response = client.put("/models/iris/traffic", content=body)
    assert response.status_code == status, response.text
    assert words in response.json()["message"]


def test_traffic_of_an_unknown_model_is_404(client: Client) -> None:
    assert client.get("/models/nope/traffic").status_code == 404
    assert client.put("/models/nope/traffic", json={"1": 100}).status_code == 404


def test_shadow_with_its_figures(client: Client, fleet: FakeFleet) -> None:
    assert client.get("/models/iris/shadow").json() == {
        "model": "iris",
        "shadow": None,
        "figures": None,
    }
    response = client.put("/models/iris/shadow", json={"version": 1, "share": 0.5})
    assert response.status_code == 200
    fleet.figures["iris"] = {1: {"compared": 200, "agreed": 190, "max_abs_diff": 0.03}}
    assert client.get("/models/iris/shadow").json() == {
        "model": "iris",
        "shadow": {"version": 1, "share": 0.5},
        "figures": {"compared": 200, "agreed": 190, "agreement": 0.95, "max_abs_diff": 0.03},
    }
    assert client.delete("/models/iris/shadow").json()["shadow"] is None


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"version": 1, "share": 1.5}, 400, "share"),
        ({"share": 0.5}, 400, "version"),
        ({"version": 3}, 409, "no loaded version 3"),
    ],
)
def test_shadow_refusals(client: Client, body: dict[str, object], status: int, words: str) -> None:
    response = client.put("/models/iris/shadow", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["message"]


def test_version_policy_in_tritons_shape(client: Client, fleet: FakeFleet) -> None:
    assert client.get("/models/iris/version-policy").json() == {
        "model": "iris",
        "version_policy": {"latest": {"num_versions": 2}},
        "versions": [1, 2],
    }
    response = client.put("/models/iris/version-policy", json={"specific": {"versions": [1, 3]}})
    assert response.status_code == 200
    assert response.json()["versions"] == [1, 3]
    assert fleet._loaded("iris") == [1, 3]
    wrapped = {"version_policy": {"all": {}}}
    assert client.put("/models/iris/version-policy", json=wrapped).json()["versions"] == [1, 2, 3]


@pytest.mark.parametrize(
    "body",
    [{"newest": {}}, {"latest": {"num_versions": 0}}, {"specific": {"versions": []}}, [1]],
)
def test_version_policy_refusals(client: Client, body: object) -> None:
    response = client.put("/models/iris/version-policy", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["message"]


def test_literal_paths_win_over_a_version_path(client: Client) -> None:
    # GET /models/{m}/{v} would answer ModelVersionNotFoundException for these
    for path in ("traffic", "shadow", "version-policy"):
        response = client.get(f"/models/iris/{path}")
        assert response.status_code == 200 and response.json()["model"] == "iris"
    assert client.get("/models/iris/rollout").json()["type"] == "ModelNotFoundException"
    assert client.delete("/models/iris/traffic").status_code == 200  # not an unregister
    assert client.get("/models/iris/all").status_code == 200
