from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from torchferry.errors import ArchiveError, InvalidInput, UnsupportedMediaType
from torchferry.handlers import HANDLERS, TensorHandler, load_handler
from torchferry.handlers.base import Handler, HandlerRequest
from torchferry.handlers.payload import PayloadState

X = ("x", "FP32", (-1, 3))
JSON = "application/json"


def load(archive) -> Handler:
    return load_handler(archive, trust_code=False)


def body(value: Any, route: str = "predict", content_type: str = JSON) -> HandlerRequest:
    return HandlerRequest(body=json.dumps(value).encode(), content_type=content_type, route=route)


def data(value: Any, route: str = "predict") -> HandlerRequest:
    return body({"data": value}, route)


def prepare(handler: Handler, request: HandlerRequest) -> dict[str, np.ndarray]:
    """preprocess, then the data plane's one validation of what it returns."""
    inputs, _ = handler.preprocess(request)
    return handler.ctx.signature.validate_inputs(inputs)


def test_registry_and_load_handler(make_archive):
    assert set(HANDLERS) >= {"tensor", "image"}
    assert isinstance(load(make_archive([X])), TensorHandler)
    with pytest.raises(ArchiveError, match=r"handler 'nope'.*known handlers.*'image'"):
        load(make_archive([X], handler="nope"))


def test_converts_to_the_signature_dtype(make_archive):
    handler = load(make_archive([X]))
    out = prepare(handler, data([[1, 2, 3], [4.5, 5, 6]]))
    assert list(out) == ["x"]
    assert out["x"].dtype == np.float32
    np.testing.assert_array_equal(out["x"], [[1, 2, 3], [4.5, 5, 6]])


def test_adds_a_missing_batch_dimension(make_archive):
    handler = load(make_archive([X]))
    assert prepare(handler, data([1, 2, 3]))["x"].shape == (1, 3)


def test_integer_input(make_archive):
    handler = load(make_archive([("ids", "INT64", (-1, 2))]))
    out = prepare(handler, data([[1, 2.0]]))["ids"]
    assert out.dtype == np.int64 and out.tolist() == [[1, 2]]
    with pytest.raises(InvalidInput, match="fractional"):
        prepare(handler, data([[1, 2.5]]))


def test_integer_range_is_checked(make_archive):
    handler = load(make_archive([("b", "UINT8", (-1, 2))]))
    with pytest.raises(InvalidInput, match="range"):
        prepare(handler, data([[1, 256]]))


