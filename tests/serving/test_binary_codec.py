"""The binary tensor extension's pieces, without a server: the header/body split, the reader
that hands binary bytes to inputs, raw binary requests, output assembly, and zero-copy."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from value_samples import SAMPLES

from torchferry.codecs.datatypes import V2_TO_NUMPY, output_datatype
from torchferry.codecs.raw import decode_raw, encode_raw
from torchferry.errors import InvalidInput
from torchferry.serving.dataplane import InferResponse, OutputTensor, wanted_outputs
from torchferry.serving.protocols.v2 import decode_request
from torchferry.serving.protocols.v2_binary import (
    HEADER,
    BinaryReader,
    header_length,
    raw_request_inputs,
    render_response,
    split_body,
)
from torchferry.signature import ModelSignature, TensorSpec


def signature(inputs: list[tuple[str, str, tuple[int, ...]]]) -> ModelSignature:
    outputs = (TensorSpec(name="out", datatype="FP32", shape=(-1,)),)
    specs = tuple(TensorSpec(name=n, datatype=d, shape=s) for n, d, s in inputs)
    return ModelSignature(inputs=specs, outputs=outputs)


def sample(datatype: str) -> np.ndarray:
    values = SAMPLES[datatype]
    if datatype == "BYTES":
        return np.array([v.encode() for v in values], dtype=object).reshape(2, 3)
    return np.array(values, dtype=V2_TO_NUMPY[datatype]).reshape(2, 3)


def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, int]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), len(head)


def base_buffer(array: np.ndarray) -> object:
    """What an array's memory ultimately belongs to (through views and memoryviews)."""
    root: object = array
    while isinstance(root, np.ndarray) and root.base is not None:
        root = root.base
    return root.obj if isinstance(root, memoryview) else root


# -- the Inference-Header-Content-Length header and the split --------------------------------


def test_header_length_values():
    assert header_length(None, 10) is None
    assert header_length("0", 10) == 0
    assert header_length(" 7 ", 10) == 7
    assert header_length("10", 10) == 10


@pytest.mark.parametrize("value", ["-1", "abc", "1e3", "", "3.0", "\u0663", "9" * 40])
def test_header_length_garbage_is_400(value):
    with pytest.raises(InvalidInput, match=f"{HEADER} must be a non-negative integer"):
        header_length(value, 10**6)


def test_header_length_past_the_body_is_400():
    with pytest.raises(InvalidInput, match=f"{HEADER} is 11 but the request body has only 10"):
        header_length("11", 10)


def test_split_body_parses_only_the_header_and_keeps_a_view_of_the_rest():
    body, n = binary_body({"inputs": []}, b"\x01\x02\x03")
    header, rest = split_body(body, n)
    assert header == {"inputs": []}
    assert isinstance(rest, memoryview) and bytes(rest) == b"\x01\x02\x03" and rest.obj is body
    with pytest.raises(InvalidInput, match=r"the first 5 bytes of the body.*not valid JSON"):
        split_body(body, 5)


# -- the reader --------------------------------------------------------------------------------


