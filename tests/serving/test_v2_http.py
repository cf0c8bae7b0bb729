"""KServe V2 / Open Inference Protocol against the live server: every route, every datatype."""

from __future__ import annotations

import numpy as np
import pytest
from value_samples import SAMPLES

ALL_TYPES = list(SAMPLES)
X = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]


def x_tensor(data: object = X, shape: object = (2, 4), datatype: str = "FP32") -> dict:
    return {"name": "x", "shape": list(shape), "datatype": datatype, "data": data}


def test_health_and_server_metadata(http):
    live = http.get("/v2/health/live")
    assert live.status_code == 200 and live.json() == {"live": True}
    ready = http.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    meta = http.get("/v2").json()
    assert meta["name"] == "torchferry" and meta["version"]
    assert meta["extensions"] == ["binary_tensor_data", "model_configuration", "statistics"]


def test_model_metadata_default_and_versioned(http):
    meta = http.get("/v2/models/adder").json()
    assert meta == {
        "name": "adder",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "total", "datatype": "FP32", "shape": [-1]},
        ],
    }
    one = http.get("/v2/models/adder/versions/1").json()
    assert one["versions"] == ["1"] and one["inputs"] == meta["inputs"]
    assert http.get("/v2/models/multi").json()["platform"] == "pytorch_torchscript"


def test_model_readiness(http):
    assert http.get("/v2/models/adder/ready").json()["ready"] is True
    assert http.get("/v2/models/adder/versions/2/ready").status_code == 200
    assert http.get("/v2/models/adder/versions/3/ready").status_code == 404
    assert http.get("/v2/models/nope/ready").status_code == 404


def test_infer_default_version_is_the_highest(http):
    body = {"id": "req-1", "inputs": [x_tensor()]}
    answer = http.post("/v2/models/adder/infer", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["model_name"] == "adder" and result["model_version"] == "2"
    assert result["id"] == "req-1"
    y, total = result["outputs"]
    assert y == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2, 4],
        "data": (np.array(X) * 3 + 1).reshape(-1).tolist(),
    }
    assert total["shape"] == [2] and total["data"] == [10.0, 26.0]


def test_infer_versioned_nested_and_flat_agree(http):
    nested = http.post("/v2/models/adder/versions/1/infer", json={"inputs": [x_tensor()]})
    flat = http.post(
        "/v2/models/adder/versions/1/infer",
        json={"inputs": [x_tensor(np.array(X).reshape(-1).tolist())]},
    )
    assert nested.status_code == flat.status_code == 200
    assert nested.json()["model_version"] == "1"
    assert "id" not in nested.json()
    assert nested.json()["outputs"] == flat.json()["outputs"]
    assert nested.json()["outputs"][0]["data"][:4] == [3.0, 5.0, 7.0, 9.0]


def test_requested_outputs_only(http):
    body = {"inputs": [x_tensor()], "outputs": [{"name": "total"}]}
    outputs = http.post("/v2/models/adder/infer", json=body).json()["outputs"]
    assert [o["name"] for o in outputs] == ["total"]
    body["outputs"] = [{"name": "nope"}]
    answer = http.post("/v2/models/adder/infer", json=body)
    assert answer.status_code == 400 and "unknown output 'nope'" in answer.json()["error"]


def test_every_datatype_through_an_identity_model(http):
    inputs = [
        {"name": f"in_{t}", "datatype": t, "shape": [3, 2], "data": SAMPLES[t]} for t in ALL_TYPES
    ]
    answer = http.post("/v2/models/alltypes/infer", json={"inputs": inputs})
    assert answer.status_code == 200, answer.text
    by_name = {o["name"]: o for o in answer.json()["outputs"]}
    for t in ALL_TYPES:
        out = by_name[f"out_{t}"]
        assert out["datatype"] == t and out["shape"] == [3, 2]
        assert out["data"] == SAMPLES[t], t


