"""The server as a whole: OpenAPI lists every route, the TorchServe-shaped serve command, and
the body size limit (413)."""

from __future__ import annotations

import httpx
import pytest

ROUTES = {
    ("get", "/v2/health/live"),
    ("get", "/v2/health/ready"),
    ("get", "/v2"),
    ("get", "/v2/models/stats"),
    ("get", "/v2/models/{model_name}"),
    ("get", "/v2/models/{model_name}/versions/{model_version}"),
    ("get", "/v2/models/{model_name}/ready"),
    ("get", "/v2/models/{model_name}/versions/{model_version}/ready"),
    ("get", "/v2/models/{model_name}/config"),
    ("get", "/v2/models/{model_name}/versions/{model_version}/config"),
    ("get", "/v2/models/{model_name}/stats"),
    ("get", "/v2/models/{model_name}/versions/{model_version}/stats"),
    ("post", "/v2/models/{model_name}/infer"),
    ("post", "/v2/models/{model_name}/versions/{model_version}/infer"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model_name}"),
    ("get", "/v1/models/{model_name}/versions/{model_version}"),
    ("post", "/v1/models/{model_name}:predict"),
    ("post", "/v1/models/{model_name}/versions/{model_version}:predict"),
    ("post", "/v1/models/{model_name}/predictions"),
    ("post", "/v1/models/{model_name}/versions/{model_version}/predictions"),
    ("post", "/predict"),
    ("post", "/predict/{model_name}"),
    ("post", "/predict/{model_name}/versions/{model_version}"),
}


def test_openapi_lists_every_route_with_a_summary(http):
    spec = http.get("/openapi.json").json()
    listed = {(m, p) for p, methods in spec["paths"].items() for m in methods}
    assert listed >= ROUTES, ROUTES - listed
    for method, path in ROUTES:
        operation = spec["paths"][path][method]
        assert operation.get("summary"), (method, path)
        if method == "post":
            assert "application/json" in operation["requestBody"]["content"], path
    infer = spec["paths"]["/v2/models/{model_name}/infer"]["post"]["requestBody"]
    schema = infer["content"]["application/json"]["schema"]
    assert schema["required"] == ["inputs"]
    upload = spec["paths"]["/predict/{model_name}"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload and "image/*" in upload
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.fixture(scope="module")
def torchserve_shaped(model_store, tmp_path_factory, start_server):
    """``serve --model-name calc --model-dir STORE/adder --rest-port P`` with a 2 KiB limit."""
    args = [
        "--model-name", "calc", "--model-dir", str(model_store.root / "adder"),
        "--max-body-size", "2KiB", "--threads", "1", "--log-level", "warning",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("logs") / "torchserve_shaped.log"
    with start_server(args, log, port_flag="--rest-port") as server:
        yield server


def test_model_dir_served_under_its_name_with_every_version(torchserve_shaped):
    with torchserve_shaped.client() as client:
        meta = client.get("/v2/models/calc").json()
        assert meta["name"] == "calc" and meta["versions"] == ["1", "2"]
        assert client.get("/v2/models/adder").status_code == 404
        # the only model: /predict needs no name
        answer = client.post("/predict", json={"data": [[1, 2, 3, 4]]}).json()
        assert answer["model_name"] == "calc"
        assert answer["result"] == [{"y": [4.0, 7.0, 10.0, 13.0], "total": 10.0}]
        v1 = client.post("/v1/models/calc/versions/1:predict", json={"instances": [[0, 0, 0, 0]]})
        assert v1.json()["predictions"] == [{"y": [1.0, 1.0, 1.0, 1.0], "total": 0.0}]


def test_body_over_the_limit_is_413(torchserve_shaped):
    big = {"data": [[0.0, 0.0, 0.0, 0.0]] * 200}  # about 3.6 KB of JSON
    with torchserve_shaped.client() as client:
        declared = client.post("/predict/calc", json=big)
        assert declared.status_code == 413
        assert "exceeds the limit of 2048 bytes" in declared.json()["error"]

        def chunks():
            for _ in range(8):
                yield b" " * 512  # no Content-Length: the limit counts as it reads

        streamed = client.post(
            "/v2/models/calc/infer", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        small = client.post("/predict/calc", json={"data": [[1, 1, 1, 1]]})
        assert small.status_code == 200
    assert torchserve_shaped.alive()


def test_one_archive_directory_as_model_dir(model_store, tmp_path, start_server):
    args = ["--model-name", "solo", "--model-dir", str(model_store.root / "adder" / "1")]
    log = tmp_path / "solo.log"
    with start_server([*args, "--threads", "1"], log, port_flag="--rest-port") as server:
        meta = httpx.get(f"{server.url}/v2/models/solo", timeout=10).json()
        assert meta["versions"] == ["1"]