def tensor(datatype: str, shape: list[int], size: Any) -> dict[str, Any]:
    return {
        "name": "x",
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_decodes_from_its_raw_bytes(datatype):
    array = sample(datatype)
    raw = bytes(encode_raw(array))
    body = b"{}" + raw
    reader = BinaryReader(memoryview(body)[2:])
    got = reader.take(tensor(datatype, [2, 3], len(raw)), datatype, "input 'x'")
    reader.finish()
    assert got.dtype == array.dtype and got.shape == (2, 3)
    np.testing.assert_array_equal(got, array)
    if datatype != "BYTES":  # numeric and BOOL: a view of the request body, not a copy
        assert base_buffer(got) is body and not got.flags.writeable


def test_reader_hands_out_bytes_in_order_and_checks_every_size():
    a, b = np.arange(4, dtype=np.int32), np.array([1.5, -2.0], dtype=np.float64)
    rest = memoryview(a.tobytes() + b.tobytes() + b"zz")
    reader = BinaryReader(rest)
    np.testing.assert_array_equal(reader.take(tensor("INT32", [4], 16), "INT32", "input 'a'"), a)
    np.testing.assert_array_equal(reader.take(tensor("FP64", [2], 16), "FP64", "input 'b'"), b)
    with pytest.raises(InvalidInput, match="2 bytes left over after the binary data of input 'b'"):
        reader.finish()


@pytest.mark.parametrize(
    ("item", "rest", "message"),
    [
        (
            tensor("FP32", [1, 4], 12),
            12,
            r"input 'x': shape \[1, 4\] of FP32 needs 16 bytes, received 12",
        ),
        (tensor("FP32", [1, 4], 16), 12, "binary_data_size is 16 bytes but only 12 bytes"),
        (tensor("FP32", [1, 4], -16), 16, "binary_data_size must be a non-negative integer"),
        (tensor("FP32", [1, 4], "16"), 16, "binary_data_size must be a non-negative integer"),
        (tensor("FP32", [1, 4], True), 16, "binary_data_size must be a non-negative integer"),
        ({**tensor("FP32", [1, 4], 16), "data": [1, 2, 3, 4]}, 16, 'both "data" and'),
        (tensor("FP32", [-1, 4], 16), 16, "negative dimension"),
        (tensor("BYTES", [10**9, 10**9], 8), 8, "needs at least 4000000000000000000 bytes"),
        (tensor("BYTES", [2], 8), 8, "BYTES element 0 claims"),
        (tensor("BOOL", [2], 2), 2, "BOOL bytes must be 0 or 1"),
    ],
)
def test_reader_refusals_name_the_input(item, rest, message):
    reader = BinaryReader(memoryview(b"\x07" * rest))
    with pytest.raises(InvalidInput, match=message) as caught:
        reader.take(item, item["datatype"], "input 'x'")
    assert "input 'x'" in str(caught.value)


def test_binary_size_without_the_header_and_bytes_without_binary_inputs():
    with pytest.raises(InvalidInput, match=f"has no {HEADER} header"):
        BinaryReader(None).take(tensor("FP32", [1], 4), "FP32", "input 'x'")
    with pytest.raises(InvalidInput, match="3 bytes after the JSON header but no input has"):
        BinaryReader(memoryview(b"abc")).finish()
    BinaryReader(None).finish()
    BinaryReader(memoryview(b"")).finish()


def test_decode_raw_returns_a_view_of_the_buffer():
    body = bytearray(np.arange(6, dtype=np.float32).tobytes())
    array = decode_raw(memoryview(body), "FP32", (2, 3), "input 'x'")
    assert base_buffer(array) is body
    body[0:4] = struct.pack("<f", 42.0)  # the array sees the buffer: no copy was made
    assert array[0, 0] == 42.0


def test_encode_raw_of_empty_zero_d_and_strided_arrays():
    assert bytes(encode_raw(np.empty((0, 2), np.float32))) == b""
    assert bytes(encode_raw(np.array(3, np.int16))) == b"\x03\x00"
    strided = np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2]
    assert np.frombuffer(encode_raw(strided), np.float32).tolist() == [0, 2, 3, 5]
    assert bytes(encode_raw(np.array([2], dtype=">u2"))) == b"\x02\x00"


# -- a whole request: JSON and binary inputs, output flags -------------------------------------


MODEL = SimpleNamespace(
    name="m",
    signature=ModelSignature(
        inputs=(
            TensorSpec(name="a", datatype="FP32", shape=(-1, 3)),
            TensorSpec(name="b", datatype="INT64", shape=(-1, 3)),
        ),
        outputs=(
            TensorSpec(name="sum", datatype="FP32", shape=(-1, 3)),
            TensorSpec(name="twice", datatype="INT64", shape=(-1, 3)),
        ),
    ),
)


def test_mixed_json_and_binary_inputs_and_output_flags():
    b = np.array([[1, -2, 2**40]], dtype=np.int64)
    header = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [0.5, 1.5, 2.5]},
            {
                "name": "b",
                "datatype": "INT64",
                "shape": [1, 3],
                "parameters": {"binary_data_size": 24},
            },
        ],
        "outputs": [{"name": "twice"}, {"name": "sum", "parameters": {"binary_data": False}}],
    }
    body, n = binary_body(header, b.tobytes())
    parsed, rest = split_body(body, n)
    request = decode_request(MODEL, None, parsed, rest)
    arrays = request.inputs
    assert arrays["a"].tolist() == [[0.5, 1.5, 2.5]] and arrays["b"].tolist() == b.tolist()
    assert base_buffer(arrays["b"]) is body
    assert wanted_outputs(MODEL.signature, request) == [("twice", True), ("sum", False)]
    del header["parameters"]
    request = decode_request(MODEL, None, header, memoryview(b.tobytes()))
    assert wanted_outputs(MODEL.signature, request) == [("twice", False), ("sum", False)]
    header.pop("outputs")
    header["parameters"] = {"binary_data_output": True}
    request = decode_request(MODEL, None, header, memoryview(b.tobytes()))
    assert wanted_outputs(MODEL.signature, request) == [("sum", True), ("twice", True)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"parameters": {"binary_data_output": "yes"}}, "binary_data_output must be true or false"),
        ({"parameters": [1]}, '"parameters" must be a JSON object'),
        ({"outputs": [{"name": "sum", "parameters": {"binary_data": 1}}]}, "output 'sum': para"),
    ],
)
def test_bad_output_flags_are_400(change, message):
    header = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    with pytest.raises(InvalidInput, match=message):
        decode_request(MODEL, None, {**header, **change}, None)


