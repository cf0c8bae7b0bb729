"""KServe V2 over gRPC with the real client, tritonclient's gRPC client (which always sends
``raw_input_contents`` and reads ``raw_output_contents``), against the live server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

#: The ``alltypes`` identity model's datatypes (tests/conftest.py) and extreme values for each.
NUMERIC = {
    "BOOL": np.array([[True, False], [False, True], [True, True]]),
    **{
        name: np.array([[info.min, info.max], [0, 1], [info.max // 2, info.min // 3]], dtype)
        for name, dtype in [
            ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32),
            ("UINT64", np.uint64), ("INT8", np.int8), ("INT16", np.int16),
            ("INT32", np.int32), ("INT64", np.int64),
        ]
        for info in [np.iinfo(dtype)]
    },
    "FP16": np.array([[0.5, -2.0], [65504.0, np.inf], [1e-4, -0.0]], np.float16),
    "FP32": np.array([[1.5, -3.25], [3.4e38, np.nan], [1e-38, 7.0]], np.float32),
    "FP64": np.array([[1e300, -1e-300], [np.pi, -np.inf], [0.1, 2.0]], np.float64),
}  # fmt: skip


@pytest.fixture(scope="module")
def triton(live_server):
    client = grpcclient.InferenceServerClient(url=live_server.grpc_target)
    yield client
    client.close()


def tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    infer_input = grpcclient.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array)
    return infer_input


def outputs(*names: str) -> list[grpcclient.InferRequestedOutput]:
    return [grpcclient.InferRequestedOutput(name) for name in names]


@contextmanager
def fails(status: str, *fragments: str) -> Iterator[None]:
    """The block raises an error with this gRPC status and a message holding ``fragments``."""
    with pytest.raises(InferenceServerException) as caught:
        yield
    message = caught.value.message()
    assert caught.value.status() == f"StatusCode.{status}", message
    for fragment in fragments:
        assert fragment in message, message


def test_health_readiness_and_server_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("adder")
    assert triton.is_model_ready("adder", "1")
    assert not triton.is_model_ready("adder", "9")
    assert not triton.is_model_ready("nope")
    meta = triton.get_server_metadata(as_json=True)
    assert meta["name"] == "torchferry" and meta["version"]
    assert set(meta["extensions"]) == {"model_configuration", "statistics"}


def test_model_metadata_matches_http(triton, http):
    meta = triton.get_model_metadata("adder", as_json=True)
    over_http = http.get("/v2/models/adder").json()
    assert meta["name"] == "adder" and meta["versions"] == ["1", "2"]
    assert meta["platform"] == over_http["platform"] == "onnxruntime_onnx"
    as_lists = [
        {**t, "shape": [int(d) for d in t["shape"]]} for t in meta["inputs"] + meta["outputs"]
    ]
    assert as_lists == over_http["inputs"] + over_http["outputs"]
    assert as_lists[0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    one = triton.get_model_metadata("adder", "1")
    assert list(one.versions) == ["1"] and list(one.outputs[1].shape) == [-1]
    multi = triton.get_model_metadata("multi")
    assert multi.platform == "pytorch_torchscript"
    assert [(t.name, t.datatype) for t in multi.inputs] == [("a", "FP32"), ("b", "INT64")]
    with fails("NOT_FOUND", "no version 9"):
        triton.get_model_metadata("adder", "9")
    with fails("NOT_FOUND", "'nope' is not loaded"):
        triton.get_model_metadata("nope")


def test_model_config_and_statistics(triton):
    config = triton.get_model_config("adder", as_json=True)["config"]
    assert config["max_batch_size"] == 32 and config["backend"] == "onnxruntime"
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert config["version_policy"] == {"latest": {"num_versions": 2}}
    x = np.ones((3, 4), np.float32)
    triton.infer("adder", [tensor("x", x, "FP32")], model_version="1")
    (entry,) = triton.get_inference_statistics("adder", "1").model_stats
    assert entry.name == "adder" and entry.version == "1" and entry.inference_count >= 3
    assert entry.inference_stats.success.count >= 1 and entry.batch_stats
    every = triton.get_inference_statistics().model_stats
    assert {(s.name, s.version) for s in every} >= {("adder", "1"), ("adder", "2"), ("mlp", "1")}
    with fails("NOT_FOUND", "nope"):
        triton.get_model_config("nope")


def test_every_datatype_round_trips_raw(triton):
    texts = np.array([[b"a", b""], ["ünï".encode(), b"\x00\x01"], [b"x" * 300, b"z"]], object)
    arrays = {**NUMERIC, "BYTES": texts}
    inputs = [tensor(f"in_{t}", a, t) for t, a in arrays.items()]
    result = triton.infer("alltypes", inputs)
    for datatype, array in arrays.items():
        got = result.as_numpy(f"out_{datatype}")
        assert got.shape == array.shape, datatype
        if datatype == "BYTES":
            assert got.tolist() == array.tolist()
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array, err_msg=datatype)
    answered = {o.name: o.datatype for o in result.get_response().outputs}
    assert answered == {f"out_{t}": t for t in arrays}


def test_bytes_model(triton):
    text = np.array([b"hello", "wörld".encode()], dtype=np.object_)
    result = triton.infer("strings", [tensor("text", text, "BYTES")])
    assert result.as_numpy("shout").tolist() == [b"hello!", "wörld!".encode()]
    assert result.as_numpy("same").tolist() == text.tolist()


def test_two_inputs_and_a_requested_subset_of_outputs(triton):
    a = np.array([[0.5, 1.5, 2.5], [1, 2, 3]], dtype=np.float32)
    b = np.array([[1, -2, 2**40], [0, 0, -(2**50)]], dtype=np.int64)
    inputs = [tensor("a", a, "FP32"), tensor("b", b, "INT64")]
    both = triton.infer("multi", inputs, request_id="req-7")
    np.testing.assert_allclose(both.as_numpy("sum"), a + b.astype(np.float32))
    assert both.as_numpy("twice").tolist() == (b * 2).tolist()
    response = both.get_response()
    assert response.id == "req-7" and response.model_name == "multi"
    assert response.model_version == "1"
    only = triton.infer("multi", inputs, outputs=outputs("twice"))
    assert [o.name for o in only.get_response().outputs] == ["twice"]
    assert only.as_numpy("sum") is None and only.as_numpy("twice").dtype == np.int64
    reordered = triton.infer("multi", inputs, outputs=outputs("twice", "sum"))
    assert [o.name for o in reordered.get_response().outputs] == ["twice", "sum"]


def test_versions_answer_differently(triton):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inputs = [tensor("x", x, "FP32")]
    v1 = triton.infer("adder", inputs, model_version="1")
    v2 = triton.infer("adder", inputs, model_version="2")
    default = triton.infer("adder", inputs)
    np.testing.assert_allclose(v1.as_numpy("y"), x * 2 + 1)
    np.testing.assert_allclose(v2.as_numpy("y"), x * 3 + 1)
    np.testing.assert_allclose(default.as_numpy("y"), x * 3 + 1)
    assert default.get_response().model_version == "2"
    np.testing.assert_allclose(v1.as_numpy("total"), x.sum(axis=1))


def test_a_message_larger_than_grpcs_default_4mib(triton):
    x = np.random.default_rng(0).normal(size=(400_000, 4)).astype(np.float32)  # 6.4 MB
    result = triton.infer("adder", [tensor("x", x, "FP32")], model_version="1")
    np.testing.assert_allclose(result.as_numpy("y"), x * 2 + 1, rtol=1e-6)


def test_client_errors_get_their_status_and_a_message_naming_the_input(triton):
    x = np.ones((2, 4), np.float32)
    with fails("NOT_FOUND", "'nope' is not loaded"):
        triton.infer("nope", [tensor("x", x, "FP32")])
    with fails("NOT_FOUND", "no version 3"):
        triton.infer("adder", [tensor("x", x, "FP32")], model_version="3")
    with fails("INVALID_ARGUMENT", "input 'x'", "expected datatype FP32, received FP64"):
        triton.infer("adder", [tensor("x", x.astype(np.float64), "FP64")])
    with fails("INVALID_ARGUMENT", "input 'x'", "expected shape [-1, 4], received [2, 3]"):
        triton.infer("adder", [tensor("x", np.ones((2, 3), np.float32), "FP32")])
    with fails("INVALID_ARGUMENT", "unknown input 'z'"):
        triton.infer("adder", [tensor("z", x, "FP32")])
    with fails("INVALID_ARGUMENT", "missing input 'b'"):
        triton.infer("multi", [tensor("a", np.ones((1, 3), np.float32), "FP32")])
    with fails("INVALID_ARGUMENT", "unknown output 'nope'"):
        triton.infer("adder", [tensor("x", x, "FP32")], outputs=outputs("nope"))


def test_a_failing_model_is_internal_and_the_server_keeps_serving(triton, assert_alive):
    bad = np.array([[-1.0, -2.0]], np.float32)
    with fails("INTERNAL", "negative sum not allowed"):
        triton.infer("faulty", [tensor("x", bad, "FP32")])
    good = triton.infer("faulty", [tensor("x", np.array([[1.0, 2.0]], np.float32), "FP32")])
    assert good.as_numpy("y").tolist() == [[2.0, 4.0]]
    assert triton.is_server_live() and triton.is_model_ready("faulty")
    assert_alive()


def test_a_client_deadline_ends_the_call_and_the_server_keeps_serving(triton):
    x = np.ones((1, 4), np.float32)  # batchy waits up to 50 ms to fill a batch
    with fails("DEADLINE_EXCEEDED"):
        triton.infer("batchy", [tensor("x", x, "FP32")], client_timeout=0.01)
    result = triton.infer("batchy", [tensor("x", x, "FP32")])
    assert result.as_numpy("y").tolist() == [[3.0] * 4]
