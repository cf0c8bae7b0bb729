"""Each model's own OpenAPI document, over the live test store: every datatype, several
inputs, an image model; each operation's example request is answered 200 as documented."""

from __future__ import annotations

import pytest

MODELS = ["adder", "mlp", "strings", "alltypes", "multi", "tiny_image"]


@pytest.mark.parametrize("name", MODELS)
def test_every_example_request_is_answered(http, name):
    document = http.get(f"/v2/models/{name}/versions/1/docs/openapi.json").json()
    assert document["openapi"] == "3.1.0" and name in document["info"]["title"]
    for path, operations in document["paths"].items():
        operation = operations["post"]
        example = operation["requestBody"]["content"]["application/json"]["example"]
        answer = http.post(path, json=example)
        assert answer.status_code == 200, (path, example, answer.text)
        assert set(operation["responses"]) >= {"200", "400", "404", "413", "500", "503"}


def test_the_schemas_are_the_signatures(http):
    document = http.get("/v2/models/multi/docs/openapi.json").json()
    assert sorted(document["paths"]) == [
        "/predict/multi", "/v1/models/multi:predict", "/v2/models/multi/infer"
    ]  # fmt: skip
    body = document["paths"]["/v2/models/multi/infer"]["post"]["requestBody"]
    batches = body["content"]["application/json"]["schema"]["properties"]["inputs"]["oneOf"]
    assert len(batches) == 3  # batch sizes 1 to 3, each shared by both inputs
    two = batches[1]
    assert two["minItems"] == two["maxItems"] == 2
    a, b = (tensor["properties"] for tensor in two["prefixItems"])
    assert (a["name"], a["datatype"]) == ({"const": "a"}, {"const": "FP32"})
    assert b["datatype"] == {"const": "INT64"}
    # batch 2 of [-1, 3]: shape [2, 3], exactly 6 values, of INT64's range
    assert a["shape"]["prefixItems"] == b["shape"]["prefixItems"] == [{"const": 2}, {"const": 3}]
    assert b["data"]["minItems"] == b["data"]["maxItems"] == 6
    assert b["data"]["items"] == {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
    rows = document["paths"]["/predict/multi"]["post"]["requestBody"]["content"]
    data = rows["application/json"]["schema"]["properties"]["data"]["oneOf"][0]
    assert data["required"] == ["a", "b"]
    assert data["properties"]["a"] == {
        "type": "array", "minItems": 1, "maxItems": 1,
        "items": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
    }  # fmt: skip


def test_an_image_model_has_no_json_predict(http):
    paths = http.get("/v2/models/tiny_image/docs/openapi.json").json()["paths"]
    assert "/predict/tiny_image" not in paths and "/v2/models/tiny_image/infer" in paths


def test_unknown_models_and_versions_are_404(http):
    assert http.get("/v2/models/nope/docs/openapi.json").status_code == 404
    assert http.get("/v2/models/adder/versions/9/docs/openapi.json").status_code == 404
    assert http.get("/v2/models/adder/versions/9/docs").status_code == 404
