"""KServe V2 / Open Inference Protocol over HTTP, with Triton's ``binary_tensor_data``
(tensors as raw bytes after the JSON, tritonclient's default; see ``v2_binary.py``),
``model_configuration`` and ``statistics`` extensions (what tritonclient and perf_analyzer
ask for).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

import torchferry
from torchferry.codecs.jsonarray import decode_v2_data
from torchferry.codecs.jsonio import loads
from torchferry.errors import InvalidInput
from torchferry.redact import kind_of
from torchferry.serving.dataplane import InferRequest, RequestedOutput
from torchferry.serving.hotpath import hot
from torchferry.serving.protocols.common import (
    TRAFFIC_KEY_HEADER,
    TRAFFIC_KEY_PARAMETER,
    JSONResponse,
    Protocol,
    plane_of,
    traffic_key,
)
from torchferry.serving.protocols.openapi_schemas import (
    READ_STATUSES,
    ErrorBody,
    ModelConfig,
    ModelMetadata,
    ModelReady,
    ModelStats,
    ServerLive,
    ServerMetadata,
    ServerReady,
    errors,
)
from torchferry.serving.protocols.v2_binary import (
    HEADER,
    BinaryReader,
    header_length,
    raw_request_inputs,
    render_response,
    split_body,
)
from torchferry.serving.protocols.v2_docs import INFER_BODY, INFER_RESPONSES, METADATA_RESPONSES
from torchferry.serving.protocols.v2_extensions import model_config, model_metadata, model_stats
from torchferry.serving.protocols.v2_rules import (
    add_input,
    check_input,
    check_output,
    deadline_from,
    priority_from,
)
from torchferry.serving.repository import LoadedModel

router = APIRouter(tags=["KServe V2 / Open Inference Protocol"])

EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]


# -- health and server metadata ----------------------------------------------------------------


_READ = errors(READ_STATUSES)


@router.get(
    "/v2/health/live", summary="Server liveness", response_model=ServerLive, responses=_READ
)
async def server_live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get(
    "/v2/health/ready",
    summary="Server readiness (503 until every model is loaded and batching has started)",
    response_model=ServerReady,
    responses=errors(READ_STATUSES, instead={503: ServerReady | ErrorBody}),
)
async def server_ready(request: Request) -> JSONResponse:
    ready = plane_of(request).ready
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get(
    "/v2",
    summary="Server metadata: name, version and supported extensions",
    response_model=ServerMetadata,
    responses=_READ,
)
async def server_metadata() -> JSONResponse:
    return JSONResponse(
        {"name": "torchferry", "version": torchferry.__version__, "extensions": EXTENSIONS}
    )


# -- statistics (declared before /v2/models/{model_name} so that "stats" is not a model) --------


@router.get(
    "/v2/models/stats",
    summary="Statistics of every model version (Triton's shape)",
    response_model=ModelStats,
    responses=_READ,
)
async def all_stats(request: Request) -> JSONResponse:
    models = plane_of(request).all()
    return JSONResponse({"model_stats": [model_stats(m) for m in models]})


@router.get(
    "/v2/models/{model_name}/stats",
    summary="Statistics of every version of a model",
    response_model=ModelStats,
    responses=_READ,
)
async def stats(request: Request, model_name: str) -> JSONResponse:
    models = plane_of(request).versions(model_name)
    return JSONResponse({"model_stats": [model_stats(m) for m in models]})


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/stats",
    summary="Statistics of one model version",
    response_model=ModelStats,
    responses=_READ,
)
async def version_stats(request: Request, model_name: str, model_version: str) -> JSONResponse:
    model = plane_of(request).resolve(model_name, model_version)
    return JSONResponse({"model_stats": [model_stats(model)]})


# -- model metadata, readiness, configuration ---------------------------------------------------


@router.get(
    "/v2/models/{model_name}",
    summary="Model metadata (default version)",
    response_model=ModelMetadata,
    responses=METADATA_RESPONSES,
)
async def metadata(request: Request, model_name: str) -> JSONResponse:
    plane = plane_of(request)
    model = plane.resolve(model_name)
    versions = [m.version for m in plane.versions(model_name)]
    return JSONResponse(model_metadata(model, versions))


@router.get(
    "/v2/models/{model_name}/versions/{model_version}",
    summary="Model version metadata",
    response_model=ModelMetadata,
    responses=METADATA_RESPONSES,
)
async def version_metadata(request: Request, model_name: str, model_version: str) -> JSONResponse:
    model = plane_of(request).resolve(model_name, model_version)
    return JSONResponse(model_metadata(model, [model.version]))


def _ready(request: Request, model_name: str, model_version: str | None) -> JSONResponse:
    plane = plane_of(request)
    model = plane.resolve(model_name, model_version)
    ready = plane.ready
    return JSONResponse(
        {"name": model.name, "version": str(model.version), "ready": ready},
        status_code=200 if ready else 503,
    )


_READY = errors(READ_STATUSES, instead={503: ModelReady | ErrorBody})


@router.get(
    "/v2/models/{model_name}/ready",
    summary="Model readiness (default version)",
    response_model=ModelReady,
    responses=_READY,
)
async def ready(request: Request, model_name: str) -> JSONResponse:
    return _ready(request, model_name, None)


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready",
    summary="Model version readiness",
    response_model=ModelReady,
    responses=_READY,
)
async def version_ready(request: Request, model_name: str, model_version: str) -> JSONResponse:
    return _ready(request, model_name, model_version)


@router.get(
    "/v2/models/{model_name}/config",
    summary="Triton-style model configuration (model_configuration extension)",
    response_model=ModelConfig,
    responses=_READ,
)
async def config(request: Request, model_name: str) -> JSONResponse:
    plane = plane_of(request)
    model = plane.resolve(model_name)
    return JSONResponse(model_config(model, len(plane.versions(model_name))))


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/config",
    summary="Triton-style model version configuration",
    response_model=ModelConfig,
    responses=_READ,
)
async def version_config(request: Request, model_name: str, model_version: str) -> JSONResponse:
    plane = plane_of(request)
    model = plane.resolve(model_name, model_version)
    return JSONResponse(model_config(model, len(plane.versions(model_name))))


# -- inference ----------------------------------------------------------------------------------


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, received {kind_of(value)}")
    return value


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f'{where}: "parameters" must be a JSON object')
    return value


def _request_id(value: Any) -> str | None:
    """The request's ``id``, a string in V2 (echoed in the answer, whose schema says so)."""
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f'the request\'s "id" must be a string, received {kind_of(value)}')
    return value


