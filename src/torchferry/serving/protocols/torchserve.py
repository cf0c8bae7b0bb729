"""TorchServe's inference REST API (and the read-only part of its management API).

- ``GET /ping`` -> ``{"status": "Healthy"}`` (503 ``Unhealthy`` until the models start).
- ``POST`` or ``PUT /predictions/{model}[/{version}]`` (``curl -T file`` is a PUT): the raw
  body or multipart fields go to the model's handler as they came (route ``"torchserve"``),
  and its answer is the response body, as TorchServe answers with what its handler returns.
  The built-in handlers answer as TorchServe's do: a classifier's row is an object
  ``{label: probability}`` of its top classes, one row is answered by itself, several by a
  list. (TorchServe's worker keeps only the last of several same-named fields; the built-in
  handlers answer every file, in order.)
- ``GET /models``, ``/models/{model}``, ``/models/{model}/all``, ``/models/{model}/{version}``
  describe models in the management API's shape (TorchServe serves them on port 8081).
- Errors are ``{"code": 404, "type": "ModelNotFoundException", "message": ...}`` with the
  statuses every protocol gives (``torchferry.errors``). A version may be written
  TorchServe's way: ``/predictions/m/1.0``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from torchferry.errors import (
    ModelNotFound,
    TorchferryError,
)
from torchferry.serving.describe import torchserve_description, version_record
from torchferry.serving.hotpath import hot
from torchferry.serving.protocols.common import (
    JSONResponse,
    Protocol,
    as_error,
    error_response,
    http_traffic_key,
    plane_of,
)
from torchferry.serving.protocols.openapi_schemas import (
    INFER_STATUSES,
    READ_STATUSES,
    ErrorBody,
    TorchServeError,
    TorchServeModels,
    TorchServeStatus,
    errors,
)
from torchferry.serving.protocols.payload import read_payload
from torchferry.serving.repository import LoadedModel
from torchferry.serving.torchserve_rules import VersionNotFound, error_type, plain_version


def torchserve_error(error: TorchferryError) -> Response:
    """An error in TorchServe's body shape, with the status every protocol gives it."""
    body = {"code": error.status_code, "type": error_type(error), "message": error.message}
    return error_response(error, body)


class TorchServeRoute(APIRoute):
    """Answers this protocol's errors in TorchServe's shape instead of ``{"error": ...}``,
    on FastAPI's path and on the lean one (``answer_error``, see ``hotpath.py``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return self.answer_error(request, exc)

        return route

    def answer_error(self, request: Request, exc: Exception) -> Response:
        return torchserve_error(as_error(exc, f"{request.method} {request.scope['path']}"))


router = APIRouter(tags=["TorchServe"], route_class=TorchServeRoute)


def _version(version: str | None) -> str | None:
    return plain_version(version) if version is not None else None


def _model(request: Request, name: str, version: str | None, key: str | None = None) -> LoadedModel:
    plane = plane_of(request)
    plane.versions(name)  # ModelNotFoundException for an unknown model
    try:
        return plane.resolve(name, _version(version), key)
    except ModelNotFound as exc:
        raise VersionNotFound(exc.message) from None


async def _predict(request: Request, name: str, version: str | None) -> Response:
    plane_of(request).authorize_infer(name)  # with --auth: 401/403 before the body is read
    key = None if version else http_traffic_key(request)
    payload = await read_payload(request, "torchserve")
    model = _model(request, name, version, key)  # right before the data plane's entry
    answer = await plane_of(request).predict(model, payload, _version(version), key)
    return JSONResponse(answer)


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
}
#: A body over the limit is refused before any route runs, in the common shape (a chunked one
#: that reaches the route gets TorchServe's)
_REFUSED_AT_THE_DOOR = {413: ErrorBody | TorchServeError}
_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Per request: {label: probability} for classifiers, else the row",
        "content": {
            "application/json": {"schema": {}, "example": {"tabby": 0.43, "tiger_cat": 0.27}}
        },
    },
    **errors(INFER_STATUSES, TorchServeError, _REFUSED_AT_THE_DOOR),
}
_READ = errors(READ_STATUSES, TorchServeError, _REFUSED_AT_THE_DOOR)


@router.get(
    "/ping",
    summary="TorchServe health check",
    response_model=TorchServeStatus,
    responses=errors(
        READ_STATUSES,
        TorchServeError,
        {**_REFUSED_AT_THE_DOOR, 503: TorchServeStatus | TorchServeError},
    ),
)
async def ping(request: Request) -> JSONResponse:
    if plane_of(request).ready:
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
                responses=_PREDICT_RESPONSES,
                operation_id=f"torchserve_{function.__name__}_{method}",
            )
        return function

    return register


@_predict_route("/predictions/{model_name}", "TorchServe prediction, default version")
@hot
async def predictions(request: Request, model_name: str) -> Response:
    return await _predict(request, model_name, None)


@_predict_route("/predictions/{model_name}/{model_version}", "TorchServe prediction, a version")
@hot
async def version_predictions(request: Request, model_name: str, model_version: str) -> Response:
    return await _predict(request, model_name, model_version)


# -- management (read-only) ---------------------------------------------------------------------


def _describe(model: LoadedModel, ready: bool) -> dict[str, Any]:
    return torchserve_description(version_record(model), ready, model.batcher.queued_rows)


@router.get(
    "/models",
    summary="TorchServe management: list models",
    response_model=TorchServeModels,
    responses=_READ,
)
async def list_models(request: Request, limit: int = 100, next_page_token: int = 0) -> Response:
    names = plane_of(request).names()
    start, end = max(0, next_page_token), max(0, next_page_token) + max(1, limit)
    body: dict[str, Any] = {}
    if end < len(names):
        body["nextPageToken"] = str(end)
    body["models"] = [{"modelName": n, "modelUrl": n} for n in names[start:end]]
    return JSONResponse(body)


@router.get(
    "/models/{model_name}",
    summary="TorchServe management: describe a model",
    response_model=list[dict[str, Any]],
    responses=_READ,
)
async def describe(request: Request, model_name: str) -> Response:
    plane = plane_of(request)
    model = plane.resolve(model_name, plane.default_version(model_name))
    return JSONResponse([_describe(model, plane.ready)])


@router.get(
    "/models/{model_name}/all",
    summary="TorchServe management: every version",
    response_model=list[dict[str, Any]],
    responses=_READ,
)
async def describe_all(request: Request, model_name: str) -> Response:
    plane = plane_of(request)
    return JSONResponse([_describe(m, plane.ready) for m in plane.versions(model_name)])


@router.get(
    "/models/{model_name}/{model_version}",
    summary="TorchServe management: a version",
    response_model=list[dict[str, Any]],
    responses=_READ,
)
async def describe_version(request: Request, model_name: str, model_version: str) -> Response:
    model = _model(request, model_name, model_version)
    return JSONResponse([_describe(model, plane_of(request).ready)])


class TorchServe(Protocol):
    """TorchServe's inference API and the read-only part of its management API."""

    name = "torchserve"
    router = router
