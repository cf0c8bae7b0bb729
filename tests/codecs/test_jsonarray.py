"""JSON values <-> arrays: every V2 datatype both ways, nested and flat data, and refusals."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from value_samples import SAMPLES

from torchferry.codecs.datatypes import V2_TO_NUMPY, output_datatype
from torchferry.codecs.jsonarray import bytes_to_str, decode_v2_data, element_count, json_to_array
from torchferry.codecs.jsonio import dumps
from torchferry.errors import InvalidInput, ModelError
from torchferry.serving.dataplane import OutputTensor
from torchferry.serving.protocols.v2_binary import json_output


def encode_v2_tensor(name: str, array: np.ndarray) -> dict:
    return json_output(OutputTensor(name, output_datatype(name, array), array))


def _wire(tensor: dict) -> dict:
    """Through real JSON, as a client would read it."""
    return orjson.loads(dumps(tensor))


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_round_trips_flat_and_nested(datatype):
    flat = SAMPLES[datatype]
    nested = [flat[0:3], flat[3:6]]
    a = decode_v2_data(flat, datatype, [2, 3], "input 'x'")
    b = decode_v2_data(nested, datatype, [2, 3], "input 'x'")
    assert a.dtype == V2_TO_NUMPY[datatype] and a.shape == (2, 3)
    np.testing.assert_array_equal(a, b)
    if datatype == "BYTES":  # text stays str: encoded to bytes only where bytes are needed
        assert a.reshape(-1).tolist() == flat
    encoded = _wire(encode_v2_tensor("y", a))
    assert encoded["name"] == "y" and encoded["datatype"] == datatype
    assert encoded["shape"] == [2, 3]
    assert encoded["data"] == flat  # flat, row-major, same values back
    again = decode_v2_data(encoded["data"], datatype, encoded["shape"], "output 'y'")
    np.testing.assert_array_equal(again, a)


def test_nesting_of_any_depth_is_flattened_row_major():
    nested = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    array = decode_v2_data(nested, "INT32", [2, 4], "input 'x'")
    assert array.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_non_contiguous_output_is_encoded_row_major():
    array = np.arange(6, dtype=np.float32).reshape(2, 3).T
    assert _wire(encode_v2_tensor("t", array))["data"] == array.reshape(-1).tolist()


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        ([1, 2, 3], [2, 2], "shape [2, 2] needs 4 elements, received 3"),
        ([1, 2, 3, 4, 5], [2, 2], "needs 4 elements, received 5"),
        ([1], [1000000, 1000000, 1000000], "needs 1000000000000000000 elements, received 1"),
        ([1, 2], [2, -1], "negative dimension"),
        ([1, 2], "2", '"shape" must be a list of integers'),
        ([1, 2], [2.0], '"shape" must be a list of integers'),
        ([1, 2], None, '"shape" must be a list of integers'),
        ([[1, 2], [3]], [3], "ragged"),
        (5, [1], '"data" must be a JSON array'),
        ({"a": 1}, [1], '"data" must be a JSON array'),
    ],
)
def test_shape_and_count_errors_name_the_input(data, shape, message):
    with pytest.raises(InvalidInput) as info:
        decode_v2_data(data, "FP32", shape, "input 'x'")
    assert "input 'x'" in info.value.message
    assert message in info.value.message


@pytest.mark.parametrize(
    ("value", "datatype", "received"),
    [
        ([1, "a"], "FP32", "strings"),
        (["1.5"], "FP32", "strings"),
        ([None, 1], "FP32", "not all numbers"),
        ([{"a": 1}], "INT32", "not all numbers"),
        ([True, False], "FP32", "booleans"),
        ([1, 0], "BOOL", "send true/false"),
        ([1.5], "INT64", "fractional part"),
        ([256], "UINT8", "outside UINT8's range"),
        ([-1], "UINT64", "outside UINT64's range"),
        ([2**64], "UINT64", "not all numbers"),
        ([2**63], "INT64", "outside INT64's range"),
        ([1, 2], "BYTES", "not all valid strings"),
        ([["a"], ["b", "c"]], "BYTES", "not all valid strings"),
        ("abc", "FP32", "a string"),
        (None, "FP32", "null"),
    ],
)
def test_values_that_do_not_fit_the_datatype_are_refused(value, datatype, received):
    with pytest.raises(InvalidInput) as info:
        json_to_array(value, datatype, "input 'x'")
    message = info.value.message
    assert message.startswith(f"input 'x': expected {datatype} data")
    assert received in message


def test_integral_floats_are_accepted_for_integer_types():
    array = json_to_array([1.0, 2.0, 2**53], "INT64", "input 'x'")
    assert array.dtype == np.int64 and array.tolist() == [1, 2, 2**53]


def test_empty_data_with_empty_shape():
    array = decode_v2_data([], "FP32", [0, 3], "input 'x'")
    assert array.shape == (0, 3) and array.dtype == np.float32


def test_element_count_uses_exact_integers():
    assert element_count([2**30, 2**29, 1], "x") == ((2**30, 2**29, 1), 2**59)


@pytest.mark.parametrize("shape", [[2**40, 2**40], [0, 2**62], [0, 2**63 - 1], [2**30, 0, 2**30]])
def test_shapes_numpy_cannot_describe_are_refused_even_when_empty(shape):
    """Found by fuzzing: [0, 2**62] has no elements, so it passed the count check, and
    reshaping to it failed in numpy (a 500)."""
    with pytest.raises(InvalidInput, match=r'"shape" .* is too large'):
        element_count(shape, "input 'x'")
    with pytest.raises(InvalidInput, match="too large"):
        decode_v2_data([], "FP32", shape, "input 'x'")


def test_b64_values_only_where_allowed():
    value = [{"b64": "AAEC"}, "text"]
    array = json_to_array(value, "BYTES", "input 'x'", allow_b64=True)
    assert array.tolist() == [b"\x00\x01\x02", "text"]  # text stays str
    with pytest.raises(InvalidInput, match="not all valid strings"):
        json_to_array(value, "BYTES", "input 'x'")
    with pytest.raises(InvalidInput, match="invalid"):
        json_to_array([{"b64": "not base64!"}], "BYTES", "input 'x'", allow_b64=True)


def test_bytes_outputs_become_strings_or_b64():
    array = np.array([b"ok", b"\xff\xfe"], dtype=object)
    assert bytes_to_str(array).tolist() == ["ok", "\ufffd\ufffd"]
    assert bytes_to_str(array, b64_fallback=True).tolist() == ["ok", {"b64": "//4="}]


def test_output_of_unknown_dtype_is_the_models_fault():
    with pytest.raises(ModelError, match="complex"):
        encode_v2_tensor("z", np.zeros(2, dtype=np.complex64))
