"""TF-Serving / KServe V1 REST: ``:predict`` with rows (``instances``) or columns (``inputs``).

Values are JSON numbers or nested lists whose datatype comes from the model's signature;
binary values are ``{"b64": "..."}``. Answers are ``{"predictions": [one per row]}`` for
rows and ``{"outputs": ...}`` for columns; a non-utf-8 ``BYTES`` output is sent as
``{"b64": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from torchferry.codecs.jsonarray import json_to_array, json_to_batch, to_jsonable
from torchferry.codecs.jsonio import loads
from torchferry.errors import InvalidInput
from torchferry.serving.dataplane import InferRequest
from torchferry.serving.hotpath import hot
from torchferry.serving.protocols.common import (
    JSONResponse,
    Protocol,
    http_traffic_key,
    plane_of,
)
from torchferry.serving.protocols.openapi_schemas import (
    INFER_STATUSES,
    READ_STATUSES,
    V1Columns,
    V1Live,
    V1Models,
    V1ModelStatus,
    V1Rows,
    errors,
)
from torchferry.signature import ModelSignature, TensorSpec

router = APIRouter(tags=["TF-Serving / KServe V1 REST"])

_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": 'Exactly one of "instances" (rows) or "inputs" (columns).',
                    "properties": {
                        "signature_name": {"type": "string"},
                        "instances": {
                            "type": "array",
                            "description": "One value per row, or one {input_name: value} "
                            'object per row; binary values as {"b64": "..."}.',
                            "items": {},
                        },
                        "inputs": {
                            "description": "The single input's batch, or {input_name: batch}.",
                        },
                    },
                },
                "example": {"instances": [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]},
            }
        },
    }
}
_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": '{"predictions": [one per row]} for instances, {"outputs": ...} for inputs',
        "model": V1Rows | V1Columns,
        "content": {"application/json": {"example": {"predictions": [[3.0, 5.0], [11.0, 13.0]]}}},
    },
    **errors(INFER_STATUSES),
}
_READ = errors(READ_STATUSES)


def _is_b64(value: object) -> bool:
    return isinstance(value, Mapping) and set(value) == {"b64"}


def _column(spec: TensorSpec, value: Any, *, columnar: bool) -> np.ndarray:
    where = f"input {spec.name!r}"
    if columnar:  # a single unbatched row is allowed
        return json_to_batch(value, spec.datatype, len(spec.shape), where, allow_b64=True)
    return json_to_array(value, spec.datatype, where, allow_b64=True)


def inputs_from_rows(signature: ModelSignature, instances: Any) -> dict[str, np.ndarray]:
    """``instances``: one value per row, or one ``{input_name: value}`` object per row."""
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list, one entry per row')
    names = signature.input_names
    named = [isinstance(row, Mapping) and not _is_b64(row) for row in instances]
    if not any(named) and len(names) == 1:
        return {names[0]: _column(signature.inputs[0], instances, columnar=False)}
    if not all(named):
        row = named.index(False)
        raise InvalidInput(
            f"instance {row} is not an object {{input_name: value}}; the model has inputs "
            f"{names}, so each instance must name them"
            if len(names) > 1
            else f"instance {row} is a plain value while others are objects; use one form"
        )
    for index, row in enumerate(instances):
        unknown = [k for k in row if k not in names]
        if unknown:
            signature.input(unknown[0])
        missing = [n for n in names if n not in row]
        if missing:
            raise InvalidInput(
                f"instance {index} has no input {missing[0]!r}; the model needs {names}"
            )
    return {
        spec.name: _column(spec, [row[spec.name] for row in instances], columnar=False)
        for spec in signature.inputs
    }


def inputs_from_columns(signature: ModelSignature, inputs: Any) -> dict[str, np.ndarray]:
    """``inputs``: the single input's batch, or ``{input_name: batch}``."""
    if isinstance(inputs, Mapping) and not _is_b64(inputs):
        if not inputs:
            raise InvalidInput(f'"inputs" is empty; the model needs {signature.input_names}')
        return {
            str(k): _column(signature.input(str(k)), v, columnar=True) for k, v in inputs.items()
        }
    if len(signature.inputs) != 1:
        raise InvalidInput(
            f'the model has several inputs {signature.input_names}; send "inputs" as an '
            "object mapping each input name to its batch"
        )
    return {signature.inputs[0].name: _column(signature.inputs[0], inputs, columnar=True)}


def predictions(outputs: Mapping[str, np.ndarray], names: list[str]) -> Any:
    """One prediction per row: the row itself, or ``{output_name: row}`` for several outputs."""
    columns = {name: to_jsonable(outputs[name], b64_fallback=True) for name in names}
    if len(columns) == 1:
        return next(iter(columns.values()))
    rows = min(len(c) for c in columns.values())
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)]


