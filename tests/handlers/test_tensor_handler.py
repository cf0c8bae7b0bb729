from __future__ import annotations

import re

import numpy as np
import pytest

from torchferry.errors import ArchiveError, InvalidInput
from torchferry.handlers import HANDLERS, TensorHandler, load_handler
from torchferry.handlers.base import HandlerInput

X = ("x", "FP32", (-1, 3))


def test_registry_and_load_handler(make_archive):
    assert set(HANDLERS) >= {"tensor", "image"}
    assert isinstance(load_handler(make_archive([X])), TensorHandler)
    with pytest.raises(ArchiveError, match=r"handler 'nope'.*known handlers"):
        load_handler(make_archive([X], handler="nope"))


def test_converts_to_the_signature_dtype(make_archive):
    handler = TensorHandler(make_archive([X]))
    out = handler.preprocess(HandlerInput(data=[[1, 2, 3], [4.5, 5, 6]]))
    assert list(out) == ["x"]
    assert out["x"].dtype == np.float32
    np.testing.assert_array_equal(out["x"], [[1, 2, 3], [4.5, 5, 6]])


def test_adds_a_missing_batch_dimension(make_archive):
    handler = TensorHandler(make_archive([X]))
    assert handler.preprocess(HandlerInput(data=[1, 2, 3]))["x"].shape == (1, 3)


def test_integer_input(make_archive):
    handler = TensorHandler(make_archive([("ids", "INT64", (-1, 2))]))
    out = handler.preprocess(HandlerInput(data=[[1, 2.0]]))["ids"]
    assert out.dtype == np.int64 and out.tolist() == [[1, 2]]
    with pytest.raises(InvalidInput, match="fractional"):
        handler.preprocess(HandlerInput(data=[[1, 2.5]]))


def test_integer_range_is_checked(make_archive):
    handler = TensorHandler(make_archive([("b", "UINT8", (-1, 2))]))
    with pytest.raises(InvalidInput, match="range"):
        handler.preprocess(HandlerInput(data=[[1, 256]]))


@pytest.mark.parametrize(
    ("data", "received"),
    [
        ([["a", "b", "c"]], "strings"),
        ([[True, False, True]], "booleans"),
        ([[1, 2, 3], [4, 5]], "ragged"),
        ([[1, None, 3]], "not all numbers"),
        ({"x": {"a": 1}}, "JSON object"),
        ([[1, 2]], r"\[1, 2\]"),
        ([[[1, 2, 3]]], r"\[1, 1, 3\]"),
    ],
)
def test_errors_name_input_expected_and_received(make_archive, data, received):
    handler = TensorHandler(make_archive([X]))
    with pytest.raises(InvalidInput, match="input 'x'") as info:
        handler.preprocess(HandlerInput(data=data))
    assert "[-1, 3]" in info.value.message
    assert "FP32" in info.value.message or "shape" in info.value.message
    assert info.value.status_code == 400
    assert re.search(received, info.value.message)


def test_bool_input_needs_booleans(make_archive):
    handler = TensorHandler(make_archive([("mask", "BOOL", (-1, 2))]))
    assert handler.preprocess(HandlerInput(data=[[True, False]]))["mask"].dtype == np.bool_
    with pytest.raises(InvalidInput, match="true/false"):
        handler.preprocess(HandlerInput(data=[[1, 0]]))


def test_bytes_input(make_archive):
    handler = TensorHandler(make_archive([("text", "BYTES", (-1,))]))
    out = handler.preprocess(HandlerInput(data=["héllo", "x"]))["text"]
    assert out.dtype == object and out.tolist() == ["héllo".encode(), b"x"]
    with pytest.raises(InvalidInput, match="send strings"):
        handler.preprocess(HandlerInput(data=[1, 2]))


def test_blobs_and_missing_data_are_refused(make_archive):
    handler = TensorHandler(make_archive([X]))
    with pytest.raises(InvalidInput, match='JSON tensors in "data"'):
        handler.preprocess(HandlerInput(blobs=[b"\x89PNG"]))
    with pytest.raises(InvalidInput, match='no "data"'):
        handler.preprocess(HandlerInput())


