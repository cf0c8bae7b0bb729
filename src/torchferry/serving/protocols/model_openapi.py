"""One model version's own OpenAPI document: its JSON inference routes (V2, V1, ``/predict``)
with request schemas generated from its signature.

The server-wide document can only say "some tensors": a request that follows it may still
name an input the model lacks. Here every input is named, typed and shaped:

- names are the signature's, each input once; datatypes fix the JSON element type (integers
  with their type's range, which the server enforces; floats open, as the server takes any);
- a fixed dimension is an exact length, a dynamic one is open, except where V2 must state
  a tensor's ``shape`` beside flat ``data``: JSON Schema cannot tie ``shape[0]`` to the
  length of ``data``, so V2's schema lists the batch sizes 1 to ``V2_BATCHES`` (any batch
  works the same way; V1 and ``/predict``, whose rows carry their own count, stay open,
  except that several inputs must share one count, so they list the same sizes);
- a dynamic dimension other than the batch makes V2's ``data`` length open too, and so
  allows a request whose ``data`` does not fill its ``shape`` (which the server refuses).

Each route has a valid example request built from the signature, and declares every status
it answers with its error body (``openapi_schemas``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, TypeAdapter

import torchferry
from torchferry.codecs.datatypes import V2_TO_NUMPY
from torchferry.serving.protocols.openapi_schemas import (
    INFER_STATUSES,
    ErrorBody,
    InferResponse,
    PredictResult,
    V1Columns,
    V1Rows,
    errors,
)
from torchferry.signature import ModelSignature, TensorSpec

#: The handler whose ``/predict`` JSON this document can describe.
JSON_HANDLER = "tensor"
#: V2 lists the batch sizes 1 to this (see the module's docstring).
V2_BATCHES = 3
_REF = "#/components/schemas/{model}"


def element_schema(datatype: str) -> dict[str, Any]:
    """One JSON element of a tensor of ``datatype``, as the server's JSON codec takes it."""
    if datatype == "BOOL":
        return {"type": "boolean"}
    if datatype == "BYTES":
        return {"type": "string"}
    dtype = np.dtype(V2_TO_NUMPY[datatype])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}
    return {"type": "number"}


def _nested(element: dict[str, Any], dims: tuple[int, ...]) -> dict[str, Any]:
    """Nested arrays of ``dims`` (-1: any length of at least one) around ``element``."""
    schema = element
    for dim in reversed(dims):
        schema = {"type": "array", "items": schema, "minItems": max(dim, 1)}
        if dim > 0:
            schema["maxItems"] = dim
    return schema


def _v2_tensor(spec: TensorSpec, batch: int) -> dict[str, Any]:
    """One input of ``batch`` rows: its name, datatype, exact shape and data length."""
    inner = spec.shape[1:]
    dims = [
        {"const": batch},
        *({"const": d} if d > 0 else {"type": "integer", "minimum": 1} for d in inner),
    ]
    data: dict[str, Any] = {"type": "array", "items": element_schema(spec.datatype)}
    if all(d > 0 for d in inner):
        data["minItems"] = data["maxItems"] = batch * math.prod(inner)
    else:
        data["minItems"] = 1
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"const": spec.name},
            "datatype": {"const": spec.datatype},
            "shape": {
                "type": "array",
                "prefixItems": dims,
                "minItems": len(dims),
                "maxItems": len(dims),
            },
            "data": data,
        },
    }


def _example_row(spec: TensorSpec) -> Any:
    element = {"boolean": False, "string": "a", "integer": 0, "number": 0.5}
    value: Any = element[element_schema(spec.datatype)["type"]]
    for dim in reversed(spec.shape[1:]):
        value = [value] * max(dim, 1)
    return value


def _flat(value: Any) -> list[Any]:
    return [x for item in value for x in _flat(item)] if isinstance(value, list) else [value]


def _v2_body(signature: ModelSignature) -> dict[str, Any]:
    # one batch size for every input: the inputs array is one of the sizes listed
    count = len(signature.inputs)
    inputs = {
        "oneOf": [
            {
                "type": "array",
                "prefixItems": [_v2_tensor(spec, batch) for spec in signature.inputs],
                "minItems": count,
                "maxItems": count,
            }
            for batch in range(1, V2_BATCHES + 1)
        ]
    }
    example = {
        "inputs": [
            {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": [1, *(max(d, 1) for d in spec.shape[1:])],
                "data": _flat([_example_row(spec)]),
            }
            for spec in signature.inputs
        ]
    }
    schema = {
        "type": "object",
        "required": ["inputs"],
        "properties": {"id": {"type": ["string", "null"]}, "inputs": inputs},
    }
    return _json_body(schema, example)


