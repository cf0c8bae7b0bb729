"""KServe V2 / Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

The gRPC server (``grpc.aio``) runs in the HTTP server's process, on uvicorn's event loop,
over the same repository and batchers, so HTTP and gRPC requests for one model merge into
shared batches. Inputs arrive raw (``raw_input_contents``, what tritonclient sends) or typed
(``contents``); outputs always leave raw (``raw_output_contents``), the one form every V2
client reads. Validation is the HTTP path's: an input's datatype must be the model's, and
``LoadedModel.infer`` checks names, shapes and batch sizes. Besides the protocol's six
calls, Triton's ``ModelConfig`` and ``ModelStatistics`` answer from the same data as the
HTTP extensions. Every error a call raises becomes a gRPC status with its message; none
leaves the call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc import aio

import torchferry
from torchferry.errors import InvalidInput, ModelError, ModelNotFound, Overloaded, TorchferryError
from torchferry.serving.protocols.raw import decode_raw, encode_raw
from torchferry.serving.protocols.v2_extensions import model_config, model_stats
from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)
from torchferry.serving.repository import LoadedModel, ModelRepository
from torchferry.serving.settings import ServerSettings
from torchferry.signature import NUMPY_TO_V2, V2_TO_NUMPY, TensorSpec

log = logging.getLogger("torchferry.grpc")

EXTENSIONS = ["model_configuration", "statistics"]
#: Seconds that in-flight calls get to finish once the server stops, as uvicorn's grace.
STOP_GRACE_S = 30.0
#: V2 datatype -> the ``InferTensorContents`` field that carries it, and that field's dtype.
#: Narrow integers travel widened to 32 bits; FP16 and BF16 have no field (raw only).
CONTENTS: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}
#: An error's HTTP status -> gRPC status code (``Overloaded`` is RESOURCE_EXHAUSTED).
_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: TorchferryError) -> grpc.StatusCode:
    if isinstance(error, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return _CODES.get(error.status_code, grpc.StatusCode.INTERNAL)


# -- tensors -------------------------------------------------------------------------------------


def _shape(dims: Sequence[int], where: str) -> tuple[int, ...]:
    shape = tuple(dims)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{where}: shape {list(shape)} has a negative dimension")
    return shape


def decode_contents(
    contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], where: str
) -> np.ndarray:
    """Typed contents to an array of ``shape``: one conversion through numpy, range-checked
    where a narrow integer type travels in a 32-bit field."""
    if datatype not in CONTENTS:
        raise InvalidInput(
            f"{where}: {datatype} has no typed contents; send it in raw_input_contents"
        )
    field, wide = CONTENTS[datatype]
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        filled = [f.name for f, _ in contents.ListFields()]
        hint = f" ({datatype} travels in {field}; the request filled {filled})" if filled else ""
        raise InvalidInput(
            f"{where}: shape {list(shape)} needs {count} elements, received {len(values)}{hint}"
        )
    dtype = V2_TO_NUMPY[datatype]
    if dtype.kind == "O":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    array = np.fromiter(values, dtype=wide, count=count)
    if dtype != wide:
        info = np.iinfo(dtype)
        if count and (array.min() < info.min or array.max() > info.max):
            raise InvalidInput(f"{where}: {datatype} values must lie in [{info.min}, {info.max}]")
        array = array.astype(dtype)
    return array.reshape(shape)


def decode_inputs(model: LoadedModel, request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's inputs as named arrays (raw ones are read-only views of their bytes)."""
    signature = model.signature
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in the order of the inputs"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        where = f"input {name!r}"
        spec = signature.input(name)
        if name in arrays:
            raise InvalidInput(f"{where} is given twice")
        if tensor.datatype != spec.datatype:
            received = tensor.datatype or "no datatype"
            raise InvalidInput(f"{where}: expected datatype {spec.datatype}, received {received}")
        if "shared_memory_region" in tensor.parameters:
            raise InvalidInput(f"{where}: shared memory is not supported; send the tensor's data")
        shape = _shape(tensor.shape, where)
        if raw:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise InvalidInput(f"{where}: give raw_input_contents or contents, not both")
            arrays[name] = decode_raw(raw[index], tensor.datatype, shape, where)
        else:
            arrays[name] = decode_contents(tensor.contents, tensor.datatype, shape, where)
    return arrays


def requested_outputs(model: LoadedModel, request: pb.ModelInferRequest) -> list[str]:
    """The output names to answer, in the order asked (every output when none is asked)."""
    names: list[str] = []
    for output in request.outputs:
        model.signature.output(output.name)
        where = f"output {output.name!r}"
        if "classification" in output.parameters:
            raise InvalidInput(f"{where}: the classification extension is not supported")
        if "shared_memory_region" in output.parameters:
            raise InvalidInput(f"{where}: shared memory is not supported")
        if output.name not in names:
            names.append(output.name)
    return names or model.signature.output_names


