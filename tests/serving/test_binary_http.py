"""The binary tensor data extension against the live server: tritonclient's HTTP client with
its defaults (binary inputs and outputs) for every datatype, mixed JSON and binary tensors,
raw binary requests, hand-made bad bodies, the body limit, and zero-copy inputs."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from value_samples import SAMPLES

from torchferry.codecs.datatypes import V2_TO_NUMPY
from torchferry.serving.app import build_app
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings

HEADER = "Inference-Header-Content-Length"
X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def triton(live_server):
    client = httpclient.InferenceServerClient(url=urlparse(live_server.url).netloc)
    yield client
    client.close()


def sample(datatype: str) -> np.ndarray:
    """Six values of a datatype, as a [3, 2] array (BYTES: UTF-8 bytes, since the ONNX Runtime
    engine carries strings as ``str``; raw bytes of any value are checked in test_binary_codec)."""
    if datatype == "BYTES":
        return np.array([v.encode() for v in SAMPLES["BYTES"]], dtype=object).reshape(3, 2)
    return np.array(SAMPLES[datatype], dtype=V2_TO_NUMPY[datatype]).reshape(3, 2)


def tensor_in(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> Any:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def out(name: str, binary: bool = True) -> Any:
    return httpclient.InferRequestedOutput(name, binary_data=binary)


def is_binary(result: Any, name: str) -> bool:
    entry = result.get_output(name)
    return "data" not in entry and "binary_data_size" in entry.get("parameters", {})


def test_server_metadata_lists_the_extension(triton):
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]


def test_every_datatype_binary_both_ways(triton):
    inputs = [tensor_in(f"in_{t}", sample(t), t) for t in SAMPLES]
    outputs = [out(f"out_{t}") for t in SAMPLES]
    result = triton.infer("alltypes", inputs, outputs=outputs)
    for datatype in SAMPLES:
        name, want = f"out_{datatype}", sample(datatype)
        assert is_binary(result, name), result.get_output(name)
        got = result.as_numpy(name)
        assert got.shape == (3, 2) and got.dtype == want.dtype, datatype
        assert got.tolist() == want.tolist(), datatype


def test_mixed_json_and_binary_inputs_and_outputs(triton):
    types = list(SAMPLES)
    arrays = {t: sample(t) for t in types}
    inputs = [tensor_in(f"in_{t}", arrays[t], t, binary=i % 2 == 0) for i, t in enumerate(types)]
    outputs = [out(f"out_{t}", binary=i % 3 == 0) for i, t in enumerate(types)]
    result = triton.infer("alltypes", inputs, outputs=outputs, request_id="mixed")
    assert result.get_response()["id"] == "mixed"
    for index, datatype in enumerate(types):
        name = f"out_{datatype}"
        assert is_binary(result, name) == (index % 3 == 0), name
        got, want = result.as_numpy(name), arrays[datatype]
        if datatype == "BYTES" and not is_binary(result, name):
            want = np.vectorize(bytes.decode, otypes=[object])(want)  # JSON answers text
        assert got.tolist() == want.tolist(), datatype


def test_binary_outputs_for_json_inputs_when_no_outputs_are_named(triton):
    # with no outputs, tritonclient asks for binary_data_output: every output comes binary
    result = triton.infer("adder", [tensor_in("x", X, "FP32", binary=False)])
    assert is_binary(result, "y") and is_binary(result, "total")
    assert result.get_output("y")["parameters"]["binary_data_size"] == 32
    np.testing.assert_allclose(result.as_numpy("y"), X * 3 + 1)
    np.testing.assert_allclose(result.as_numpy("total"), X.sum(axis=1))


def test_two_inputs_and_a_requested_subset(triton):
    a = np.array([[0.5, 1.5, 2.5], [1, 2, 3]], dtype=np.float32)
    b = np.array([[1, -2, 2**40], [0, 7, -(2**50)]], dtype=np.int64)
    inputs = [tensor_in("a", a, "FP32"), tensor_in("b", b, "INT64")]
    result = triton.infer("multi", inputs, outputs=[out("twice")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["twice"]
    assert result.as_numpy("sum") is None
    assert result.as_numpy("twice").tolist() == (b * 2).tolist()
    both = triton.infer("multi", inputs, outputs=[out("sum"), out("twice", binary=False)])
    np.testing.assert_allclose(both.as_numpy("sum"), a + b.astype(np.float32))
    assert not is_binary(both, "twice") and both.as_numpy("twice").tolist() == (b * 2).tolist()


def test_versions(triton):
    inputs = [tensor_in("x", X, "FP32")]
    for version, scale in (("1", 2), ("2", 3)):
        result = triton.infer("adder", inputs, outputs=[out("y")], model_version=version)
        assert result.get_response()["model_version"] == version
        np.testing.assert_allclose(result.as_numpy("y"), X * scale + 1)


def test_bytes_model_binary(triton):
    text = np.array([b"hello", "wörld".encode(), b"nul\x00"], dtype=object)
    result = triton.infer("strings", [tensor_in("text", text, "BYTES")], outputs=[out("shout")])
    assert result.as_numpy("shout").tolist() == [b"hello!", "wörld!".encode(), b"nul\x00!"]


def split(answer: httpx.Response) -> tuple[dict[str, Any], bytes]:
    length = int(answer.headers[HEADER])
    return orjson.loads(answer.content[:length]), answer.content[length:]


def test_explicit_json_output_wins_over_binary_data_output(http):
    body = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.tolist()}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}, {"name": "total"}],
    }
    answer = http.post("/v2/models/adder/versions/1/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    header, rest = split(answer)
    y, total = header["outputs"]
    assert y["data"] == (X * 2 + 1).reshape(-1).tolist() and "parameters" not in y
    assert total["parameters"] == {"binary_data_size": 8} and "data" not in total
    assert np.frombuffer(rest, "<f4").tolist() == X.sum(axis=1).tolist()


def test_json_only_requests_get_plain_json(http):
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    answer = http.post("/v2/models/adder/infer", json=body)
    assert answer.headers["content-type"] == "application/json" and HEADER not in answer.headers


def test_raw_binary_request_is_one_row_with_binary_outputs(http):
    answer = http.post("/v2/models/adder/infer", content=X[0].tobytes(), headers={HEADER: "0"})
    assert answer.status_code == 200, answer.text
    header, rest = split(answer)
    assert [(o["name"], o["shape"]) for o in header["outputs"]] == [("y", [1, 4]), ("total", [1])]
    assert np.frombuffer(rest, "<f4").tolist() == [*(X[0] * 3 + 1), X[0].sum()]
    text = http.post("/v2/models/strings/infer", content=b"hey\x00", headers={HEADER: "0"})
    header, rest = split(text)
    shout = header["outputs"][0]
    assert shout["shape"] == [1] and rest[: shout["parameters"]["binary_data_size"]] == (
        b"\x05\x00\x00\x00hey\x00!"
    )


def binary_request(size: Any, data: bytes, declared: str | None = None, **changes: Any) -> tuple:
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32"}
    tensor.update(parameters={"binary_data_size": size}, **changes)
    head = orjson.dumps({"inputs": [tensor]})
    return head + data, {HEADER: declared if declared is not None else str(len(head))}


FOUR = np.ones(4, np.float32).tobytes()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (binary_request(16, FOUR, declared="100000"), f"{HEADER} is 100000 but the request body"),
        (binary_request(16, FOUR, declared="-5"), f"{HEADER} must be a non-negative integer"),
        (binary_request(16, FOUR, declared="lots"), f"{HEADER} must be a non-negative integer"),
        (binary_request(16, FOUR, declared="20"), "the first 20 bytes of the body"),
        (
            binary_request(12, FOUR[:12]),
            "input 'x': shape [1, 4] of FP32 needs 16 bytes, received 12",
        ),
        (
            binary_request(16, FOUR + b"\x00" * 4),
            "4 bytes left over after the binary data of input 'x'",
        ),
        (binary_request(16, FOUR[:8]), "input 'x': binary_data_size is 16 bytes but only 8"),
        (binary_request(-16, FOUR), "input 'x': binary_data_size must be a non-negative integer"),
        (binary_request(8, FOUR[:8], datatype="BF16"), "input 'x': BF16 is not supported"),
        (binary_request(16, FOUR, datatype="INT32"), "expected datatype FP32, received INT32"),
        (binary_request(16, FOUR, shape=[4]), "expected shape [-1, 4], received [4]"),
    ],
)
def test_bad_binary_bodies_are_400_and_the_server_lives(http, assert_alive, request_, message):
    content, headers = request_
    answer = http.post("/v2/models/adder/infer", content=content, headers=headers)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert_alive()


def test_binary_size_without_the_header_and_raw_requests_to_multi_input_models(http):
    content, _ = binary_request(16, b"")
    answer = http.post("/v2/models/adder/infer", content=content)
    assert answer.status_code == 400 and f"has no {HEADER} header" in answer.json()["error"]
    answer = http.post("/v2/models/multi/infer", content=FOUR * 3, headers={HEADER: "0"})
    assert answer.status_code == 400 and "needs a model with one input" in answer.json()["error"]


def test_body_limit_and_zero_copy_in_process(model_store):
    """A binary body over the limit is 413; a numeric binary input reaches the runtime as a
    read-only view of the request body's bytes, not a copy."""
    settings = ServerSettings(store=model_store.root, threads=1, max_body_bytes=1024)
    repository = ModelRepository(settings)
    repository.load_store(model_store, ["adder"])
    model = repository.get("adder", 1)
    seen: list[np.ndarray] = []
    run = model.batcher._infers[0]

    def recording(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(inputs["x"])
        return run(inputs)

    model.batcher._infers[0] = recording
    app = build_app(settings, repository)

    async def scenario() -> None:
        await repository.start()
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                path = "/v2/models/adder/versions/1/infer"
                content, headers = binary_request(16, FOUR)
                small = await client.post(path, content=content, headers=headers)
                assert small.status_code == 200, small.text
                big_x = np.zeros((100, 4), np.float32).tobytes()
                content, headers = binary_request(1600, big_x, shape=[100, 4])
                big = await client.post(path, content=content, headers=headers)
                assert big.status_code == 413 and "exceeds the limit" in big.json()["error"]
        finally:
            await repository.close()

    asyncio.run(scenario())
    (x,) = seen
    assert x.tolist() == [[1.0] * 4] and not x.flags.writeable and not x.flags.owndata
    root: object = x
    while isinstance(root, np.ndarray):
        root = root.base
    assert isinstance(root, memoryview) and isinstance(root.obj, bytes)  # the body itself
