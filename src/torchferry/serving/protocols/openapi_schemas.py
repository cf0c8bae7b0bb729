"""What the HTTP routes answer, as the OpenAPI document declares it: a pydantic model per
answer body, and every status each kind of route can give with its error body.

The routes return ready ``Response`` objects (the hot path builds bytes itself), so FastAPI
never validates against these models: they are the published contract only, and the
schemathesis runs in the tests check the answers against it. Error bodies are
``{"error": message}``, except on TorchServe's routes, which answer TorchServe's
``{"code", "type", "message"}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    """A body that may carry more fields than those named (clients must ignore them)."""

    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    error: str


class TorchServeError(BaseModel):
    code: int
    type: str
    message: str


# -- KServe V2 -------------------------------------------------------------------------------


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    #: -1 marks a dynamic dimension
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    version: str
    ready: bool


class ModelConfig(_Open):
    """Triton's ``model_config.proto`` in JSON (the model_configuration extension)."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]


class ModelStats(BaseModel):
    """Triton's statistics extension: one entry per model version."""

    model_stats: list[dict[str, Any]]


class OutputTensor(_Open):
    name: str
    datatype: str
    shape: list[int]
    #: Flat, row-major; absent for an output sent as binary data
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[OutputTensor]


# -- TF-Serving / KServe V1 --------------------------------------------------------------------


class V1Live(BaseModel):
    status: str


class V1Models(BaseModel):
    models: list[str]


class V1VersionStatus(_Open):
    version: str
    state: str
    status: dict[str, Any]


class V1ModelStatus(BaseModel):
    name: str
    ready: bool
    model_version_status: list[V1VersionStatus]


class V1Rows(BaseModel):
    """``instances`` in, ``predictions`` out: one entry per row."""

    predictions: list[Any]


class V1Columns(BaseModel):
    """``inputs`` in, ``outputs`` out: the batch, or ``{name: batch}`` for several outputs."""

    outputs: Any


# -- plain /predict, TorchServe -----------------------------------------------------------------


class PredictResult(BaseModel):
    model_name: str
    model_version: str
    #: One answer per row, as the model's handler writes it
    result: list[Any]


class TorchServeStatus(BaseModel):
    status: str


class TorchServeModel(BaseModel):
    #: TorchServe's field names
    modelName: str
    modelUrl: str


class TorchServeModels(BaseModel):
    models: list[TorchServeModel]
    nextPageToken: str | None = None


# -- statuses ----------------------------------------------------------------------------------

_MEANING = {
    400: "Bad request: malformed body, parameters or version, or an input that does not "
    "match the signature",
    401: "No valid token (with --auth)",
    403: "The token's scopes do not allow this (with --auth)",
    404: "Unknown model or version",
    413: "The body is larger than --max-body-size",
    415: "A content type this route does not take",
    429: "Too many failed tokens from this client (with --auth); retry after Retry-After",
    500: "The model or the server failed",
    503: "Not ready, or overloaded (shed); retry after Retry-After",
    504: "No answer within the request's deadline",
}
#: What any route may answer besides its success (413: the body limit holds on every route).
READ_STATUSES = (400, 401, 403, 404, 413, 429, 500, 503)
#: What a route with a request body (inference) may answer besides its success.
INFER_STATUSES = (*READ_STATUSES, 415, 504)


def errors(
    statuses: tuple[int, ...],
    body: type[BaseModel] = ErrorBody,
    instead: dict[int, Any] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """FastAPI's ``responses`` for ``statuses``, each with ``body`` as its schema, or the
    route's own body for the statuses in ``instead`` (a readiness route's 503)."""
    own = instead or {}
    return {
        status: {
            "description": _MEANING[status],
            "model": own.get(status, body),
        }
        for status in statuses
    }


def without_validation_errors(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` without the 422 answers FastAPI declares on every route with parameters:
    this server answers a malformed request 400 (``common.as_error``), never 422. In place,
    and idempotent (FastAPI caches the document it generates)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document
