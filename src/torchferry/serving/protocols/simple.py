"""The plain protocol: ``POST /predict[/{model}[/versions/{v}]]`` through the model's handler.

JSON ``{"data": ...}`` goes to the handler as ``HandlerInput(data=...)``; uploaded files
(multipart fields, several files = several rows) or a raw body with an image or
``application/octet-stream`` content type go as ``HandlerInput(blobs=[...])``. The answer
is ``{"result": [one per row]}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from torchferry.errors import InvalidInput, TorchferryError, UnsupportedMediaType
from torchferry.handlers.base import HandlerInput
from torchferry.serving.jsonio import JSONResponse, loads
from torchferry.serving.protocols.common import repository_of
from torchferry.serving.repository import LoadedModel

router = APIRouter(tags=["Plain /predict"])

_RAW_TYPES = ("application/octet-stream",)
_FILE_FIELDS = ("file", "data")

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
    400: {"description": "Bad JSON or image, or no model named while several are loaded"},
    404: {"description": "Unknown model or version"},
    415: {"description": "Unsupported content type"},
}


def _default_model(request: Request, model_name: str | None, version: str | None) -> LoadedModel:
    repository = repository_of(request)
    if model_name is None:
        names = repository.names()
        if len(names) != 1:
            raise InvalidInput(
                f"several models are loaded ({names}); name one: POST /predict/{{model}}"
            )
        model_name = names[0]
    return repository.get(model_name, version)


async def _multipart(request: Request) -> HandlerInput:
    try:
        form = await request.form()
    except TorchferryError:
        raise
    except Exception as exc:  # malformed multipart bodies raise from the parser
        raise InvalidInput(f"the multipart body cannot be parsed: {exc}") from None
    try:
        uploads = [v for k, v in form.multi_items() if isinstance(v, UploadFile)]
        preferred = [
            v for k, v in form.multi_items() if isinstance(v, UploadFile) and k in _FILE_FIELDS
        ]
        blobs = [await f.read() for f in (preferred or uploads)]
        if not blobs:
            text = form.get("data")
            if isinstance(text, str):
                body = loads(text.encode("utf-8"))
                return HandlerInput(data=body)
            raise InvalidInput('the multipart body has no file; upload it as field "file"')
    finally:
        await form.close()
    return HandlerInput(blobs=blobs)


async def _payload(request: Request) -> HandlerInput:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("", "application/json") or media.endswith("+json"):
        body = loads(await request.body())
        if not isinstance(body, dict) or "data" not in body:
            raise InvalidInput('the JSON body must be an object {"data": ...}')
        return HandlerInput(data=body["data"])
    if media == "multipart/form-data":
        return await _multipart(request)
    if media.startswith("image/") or media in _RAW_TYPES:
        body = await request.body()
        if not body:
            raise InvalidInput("the request body is empty; send the image's bytes")
        return HandlerInput(blobs=[body])
    raise UnsupportedMediaType(
        f"content type {content_type!r} is not supported; send application/json "
        '{"data": ...}, multipart/form-data with a "file" field, image/*, or '
        "application/octet-stream"
    )


async def _predict(request: Request, model_name: str | None, version: str | None) -> JSONResponse:
    model = _default_model(request, model_name, version)
    payload = await _payload(request)
    result = await model.predict(payload)
    return JSONResponse(
        {"model_name": model.name, "model_version": str(model.version), "result": result}
    )


@router.post(
    "/predict",
    summary="Predict with the only loaded model (JSON data, files or raw image bytes)",
    openapi_extra=_PREDICT_BODY,
    responses=_PREDICT_RESPONSES,
)
async def predict_only(request: Request) -> JSONResponse:
    return await _predict(request, None, None)


@router.post(
    "/predict/{model_name}",
    summary="Predict with a model's default version (JSON data, files or raw image bytes)",
    openapi_extra=_PREDICT_BODY,
    responses=_PREDICT_RESPONSES,
)
async def predict(request: Request, model_name: str) -> JSONResponse:
    return await _predict(request, model_name, None)


@router.post(
    "/predict/{model_name}/versions/{model_version}",
    summary="Predict with one model version (JSON data, files or raw image bytes)",
    openapi_extra=_PREDICT_BODY,
    responses=_PREDICT_RESPONSES,
)
async def predict_version(request: Request, model_name: str, model_version: str) -> JSONResponse:
    return await _predict(request, model_name, model_version)
