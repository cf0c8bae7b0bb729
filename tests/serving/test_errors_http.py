"""Errors with the statuses docs/architecture.md gives them, model failures isolated, and a little fuzzing: nothing a
client sends may crash the server."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

V2 = "/v2/models/adder/infer"
GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def with_x(**changes: object) -> dict:
    tensor = {**GOOD["inputs"][0], **changes}
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b'{"inputs": [{"name": "x", "shape": [1, 4], "dat', "not valid JSON"),
        (b"\xff\xfe\x00garbage\x01", "not valid JSON"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', "JSON"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'{"inputs": {}}', '"inputs"'),
        (b'{"inputs": []}', '"inputs"'),
        (b'{"inputs": [5]}', "inputs[0] must be a JSON object"),
        (b'{"inputs": [{"shape": [1]}]}', '"name"'),
    ],
)
def test_malformed_bodies_are_400(http, body, message):
    answer = http.post(V2, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert message in answer.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (with_x(name="nope"), "unknown input 'nope'; the model's inputs are ['x']"),
        (with_x(datatype="INT64"), "input 'x': expected datatype FP32, received INT64"),
        (with_x(datatype="FLOAT"), "input 'x': expected datatype FP32, received 'FLOAT'"),
        (with_x(shape=[2, 2]), "input 'x': expected shape [-1, 4], received [2, 2]"),
        (with_x(shape=[4]), "input 'x': expected shape [-1, 4], received [4]"),
        (with_x(shape=[0, 4], data=[]), "input 'x': the batch is empty"),
        (with_x(shape=[1, 3]), "input 'x': shape [1, 3] needs 3 elements, received 4"),
        (with_x(shape=[10**8, 10**8, 4]), "needs 40000000000000000 elements, received 4"),
        (with_x(shape=[10**9, 10**9, 4]), "is too large"),
        (with_x(shape=[-1, 4]), "negative dimension"),
        (with_x(shape="1,4"), '"shape" must be a list of integers'),
        (with_x(data=[1, 2, "3", 4]), "expected FP32 data, received strings"),
        (with_x(data=[1, 2, None, 4]), "expected FP32 data, received values that are not all"),
        (with_x(data=[[1, 2], [3]]), "ragged"),
        (with_x(data=None), '"data" must be a JSON array'),
        (with_x(data=[True, False, True, True]), "received booleans"),
        ({"inputs": [GOOD["inputs"][0], GOOD["inputs"][0]]}, "input 'x' is given twice"),
        (
            with_x(parameters={"binary_data_size": 16}),
            "input 'x' has parameters.binary_data_size but the request has no "
            "Inference-Header-Content-Length header",
        ),
    ],
)
def test_bad_tensors_name_input_expected_and_received(http, body, message):
    answer = http.post(V2, json=body)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]


def test_missing_input_of_a_multi_input_model(http):
    body = {"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    answer = http.post("/v2/models/multi/infer", json=body)
    assert answer.status_code == 400
    assert "missing input 'b'; the model needs ['a', 'b']" in answer.json()["error"]


def test_bytes_after_the_json_header_need_a_binary_input(http):
    answer = http.post(
        V2, content=json.dumps(GOOD).encode() + b"\x00" * 16,
        headers={"Inference-Header-Content-Length": str(len(json.dumps(GOOD)))},
    )  # fmt: skip
    assert answer.status_code == 400
    assert "16 bytes after the JSON header but no input has" in answer.json()["error"]


def test_an_unknown_model_is_404_whatever_the_body(http):
    # the body is read before a routed version is picked (its traffic_key may decide), but
    # whether the model exists is known first
    for path in ("/v2/models/nope/infer", "/v2/models/nope/versions/1/infer"):
        answer = http.post(path, content=b"{not json")
        assert answer.status_code == 404, answer.text
        assert "nope" in answer.json()["error"]


def test_unknown_route_is_404_json(http):
    answer = http.get("/v3/nothing")
    assert answer.status_code == 404 and "error" in answer.json()


def faulty_body(values: list[float]) -> dict:
    return {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": values}]}


def test_a_failing_model_answers_500_and_the_server_keeps_serving(http, assert_alive):
    bad = http.post("/v2/models/faulty/infer", json=faulty_body([-1, -2]))
    assert bad.status_code == 500
    assert bad.json()["error"] == "model 'faulty:1' failed: RuntimeError: negative sum not allowed"
    good = http.post("/v2/models/faulty/infer", json=faulty_body([1, 2]))
    assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [2.0, 4.0]
    v1 = http.post("/v1/models/faulty:predict", json={"instances": [[-5, 1]]})
    assert v1.status_code == 500 and "negative sum not allowed" in v1.json()["error"]
    assert http.post(V2, json=GOOD).status_code == 200
    assert_alive()


def test_a_failing_request_does_not_fail_its_batch_mates(http):
    values = [[-1.0, -1.0] if i % 4 == 0 else [float(i), 1.0] for i in range(16)]

    def send(row: list[float]) -> int:
        return http.post("/v2/models/faulty/infer", json=faulty_body(row)).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(send, values))
    assert codes == [500 if i % 4 == 0 else 200 for i in range(16)]


def _mutations(rng: random.Random) -> list[bytes]:
    base = json.dumps(GOOD).encode()
    bodies: list[bytes] = []
    for _ in range(60):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        bodies.append(bytes(raw))
        bodies.append(base[: rng.randrange(len(base))])
    odd_values = [None, True, -1, 0, 2**70, 1.5, "x", [], {}, [[]], [1, [2]], -(10**30), "FP32"]
    for _ in range(60):
        tensor = dict(GOOD["inputs"][0])
        tensor[rng.choice(["name", "shape", "datatype", "data"])] = rng.choice(odd_values)
        bodies.append(json.dumps({"inputs": [tensor], "outputs": rng.choice(odd_values)}).encode())
    bodies += [rng.randbytes(rng.randrange(1, 200)) for _ in range(20)]
    return bodies


def test_fuzzed_bodies_never_crash_the_server(http, assert_alive):
    rng = random.Random(1234)
    paths = [V2, "/v1/models/adder:predict", "/predict/adder", "/v2/models/strings/infer"]
    for body in _mutations(rng):
        path = rng.choice(paths)
        answer = http.post(path, content=body, headers={"content-type": "application/json"})
        assert answer.status_code in (200, 400), (path, body, answer.status_code, answer.text)
        assert "error" in answer.json() or answer.status_code == 200
    assert_alive()
    assert http.post(V2, json=GOOD).status_code == 200
