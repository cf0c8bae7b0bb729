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
from torchferry.errors import InvalidInput, ModelError
from torchferry.serving.jsonio import JSONResponse, loads
from torchferry.serving.protocols.codec import decode_v2_data
from torchferry.serving.protocols.common import repository_of
from torchferry.serving.protocols.v2_binary import (
    HEADER,
    BinaryReader,
    header_length,
    raw_request_inputs,
    render_response,
    split_body,
)
from torchferry.serving.protocols.v2_docs import INFER_BODY, INFER_RESPONSES, METADATA_RESPONSES
from torchferry.serving.protocols.v2_extensions import model_config, model_stats
from torchferry.serving.repository import LoadedModel
from torchferry.signature import V2_TO_NUMPY, TensorSpec

router = APIRouter(tags=["KServe V2 / Open Inference Protocol"])

EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata(model: LoadedModel, versions: list[int]) -> dict[str, Any]:
    signature = model.signature
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": model.runtime.platform,
        "inputs": [tensor_metadata(s) for s in signature.inputs],
        "outputs": [tensor_metadata(s) for s in signature.outputs],
    }


# -- health and server metadata ----------------------------------------------------------------


@router.get("/v2/health/live", summary="Server liveness")
async def server_live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get(
    "/v2/health/ready",
    summary="Server readiness (503 until every model is loaded and batching has started)",
)
async def server_ready(request: Request) -> JSONResponse:
    ready = repository_of(request).started
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/v2", summary="Server metadata: name, version and supported extensions")
async def server_metadata() -> JSONResponse:
    return JSONResponse(
        {"name": "torchferry", "version": torchferry.__version__, "extensions": EXTENSIONS}
    )


# -- statistics (declared before /v2/models/{model_name} so that "stats" is not a model) --------


@router.get("/v2/models/stats", summary="Statistics of every model version (Triton's shape)")
async def all_stats(request: Request) -> JSONResponse:
    models = repository_of(request).all()
    return JSONResponse({"model_stats": [model_stats(m) for m in models]})


@router.get("/v2/models/{model_name}/stats", summary="Statistics of every version of a model")
async def stats(request: Request, model_name: str) -> JSONResponse:
    repository = repository_of(request)
    models = [repository.get(model_name, v) for v in repository.versions(model_name)]
    return JSONResponse({"model_stats": [model_stats(m) for m in models]})


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/stats",
    summary="Statistics of one model version",
)
async def version_stats(request: Request, model_name: str, model_version: str) -> JSONResponse:
    model = repository_of(request).get(model_name, model_version)
    return JSONResponse({"model_stats": [model_stats(model)]})


# -- model metadata, readiness, configuration ---------------------------------------------------


@router.get(
    "/v2/models/{model_name}",
    summary="Model metadata (default version)",
    responses=METADATA_RESPONSES,
)
async def metadata(request: Request, model_name: str) -> JSONResponse:
    repository = repository_of(request)
    model = repository.get(model_name)
    return JSONResponse(model_metadata(model, repository.versions(model_name)))


@router.get(
    "/v2/models/{model_name}/versions/{model_version}",
    summary="Model version metadata",
    responses=METADATA_RESPONSES,
)
async def version_metadata(request: Request, model_name: str, model_version: str) -> JSONResponse:
    model = repository_of(request).get(model_name, model_version)
    return JSONResponse(model_metadata(model, [model.version]))


def _ready(request: Request, model_name: str, model_version: str | None) -> JSONResponse:
    repository = repository_of(request)
    model = repository.get(model_name, model_version)
    ready = repository.started
    return JSONResponse(
        {"name": model.name, "version": str(model.version), "ready": ready},
        status_code=200 if ready else 503,
    )


@router.get("/v2/models/{model_name}/ready", summary="Model readiness (default version)")
async def ready(request: Request, model_name: str) -> JSONResponse:
    return _ready(request, model_name, None)


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready", summary="Model version readiness"
)
async def version_ready(request: Request, model_name: str, model_version: str) -> JSONResponse:
    return _ready(request, model_name, model_version)


@router.get(
    "/v2/models/{model_name}/config",
    summary="Triton-style model configuration (model_configuration extension)",
)
async def config(request: Request, model_name: str) -> JSONResponse:
    repository = repository_of(request)
    model = repository.get(model_name)
    return JSONResponse(model_config(model, len(repository.versions(model_name))))


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/config",
    summary="Triton-style model version configuration",
)
async def version_config(request: Request, model_name: str, model_version: str) -> JSONResponse:
    repository = repository_of(request)
    model = repository.get(model_name, model_version)
    return JSONResponse(model_config(model, len(repository.versions(model_name))))


# -- inference ----------------------------------------------------------------------------------


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, received {type(value).__name__}")
    return value


