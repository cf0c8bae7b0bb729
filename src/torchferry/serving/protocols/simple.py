"""The plain protocol: ``POST /predict[/{model}[/versions/{v}]]`` through the model's handler.

The body (JSON ``{"data": ...}``, uploaded files, an image's raw bytes, or whatever a custom
handler reads) goes to the handler as it came; the answer is ``{"model_name",
"model_version", "result": <the handler's answer>}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from torchferry.errors import InvalidInput
from torchferry.serving.hotpath import hot
from torchferry.serving.protocols.common import (
    JSONResponse,
    Protocol,
    http_traffic_key,
    plane_of,
)
from torchferry.serving.protocols.openapi_schemas import INFER_STATUSES, PredictResult, errors
from torchferry.serving.protocols.payload import read_payload
from torchferry.serving.repository import LoadedModel

router = APIRouter(tags=["Plain /predict"])

_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": 'JSON {"data": ...}, uploaded files (multipart field "file"; several '
        "files are several rows), or the raw bytes of one image.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "description": "The single input's rows as nested lists, or "
                            "{input_name: rows} for several inputs.",
                        }
                    },
                },
                "example": {"data": [[1.0, 2.0, 3.0, 4.0]]},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        }
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One result per row: output rows, or top-k classes for classifiers",
        "model": PredictResult,
        "content": {
            "application/json": {
                "example": {
                    "model_name": "digits",
                    "model_version": "1",
                    "result": [[{"class": 7, "label": "7", "score": 0.98}]],
                }
            }
        },
    },
    **errors(INFER_STATUSES),
}


def _model(
    request: Request, model_name: str | None, version: str | None, key: str | None
) -> LoadedModel:
    plane = plane_of(request)
    if model_name is None:
        names = plane.names()
        if len(names) != 1:
            raise InvalidInput(
                f"several models are loaded ({names}); name one: POST /predict/{{model}}"
            )
        model_name = names[0]
    return plane.resolve(model_name, version, key)


async def _predict(request: Request, model_name: str | None, version: str | None) -> JSONResponse:
    plane_of(request).authorize_infer(model_name)  # with --auth: 401/403 before the body
    key = None if version else http_traffic_key(request)
    payload = await read_payload(request, "predict")
    # resolved right before the data plane's entry (no await between): the version in the
    # answer is the one that serves it, even while versions change
    model = _model(request, model_name, version, key)
    result = await plane_of(request).predict(model, payload, version, key)
    return JSONResponse(
        {"model_name": model.name, "model_version": str(model.version), "result": result}
    )


@router.post(
    "/predict",
    summary="Predict with the only loaded model (JSON data, files or raw image bytes)",
    openapi_extra=_PREDICT_BODY,
    responses=_PREDICT_RESPONSES,
)
@hot
async def predict_only(request: Request) -> JSONResponse:
    return await _predict(request, None, None)


@router.post(
    "/predict/{model_name}",
    summary="Predict with a model's default version (JSON data, files or raw image bytes)",
    openapi_extra=_PREDICT_BODY,
    responses=_PREDICT_RESPONSES,
)
@hot
async def predict(request: Request, model_name: str) -> JSONResponse:
    return await _predict(request, model_name, None)


@router.post(
    "/predict/{model_name}/versions/{model_version}",
    summary="Predict with one model version (JSON data, files or raw image bytes)",
    openapi_extra=_PREDICT_BODY,
    responses=_PREDICT_RESPONSES,
)
@hot
async def predict_version(request: Request, model_name: str, model_version: str) -> JSONResponse:
    return await _predict(request, model_name, model_version)


class Predict(Protocol):
    """The plain ``/predict`` route, through each model's handler."""

    name = "predict"
    router = router
