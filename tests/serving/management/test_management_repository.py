"""Triton's model repository extension on the management app: index, load, unload, and
the refusal of models sent in the request."""

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
    return FakeFleet(store={"digits": [1, 2, 3], "iris": [1]}, loaded={"digits": [1]})


@pytest.fixture
def client(fleet: FakeFleet, tmp_path: Path) -> Iterator[Client]:
    with management_client(fleet, ServerSettings(store=tmp_path)) as client:
        yield client


def test_index_lists_the_store_and_the_loaded(client: Client) -> None:
    response = client.post("/v2/repository/index")
    assert response.status_code == 200
    assert response.json() == [
        {"name": "digits", "state": "READY", "version": "1", "reason": ""},
        {"name": "digits", "state": "UNAVAILABLE", "version": "2", "reason": "unloaded"},
        {"name": "digits", "state": "UNAVAILABLE", "version": "3", "reason": "unloaded"},
        {"name": "iris", "state": "UNAVAILABLE", "version": "1", "reason": "unloaded"},
    ]
    ready = client.post("/v2/repository/index", json={"ready": True}).json()
    assert [(e["name"], e["version"]) for e in ready] == [("digits", "1")]
    assert len(client.post("/v2/repository/index", json={}).json()) == 4


@pytest.mark.parametrize("body", [b"[1]", b'{"ready": "yes"}', b"{not json"])
def test_index_refuses_a_bad_body_with_400(client: Client, body: bytes) -> None:
    response = client.post("/v2/repository/index", content=body)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}


def test_load_applies_the_policy_to_the_store(client: Client, fleet: FakeFleet) -> None:
    response = client.post("/v2/repository/models/digits/load")
    assert response.status_code == 200 and response.content == b""
    assert fleet._loaded("digits") == [1, 2, 3]
    fleet.state.models["digits"].policy = VersionPolicy(kind="latest", num_versions=1)
    assert client.post("/v2/repository/models/digits/load", json={}).status_code == 200
    assert fleet._loaded("digits") == [3]


def test_load_and_unload_of_unknown_models_are_404(client: Client) -> None:
    for action in ("load", "unload"):
        response = client.post(f"/v2/repository/models/nope/{action}")
        assert response.status_code == 404
        assert "nope" in response.json()["error"]


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"config": '{"backend": "onnxruntime"}'}, "'config' parameter is not supported"),
        ({"file:1/model.onnx": "AAAA"}, "file:1/model.onnx"),
    ],
)
def test_load_refuses_models_in_the_request(
    client: Client, fleet: FakeFleet, parameters: dict[str, str], words: str
) -> None:
    response = client.post("/v2/repository/models/digits/load", json={"parameters": parameters})
    assert response.status_code == 400
    assert words in response.json()["error"]
    assert fleet._loaded("digits") == [1]


def test_a_failing_load_is_400_with_the_reason(client: Client, fleet: FakeFleet) -> None:
    fleet.failing[("iris", 1)] = "integrity check failed"
    response = client.post("/v2/repository/models/iris/load")
    assert response.status_code == 400
    assert "integrity check failed" in response.json()["error"]


def test_unload_removes_every_version(client: Client, fleet: FakeFleet) -> None:
    response = client.post(
        "/v2/repository/models/digits/unload", json={"parameters": {"unload_dependents": True}}
    )
    assert response.status_code == 200
    assert fleet._loaded("digits") == []