def _flag(params: dict[str, Any], key: str, where: str, default: bool) -> bool:
    """A boolean parameter of the binary extension (absent: ``default``)."""
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(
            f"{where}: parameters.{key} must be true or false, received {kind_of(value)}"
        )
    return value


def _decode_input(
    model: LoadedModel, index: int, item: Any, binary: BinaryReader
) -> tuple[str, np.ndarray]:
    tensor = _object(item, f"inputs[{index}]")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f'inputs[{index}] needs a "name" string')
    where = f"input {name!r}"
    datatype = tensor.get("datatype")
    params = _parameters(tensor.get("parameters"), where)
    check_input(model, name, datatype if isinstance(datatype, str) else "", params)
    assert isinstance(datatype, str)
    if "binary_data_size" in params:
        return name, binary.take(tensor, datatype, where)
    if "data" not in tensor:
        raise InvalidInput(f'{where} has no "data" and no parameters.binary_data_size')
    return name, decode_v2_data(tensor["data"], datatype, tensor.get("shape"), where)


def decode_request(
    model: LoadedModel,
    version: str | None,
    body: Any,
    binary: memoryview | None = None,
    key: str | None = None,
) -> InferRequest:
    """A V2 infer request (JSON header, plus the binary part of the body if any)."""
    body = _object(body, "the request body")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(
            f'the request needs "inputs", a non-empty list; model {model.name!r} takes '
            f"{model.signature.input_names}"
        )
    reader = BinaryReader(binary)
    arrays: dict[str, np.ndarray] = {}
    for index, item in enumerate(inputs):
        add_input(arrays, *_decode_input(model, index, item, reader))
    reader.finish()
    params = _parameters(body.get("parameters"), "the request")
    request = InferRequest(
        model.name,
        version,
        arrays,
        binary_outputs=_flag(params, "binary_data_output", "the request", False),
        parameters=params,
        id=_request_id(body.get("id")),
        deadline=deadline_from(params.get("timeout")),
        priority=priority_from(params.get("priority")),
        protocol="v2",
        traffic_key=key,
    )
    outputs = body.get("outputs")
    if outputs is None:
        return request
    if not isinstance(outputs, list):
        raise InvalidInput('"outputs" must be a list of {"name": ...} objects')
    for index, item in enumerate(outputs):
        requested = _object(item, f"outputs[{index}]")
        name = requested.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f'outputs[{index}] needs a "name" string')
        out_params = _parameters(requested.get("parameters"), f"output {name!r}")
        check_output(name, out_params)
        wanted = _flag(out_params, "binary_data", f"output {name!r}", request.binary_outputs)
        request.outputs.append(RequestedOutput(name, wanted))
    return request


