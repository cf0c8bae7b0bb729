"""TorchServe's inference REST API (and the read-only part of its management API).

- ``GET /ping`` -> ``{"status": "Healthy"}`` (503 ``Unhealthy`` until the models start).
- ``POST`` or ``PUT /predictions/{model}[/{version}]`` (``curl -T file`` is a PUT): the raw
  body, or multipart fields (``data``, ``file`` or ``body``; several files are several rows).
  A JSON body (``[...]`` or ``{"data": ...}``) goes to the model's handler as tensors; other
  bodies go as a file, except to tensor-handler models, which read every body as JSON.
- Answers are per request, as TorchServe's handlers give them: a classifier's row is an object
  ``{label: probability}`` of its top classes in descending order (``image_classifier``'s
  shape), other rows are the output row; one row is answered by itself, several by a list.
  (TorchServe's worker keeps only the last of several same-named fields; here every file is
  answered, in order.)
- ``GET /models``, ``/models/{model}``, ``/models/{model}/all``, ``/models/{model}/{version}``
  describe models in the management API's shape (TorchServe serves them on port 8081).
- Errors are ``{"code": 404, "type": "ModelNotFoundException", "message": ...}`` with the
  statuses of DESIGN.md. A version may be written TorchServe's way: ``/predictions/m/1.0``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile
from starlette.responses import Response

from torchferry.errors import (
    InferenceTimeout,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    TorchferryError,
)
from torchferry.handlers.base import HandlerInput
from torchferry.serving.jsonio import JSONResponse, loads
from torchferry.serving.protocols.common import repository_of
from torchferry.serving.repository import LoadedModel

log = logging.getLogger("torchferry.torchserve")

_FILE_FIELDS = ("data", "file", "body")
_JSON_TYPES = ("application/json", "text/json")
_FILE_TYPES = ("application/octet-stream",)
_VERSION = re.compile(r"(\d+)(?:\.0+)*")


class VersionNotFound(ModelNotFound):
    """The model is loaded but not this version (TorchServe's ModelVersionNotFoundException)."""


def _error_type(exc: TorchferryError) -> str:
    if isinstance(exc, VersionNotFound):
        return "ModelVersionNotFoundException"
    if isinstance(exc, ModelNotFound):
        return "ModelNotFoundException"
    if isinstance(exc, Overloaded | ModelNotReady):
        return "ServiceUnavailableException"
    if isinstance(exc, InferenceTimeout):
        return "RequestTimeoutException"
    return "BadRequestException" if exc.status_code < 500 else "InternalServerException"


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"code": status, "type": kind, "message": message}, status_code=status, headers=headers
    )