def _flag(params: Any, key: str, where: str, default: bool) -> bool:
    """A boolean parameter of the binary extension (absent: ``default``)."""
    value = params.get(key, default) if isinstance(params, dict) else default
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}: parameters.{key} must be true or false, received {value!r}")
    return value


def _decode_input(
    spec: TensorSpec, tensor: dict[str, Any], where: str, binary: BinaryReader
) -> np.ndarray:
    datatype = tensor.get("datatype")
    if datatype == "BF16":
        raise InvalidInput(
            f"{where}: BF16 is not supported (numpy has no bfloat16); the model expects "
            f"{spec.datatype}"
        )
    if datatype != spec.datatype:
        raise InvalidInput(
            f"{where}: expected datatype {spec.datatype}, received {datatype!r}"
            if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY
            else f"{where}: expected datatype {spec.datatype}, received {datatype}"
        )
    params = tensor.get("parameters")
    if isinstance(params, dict) and "shared_memory_region" in params:
        raise InvalidInput(f"{where}: the shared memory extension is not supported")
    if isinstance(params, dict) and "binary_data_size" in params:
        return binary.take(tensor, datatype, where)
    if "data" not in tensor:
        raise InvalidInput(f'{where} has no "data" and no parameters.binary_data_size')
    return decode_v2_data(tensor["data"], datatype, tensor.get("shape"), where)


def decode_request(
    model: LoadedModel, body: Any, binary: memoryview | None = None
) -> tuple[dict[str, np.ndarray], list[tuple[str, bool]]]:
    """A V2 infer request's inputs as named arrays, and the outputs to answer, each with
    whether it goes back as binary. ``binary`` is the body after the JSON header, if any."""
    body = _object(body, "the request body")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(
            f'the request needs "inputs", a non-empty list; model {model.name!r} takes '
            f"{model.signature.input_names}"
        )
    signature = model.signature
    reader = BinaryReader(binary)
    arrays: dict[str, np.ndarray] = {}
    for index, item in enumerate(inputs):
        tensor = _object(item, f"inputs[{index}]")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f'inputs[{index}] needs a "name" string')
        spec = signature.input(name)
        if name in arrays:
            raise InvalidInput(f"input {name!r} is given twice")
        arrays[name] = _decode_input(spec, tensor, f"input {name!r}", reader)
    reader.finish()
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput('the request\'s "parameters" must be a JSON object')
    all_binary = _flag(params, "binary_data_output", "the request", False)
    outputs = body.get("outputs")
    if outputs is None:
        return arrays, [(name, all_binary) for name in signature.output_names]
    if not isinstance(outputs, list):
        raise InvalidInput('"outputs" must be a list of {"name": ...} objects')
    wanted: dict[str, bool] = {}
    for index, item in enumerate(outputs):
        requested = _object(item, f"outputs[{index}]")
        name = requested.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f'outputs[{index}] needs a "name" string')
        signature.output(name)
        params = requested.get("parameters")
        if isinstance(params, dict) and params.get("classification"):
            raise InvalidInput(f"output {name!r}: the classification extension is not supported")
        if isinstance(params, dict) and "shared_memory_region" in params:
            raise InvalidInput(f"output {name!r}: the shared memory extension is not supported")
        wanted.setdefault(name, _flag(params, "binary_data", f"output {name!r}", all_binary))
    return arrays, list(wanted.items())


async def _infer(request: Request, model_name: str, model_version: str | None) -> Response:
    model = repository_of(request).get(model_name, model_version)
    body = await request.body()
    length = header_length(request.headers.get(HEADER), len(body))
    if length == 0:  # Triton's raw binary request: the body is the one input, all outputs binary
        arrays = raw_request_inputs(model.name, model.signature, body)
        header: Any = {}
        outputs = [(name, True) for name in model.signature.output_names]
    else:
        binary: memoryview | None = None
        if length is None:
            header = loads(body)
        else:
            header, binary = split_body(body, length)
        arrays, outputs = decode_request(model, header, binary)
    results = await model.infer(arrays)
    response: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if header.get("id") is not None:
        response["id"] = header["id"]
    missing = [name for name, _ in outputs if name not in results]
    if missing:
        raise ModelError(f"model {model.name!r} did not return output {missing[0]!r}")
    return render_response(response, results, outputs)


@router.post(
    "/v2/models/{model_name}/infer",
    summary="Run inference (default version); JSON or binary tensors",
    openapi_extra=INFER_BODY,
    responses=INFER_RESPONSES,
)
async def infer(request: Request, model_name: str) -> Response:
    return await _infer(request, model_name, None)


@router.post(
    "/v2/models/{model_name}/versions/{model_version}/infer",
    summary="Run inference on one model version; JSON or binary tensors",
    openapi_extra=INFER_BODY,
    responses=INFER_RESPONSES,
)
async def version_infer(request: Request, model_name: str, model_version: str) -> Response:
    return await _infer(request, model_name, model_version)