async def _infer(request: Request, model_name: str, model_version: str | None) -> Response:
    """One V2 inference. A named version is resolved before the body is read (an unknown
    one: 404 first); a routed request once its body is read, since a ``traffic_key``
    parameter there outweighs the header. A version retired meanwhile is the data plane's
    to route again (``DataPlane.infer``). With ``--auth``, a caller who may not run the model
    is refused first, before anything is read."""
    plane = plane_of(request)
    plane.authorize_infer(model_name)
    headers = request.headers
    if model_version:
        model: LoadedModel | None = plane.resolve(model_name, model_version)
    else:  # an unknown model is a 404 whatever the body; the version is picked once it is read
        plane.require(model_name)
        model = None
    key = None if model_version else traffic_key(headers.get(TRAFFIC_KEY_HEADER))
    body = await request.body()
    length = header_length(headers.get(HEADER), len(body))
    if length == 0:  # Triton's raw binary request: the body is the one input, all outputs binary
        if model is None:
            model = plane.resolve(model_name, None, key)
        inputs = raw_request_inputs(model.name, model.signature, body)
        infer = InferRequest(
            model.name,
            model_version,
            inputs,
            binary_outputs=True,
            protocol="v2-binary",
            traffic_key=key,
        )
        return render_response(await plane.infer(model, infer))
    if length is None:
        document, binary = loads(body), None
    else:
        document, binary = split_body(body, length)
    if model is None:
        params = document.get("parameters") if isinstance(document, dict) else None
        if isinstance(params, dict) and TRAFFIC_KEY_PARAMETER in params:
            key = traffic_key(key, params[TRAFFIC_KEY_PARAMETER])  # the request's own key wins
        model = plane.resolve(model_name, None, key)
    infer = decode_request(model, model_version, document, binary, key)
    return render_response(await plane.infer(model, infer))


@router.post(
    "/v2/models/{model_name}/infer",
    summary="Run inference (default version); JSON or binary tensors",
    openapi_extra=INFER_BODY,
    responses=INFER_RESPONSES,
)
@hot
async def infer(request: Request, model_name: str) -> Response:
    return await _infer(request, model_name, None)


@router.post(
    "/v2/models/{model_name}/versions/{model_version}/infer",
    summary="Run inference on one model version; JSON or binary tensors",
    openapi_extra=INFER_BODY,
    responses=INFER_RESPONSES,
)
@hot
async def version_infer(request: Request, model_name: str, model_version: str) -> Response:
    return await _infer(request, model_name, model_version)


class V2Http(Protocol):
    """KServe V2 over HTTP: JSON and binary tensors."""

    name = "v2"
    router = router