def test_bf16_is_refused_clearly():
    header = {
        "inputs": [
            {
                "name": "a",
                "datatype": "BF16",
                "shape": [1, 3],
                "parameters": {"binary_data_size": 6},
            }
        ]
    }
    with pytest.raises(InvalidInput, match="input 'a': BF16 is not supported"):
        decode_request(MODEL, None, header, memoryview(bytes(6)))


# -- raw binary requests (Inference-Header-Content-Length: 0) ----------------------------------


def test_raw_request_shapes_from_the_signature():
    row = np.arange(4, dtype=np.float32)
    (x,) = raw_request_inputs("m", signature([("x", "FP32", (-1, 4))]), row.tobytes()).values()
    assert x.shape == (1, 4) and x.tolist() == [row.tolist()]
    body = np.arange(6, dtype=np.int16).tobytes()
    (y,) = raw_request_inputs("m", signature([("y", "INT16", (-1, -1, 3))]), body).values()
    assert y.shape == (1, 2, 3) and base_buffer(y) is body
    (t,) = raw_request_inputs("m", signature([("t", "BYTES", (-1,))]), b"\xffhi").values()
    assert t.shape == (1,) and t[0] == b"\xffhi"


@pytest.mark.parametrize(
    ("inputs", "body", "message"),
    [
        ([("a", "FP32", (-1,)), ("b", "FP32", (-1,))], b"1234", "needs a model with one input"),
        ([("x", "FP32", (-1, -1, -1))], b"1234", "at most one dynamic dimension besides the batch"),
        ([("x", "FP32", (-1, -1, 3))], b"12345678", "does not fill whole steps of 12 bytes"),
        ([("x", "FP32", (-1, 4))], b"12345678", r"needs 16 bytes, received 8"),
        ([("x", "BYTES", (-1, 3))], b"abc", "needs an input of one element"),
        ([("x", "FP32", (-1, 4))], b"", "empty body"),
    ],
)
def test_raw_request_refusals(inputs, body, message):
    with pytest.raises(InvalidInput, match=message):
        raw_request_inputs("m", signature(inputs), body)


# -- output assembly ---------------------------------------------------------------------------


def _response(results: dict[str, np.ndarray], outputs: list[tuple[str, bool]]) -> InferResponse:
    tensors = [
        OutputTensor(name, output_datatype(name, results[name]), results[name], binary)
        for name, binary in outputs
    ]
    return InferResponse("m", "1", "1", tensors)


def test_all_json_outputs_make_a_plain_json_response():
    response = render_response(_response({"y": np.ones(2, np.float32)}, [("y", False)]))
    assert response.headers["content-type"] == "application/json"
    assert HEADER.lower() not in response.headers
    assert orjson.loads(response.body)["outputs"][0]["data"] == [1.0, 1.0]


def test_binary_outputs_follow_the_json_header_in_output_order():
    results = {datatype: sample(datatype) for datatype in SAMPLES}
    results["empty"] = np.empty((0, 3), np.float32)
    outputs = [(name, index % 3 != 1) for index, name in enumerate(results)]
    response = render_response(_response(results, outputs))
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers[HEADER])
    assert int(response.headers["content-length"]) == len(response.body)
    header = orjson.loads(response.body[:length])
    for entry, (name, binary) in zip(header["outputs"], outputs, strict=True):
        assert entry["name"] == name and ("data" in entry) != binary
        if binary:
            assert entry["parameters"]["binary_data_size"] == len(bytes(encode_raw(results[name])))
    binary_total = sum(
        e["parameters"]["binary_data_size"] for e in header["outputs"] if "parameters" in e
    )
    assert len(response.body) == length + binary_total
    # tritonclient reads it back exactly
    result = httpclient.InferResult.from_response_body(bytes(response.body), header_length=length)
    for name, array in results.items():
        got, binary = result.as_numpy(name), dict(outputs)[name]
        if array.dtype == object:  # binary BYTES come back as bytes, JSON ones as str
            want = [v if binary else v.decode() for v in array.reshape(-1)]
            assert got.reshape(-1).tolist() == want
        else:
            assert got.dtype == array.dtype
            np.testing.assert_array_equal(got, array)
