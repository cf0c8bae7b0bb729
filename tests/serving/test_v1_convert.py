"""V1 rows (``instances``) and columns (``inputs``) to arrays, and outputs back."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from torchferry.codecs.jsonio import dumps
from torchferry.errors import InvalidInput
from torchferry.serving.protocols.v1 import (
    columns,
    inputs_from_columns,
    inputs_from_rows,
    predictions,
)
from torchferry.signature import ModelSignature, TensorSpec


def signature(*inputs: tuple[str, str, tuple[int, ...]]) -> ModelSignature:
    return ModelSignature(
        inputs=tuple(TensorSpec(name=n, datatype=d, shape=s) for n, d, s in inputs),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1,)),),
    )


SINGLE = signature(("x", "FP32", (-1, 3)))
MULTI = signature(("a", "FP32", (-1, 2)), ("b", "INT64", (-1,)))
TEXT = signature(("text", "BYTES", (-1,)))


def wire(value: object) -> object:
    return orjson.loads(dumps(value))


def test_rows_of_plain_values_stack_into_the_single_input():
    arrays = inputs_from_rows(SINGLE, [[1, 2, 3], [4, 5, 6]])
    assert list(arrays) == ["x"]
    assert arrays["x"].dtype == np.float32
    assert arrays["x"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_rows_of_named_objects_for_one_or_several_inputs():
    named = inputs_from_rows(SINGLE, [{"x": [1, 2, 3]}])
    assert named["x"].shape == (1, 3)
    arrays = inputs_from_rows(MULTI, [{"a": [1, 2], "b": 7}, {"b": 8, "a": [3, 4]}])
    assert arrays["a"].tolist() == [[1, 2], [3, 4]] and arrays["a"].dtype == np.float32
    assert arrays["b"].tolist() == [7, 8] and arrays["b"].dtype == np.int64


def test_rows_with_b64_binary_values():
    arrays = inputs_from_rows(TEXT, [{"b64": "aGk="}, "plain"])
    # base64 gives bytes; text stays str, encoded only where bytes are needed
    assert arrays["text"].tolist() == [b"hi", "plain"]
    named = inputs_from_rows(TEXT, [{"text": {"b64": "AA=="}}, {"text": "x"}])
    assert named["text"].tolist() == [b"\x00", "x"]


@pytest.mark.parametrize(
    ("sig", "instances", "message"),
    [
        (SINGLE, [], "non-empty list"),
        (SINGLE, {"x": [1, 2, 3]}, "non-empty list"),
        (SINGLE, [[1, 2, 3], [4, 5]], "ragged"),
        (SINGLE, [["a", "b", "c"]], "strings"),
        (SINGLE, [[1, 2, 3], {"x": [1, 2, 3]}], "one form"),
        (MULTI, [[1, 2]], "must name them"),
        (MULTI, [{"a": [1, 2]}], "instance 0 has no input 'b'"),
        (MULTI, [{"a": [1, 2], "b": 1, "c": 3}], "unknown input 'c'"),
        (MULTI, [{"a": [1, 2], "b": 1.5}], "input 'b': expected INT64 data"),
    ],
)
def test_bad_rows_are_refused_with_a_clear_message(sig, instances, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        inputs_from_rows(sig, instances)


def test_columns_single_input_batch_or_unbatched_row():
    assert inputs_from_columns(SINGLE, [[1, 2, 3]])["x"].shape == (1, 3)
    assert inputs_from_columns(SINGLE, [1, 2, 3])["x"].shape == (1, 3)


def test_columns_named_inputs():
    arrays = inputs_from_columns(MULTI, {"a": [[1, 2], [3, 4]], "b": [5, 6]})
    assert arrays["a"].shape == (2, 2) and arrays["b"].tolist() == [5, 6]
    with pytest.raises(InvalidInput, match="several inputs"):
        inputs_from_columns(MULTI, [[1, 2]])
    with pytest.raises(InvalidInput, match="unknown input 'z'"):
        inputs_from_columns(MULTI, {"z": [1]})
    with pytest.raises(InvalidInput, match="empty"):
        inputs_from_columns(MULTI, {})


def test_predictions_one_output_are_the_rows():
    y = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert wire(predictions({"y": y}, ["y"])) == [[0, 1], [2, 3], [4, 5]]
    assert wire(columns({"y": y}, ["y"])) == [[0, 1], [2, 3], [4, 5]]


def test_predictions_several_outputs_are_objects_per_row():
    outputs = {
        "y": np.arange(4, dtype=np.float32).reshape(2, 2),
        "label": np.array([b"cat", b"\xff"], dtype=object),
        "score": np.array([0.5, 0.25], dtype=np.float64),
    }
    names = ["y", "label", "score"]
    assert wire(predictions(outputs, names)) == [
        {"y": [0, 1], "label": "cat", "score": 0.5},
        {"y": [2, 3], "label": {"b64": "/w=="}, "score": 0.25},
    ]
    assert wire(columns(outputs, names)) == {
        "y": [[0, 1], [2, 3]],
        "label": ["cat", {"b64": "/w=="}],
        "score": [0.5, 0.25],
    }
