"""``torchferry serve --auth`` end to end: one real server, real clients (httpx on every HTTP
protocol, tritonclient over gRPC, the project's own client and commands), tokens from the
key file beside the store, changed while the server runs."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from torchferry.cli import main
from torchferry.client import Client
from torchferry.errors import Unauthenticated
from torchferry.serving.auth.keyfile import Rate, create_token, revoke_token
from torchferry.serving.process import ServerProcess, serve_in_subprocess
from torchferry.serving.settings import KEY_FILE_DIR, KEY_FILE_NAME

ROW = [1.0, 2.0, 3.0, 4.0]


@dataclass
class Served:
    server: ServerProcess
    key_file: Path
    tokens: dict[str, str]

    def bearer(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture(scope="module")
def served(model_store, tmp_path_factory) -> Iterator[Served]:
    """Models ``adder`` and ``other`` (the adder again); tokens in the store's default key
    file, one per scope."""
    root = tmp_path_factory.mktemp("auth")
    store = root / "store"
    for name in ("adder", "other"):
        shutil.copytree(model_store.root / "adder" / "1", store / name / "1")
    key_file = store / KEY_FILE_DIR / KEY_FILE_NAME
    scopes = {
        "adder": ["infer:adder"],
        "other": ["infer:other"],
        "metadata": ["metadata"],
        "manage": ["manage"],
        "metrics": ["metrics"],
        "limited": ["infer"],
        "ghost": ["infer:ghost"],  # a model that is not loaded
    }
    tokens = {}
    for who, scope in scopes.items():
        rate = Rate(1.0, 2) if who == "limited" else None
        tokens[who] = create_token(key_file, scope, timedelta(hours=1), who, rate)[1]
    args = ["--store", str(store), "--auth", "--threads", "1", "--log-format", "json"]
    with serve_in_subprocess(args, root / "server.log") as server:
        yield Served(server, key_file, tokens)


@pytest.fixture(scope="module")
def http(served: Served) -> Iterator[httpx.Client]:
    with served.server.client() as client:
        yield client


#: (route template, JSON body) of each HTTP protocol's inference
INFER_ROUTES = {
    "v2": ("/v2/models/{m}/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}),
    "v1": ("/v1/models/{m}:predict", {"instances": [ROW]}),
    "predict": ("/predict/{m}", {"data": [ROW]}),
    "torchserve": ("/predictions/{m}", [ROW]),
}  # fmt: skip


def _infer(
    http: httpx.Client, protocol: str, model: str, headers: dict[str, str]
) -> httpx.Response:
    path, body = INFER_ROUTES[protocol]
    return http.post(path.format(m=model), json=body, headers=headers)


@pytest.mark.parametrize("protocol", list(INFER_ROUTES))
def test_inference_needs_a_token_with_the_models_scope(served, http, protocol):
    nobody: dict[str, str] = {}
    for model in ("adder", "nosuch"):  # 401 whether the model exists or not
        for headers in (nobody, {"Authorization": "Bearer nope"}):
            answer = _infer(http, protocol, model, headers)
            assert answer.status_code == 401, answer.text
            assert answer.headers["www-authenticate"].startswith("Bearer")
        # a token for another model: 403, never a 404 that tells what exists
        assert _infer(http, protocol, model, served.bearer("other")).status_code == 403
    assert _infer(http, protocol, "adder", served.bearer("metadata")).status_code == 403
    answer = _infer(http, protocol, "adder", served.bearer("adder"))
    assert answer.status_code == 200, answer.text
    assert "10.0" in answer.text  # the row's total
    if protocol == "torchserve":  # TorchServe's own error shape
        body = _infer(http, protocol, "adder", nobody).json()
        assert body["code"] == 401 and body["type"] == "InvalidKeyException"


def test_metadata_needs_metadata_or_the_models_infer_scope(served, http):
    assert http.get("/v2/models/adder").status_code == 401
    assert http.get("/v2/models/adder/ready").status_code == 401  # per-model: a token
    for who in ("metadata", "adder"):
        assert http.get("/v2/models/adder", headers=served.bearer(who)).status_code == 200
    assert http.get("/v2/models/adder", headers=served.bearer("other")).status_code == 403
    assert http.get("/v2/models/adder", headers=served.bearer("metrics")).status_code == 403
    assert http.get("/v2/models/nosuch", headers=served.bearer("metadata")).status_code == 404
    # a token without metadata lists only the models it may run
    assert http.get("/v1/models", headers=served.bearer("adder")).json() == {"models": ["adder"]}
    listed = http.get("/v1/models", headers=served.bearer("metadata")).json()["models"]
    assert sorted(listed) == ["adder", "other"]
    stats = http.get("/v2/models/stats", headers=served.bearer("other")).json()["model_stats"]
    assert [s["name"] for s in stats] == ["other"]


def test_an_unknown_model_is_refused_before_it_is_looked_up(served, http):
    """401/403 before any 404: a refusal never lists (or confirms) the loaded models."""
    routes = ("/v2/models/nosuch/stats", "/models/nosuch/all", "/models/nosuch/1")
    for path in routes:
        answer = http.get(path)
        assert answer.status_code == 401 and "adder" not in answer.text, (path, answer.text)
        answer = http.get(path, headers=served.bearer("other"))  # scoped to another model
        assert answer.status_code == 403 and "adder" not in answer.text, (path, answer.text)
        assert http.get(path, headers=served.bearer("metadata")).status_code == 404
    client = grpcclient.InferenceServerClient(served.server.grpc_target)
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.get_inference_statistics("nosuch")
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "adder" not in refused.value.message()
    finally:
        client.close()


def test_a_404_lists_only_the_models_the_token_may_see(served, http):
    ghost = served.bearer("ghost")  # infer:ghost, and ghost is not loaded
    for answer in (
        http.get("/v2/models/ghost", headers=ghost),
        http.get("/v2/models/ghost/stats", headers=ghost),
        _infer(http, "v2", "ghost", ghost),
        _infer(http, "v1", "ghost", ghost),
    ):
        assert answer.status_code == 404, answer.text
        assert "adder" not in answer.text and "other" not in answer.text, answer.text
    listed = http.get("/v2/models/nosuch", headers=served.bearer("metadata")).text
    assert "adder" in listed and "other" in listed  # metadata may see every model


def test_inference_refuses_a_token_without_infer_before_reading_the_body(served, http):
    """A malformed body gets 403, not 400: the server did not read or decode it."""
    for who, path in (
        ("metadata", "/v2/models/adder/infer"),
        ("metadata", "/v2/models/adder/versions/1/infer"),
        ("metadata", "/v1/models/adder:predict"),
        ("metrics", "/predict"),  # no model named: it needs some infer scope
        ("metadata", "/predictions/adder"),
    ):
        answer = http.post(path, content=b"{ not json", headers=served.bearer(who))
        assert answer.status_code == 403, (who, path, answer.text)
    client = grpcclient.InferenceServerClient(served.server.grpc_target)
    wrong = grpcclient.InferInput("x", [1, 4], "FP64")  # the model takes FP32: a 400
    wrong.set_data_from_numpy(np.array([ROW], dtype=np.float64))
    try:
        for who, status in (("metadata", "PERMISSION_DENIED"), ("adder", "INVALID_ARGUMENT")):
            token = {"authorization": f"Bearer {served.tokens[who]}"}
            with pytest.raises(InferenceServerException) as refused:
                client.infer("adder", [wrong], headers=token)
            assert refused.value.status() == f"StatusCode.{status}", refused.value.message()
    finally:
        client.close()


def test_every_listener_reads_the_first_authorization_header(served, http):
    """One rule on every listener: the first header (or metadata entry) counts, so a second
    one a proxy appends changes nothing."""
    for first, second, status in (("adder", "nope", 200), ("nope", "adder", 401)):
        token = f"Bearer {served.tokens.get(first, first)}"
        other = f"Bearer {served.tokens.get(second, second)}"
        headers = [("Authorization", token), ("Authorization", other)]
        path, body = INFER_ROUTES["v2"]
        answer = http.post(path.format(m="adder"), json=body, headers=headers)
        assert answer.status_code == status, answer.text
        metrics = f"http://127.0.0.1:{served.server.metrics_port}/metrics"
        expected = 403 if status == 200 else 401  # the adder token may not read metrics
        assert httpx.get(metrics, headers=headers).status_code == expected
        with grpc.insecure_channel(served.server.grpc_target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            metadata = (("authorization", token), ("authorization", other))
            ask = service_pb2.ModelMetadataRequest(name="adder")
            if status == 200:
                assert stub.ModelMetadata(ask, metadata=metadata).name == "adder"
            else:
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ModelMetadata(ask, metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_probes_stay_open(served, http):
    for path in ("/v2/health/live", "/v2/health/ready", "/ping"):
        assert http.get(path).status_code == 200, path
        assert http.get(path, headers={"Authorization": "Bearer nope"}).status_code == 200
    # what names no model needs no token: server metadata, the API description, unknown paths
    assert http.get("/v2").json()["name"] == "torchferry"
    assert http.get("/openapi.json").status_code == 200
    assert http.get("/no/such/path").status_code == 404


def test_metrics_need_the_metrics_scope(served):
    url = f"http://127.0.0.1:{served.server.metrics_port}/metrics"
    answer = httpx.get(url)
    assert answer.status_code == 401 and "www-authenticate" in answer.headers
    assert httpx.get(url, headers=served.bearer("adder")).status_code == 403
    answer = httpx.get(url, headers=served.bearer("metrics"))
    assert answer.status_code == 200 and "nv_inference_request_success" in answer.text


def test_management_reads_with_metadata_and_changes_with_manage(served):
    with httpx.Client(base_url=served.server.management_url, timeout=30) as management:
        answer = management.get("/models")
        assert answer.status_code == 401 and answer.json()["type"] == "InvalidKeyException"
        for who in ("metadata", "manage"):
            assert management.get("/models", headers=served.bearer(who)).status_code == 200
        assert management.get("/models", headers=served.bearer("adder")).status_code == 403
        change = "/models/adder/1/set-default"
        refused = management.put(change, headers=served.bearer("metadata"))
        assert refused.status_code == 403 and "manage" in refused.json()["message"]
        assert management.put(change, headers=served.bearer("manage")).status_code == 200


def test_grpc_takes_the_token_from_authorization_metadata(served):
    client = grpcclient.InferenceServerClient(served.server.grpc_target)
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([ROW], dtype=np.float32))
    try:
        assert client.is_server_live() and client.is_server_ready()  # open
        # gRPC metadata keys are lowercase: tritonclient refuses "Authorization"
        token = {"authorization": f"Bearer {served.tokens['adder']}"}
        assert client.infer("adder", [tensor], headers=token).as_numpy("total").tolist() == [10.0]
        other = {"authorization": f"Bearer {served.tokens['other']}"}
        for headers, status in (
            (None, "UNAUTHENTICATED"),
            (other, "PERMISSION_DENIED"),
        ):
            with pytest.raises(InferenceServerException) as refused:
                client.infer("adder", [tensor], headers=headers)
            assert refused.value.status() == f"StatusCode.{status}"
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata("adder")
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        client.close()


def _until(check: Any, seconds: float = 3.0) -> float:
    """Seconds until ``check()`` holds (fails after ``seconds``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, "no change within the time allowed"
        time.sleep(0.05)
    return time.monotonic() - start


def test_new_and_revoked_tokens_take_effect_without_a_restart(served, http):
    entry, text = create_token(served.key_file, ["infer:adder"], timedelta(minutes=5))
    headers = {"Authorization": f"Bearer {text}"}
    _until(lambda: _infer(http, "v2", "adder", headers).status_code == 200)
    revoke_token(served.key_file, entry.id)
    assert _until(lambda: _infer(http, "v2", "adder", headers).status_code == 401) < 2.0


def test_a_token_over_its_rate_gets_429_with_retry_after(served, http):
    statuses = [_infer(http, "v2", "adder", served.bearer("limited")) for _ in range(4)]
    refused = [answer for answer in statuses if answer.status_code == 429]
    assert refused, [a.status_code for a in statuses]
    assert int(refused[0].headers["retry-after"]) >= 1
    assert all(a.status_code in (200, 429) for a in statuses)


def test_the_projects_client_and_commands_send_the_token(served, tmp_path, monkeypatch, capsys):
    url = served.server.url
    with Client(url) as anonymous, pytest.raises(Unauthenticated):
        anonymous.infer("adder", {"x": np.array([ROW], dtype=np.float32)})
    with Client(url, token=served.tokens["adder"]) as client:
        assert client.infer("adder", {"x": np.array([ROW], dtype=np.float32)})["total"] == 10.0
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"data": [ROW]}))
    command = ["predict", "--url", url, "--model", "adder", "--json", str(body)]
    assert main(command) == 1 and "401" in capsys.readouterr().err
    assert main([*command, "--token", served.tokens["adder"]]) == 0
    monkeypatch.setenv("TORCHFERRY_TOKEN", served.tokens["adder"])
    assert main(command) == 0
    assert '"total"' in capsys.readouterr().out


def test_the_access_log_names_the_token_id_never_the_token(served, http):
    http.get("/v2/models/adder", headers=served.bearer("metadata"))
    log = served.server.output()
    metadata_id = served.tokens["metadata"][3:15]

    def logged() -> bool:
        return any(
            json.loads(line).get("token") == metadata_id
            for line in served.server.output().splitlines()
            if line.startswith("{") and '"torchferry.access"' in line
        )

    _until(logged)
    log = served.server.output()
    assert not any(token in log for token in served.tokens.values())
    assert "Bearer" not in log
