"""OpenAPI descriptions of the V2 routes: request body schema, example answers and every\nstatus for /docs (the answers' schemas are ``openapi_schemas``' models)."""

from __future__ import annotations

from typing import Any

from torchferry.codecs.datatypes import V2_TO_NUMPY
from torchferry.serving.protocols.openapi_schemas import (
    INFER_STATUSES,
    READ_STATUSES,
    InferResponse,
    errors,
)

_TENSOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(V2_TO_NUMPY)},
        "parameters": {"type": "object"},
        "data": {
            "type": "array",
            "description": "Flat (row-major) or nested values; BYTES as UTF-8 strings.",
            "items": {},
        },
    },
}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": _TENSOR_SCHEMA},
                        "outputs": {
                            "type": "array",
                            "description": "Outputs to return (all when absent).",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                },
                "example": {
                    "id": "42",
                    "inputs": [
                        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                    ],
                },
            }
        },
    }
}

INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Outputs, flat row-major data",
        "model": InferResponse,
        "content": {
            "application/json": {
                "example": {
                    "model_name": "adder",
                    "model_version": "1",
                    "id": "42",
                    "outputs": [
                        {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [3, 5, 7, 9]}
                    ],
                }
            }
        },
    },
    **errors(INFER_STATUSES),
}
METADATA_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Model metadata; -1 marks a dynamic dimension",
        "content": {
            "application/json": {
                "example": {
                    "name": "adder",
                    "versions": ["1", "2"],
                    "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
                }
            }
        },
    },
    **errors(READ_STATUSES),
}
