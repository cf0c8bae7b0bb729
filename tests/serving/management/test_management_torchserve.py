"""TorchServe's management API on the management app, called the way curl calls it (the
arguments in the query string, an empty body), over an in-memory fleet."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_fleet import FakeFleet, management_client, write_archive
from httpx import Client

from torchferry.serving.settings import ServerSettings


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    source = tmp_path / "sources"
    write_archive(source / "digits-v2", "digits")
    (source / "resnet.mar").write_bytes(b"PK")
    return source


@pytest.fixture
def settings(tmp_path: Path, roots: Path) -> ServerSettings:
    return ServerSettings(store=tmp_path / "store", model_source_roots=[roots], workers=2)


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet(loaded={"digits": [1], "iris": [1, 2]})


@pytest.fixture
def client(fleet: FakeFleet, settings: ServerSettings) -> Iterator[Client]:
    with management_client(fleet, settings) as client:
        yield client


def assert_torchserve_error(response: object, status: int, kind: str) -> str:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"code", "type", "message"}
    assert body["code"] == status and body["type"] == kind
    return str(body["message"])


def test_list_models_pages_like_torchserve(client: Client) -> None:
    body = client.get("/models").json()
    assert body == {
        "models": [
            {"modelName": "digits", "modelUrl": "digits/1"},
            {"modelName": "iris", "modelUrl": "iris/2"},
        ]
    }
    first = client.get("/models?limit=1").json()
    assert first["nextPageToken"] == "1" and [m["modelName"] for m in first["models"]] == ["digits"]
    second = client.get("/models?limit=1&next_page_token=1").json()
    assert "nextPageToken" not in second and second["models"][0]["modelName"] == "iris"
    # TorchServe's bounds: a limit over 100 (or negative) is 100
    assert len(client.get("/models?limit=1000").json()["models"]) == 2


def test_list_refuses_a_non_integer_limit_with_400(client: Client) -> None:
    message = assert_torchserve_error(client.get("/models?limit=ten"), 400, "BadRequestException")
    assert "limit" in message


def test_describe_default_all_and_one_version(client: Client, fleet: FakeFleet) -> None:
    (only,) = client.get("/models/iris").json()
    assert only["modelName"] == "iris" and only["modelVersion"] == "2"
    assert only["isDefault"] is True and only["state"] == "ready"
    assert only["minWorkers"] == only["maxWorkers"] == 2
    assert [w["status"] for w in only["workers"]] == ["READY", "READY"]
    assert {"runtime", "batchSize", "maxBatchDelay", "jobQueueStatus", "modelUrl"} <= set(only)

    every = client.get("/models/iris/all").json()
    assert [(d["modelVersion"], d["isDefault"]) for d in every] == [("1", False), ("2", True)]

    (one,) = client.get("/models/iris/1.0").json()  # TorchServe writes versions as 1.0
    assert one["modelVersion"] == "1" and one["isDefault"] is False


def test_describe_errors_name_the_model_or_version(client: Client) -> None:
    message = assert_torchserve_error(client.get("/models/nope"), 404, "ModelNotFoundException")
    assert message == "Model not found: nope"
    assert_torchserve_error(client.get("/models/nope/all"), 404, "ModelNotFoundException")
    message = assert_torchserve_error(
        client.get("/models/iris/7"), 404, "ModelVersionNotFoundException"
    )
    assert message == "Model version: 7 does not exist for model: iris"
    assert_torchserve_error(client.get("/models/iris/x1"), 404, "ModelVersionNotFoundException")


def test_register_synchronously_curl_style(client: Client, fleet: FakeFleet, roots: Path) -> None:
    response = client.post("/models?url=digits-v2&model_name=digits&synchronous=true")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": 'Model "digits" Version: 2 registered with 2 initial workers',
        "modelName": "digits",
        "modelVersion": "2",
    }
    assert fleet.staged == [((roots / "digits-v2").resolve(), "digits")]
    # registered, not the default: TorchServe's register-then-set-default
    every = client.get("/models/digits/all").json()
    assert [(d["modelVersion"], d["isDefault"]) for d in every] == [("1", True), ("2", False)]


def test_register_defaults_to_synchronous_and_takes_the_manifest_name(
    client: Client, fleet: FakeFleet, roots: Path
) -> None:
    url = f"file://{roots / 'digits-v2'}"
    response = client.post(
        "/models", params={"url": url, "initial_workers": "3", "batch_size": "8"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["modelName"] == "digits"
    assert fleet.staged[-1] == ((roots / "digits-v2").resolve(), None)
    assert ("digits", 2) in fleet.ready()


def test_register_with_a_json_body(client: Client, fleet: FakeFleet) -> None:
    response = client.post("/models", json={"url": "resnet.mar", "model_name": "resnet"})
    assert response.status_code == 200, response.text
    assert response.json()["status"].startswith('Model "resnet" Version: 1 registered')


def test_register_asynchronously_answers_202_then_loads(client: Client, fleet: FakeFleet) -> None:
    fleet.load_delay_s = 0.3
    response = client.post("/models?url=resnet.mar&model_name=resnet&synchronous=false")
    assert response.status_code == 202
    assert response.json()["status"] == "Processing worker updates..."
    (loading,) = client.get("/models/resnet").json()
    assert loading["state"] == "loading"
    deadline = time.monotonic() + 5
    while client.get("/models/resnet").json()[0]["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_failed_async_register_shows_failed_with_its_reason(
    client: Client, fleet: FakeFleet
) -> None:
    fleet.failing[("resnet", 1)] = "integrity check failed: model.onnx hash differs"
    response = client.post("/models?url=resnet.mar&model_name=resnet&synchronous=false")
    assert response.status_code == 202
    deadline = time.monotonic() + 5
    while (described := client.get("/models/resnet/1").json()[0])["state"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert described["reason"] == "integrity check failed: model.onnx hash differs"
    index = client.post("/v2/repository/index").json()
    assert {"name": "resnet", "version": "1", "state": "UNAVAILABLE",
            "reason": "integrity check failed: model.onnx hash differs"} in index  # fmt: skip


def test_a_failed_sync_register_is_a_400_with_the_reason(client: Client, fleet: FakeFleet) -> None:
    fleet.failing[("resnet", 1)] = "warm-up failed: shape mismatch"
    response = client.post("/models?url=resnet.mar&model_name=resnet")
    message = assert_torchserve_error(response, 400, "BadRequestException")
    assert "warm-up failed: shape mismatch" in message


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("", 400, "Parameter url is required."),
        ("?url=", 400, "Parameter url is required."),
        ("?url=resnet.mar&synchronous=maybe", 400, "synchronous"),
        ("?url=resnet.mar&model_name=../evil", 400, "model name"),
        ("?url=https://example.com/m.mar", 403, "remote sources are off"),
        ("?url=s3://bucket/m.mar", 403, "remote sources must use https://"),
        ("?url=/etc", 403, "outside the model source roots"),
        ("?url=../../etc", 403, "outside the model source roots"),
        ("?url=missing.mar", 404, "not found"),
    ],
)
def test_register_refusals(
    client: Client, fleet: FakeFleet, query: str, status: int, words: str
) -> None:
    response = client.post(f"/models{query}")
    assert response.status_code == status, response.text
    assert words in response.json()["message"]
    assert fleet.staged == []


def test_set_default(client: Client, fleet: FakeFleet) -> None:
    response = client.put("/models/iris/1.0/set-default")
    assert response.status_code == 200
    assert response.json() == {
        "status": 'Default version successfully updated for model "iris" to "1"'
    }
    assert fleet.effective_default("iris") == 1
    assert_torchserve_error(client.put("/models/iris/9/set-default"), 404,
                            "ModelVersionNotFoundException")  # fmt: skip
    assert_torchserve_error(client.put("/models/nope/1/set-default"), 404, "ModelNotFoundException")


def test_unregister_a_version_and_the_default(client: Client, fleet: FakeFleet) -> None:
    response = client.delete("/models/iris/1")
    assert response.status_code == 200
    assert response.json() == {"status": 'Model "iris" unregistered'}
    assert fleet._loaded("iris") == [2]
    assert client.delete("/models/iris").status_code == 200  # the default, now the last one
    assert_torchserve_error(client.get("/models/iris"), 404, "ModelNotFoundException")
    assert_torchserve_error(client.delete("/models/iris"), 404, "ModelNotFoundException")


def test_the_default_version_cannot_go_while_others_serve(client: Client, fleet: FakeFleet) -> None:
    message = assert_torchserve_error(client.delete("/models/iris/2"), 409,
                                      "ConflictStatusException")  # fmt: skip
    assert "Cannot remove default version 2 for model iris" in message
    assert "/models/iris/1/set-default" in message
    assert_torchserve_error(client.delete("/models/iris"), 409, "ConflictStatusException")
    assert fleet._loaded("iris") == [1, 2]


def test_unknown_paths_and_methods_answer_in_torchserve_shape(client: Client) -> None:
    assert_torchserve_error(client.get("/nothing/here"), 404, "ResourceNotFoundException")
    assert_torchserve_error(client.patch("/models"), 405, "MethodNotAllowedException")
    triton = client.get("/v2/repository/index")  # a POST route
    assert triton.status_code == 405 and set(triton.json()) == {"error"}


@pytest.mark.parametrize(
    ("fault", "status", "kind", "words"),
    [
        (RuntimeError("worker 2 vanished"), 500, "InternalServerException", "worker 2 vanished"),
        (TimeoutError(), 504, "RequestTimeoutException", "did not answer in time"),
    ],
)
def test_unexpected_faults_answer_in_shape_without_a_traceback(
    client: Client,
    fleet: FakeFleet,
    monkeypatch: pytest.MonkeyPatch,
    fault: Exception,
    status: int,
    kind: str,
    words: str,
) -> None:
    async def broken(name: str, version: int) -> None:
        raise fault

    monkeypatch.setattr(fleet, "set_default", broken)
    response = client.put("/models/iris/1/set-default")
    message = assert_torchserve_error(response, status, kind)
    assert words in message and "Traceback" not in message
