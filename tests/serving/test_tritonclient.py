"""The real V2 client, tritonclient's HTTP client, unchanged against the live server, with
JSON tensors (its binary default is covered in test_binary_http.py)."""

from __future__ import annotations

from urllib.parse import urlparse

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def triton(live_server):
    client = httpclient.InferenceServerClient(url=urlparse(live_server.url).netloc)
    yield client
    client.close()


def json_input(name: str, array: np.ndarray, datatype: str) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=False)
    return tensor


def json_output(name: str) -> httpclient.InferRequestedOutput:
    return httpclient.InferRequestedOutput(name, binary_data=False)


def test_server_health_and_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("adder")
    assert triton.is_model_ready("adder", "1")
    assert not triton.is_model_ready("nope")
    meta = triton.get_server_metadata()
    assert meta["name"] == "torchferry" and "model_configuration" in meta["extensions"]
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_config(triton):
    meta = triton.get_model_metadata("adder", "1")
    assert meta["name"] == "adder" and meta["inputs"][0]["shape"] == [-1, 4]
    config = triton.get_model_config("adder")
    assert config["max_batch_size"] == 32 and config["input"][0]["dims"] == [4]


def test_infer_fp32_with_requested_outputs(triton):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = triton.infer(
        "adder", [json_input("x", x, "FP32")], outputs=[json_output("y"), json_output("total")],
        model_version="1", request_id="abc",
    )  # fmt: skip
    np.testing.assert_allclose(result.as_numpy("y"), x * 2 + 1)
    np.testing.assert_allclose(result.as_numpy("total"), x.sum(axis=1))
    response = result.get_response()
    assert response["id"] == "abc" and response["model_version"] == "1"


def test_infer_without_requested_outputs_gets_binary_back(triton):
    # tritonclient then asks for binary_data_output: the outputs come back binary
    x = np.ones((1, 4), dtype=np.float32)
    result = triton.infer("adder", [json_input("x", x, "FP32")])
    assert result.get_output("y")["parameters"] == {"binary_data_size": 16}
    np.testing.assert_allclose(result.as_numpy("y"), x * 3 + 1)


def test_infer_int64_and_fp32_two_inputs(triton):
    a = np.array([[0.5, 1.5, 2.5]], dtype=np.float32)
    b = np.array([[1, -2, 2**40]], dtype=np.int64)
    result = triton.infer(
        "multi", [json_input("a", a, "FP32"), json_input("b", b, "INT64")],
        outputs=[json_output("sum"), json_output("twice")],
    )  # fmt: skip
    twice = result.as_numpy("twice")
    assert twice.dtype == np.int64 and twice.tolist() == (b * 2).tolist()
    np.testing.assert_allclose(result.as_numpy("sum"), a + b.astype(np.float32))


def test_infer_bytes(triton):
    text = np.array([b"hello", "wörld".encode()], dtype=np.object_)
    result = triton.infer(
        "strings", [json_input("text", text, "BYTES")], outputs=[json_output("shout")]
    )
    assert [str(s) for s in result.as_numpy("shout")] == ["hello!", "wörld!"]


def test_statistics(triton):
    stats = triton.get_inference_statistics("adder", "1")
    (entry,) = stats["model_stats"]
    assert entry["name"] == "adder" and entry["inference_count"] >= 1


def test_errors_raise_inference_server_exception(triton):
    x = np.ones((1, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException, match="not loaded"):
        triton.infer("nope", [json_input("x", x, "FP32")])
    with pytest.raises(InferenceServerException, match="no version"):
        triton.get_model_metadata("adder", "9")
    with pytest.raises(InferenceServerException, match="expected datatype FP32, received FP64"):
        triton.infer("adder", [json_input("x", x.astype(np.float64), "FP64")])
    binary = httpclient.InferInput("x", [1, 4], "FP32")
    binary.set_data_from_numpy(x)  # binary by default: served
    np.testing.assert_allclose(triton.infer("adder", [binary]).as_numpy("y"), x * 3 + 1)
    bad = httpclient.InferInput("x", [1, 4], "INT32")
    bad.set_data_from_numpy(x.astype(np.int32))
    with pytest.raises(InferenceServerException, match="expected datatype FP32, received INT32"):
        triton.infer("adder", [bad])
