"""KServe V2 / Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

The gRPC server (``grpc.aio``) runs in the HTTP server's process, on uvicorn's event loop,
over the same data plane, so HTTP and gRPC requests for one model merge into shared
batches. Inputs arrive raw (``raw_input_contents``, what tritonclient sends) or typed
(``contents``); outputs always leave raw (``raw_output_contents``), the one form every V2
client reads. The request rules are V2's over HTTP (``v2_rules``), and the data plane
validates names, dtypes and shapes. Besides the protocol's six calls, Triton's
``ModelConfig`` and ``ModelStatistics`` answer from the same documents as the HTTP
extensions. Every error a call raises becomes the gRPC status its class names, with its
message; none leaves the call. Every call gets a request record (route: the method's name;
request id from ``x-request-id`` metadata, echoed in the trailing metadata); a call that
reached a model names the version that served it in the trailing metadata too
(``x-model-version``: it rides on the final status, costing no batch of its own). A routed
``ModelInfer`` takes its traffic key from the request's ``traffic_key`` parameter or the
``x-traffic-key`` metadata. With ``--auth``, the ``authorization`` metadata
(``Bearer <token>``) names the caller, whom the data plane allows or refuses
(UNAUTHENTICATED, PERMISSION_DENIED); ServerLive, ServerReady and ServerMetadata need none.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc import aio

import torchferry
from torchferry.codecs.datatypes import V2_TO_NUMPY
from torchferry.codecs.jsonarray import element_count
from torchferry.codecs.raw import decode_raw, encode_raw
from torchferry.errors import (
    InvalidInput,
    ModelNotFound,
    retry_after_header,
)
from torchferry.serving.auth.keyring import authorization_of
from torchferry.serving.dataplane import DataPlane, InferRequest, InferResponse, RequestedOutput
from torchferry.serving.listen import host_port
from torchferry.serving.protocols.common import (
    TRAFFIC_KEY_HEADER,
    TRAFFIC_KEY_PARAMETER,
    Protocol,
    as_error,
    traffic_key,
)
from torchferry.serving.protocols.grpc_guard import grpc_credentials, grpc_server_options
from torchferry.serving.protocols.v2_extensions import model_config, model_metadata, model_stats
from torchferry.serving.protocols.v2_rules import (
    add_input,
    check_input,
    check_output,
    deadline_from,
    priority_from,
)
from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)
from torchferry.serving.repository import LoadedModel
from torchferry.serving.settings import ServerSettings
from torchferry.serving.tls import ReloadingTLS, TLSFiles

log = logging.getLogger("torchferry.grpc")

EXTENSIONS = ["model_configuration", "statistics"]
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
# -- tensors -------------------------------------------------------------------------------------


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


def grpc_traffic_key(request: pb.ModelInferRequest, header: str | None) -> str | None:
    """A routed call's traffic key: its ``traffic_key`` parameter, else ``header`` (its
    ``x-traffic-key`` metadata, read by ``_rpc``)."""
    return traffic_key(header, _parameter(request, TRAFFIC_KEY_PARAMETER))


def decode_request(
    model: LoadedModel,
    request: pb.ModelInferRequest,
    deadline: float | None,
    key: str | None = None,
) -> InferRequest:
    """The request's inputs as named arrays (raw ones are read-only views of their bytes) and
    the outputs it asks for, in order (every output when it names none)."""
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
        check_input(model, name, tensor.datatype, tensor.parameters)
        shape, _ = element_count(list(tensor.shape), where)
        if raw:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise InvalidInput(f"{where}: give raw_input_contents or contents, not both")
            array = decode_raw(raw[index], tensor.datatype, shape, where)
        else:
            array = decode_contents(tensor.contents, tensor.datatype, shape, where)
        add_input(arrays, name, array)
    outputs = []
    for output in request.outputs:
        check_output(output.name, output.parameters)
        outputs.append(RequestedOutput(output.name, binary=True))
    timeout = _parameter(request, "timeout")
    priority = _parameter(request, "priority")
    return InferRequest(
        model.name,
        request.model_version or None,
        arrays,
        outputs,
        binary_outputs=True,
        id=request.id,
        deadline=deadline_from(timeout, deadline),
        priority=priority_from(priority),
        protocol="v2-grpc",
        traffic_key=key,
    )


def _parameter(request: pb.ModelInferRequest, name: str) -> object:
    """A request parameter's value, whichever kind it is given as (the rules refuse a wrong
    kind by its type), or None when absent."""
    if name not in request.parameters:
        return None
    given = request.parameters[name]
    choice = given.WhichOneof("parameter_choice")
    return getattr(given, choice) if choice else None


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    raw: list[bytes] = []
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
        data = encode_raw(tensor.array)
        raw.append(data if isinstance(data, bytes) else data.tobytes())
    message.raw_output_contents.extend(raw)
    return message


# -- the service ---------------------------------------------------------------------------------

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)
#: A call as ``_rpc`` calls it: request, context, and the ``x-traffic-key`` metadata (None
#: when the call has none), read in the one pass over the metadata that ``_rpc`` makes.
_Method = Callable[[Any, _Req, aio.ServicerContext, str | None], Awaitable[_Resp]]
_Servicer = Callable[[Any, _Req, aio.ServicerContext], Awaitable[_Resp]]


def _rpc(method: _Method[_Req, _Resp]) -> _Servicer[_Req, _Resp]:
    """Record the call, and end it with the error's status and message instead of letting
    anything escape; the version that served it (or failed to) goes in the trailing
    metadata, with the request id."""
    name = method.__name__

    @wraps(method)
    async def call(self: Any, request: _Req, context: aio.ServicerContext) -> _Resp:
        observers = self.plane.observers
        request_id = traceparent = tracestate = traffic = None
        invocation = context.invocation_metadata() or ()
        for key, value in invocation:
            if key == "x-request-id":
                request_id = value
            elif key == TRAFFIC_KEY_HEADER:
                traffic = value
            elif key == "traceparent":
                traceparent = value
            elif key == "tracestate":
                tracestate = value
        record = observers.start("v2-grpc", name, request_id, traceparent, tracestate)
        keys = self.plane.keys
        if keys is not None:  # the data plane refuses or allows the caller
            record.grant = keys.authenticate(authorization_of(invocation))
        error = None
        status = "UNKNOWN"
        try:
            try:
                response = await method(self, request, context, traffic)
            except Exception as exc:
                error = as_error(exc, name)
            metadata = [("x-request-id", record.request_id)]
            if record.version is not None:
                metadata.append(("x-model-version", record.version))
            if record.cold_load_s is not None:  # it waited for its model to load
                metadata.append(("torchferry-cold-load", f"{record.cold_load_s:.3f}"))
            if error is None:
                status = "OK"
                context.set_trailing_metadata(tuple(metadata))
                return response
            status = error.grpc_code
            if retry_after := retry_after_header(error):
                metadata.append(("retry-after", retry_after))
            await context.abort(grpc.StatusCode[error.grpc_code], error.message, tuple(metadata))
            raise AssertionError("context.abort returned")  # it always raises
        except asyncio.CancelledError:  # the client went away, or its deadline passed
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            status = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            raise
        finally:
            observers.finish(record, status)

    return call


class InferenceServicer(GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @_rpc
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext, traffic: str | None
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext, traffic: str | None
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready)

    @_rpc
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext, traffic: str | None
    ) -> pb.ModelReadyResponse:
        # as Triton: an unknown model or version is not ready, rather than an error
        try:
            self.plane.resolve(request.name, request.version or None)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.plane.ready)

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext, traffic: str | None
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="torchferry", version=torchferry.__version__, extensions=EXTENSIONS
        )

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext, traffic: str | None
    ) -> pb.ModelMetadataResponse:
        model = self.plane.resolve(request.name, request.version or None)
        if request.version:
            versions = [model.version]
        else:
            versions = [m.version for m in self.plane.versions(model.name)]
        return json_format.ParseDict(model_metadata(model, versions), pb.ModelMetadataResponse())

    @_rpc
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext, traffic: str | None
    ) -> pb.ModelInferResponse:
        self.plane.authorize_infer(request.model_name)  # with --auth: 401/403 before decoding
        version = request.model_version or None
        key = None if version else grpc_traffic_key(request, traffic)
        model = self.plane.resolve(request.model_name, version, key)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        response = await self.plane.infer(model, decode_request(model, request, deadline, key))
        return encode_response(response)

    @_rpc
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: aio.ServicerContext, traffic: str | None
    ) -> pb.ModelConfigResponse:
        model = self.plane.resolve(request.name, request.version or None)
        config = model_config(model, len(self.plane.versions(model.name)))
        response = pb.ModelConfigResponse()
        json_format.ParseDict(config, response.config, ignore_unknown_fields=True)
        return response

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: aio.ServicerContext, traffic: str | None
    ) -> pb.ModelStatisticsResponse:
        plane = self.plane
        if not request.name:
            models = plane.all()
        elif request.version:
            models = [plane.resolve(request.name, request.version)]
        else:
            models = plane.versions(request.name)
        response = pb.ModelStatisticsResponse()
        for model in models:
            stats = model_stats(model)
            json_format.ParseDict(stats, response.model_stats.add(), ignore_unknown_fields=True)
        return response


# -- lifecycle -----------------------------------------------------------------------------------


async def start_grpc_server(
    plane: DataPlane, settings: ServerSettings, port: int, share_port: bool = False
) -> aio.Server:
    """Serve the data plane over gRPC on the settings' host and ``port``, on the running
    event loop, with their limits and TLS (``grpc_guard.py``); returns the started server.
    With ``share_port``, sibling workers listen on the same port (the supervisor has
    checked that no other server holds it)."""
    files = TLSFiles.from_options(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    server = aio.server(
        options=grpc_server_options(settings, share_port),
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )
    add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    address = host_port(settings.host, port)
    try:
        if files is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, grpc_credentials(ReloadingTLS(files)))
    except RuntimeError:  # grpcio raises where older versions returned 0
        bound = 0
    if not bound:
        raise OSError(
            f"cannot listen for gRPC on {address}: is the port taken? Choose another one with "
            "--grpc-port N, or turn gRPC off with --no-grpc"
        )
    await server.start()
    scheme = " (TLS)" if files is not None else ""
    log.info("KServe V2 gRPC on %s%s", host_port(settings.host, bound), scheme)
    return server


class V2Grpc(Protocol):
    """KServe V2 over gRPC on ``--grpc-port`` (off with ``--no-grpc``), sharing the HTTP
    server's event loop and data plane; started once the models serve, stopped (finishing
    its in-flight calls) before they drain."""

    name = "v2-grpc"

    server: aio.Server | None = None
    _stopping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        if settings.grpc_port is not None:
            self.server = await start_grpc_server(
                self.plane, settings, settings.grpc_port, share_port=settings.share_ports
            )

    async def stop(self) -> None:
        """Refuse new calls, let in-flight ones finish (up to ``--drain-timeout``), then stop.

        A worker's drain starts this before the lifespan calls it again: the second call
        waits for the same stop, so the batchers close only after the last call is answered."""
        if self._stopping is None:
            server, self.server = self.server, None
            if server is None:
                return
            self._stopping = asyncio.ensure_future(server.stop(self.settings.drain_timeout_s))
        await asyncio.shield(self._stopping)
