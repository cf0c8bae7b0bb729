"""TF-Serving / KServe V1 REST against the live server."""

from __future__ import annotations

import base64

import pytest

ROWS = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]


def test_list_and_status(http):
    assert "adder" in http.get("/v1/models").json()["models"]
    status = http.get("/v1/models/adder").json()
    assert status["name"] == "adder" and status["ready"] is True
    assert status["model_version_status"] == [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in ("1", "2")
    ]
    one = http.get("/v1/models/adder/versions/1").json()
    assert [s["version"] for s in one["model_version_status"]] == ["1"]
    assert http.get("/v1/models/nope").status_code == 404
    assert http.get("/v1/models/adder/versions/3").status_code == 404


@pytest.mark.parametrize(
    ("path", "scale"),
    [
        ("/v1/models/adder:predict", 3),
        ("/v1/models/adder/versions/1:predict", 2),
        ("/v1/models/adder/predictions", 3),
        ("/v1/models/adder/versions/1/predictions", 2),
    ],
)
def test_rows_answer_one_prediction_per_row(http, path, scale):
    answer = http.post(path, json={"instances": ROWS})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "predictions": [{"y": [v * scale + 1 for v in row], "total": sum(row)} for row in ROWS]
    }


def test_columns_answer_outputs(http):
    answer = http.post("/v1/models/adder/versions/1:predict", json={"inputs": ROWS}).json()
    assert answer == {
        "outputs": {"y": [[v * 2 + 1 for v in row] for row in ROWS], "total": [10.0, 26.0]}
    }
    named = http.post("/v1/models/adder/versions/1:predict", json={"inputs": {"x": ROWS}})
    assert named.json() == answer


def test_multi_input_rows_and_columns(http):
    rows = [{"a": [1, 2, 3], "b": [1, 1, 1]}, {"a": [0, 0, 0], "b": [2, 3, 4]}]
    answer = http.post("/v1/models/multi:predict", json={"instances": rows}).json()
    assert answer["predictions"] == [
        {"sum": [2.0, 3.0, 4.0], "twice": [2, 2, 2]},
        {"sum": [2.0, 3.0, 4.0], "twice": [4, 6, 8]},
    ]
    columns = {"a": [[1, 2, 3]], "b": [[1, 1, 1]]}
    outputs = http.post("/v1/models/multi:predict", json={"inputs": columns}).json()["outputs"]
    assert outputs == {"sum": [[2.0, 3.0, 4.0]], "twice": [[2, 2, 2]]}


def test_bytes_with_b64_values(http):
    encoded = base64.b64encode("café".encode()).decode()
    body = {"instances": [{"b64": encoded}, "plain"]}
    answer = http.post("/v1/models/strings:predict", json=body).json()
    assert answer["predictions"] == [
        {"shout": "café!", "same": "café"},
        {"shout": "plain!", "same": "plain"},
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": ROWS, "inputs": ROWS}, "exactly one"),
        ({}, "exactly one"),
        ({"instances": []}, "non-empty"),
        ({"instances": [[1, 2, 3]]}, "input 'x': expected shape [-1, 4], received [1, 3]"),
        ({"instances": [["a", "b", "c", "d"]]}, "expected FP32 data, received strings"),
        ({"inputs": {"nope": ROWS}}, "unknown input 'nope'"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_requests_are_400(http, body, message):
    answer = http.post("/v1/models/adder:predict", json=body)
    assert answer.status_code == 400
    assert message in answer.json()["error"]


def test_unknown_model_predict_is_404(http):
    answer = http.post("/v1/models/nope:predict", json={"instances": ROWS})
    assert answer.status_code == 404
    assert (
        http.post("/v1/models/adder/versions/9:predict", json={"instances": ROWS}).status_code
        == 404
    )