def columns(outputs: Mapping[str, np.ndarray], names: list[str]) -> Any:
    if len(names) == 1:
        return to_jsonable(outputs[names[0]], b64_fallback=True)
    return {name: to_jsonable(outputs[name], b64_fallback=True) for name in names}


async def _predict(request: Request, model_name: str, model_version: str | None) -> JSONResponse:
    plane = plane_of(request)
    plane.authorize_infer(model_name)  # with --auth: 401/403 before the body is read
    key = None if model_version else http_traffic_key(request)
    model = plane.resolve(model_name, model_version, key)
    body = loads(await request.body())
    if not isinstance(body, dict):
        raise InvalidInput('the request body must be a JSON object with "instances" or "inputs"')
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise InvalidInput(
            'send exactly one of "instances" (row format) or "inputs" (columnar format)'
            + ("; the request has both" if has_rows else "")
        )
    signature = model.signature
    if has_rows:
        arrays = inputs_from_rows(signature, body["instances"])
    else:
        arrays = inputs_from_columns(signature, body["inputs"])
    response = await plane.infer(
        model, InferRequest(model.name, model_version, arrays, protocol="v1", traffic_key=key)
    )
    outputs = {tensor.name: tensor.array for tensor in response.outputs}
    names = list(outputs)
    if has_rows:
        return JSONResponse({"predictions": predictions(outputs, names)})
    return JSONResponse({"outputs": columns(outputs, names)})


def _status(ready: bool, name: str, versions: list[int]) -> dict[str, Any]:
    return {
        "name": name,
        "ready": ready,
        "model_version_status": [
            {
                "version": str(v),
                "state": "AVAILABLE" if ready else "LOADING",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in versions
        ],
    }


@router.get("/", summary="Server liveness (KServe V1)", response_model=V1Live, responses=_READ)
async def server_live() -> JSONResponse:
    # what KServe's ModelServer answers, and its V1 REST client's is_server_live asks
    return JSONResponse({"status": "alive"})


@router.get(
    "/v1/models",
    summary="Names of the loaded models (KServe V1)",
    response_model=V1Models,
    responses=_READ,
)
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"models": plane_of(request).names()})


@router.post(
    "/v1/models/{model_name}:predict",
    summary="Predict with the default version (rows or columns)",
    openapi_extra=_PREDICT_BODY,
    responses=_PREDICT_RESPONSES,
)
@hot
async def predict(request: Request, model_name: str) -> JSONResponse:
    return await _predict(request, model_name, None)


@router.post(
    "/v1/models/{model_name}/versions/{model_version}:predict",
    summary="Predict with one model version (rows or columns)",
    openapi_extra=_PREDICT_BODY,
    responses=_PREDICT_RESPONSES,
)
@hot
async def version_predict(request: Request, model_name: str, model_version: str) -> JSONResponse:
    return await _predict(request, model_name, model_version)


@router.post(
    "/v1/models/{model_name}/predictions",
    summary="Alias of :predict with the default version",
    openapi_extra=_PREDICT_BODY,
    responses=_PREDICT_RESPONSES,
)
@hot
async def predictions_alias(request: Request, model_name: str) -> JSONResponse:
    return await _predict(request, model_name, None)


@router.post(
    "/v1/models/{model_name}/versions/{model_version}/predictions",
    summary="Alias of :predict with one model version",
    openapi_extra=_PREDICT_BODY,
    responses=_PREDICT_RESPONSES,
)
@hot
async def version_predictions_alias(
    request: Request, model_name: str, model_version: str
) -> JSONResponse:
    return await _predict(request, model_name, model_version)


def _not_a_predict_path(last: str) -> None:
    """``GET .../NAME:predict`` fits the status route's template too, but names the predict
    route (no model name or version has a colon): it is that route's wrong method."""
    if last.endswith(":predict"):
        raise StarletteHTTPException(405)


@router.get(
    "/v1/models/{model_name}",
    summary="Model status: every loaded version",
    response_model=V1ModelStatus,
    responses=_READ,
)
async def model_status(request: Request, model_name: str) -> JSONResponse:
    _not_a_predict_path(model_name)
    plane = plane_of(request)
    plane.resolve(model_name)
    versions = [m.version for m in plane.versions(model_name)]
    return JSONResponse(_status(plane.ready, model_name, versions))


@router.get(
    "/v1/models/{model_name}/versions/{model_version}",
    summary="Status of one model version",
    response_model=V1ModelStatus,
    responses=_READ,
)
async def version_status(request: Request, model_name: str, model_version: str) -> JSONResponse:
    _not_a_predict_path(model_version)
    plane = plane_of(request)
    model = plane.resolve(model_name, model_version)
    return JSONResponse(_status(plane.ready, model_name, [model.version]))


class V1(Protocol):
    """TF-Serving / KServe V1 REST."""

    name = "v1"
    router = router