def test_multi_input_dict(make_archive):
    handler = TensorHandler(make_archive([X, ("ids", "INT32", (-1,))]))
    out = handler.preprocess(HandlerInput(data={"ids": [7, 8], "x": [[1, 2, 3], [4, 5, 6]]}))
    assert list(out) == ["x", "ids"]  # signature order
    assert out["ids"].dtype == np.int32 and out["ids"].shape == (2,)
    with pytest.raises(InvalidInput, match="several inputs"):
        handler.preprocess(HandlerInput(data=[[1, 2, 3]]))
    with pytest.raises(InvalidInput, match="missing input 'ids'"):
        handler.preprocess(HandlerInput(data={"x": [[1, 2, 3]]}))
    with pytest.raises(InvalidInput, match="unknown input 'z'"):
        handler.preprocess(HandlerInput(data={"z": [1]}))
    with pytest.raises(InvalidInput, match="batch size"):
        handler.preprocess(HandlerInput(data={"ids": [7], "x": [[1, 2, 3], [4, 5, 6]]}))


def test_single_input_accepts_a_named_dict(make_archive):
    handler = TensorHandler(make_archive([X]))
    assert handler.preprocess(HandlerInput(data={"x": [1, 2, 3]}))["x"].shape == (1, 3)


def test_postprocess_rows(make_archive):
    handler = TensorHandler(make_archive([X]))
    y = np.arange(20, dtype=np.float32).reshape(2, 10)
    assert handler.postprocess({"y": y}) == [list(range(10)), list(range(10, 20))]


def test_postprocess_several_outputs(make_archive):
    outputs = [("a", "FP32", (-1, 2)), ("b", "INT64", (-1,))]
    handler = TensorHandler(make_archive([X], outputs=outputs))
    rows = handler.postprocess({"b": np.array([5, 6]), "a": np.ones((2, 2), np.float32)})
    assert rows == [{"a": [1.0, 1.0], "b": 5}, {"a": [1.0, 1.0], "b": 6}]
    assert list(rows[0]) == ["a", "b"]


LIST_LABELS = [f"digit {i}" for i in range(10)]
TORCHSERVE_LABELS = {str(i): [f"n{i:08d}", f"digit {i}"] for i in range(10)}


@pytest.mark.parametrize("labels", [LIST_LABELS, TORCHSERVE_LABELS])
def test_top_k_with_labels(make_archive, labels):
    archive = make_archive(
        [X], config={"top_k": 3, "labels": "labels.json"}, files={"labels.json": labels}
    )
    handler = TensorHandler(archive)
    probs = np.full((2, 10), 0.01, dtype=np.float32)
    probs[0, [7, 2, 5]] = [0.6, 0.2, 0.1]
    probs[1, [0, 9, 4]] = [0.5, 0.3, 0.11]
    rows = handler.postprocess({"y": probs})
    assert [[c["class"] for c in row] for row in rows] == [[7, 2, 5], [0, 9, 4]]
    assert rows[0][0] == {"class": 7, "label": "digit 7", "score": pytest.approx(0.6)}
    assert rows[1][2]["label"] == "digit 4"


def test_top_k_softmax_without_labels(make_archive):
    handler = TensorHandler(make_archive([X], config={"top_k": 2, "softmax": True}))
    logits = np.zeros((1, 10), dtype=np.float32)
    logits[0, 3] = np.log(9.0 * 2)  # e^x = 18 against nine 1s
    (row,) = handler.postprocess({"y": logits})
    assert row[0] == {"class": 3, "label": None, "score": pytest.approx(18 / 27)}
    assert row[1]["score"] == pytest.approx(1 / 27)


def test_bad_handler_config_fails_at_load(make_archive):
    with pytest.raises(ArchiveError, match="not in the archive"):
        TensorHandler(make_archive([X], config={"top_k": 3, "labels": "missing.json"}))
    with pytest.raises(ArchiveError, match="top_k"):
        TensorHandler(make_archive([X], config={"top_k": 0}))
    with pytest.raises(ArchiveError, match="not valid JSON"):
        TensorHandler(
            make_archive([X], config={"top_k": 1, "labels": "l.json"}, files={"l.json": b"{"})
        )