def test_bytes_model_and_multi_input_torchscript(http):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hé", "x"]}]}
    outputs = http.post("/v2/models/strings/infer", json=body).json()["outputs"]
    assert outputs[0] == {"name": "shout", "datatype": "BYTES", "shape": [2], "data": ["hé!", "x!"]}
    body = {
        "inputs": [
            {"name": "b", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]},
            {"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [0.5, 0.5, 0.5]},
        ]
    }
    outputs = http.post("/v2/models/multi/infer", json=body).json()["outputs"]
    assert outputs[0]["data"] == [1.5, 2.5, 3.5] and outputs[1]["data"] == [2, 4, 6]
    assert outputs[1]["datatype"] == "INT64"


def test_model_config(http):
    config = http.get("/v2/models/adder/config").json()
    assert config["name"] == "adder" and config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime" and config["max_batch_size"] == 32
    assert config["input"][0] == {
        "name": "x", "data_type": "TYPE_FP32", "dims": [4], "format": "FORMAT_NONE",
        "optional": False,
    }  # fmt: skip
    assert config["output"][1] == {"name": "total", "data_type": "TYPE_FP32", "dims": []}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
    batchy = http.get("/v2/models/batchy/versions/1/config").json()
    assert batchy["max_batch_size"] == 16
    assert batchy["dynamic_batching"]["max_queue_delay_microseconds"] == 50000
    types = {
        i["name"]: i["data_type"] for i in http.get("/v2/models/alltypes/config").json()["input"]
    }
    assert types["in_BYTES"] == "TYPE_STRING" and types["in_FP16"] == "TYPE_FP16"
    assert http.get("/v2/models/multi/config").json()["backend"] == "pytorch"
    assert http.get("/v2/models/nope/config").status_code == 404


def test_statistics_shapes_and_counts(http):
    before = http.get("/v2/models/multi/versions/1/stats").json()["model_stats"][0]
    body = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": [0] * 6},
            {"name": "b", "datatype": "INT64", "shape": [2, 3], "data": [0] * 6},
        ]
    }
    assert http.post("/v2/models/multi/infer", json=body).status_code == 200
    after = http.get("/v2/models/multi/stats").json()["model_stats"][0]
    assert after["name"] == "multi" and after["version"] == "1"
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["execution_count"] == before["execution_count"] + 1
    stats = after["inference_stats"]
    assert set(stats) >= {"success", "fail", "queue", "compute_infer"}
    assert stats["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert stats["compute_infer"]["ns"] > 0
    assert any(b["batch_size"] == 2 for b in after["batch_stats"])
    everything = http.get("/v2/models/stats").json()["model_stats"]
    assert {(s["name"], s["version"]) for s in everything} >= {("adder", "1"), ("adder", "2")}
    assert len(http.get("/v2/models/adder/stats").json()["model_stats"]) == 2
    assert http.get("/v2/models/adder/versions/9/stats").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/nope/versions/1",
        "/v2/models/adder/versions/7",
        "/v2/models/adder/versions/abc",
        "/v2/models/nope/stats",
    ],
)
def test_unknown_model_or_version_is_404(http, path):
    answer = http.get(path)
    assert answer.status_code == 404 and "error" in answer.json()


def test_unknown_model_infer_is_404(http):
    for path in ["/v2/models/nope/infer", "/v2/models/adder/versions/5/infer"]:
        answer = http.post(path, json={"inputs": [x_tensor()]})
        assert answer.status_code == 404 and "error" in answer.json()


def test_a_model_exported_with_torchferry_export_matches_eager_torch(http, mlp):
    import torch

    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    body = {
        "inputs": [{"name": "features", "shape": [5, 4], "datatype": "FP32", "data": x.tolist()}]
    }
    answer = http.post("/v2/models/mlp/infer", json=body)
    assert answer.status_code == 200, answer.text
    (scores,) = answer.json()["outputs"]
    assert scores["name"] == "scores" and scores["shape"] == [5, 3]
    with torch.no_grad():
        expected = mlp(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.reshape(scores["data"], (5, 3)), expected, rtol=1e-5, atol=1e-5)
    rows = http.post("/v1/models/mlp:predict", json={"instances": x.tolist()}).json()
    np.testing.assert_allclose(rows["predictions"], expected, rtol=1e-5, atol=1e-5)