class TorchServeRoute(APIRoute):
    """Answers this protocol's errors in TorchServe's shape instead of ``{"error": ...}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except TorchferryError as exc:
                headers = None
                if isinstance(exc, Overloaded):
                    headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
                if exc.status_code >= 500:
                    log.warning("%s %s -> %d: %s", request.method, request.url.path,
                                exc.status_code, exc)  # fmt: skip
                return error_response(exc.status_code, _error_type(exc), exc.message, headers)
            except RequestValidationError as exc:
                parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
                return error_response(400, "BadRequestException", "; ".join(parts))
            except Exception as exc:
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                message = f"internal error: {type(exc).__name__}: {exc}"
                return error_response(500, "InternalServerException", message)

        return route


router = APIRouter(tags=["TorchServe"], route_class=TorchServeRoute)


def _model(request: Request, name: str, version: str | None) -> LoadedModel:
    repository = repository_of(request)
    repository.versions(name)  # ModelNotFoundException for an unknown model
    if version is not None:
        match = _VERSION.fullmatch(version)
        version = match.group(1) if match else version
    try:
        return repository.get(name, version)
    except ModelNotFound as exc:
        raise VersionNotFound(exc.message) from None


# -- request decoding ---------------------------------------------------------------------------


def _takes_json(model: LoadedModel) -> bool:
    """Tensor-handler models read every body as JSON; the others take bodies as files."""
    return model.handler.name == "tensor"


def _from_json(value: Any, model: LoadedModel) -> HandlerInput:
    """``[...]``, ``{"data": ...}`` or ``{input_name: ...}``; a string is a base64 file."""
    if isinstance(value, dict) and "data" in value:
        value = value["data"]
    if isinstance(value, str) and not _takes_json(model):
        try:
            return HandlerInput(blobs=[base64.b64decode(value, validate=True)])
        except binascii.Error:
            raise InvalidInput("a JSON string must be a base64-encoded file") from None
    return HandlerInput(data=value)


async def _multipart(request: Request, model: LoadedModel) -> HandlerInput:
    limit = request.app.state.settings.max_body_bytes
    try:
        form = await request.form(max_part_size=limit)
    except TorchferryError:
        raise
    except Exception as exc:  # malformed multipart bodies raise from the parser
        raise InvalidInput(f"the multipart body cannot be parsed: {exc}") from None
    try:
        items = form.multi_items()
        named = [(k, v) for k, v in items if k in _FILE_FIELDS] or items
        files = [await v.read() for _, v in named if isinstance(v, UploadFile)]
        texts = [v for _, v in named if isinstance(v, str)]
    finally:
        await form.close()
    if files and _takes_json(model):
        if len(files) > 1:
            raise InvalidInput(f"model {model.name!r} takes one JSON file, got {len(files)}")
        return _from_json(loads(files[0]), model)
    if files:
        return HandlerInput(blobs=files)
    if texts:
        return _from_json(loads(texts[-1].encode()) if _takes_json(model) else texts[-1], model)
    raise InvalidInput('the multipart body has no file; upload it as field "data"')


async def _payload(request: Request, model: LoadedModel) -> HandlerInput:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        return await _multipart(request, model)
    body = await request.body()
    if not body:
        raise InvalidInput("the request body is empty; send the input's bytes or JSON")
    if media in _JSON_TYPES or media.endswith("+json"):
        return _from_json(loads(body), model)
    if _takes_json(model) and not media.startswith("image/") and media not in _FILE_TYPES:
        return _from_json(loads(body), model)
    return HandlerInput(blobs=[body])


# -- answers ------------------------------------------------------------------------------------


def _is_top_k(row: Any) -> bool:
    return (
        isinstance(row, list)
        and bool(row)
        and all(isinstance(c, dict) and "class" in c and "score" in c for c in row)
    )


def _shape(row: Any) -> Any:
    """A top-k row becomes ``{label: score}`` in descending order (an unlabelled class is its
    index as a string, a repeated label keeps its best score); other rows stay as they are."""
    if not _is_top_k(row):
        return row
    scores: dict[str, float] = {}
    for entry in row:
        label = entry.get("label")
        scores.setdefault(str(entry["class"]) if label is None else str(label), entry["score"])
    return scores


async def _predict(request: Request, name: str, version: str | None) -> JSONResponse:
    model = _model(request, name, version)
    rows = [_shape(row) for row in await model.predict(await _payload(request, model))]
    return JSONResponse(rows[0] if len(rows) == 1 else rows)


_PREDICT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The raw input (e.g. an image's bytes), multipart field data, or JSON.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"data": {"type": "string", "format": "binary"}},
                }
            },
            "application/json": {"example": [[1.0, 2.0, 3.0, 4.0]]},
        },
    },
    "responses": {
        "200": {
            "description": "Per request: {label: probability} for classifiers, else the row",
            "content": {"application/json": {"example": {"tabby": 0.43, "tiger_cat": 0.27}}},
        }
    },
}


@router.get("/ping", summary="TorchServe health check")
async def ping(request: Request) -> JSONResponse:
    if repository_of(request).started:
        return JSONResponse({"status": "Healthy"})
    return JSONResponse({"status": "Unhealthy"}, status_code=503)


def _predict_route(path: str, summary: str) -> Callable[[Any], Any]:
    """POST and PUT (``curl -T`` uploads with PUT), each with its own OpenAPI operation."""

    def register(function: Any) -> Any:
        for method in ("post", "put"):
            router.add_api_route(
                path,
                function,
                methods=[method.upper()],
                summary=summary,
                openapi_extra=_PREDICT_DOC,
                operation_id=f"torchserve_{function.__name__}_{method}",
            )
        return function

    return register


@_predict_route("/predictions/{model_name}", "TorchServe prediction, default version")
async def predictions(request: Request, model_name: str) -> Response:
    return await _predict(request, model_name, None)


@_predict_route("/predictions/{model_name}/{model_version}", "TorchServe prediction, a version")
async def version_predictions(request: Request, model_name: str, model_version: str) -> Response:
    return await _predict(request, model_name, model_version)


# -- management (read-only) ---------------------------------------------------------------------


def _describe(model: LoadedModel, ready: bool) -> dict[str, Any]:
    batcher = model.batcher
    return {
        "modelName": model.name,
        "modelVersion": str(model.version),
        "modelUrl": f"{model.name}/{model.version}",
        "runtime": model.runtime.name,
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": batcher.max_batch_size,
        "maxBatchDelay": round(batcher.max_delay * 1000),
        "loadedAtStartup": True,
        "workers": [{"id": "1", "status": "READY" if ready else "UNLOADING", "gpu": False}],
        "jobQueueStatus": {
            "remainingCapacity": max(0, batcher.max_queue_rows - batcher.queued_rows),
            "pendingRequests": batcher.queued_rows,
        },
    }


@router.get("/models", summary="TorchServe management: list models")
async def list_models(request: Request, limit: int = 100, next_page_token: int = 0) -> Response:
    names = repository_of(request).names()
    start, end = max(0, next_page_token), max(0, next_page_token) + max(1, limit)
    body: dict[str, Any] = {}
    if end < len(names):
        body["nextPageToken"] = str(end)
    body["models"] = [{"modelName": n, "modelUrl": n} for n in names[start:end]]
    return JSONResponse(body)


@router.get("/models/{model_name}", summary="TorchServe management: describe a model")
async def describe(request: Request, model_name: str) -> Response:
    ready = repository_of(request).started
    return JSONResponse([_describe(_model(request, model_name, None), ready)])


@router.get("/models/{model_name}/all", summary="TorchServe management: every version")
async def describe_all(request: Request, model_name: str) -> Response:
    repository = repository_of(request)
    models = [repository.get(model_name, v) for v in repository.versions(model_name)]
    return JSONResponse([_describe(m, repository.started) for m in models])


@router.get("/models/{model_name}/{model_version}", summary="TorchServe management: a version")
async def describe_version(request: Request, model_name: str, model_version: str) -> Response:
    ready = repository_of(request).started
    return JSONResponse([_describe(_model(request, model_name, model_version), ready)])