@pytest.mark.parametrize(
    ("value", "received"),
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
def test_errors_name_input_expected_and_received(make_archive, value, received):
    handler = load(make_archive([X]))
    with pytest.raises(InvalidInput, match="input 'x'") as info:
        prepare(handler, data(value))
    assert "[-1, 3]" in info.value.message
    assert "FP32" in info.value.message or "shape" in info.value.message
    assert info.value.status_code == 400
    assert re.search(received, info.value.message)


def test_bool_input_needs_booleans(make_archive):
    handler = load(make_archive([("mask", "BOOL", (-1, 2))]))
    assert prepare(handler, data([[True, False]]))["mask"].dtype == np.bool_
    with pytest.raises(InvalidInput, match="true/false"):
        prepare(handler, data([[1, 0]]))


def test_bytes_input(make_archive):
    handler = load(make_archive([("text", "BYTES", (-1,))]))
    out = prepare(handler, data(["héllo", "x"]))["text"]
    assert out.dtype == object
    assert [v.encode() if isinstance(v, str) else v for v in out.tolist()] == [
        "héllo".encode(),
        b"x",
    ]
    with pytest.raises(InvalidInput, match="send strings"):
        prepare(handler, data([1, 2]))


def test_uploads_and_missing_data_are_refused(make_archive):
    handler = load(make_archive([X]))
    png = b"\x89PNG\r\n"
    for request in (
        HandlerRequest(files={"file": [png]}, content_type="multipart/form-data; boundary=b"),
        HandlerRequest(body=png, content_type="image/png"),
        HandlerRequest(body=png, content_type="image/png", route="torchserve"),
        HandlerRequest(files={"data": [png]}, route="torchserve"),
    ):
        with pytest.raises(InvalidInput, match="takes JSON tensors"):
            handler.preprocess(request)
    with pytest.raises(InvalidInput, match='no "data"'):
        handler.preprocess(data(None))
    for route in ("predict", "torchserve"):
        with pytest.raises(InvalidInput, match='"data"'):
            handler.preprocess(body({"inputs": [[1, 2, 3]]}, route))
    with pytest.raises(InvalidInput, match=r'\{"data": ...\}'):
        handler.preprocess(body([[1, 2, 3]]))  # /predict wants the object
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        handler.preprocess(HandlerRequest(body=b"1,2,3", content_type="text/plain"))


def test_multi_input_dict(make_archive):
    handler = load(make_archive([X, ("ids", "INT32", (-1,))]))
    out = prepare(handler, data({"ids": [7, 8], "x": [[1, 2, 3], [4, 5, 6]]}))
    assert list(out) == ["x", "ids"]  # signature order
    assert out["ids"].dtype == np.int32 and out["ids"].shape == (2,)
    with pytest.raises(InvalidInput, match="several inputs"):
        prepare(handler, data([[1, 2, 3]]))
    with pytest.raises(InvalidInput, match="missing input 'ids'"):
        prepare(handler, data({"x": [[1, 2, 3]]}))
    with pytest.raises(InvalidInput, match="unknown input 'z'"):
        prepare(handler, data({"z": [1]}))
    with pytest.raises(InvalidInput, match="batch size"):
        prepare(handler, data({"ids": [7], "x": [[1, 2, 3], [4, 5, 6]]}))


def test_single_input_accepts_a_named_dict(make_archive):
    handler = load(make_archive([X]))
    assert prepare(handler, data({"x": [1, 2, 3]}))["x"].shape == (1, 3)


@pytest.mark.parametrize(
    "request_",
    [
        body([1, 2, 3], "torchserve"),  # a bare list
        body({"x": [1, 2, 3]}, "torchserve"),  # an object of inputs
        body({"data": [[1, 2, 3]]}, "torchserve"),
        body([[1, 2, 3]], "torchserve", content_type=""),  # curl -T rows.json
        body([[1, 2, 3]], "torchserve", "application/x-www-form-urlencoded"),  # curl -d
        HandlerRequest(files={"data": [b"[[1, 2, 3]]"]}, route="torchserve"),  # a JSON file
        HandlerRequest(form={"body": ['{"data": [1, 2, 3]}']}, route="torchserve"),  # a text part
        HandlerRequest(form={"data": ["[1, 2, 3]"]}),  # /predict's multipart text field
        HandlerRequest(body=b'{"data": [1, 2, 3]}'),  # /predict without a content type
    ],
)
def test_json_shapes_each_route_accepts(make_archive, request_):
    handler = load(make_archive([X]))
    np.testing.assert_array_equal(prepare(handler, request_)["x"], [[1, 2, 3]])


def test_torchserve_json_errors(make_archive):
    handler = load(make_archive([X]))
    with pytest.raises(InvalidInput, match="not valid JSON"):
        handler.preprocess(HandlerRequest(body=b"{oops", route="torchserve"))
    two = HandlerRequest(files={"data": [b"[1, 2, 3]", b"[1, 2, 3]"]}, route="torchserve")
    with pytest.raises(InvalidInput, match="one JSON file, got 2"):
        handler.preprocess(two)


def test_postprocess_rows(make_archive):
    handler = load(make_archive([X]))
    y = np.arange(20, dtype=np.float32).reshape(2, 10)
    rows = [list(range(10)), list(range(10, 20))]
    assert handler.postprocess({"y": y}, PayloadState("predict")) == rows
    assert handler.postprocess({"y": y}, PayloadState("torchserve")) == rows
    # one row: /predict keeps the list, TorchServe answers the row itself
    assert handler.postprocess({"y": y[:1]}, PayloadState("predict")) == rows[:1]
    assert handler.postprocess({"y": y[:1]}, PayloadState("torchserve")) == rows[0]


def test_state_carries_the_route(make_archive):
    handler = load(make_archive([X]))
    _, state = handler.preprocess(body([1, 2, 3], "torchserve"))
    assert state == PayloadState("torchserve")


def test_postprocess_several_outputs(make_archive):
    outputs = [("a", "FP32", (-1, 2)), ("b", "INT64", (-1,))]
    handler = load(make_archive([X], outputs=outputs))
    got = {"b": np.array([5, 6]), "a": np.ones((2, 2), np.float32)}
    rows = handler.postprocess(got, PayloadState("predict"))
    assert rows == [{"a": [1.0, 1.0], "b": 5}, {"a": [1.0, 1.0], "b": 6}]
    assert list(rows[0]) == ["a", "b"]


LIST_LABELS = [f"digit {i}" for i in range(10)]
TORCHSERVE_LABELS = {str(i): [f"n{i:08d}", f"digit {i}"] for i in range(10)}


@pytest.mark.parametrize("labels", [LIST_LABELS, TORCHSERVE_LABELS])
def test_top_k_with_labels(make_archive, labels):
    archive = make_archive(
        [X], config={"top_k": 3, "labels": "labels.json"}, files={"labels.json": labels}
    )
    handler = load(archive)
    probs = np.full((2, 10), 0.01, dtype=np.float32)
    probs[0, [7, 2, 5]] = [0.6, 0.2, 0.1]
    probs[1, [0, 9, 4]] = [0.5, 0.3, 0.11]
    rows = handler.postprocess({"y": probs}, PayloadState("predict"))
    assert [[c["class"] for c in row] for row in rows] == [[7, 2, 5], [0, 9, 4]]
    assert rows[0][0] == {"class": 7, "label": "digit 7", "score": pytest.approx(0.6)}
    assert rows[1][2]["label"] == "digit 4"
    # TorchServe's classifiers answer {label: score}, best first; one row by itself
    torchserve = handler.postprocess({"y": probs}, PayloadState("torchserve"))
    assert [list(row) for row in torchserve] == [
        ["digit 7", "digit 2", "digit 5"],
        ["digit 0", "digit 9", "digit 4"],
    ]
    assert torchserve[0]["digit 7"] == pytest.approx(0.6)
    one = handler.postprocess({"y": probs[1:]}, PayloadState("torchserve"))
    assert one == torchserve[1]


def test_top_k_torchserve_unlabelled_and_repeated_labels(make_archive):
    labels = ["cat", "cat", None]
    archive = make_archive([X], config={"top_k": 4, "labels": "l.json"}, files={"l.json": labels})
    handler = load(archive)
    scores = np.array([[0.2, 0.3, 0.1, 0.4]], dtype=np.float32)
    answer = handler.postprocess({"y": scores}, PayloadState("torchserve"))
    assert answer == {"3": pytest.approx(0.4), "cat": pytest.approx(0.3), "2": pytest.approx(0.1)}
    assert list(answer) == ["3", "cat", "2"]


def test_top_k_softmax_without_labels(make_archive):
    handler = load(make_archive([X], config={"top_k": 2, "softmax": True}))
    logits = np.zeros((1, 10), dtype=np.float32)
    logits[0, 3] = np.log(9.0 * 2)  # e^x = 18 against nine 1s
    (row,) = handler.postprocess({"y": logits}, PayloadState("predict"))
    assert row[0] == {"class": 3, "label": None, "score": pytest.approx(18 / 27)}
    assert row[1]["score"] == pytest.approx(1 / 27)


def test_bad_handler_config_fails_at_load(make_archive):
    with pytest.raises(ArchiveError, match="not in the archive"):
        load(make_archive([X], config={"top_k": 3, "labels": "missing.json"}))
    with pytest.raises(ArchiveError, match="top_k"):
        load(make_archive([X], config={"top_k": 0}))
    with pytest.raises(ArchiveError, match="not valid JSON"):
        load(make_archive([X], config={"top_k": 1, "labels": "l.json"}, files={"l.json": b"{"}))
