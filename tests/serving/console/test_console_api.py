"""The console's API on one real server (``--auth`` and TLS, one worker, the adder in two
versions and the tiny image classifier), called as the page calls it: who the caller is for
three tokens, the models, live figures growing with requests, the server and its listeners,
the sources a load may offer, try-it requests forwarded to the inference listener (JSON and
an image upload, over TLS to a certificate the forwarder does not check), and a rollout
promoted at once."""

from __future__ import annotations

import io
import shutil
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from certs import make_certs
from PIL import Image

from torchferry.serving.auth.keyfile import create_token
from torchferry.serving.process import ServerProcess
from torchferry.serving.settings import KEY_FILE_DIR, KEY_FILE_NAME

ROW = [1.0, 2.0, 3.0, 4.0]
V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
TOKENS = {
    "manage": ["manage"],
    "reader": ["metadata", "infer"],
    "infer": ["infer"],
    "metadata": ["metadata"],
}


@dataclass
class Served:
    server: ServerProcess
    sources: Path
    store: Path
    tokens: dict[str, str]

    def call(self, method: str, path: str, who: str | None = "manage", **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        url = f"{self.server.management_url}/{path.lstrip('/')}"
        return httpx.request(
            method, url, headers=headers, timeout=30, verify=self.server.verify, **kw
        )

    def api(self, path: str, who: str | None = "manage", **kw: Any) -> httpx.Response:
        return self.call("GET", f"/console/api/{path}", who, **kw)


@pytest.fixture(scope="module")
def served(model_store, start_server, tmp_path_factory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("console")
    store, sources = root / "store", root / "sources"
    for name, version in (("adder", 1), ("adder", 2), ("tiny_image", 1)):
        shutil.copytree(model_store.root / name / str(version), store / name / str(version))
    shutil.copytree(model_store.root / "adder" / "1", sources / "team" / "adder_copy")
    shutil.copy(model_store.root / "adder" / "1" / "model.onnx", sources / "plain.onnx")
    shutil.copytree(model_store.root / "adder" / "1", sources / ".hidden" / "secret")
    (sources / "loop").symlink_to(sources / "loop")  # skipped by the listing, refused by a load
    key_file = store / KEY_FILE_DIR / KEY_FILE_NAME
    tokens = {
        who: create_token(key_file, scopes, timedelta(hours=1), who)[1]
        for who, scopes in TOKENS.items()
    }
    certs = make_certs(root / "certs")
    args = [
        "--store", str(store), "--auth", "--workers", "1", "--threads", "1",
        "--model-source-root", str(sources), "--log-level", "warning",
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
    ]  # fmt: skip
    trust = ssl.create_default_context(cafile=str(certs.ca))
    with start_server(args, root / "server.log", verify=trust) as server:
        yield Served(server, sources, store, tokens)


def test_whoami_for_each_token(served):
    manage = served.api("whoami", "manage").json()
    assert manage["auth"] is True
    assert (manage["scopes"], manage["can_read"], manage["can_manage"]) == (["manage"], True, True)
    # the token's id (fit for logs), never its secret
    assert manage["token"] and manage["token"] != served.tokens["manage"]
    reader = served.api("whoami", "reader").json()
    assert (reader["scopes"], reader["can_read"], reader["can_manage"]) == (
        ["infer", "metadata"], True, False,
    )  # fmt: skip
    infer = served.api("whoami", "infer").json()
    assert (infer["scopes"], infer["can_read"], infer["can_manage"]) == (["infer"], False, False)
    assert len({manage["token"], reader["token"], infer["token"]}) == 3
    refused = served.api("whoami", None)
    assert refused.status_code == 401 and "token" in refused.json()["error"]


def test_overview(served):
    assert served.api("overview", "infer").status_code == 403
    models = {m["name"]: m for m in served.api("overview", "reader").json()["models"]}
    assert set(models) == {"adder", "tiny_image"}
    adder = models["adder"]
    assert (adder["default"], adder["weights"], adder["shadow"]) == (2, {}, None)
    assert adder["policy"] == {"all": {}} and adder["rollout"] is None
    versions = {v["version"]: v for v in adder["versions"]}
    assert set(versions) == {1, 2}
    two = versions[2]
    assert (two["state"], two["reason"], two["is_default"], two["weight"]) == (
        "ready", None, True, None,
    )  # fmt: skip
    assert (two["runtime"], two["handler"], two["device"]) == ("onnxruntime", "tensor", "cpu")
    assert (two["signature_status"], two["signature_detail"]) == ("unsigned", "unsigned")
    assert two["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert two["size_bytes"] > 0 and two["max_batch_size"] >= 1
    assert two["source"] == str(served.store / "adder" / "2")
    assert versions[1]["is_default"] is False
    assert models["tiny_image"]["versions"][0]["handler"] == "image"


def test_metrics_grow_with_requests(served):
    def figures() -> dict[str, Any]:
        answer = served.api("metrics", "reader", params={"model": "adder"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["available"] is True and body["reason"] is None
        return body

    before = figures()["versions"].get("2", {}).get("success", 0)
    headers = {"Authorization": f"Bearer {served.tokens['infer']}"}
    for _ in range(3):
        answer = httpx.post(
            f"{served.server.url}/v2/models/adder/versions/2/infer",
            json=V2_BODY,
            headers=headers,
            verify=served.server.verify,
        )
        assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 10
    while (body := figures())["versions"].get("2", {}).get("success", 0) < before + 3:
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    two = body["versions"]["2"]
    assert two["rows"] >= 3 and two["executions"] >= 1
    latency = two["latency"]
    assert latency["bounds"][-1] == "+Inf"
    assert latency["counts"][-1] == two["success"] and latency["sum"] > 0
    assert two["batch"]["counts"][-1] == two["executions"]
    assert abs(body["at"] - time.time()) < 60
    missing = served.api("metrics", "reader")
    assert missing.status_code == 400 and "model=NAME" in missing.json()["error"]
    unknown = served.api("metrics", "reader", params={"model": "nope"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]


def test_server(served):
    body = served.api("server", "reader").json()
    assert body["pid"] > 0 and body["uptime_s"] > 0 and body["restarts"] == 0
    [worker] = body["workers"]
    assert (worker["index"], worker["state"], worker["restarts"]) == (1, "serving", 0)
    assert worker["pid"] in served.server.worker_pids()
    assert body["started_at"] <= worker["started_at"] <= worker["serving_since"] <= time.time()
    listeners = {item["name"]: item for item in body["listeners"]}
    server = served.server
    assert listeners["http"]["address"] == f"127.0.0.1:{server.port}"
    assert listeners["grpc"]["address"].endswith(f":{server.grpc_port}")
    assert listeners["management"]["address"] == f"127.0.0.1:{server.management_port}"
    assert listeners["metrics"]["address"] == f"127.0.0.1:{server.metrics_port}"
    assert all(item["auth"] and item["tls"] and not item["mtls"] for item in listeners.values())
    assert [listeners[n]["scheme"] for n in ("http", "grpc")] == ["https", "grpcs"]
    assert body["store"] == str(served.store)
    assert body["model_source_roots"] == [str(served.sources)]
    assert "onnxruntime" in body["packages"]


def test_sources(served):
    body = served.api("sources", "reader").json()
    root = served.sources.resolve()
    assert body["roots"] == [str(root)] and body["truncated"] is False
    assert body["candidates"] == [
        {"path": str(root / "plain.onnx"), "kind": "onnx"},
        {"path": str(root / "team" / "adder_copy"), "kind": "archive"},
    ]
    loop = served.call("POST", "/models?url=loop&model_name=loop&synchronous=true")
    assert loop.status_code == 400 and "cannot be resolved" in loop.json()["message"]


def test_try_forwards_json_and_an_image(served):
    answer = served.call(
        "POST", "/console/api/try/v2/models/adder/versions/1/infer", "infer", json=V2_BODY,
        headers={"X-Request-ID": "not-forwarded"},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    assert outputs["y"] == [v * 2 + 1 for v in ROW]  # version 1 scales by 2
    assert outputs["total"] == [sum(ROW)]
    assert answer.headers["x-model-version"] == "1"
    assert answer.headers["x-request-id"]
    assert float(answer.headers["x-torchferry-latency-ms"]) > 0
    assert answer.headers["content-type"].startswith("application/json")
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, np.uint8), mode="L").save(buffer, format="PNG")
    upload = served.call(
        "POST", "/console/api/try/predict/tiny_image", "reader",
        files={"file": ("a.png", buffer.getvalue(), "image/png")},
    )  # fmt: skip
    assert upload.status_code == 200, upload.text
    assert any(label in upload.text for label in ("cat", "dog", "bird"))
    assert upload.headers["x-model-version"] == "1"


def test_try_refusals(served):
    # %2e%2e: httpx would fold a plain ".." before sending, and the check would not be asked
    for path in ("metrics", "models", "v2/health/ready", "v2/models/%2e%2e/%2e%2e/models"):
        answer = served.call("POST", f"/console/api/try/{path}", "infer", json={})
        assert answer.status_code == 404, (path, answer.text)
        assert "not an inference route" in answer.json()["error"]
    assert served.call("POST", "/console/api/try/predict/adder", None, json={}).status_code == 401
    no_infer = served.call("POST", "/console/api/try/predict/adder", "metadata", json={})
    assert no_infer.status_code == 403 and "an infer scope" in no_infer.json()["error"]
    # escapes stay in their segment (the listener is asked for the model "a?b"), and what
    # httpx cannot write is the caller's error, never a 500
    escaped = served.call("POST", "/console/api/try/v2/models/a%3Fb/infer", "infer", json=V2_BODY)
    assert escaped.status_code == 404 and "a?b" in escaped.text
    control = served.call("POST", "/console/api/try/predict/a%01", "infer", json={})
    assert control.status_code == 404, control.text
    odd_type = served.call(
        "POST", "/console/api/try/predict/adder", "infer", content=b"{}",
        headers={"content-type": "application/json; x=\xe9".encode("latin-1")},
    )  # fmt: skip
    assert odd_type.status_code < 500, odd_type.text
    assert odd_type.headers["content-security-policy"] == "sandbox"
    # the inference listener's own refusal, passed through
    unknown = served.call("POST", "/console/api/try/v2/models/nope/infer", "infer", json=V2_BODY)
    assert unknown.status_code == 404 and "x-torchferry-proxy" not in unknown.headers


def test_promote(served):
    def manage(method: str, path: str, who: str = "manage", **kw: Any) -> httpx.Response:
        return served.call(method, path, who, **kw)

    assert manage("PUT", "/models/adder/1/set-default").status_code == 200
    spec = {"version": 2, "steps": [10, 50, 100], "interval_s": 3600, "min_requests": 1000}
    started = manage("POST", "/models/adder/rollouts", json=spec)
    assert started.status_code == 201, started.text
    refused = manage("POST", "/models/adder/rollout/promote", "reader")
    assert refused.status_code == 403
    promoted = manage("POST", "/models/adder/rollout/promote")
    assert promoted.status_code == 200, promoted.text
    assert (promoted.json()["phase"], promoted.json()["weight"]) == ("promoted", 100)
    [adder] = [m for m in served.api("overview").json()["models"] if m["name"] == "adder"]
    assert adder["default"] == 2 and adder["weights"] == {}
    assert adder["rollout"]["phase"] == "promoted"
    assert adder["rollout"]["history"][-1]["verdict"] == "promote"
    again = manage("POST", "/models/adder/rollout/promote")
    assert again.status_code == 409