def _rows(signature: ModelSignature) -> dict[str, Any]:
    """A batch of rows: the single input's (any count), or ``{name: rows}`` for several,
    which must have one count: one of the batch sizes listed for V2."""
    if len(signature.inputs) == 1:
        spec = signature.inputs[0]
        return _nested(element_schema(spec.datatype), spec.shape)
    return {
        "oneOf": [
            _by_name(
                {
                    s.name: _nested(element_schema(s.datatype), (batch, *s.shape[1:]))
                    for s in signature.inputs
                },
                closed=True,
            )
            for batch in range(1, V2_BATCHES + 1)
        ]
    }


def _by_name(properties: dict[str, Any], *, closed: bool = False) -> dict[str, Any]:
    """An object of exactly these keys when ``closed`` (the server refuses an unknown input
    name), else of at least these."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": list(properties),
        "properties": dict(properties),
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def _v1_body(signature: ModelSignature) -> dict[str, Any]:
    if len(signature.inputs) == 1:
        spec = signature.inputs[0]
        row: dict[str, Any] = _nested(element_schema(spec.datatype), spec.shape[1:])
        example_row: Any = _example_row(spec)
    else:
        row = _by_name(
            {s.name: _nested(element_schema(s.datatype), s.shape[1:]) for s in signature.inputs},
            closed=True,
        )
        example_row = {s.name: _example_row(s) for s in signature.inputs}
    # each form without the other's key: a request with both is refused
    instances = _by_name({"instances": {"type": "array", "items": row, "minItems": 1}})
    instances["properties"]["inputs"] = False
    columns = _by_name({"inputs": _rows(signature)})
    columns["properties"]["instances"] = False
    return _json_body({"oneOf": [instances, columns]}, {"instances": [example_row]})


def _predict_body(signature: ModelSignature) -> dict[str, Any]:
    if len(signature.inputs) == 1:
        example: Any = [_example_row(signature.inputs[0])]
    else:
        example = {s.name: [_example_row(s)] for s in signature.inputs}
    return _json_body(_by_name({"data": _rows(signature)}), {"data": example})


def _json_body(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": schema, "example": example}},
    }


class _Components:
    """Pydantic models as ``components.schemas`` entries, referred to by ``$ref``."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: Any) -> dict[str, Any]:
        schema = TypeAdapter(model).json_schema(ref_template=_REF)
        self.schemas.update(schema.pop("$defs", {}))
        if isinstance(model, type) and issubclass(model, BaseModel):
            self.schemas[model.__name__] = schema
            return {"$ref": _REF.format(model=model.__name__)}
        return schema

    def responses(self, answer: Any, description: str) -> dict[str, Any]:
        content = {"application/json": {"schema": self.ref(answer)}}
        declared: dict[str, Any] = {"200": {"description": description, "content": content}}
        for status, entry in errors(INFER_STATUSES).items():
            body = {"application/json": {"schema": self.ref(entry.get("model", ErrorBody))}}
            declared[str(status)] = {"description": entry["description"], "content": body}
        return declared


def model_openapi(
    name: str, version: int | None, signature: ModelSignature, handler: str
) -> dict[str, Any]:
    """The document for ``name`` (its default version when ``version`` is None, which the
    routes then leave out of their paths). ``/predict`` goes through the model's handler:
    it is described for the ``tensor`` handler's JSON only (an image or custom handler
    takes what its own code says)."""
    at = "" if version is None else f"/versions/{version}"
    components = _Components()

    def operation(summary: str, body: dict[str, Any], answer: Any, what: str) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "operationId": summary.lower().replace(" ", "_").replace("/", ""),
                "requestBody": body,
                "responses": components.responses(answer, what),
            }
        }

    paths = {
        f"/v2/models/{name}{at}/infer": operation(
            "V2 infer", _v2_body(signature), InferResponse, "Outputs, flat data"
        ),
        f"/v1/models/{name}{at}:predict": operation(
            "V1 predict", _v1_body(signature), V1Rows | V1Columns, "Predictions or outputs"
        ),
    }
    if handler == JSON_HANDLER:
        paths[f"/predict/{name}{at}"] = operation(
            "Plain predict", _predict_body(signature), PredictResult, "One result per row"
        )
    which = "the default version" if version is None else f"version {version}"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"torchferry: model {name}, {which}",
            "version": torchferry.__version__,
            "description": (__doc__ or "").split("\n\n")[0],
        },
        "paths": paths,
        "components": {"schemas": components.schemas},
    }