def encode_response(
    model: LoadedModel, request_id: str, names: list[str], results: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request_id
    )
    raw: list[bytes] = []
    for name in names:
        if name not in results:
            raise ModelError(f"model {model.name!r} did not return output {name!r}")
        array = results[name]
        datatype = NUMPY_TO_V2.get(array.dtype)
        if datatype is None:
            raise ModelError(f"output {name!r} has dtype {array.dtype}, which V2 cannot carry")
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        data = encode_raw(array)
        raw.append(data if isinstance(data, bytes) else data.tobytes())
    response.raw_output_contents.extend(raw)
    return response


# -- the service ---------------------------------------------------------------------------------

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)
_Method = Callable[[Any, _Req, aio.ServicerContext], Awaitable[_Resp]]


def _rpc(method: _Method[_Req, _Resp]) -> _Method[_Req, _Resp]:
    """End the call with the error's status and message instead of letting anything escape."""

    @wraps(method)
    async def call(self: Any, request: _Req, context: aio.ServicerContext) -> _Resp:
        try:
            return await method(self, request, context)
        except TorchferryError as exc:
            code = status_code(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.warning("%s -> %s: %s", method.__name__, code.name, exc.message)
            metadata: tuple[tuple[str, str], ...] = ()
            if isinstance(exc, Overloaded):
                metadata = (("retry-after", str(max(1, round(exc.retry_after)))),)
            await context.abort(code, exc.message, metadata)
        except Exception as exc:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
            )
        raise AssertionError("context.abort returned")  # it always raises

    return call


def _tensor_metadata(specs: Sequence[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
        for s in specs
    ]


class InferenceServicer(GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over a model repository."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    @_rpc
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.repository.started)

    @_rpc
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        # as Triton: an unknown model or version is not ready, rather than an error
        try:
            self.repository.get(request.name, request.version or None)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.repository.started)

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="torchferry", version=torchferry.__version__, extensions=EXTENSIONS
        )

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self.repository.get(request.name, request.version or None)
        versions = [model.version] if request.version else self.repository.versions(model.name)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in versions],
            platform=model.runtime.platform,
            inputs=_tensor_metadata(model.signature.inputs),
            outputs=_tensor_metadata(model.signature.outputs),
        )

    @_rpc
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        model = self.repository.get(request.model_name, request.model_version or None)
        arrays = decode_inputs(model, request)
        names = requested_outputs(model, request)
        results = await model.infer(arrays)
        return encode_response(model, request.id, names, results)

    @_rpc
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        model = self.repository.get(request.name, request.version or None)
        config = model_config(model, len(self.repository.versions(model.name)))
        response = pb.ModelConfigResponse()
        json_format.ParseDict(config, response.config, ignore_unknown_fields=True)
        return response

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        repository = self.repository
        if not request.name:
            models = repository.all()
        elif request.version:
            models = [repository.get(request.name, request.version)]
        else:
            models = [repository.get(request.name, v) for v in repository.versions(request.name)]
        response = pb.ModelStatisticsResponse()
        for model in models:
            stats = model_stats(model)
            json_format.ParseDict(stats, response.model_stats.add(), ignore_unknown_fields=True)
        return response


# -- lifecycle -----------------------------------------------------------------------------------


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc_server(settings: ServerSettings, repository: ModelRepository) -> aio.Server:
    """Serve ``repository`` over gRPC on ``settings.host:settings.grpc_port``, on the running
    event loop; returns the started server."""
    if settings.grpc_port is None:
        raise ValueError("gRPC is turned off (grpc_port is None)")
    options = [
        # tritonclient lifts its own limits to the maximum: the server's body limit decides
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        # answers are as large as the model makes them, as over HTTP
        ("grpc.max_send_message_length", -1),
        # a port already taken fails loudly instead of being shared with another server
        ("grpc.so_reuseport", 0),
    ]
    server = aio.server(options=options)
    add_GRPCInferenceServiceServicer_to_server(InferenceServicer(repository), server)
    address = _address(settings.host, settings.grpc_port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if not port:
        raise OSError(
            f"cannot listen for gRPC on {address}: is the port taken? Choose another one with "
            "--grpc-port N, or turn gRPC off with --no-grpc"
        )
    await server.start()
    log.info("KServe V2 gRPC on %s", _address(settings.host, port))
    return server


async def stop_grpc_server(server: aio.Server, grace: float = STOP_GRACE_S) -> None:
    """Refuse new calls, let in-flight ones finish (up to ``grace`` seconds), then stop."""
    await server.stop(grace)
