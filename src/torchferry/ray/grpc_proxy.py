"""KServe V2 over gRPC through Serve's gRPC proxy.

Serve's proxy hosts any service whose ``add_..._to_server`` function it is given
(``grpc_options.grpc_servicer_functions``): it takes each call, and passes the request
message to the ingress deployment's method of the same name (``ModelInfer``...), whose
return value is the answer. So the replica has one method per RPC of
``inference.GRPCInferenceService``, each calling the worker's own servicer
(``protocols.grpc.InferenceServicer``) with Serve's call context in the shape the servicer
expects. An error keeps its status: the servicer's ``abort`` becomes Serve's status code and
details.

Serve routes a gRPC call to an application by the ``application`` metadata key, needed only
when more than one application runs (the manager is one): tritonclient sends it with
``headers={"application": "torchferry"}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc
from ray.serve.grpc_util import RayServegRPCContext

from torchferry.serving.protocols.grpc import InferenceServicer

#: The RPCs of ``inference.GRPCInferenceService`` that torchferry serves.
RPCS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
)


class Aborted(Exception):
    """The servicer ended the call with a status (already set on Serve's context)."""


class ServeCallContext:
    """What the servicer uses of ``grpc.aio.ServicerContext``, over Serve's context."""

    def __init__(self, context: RayServegRPCContext) -> None:
        self.context = context

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self.context.invocation_metadata()

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.context.set_trailing_metadata(list(metadata))

    def time_remaining(self) -> float | None:
        return None  # Serve's context does not pass the client's deadline on

    async def abort(
        self, code: grpc.StatusCode, details: str, metadata: Sequence[tuple[str, str]] = ()
    ) -> NoReturn:
        self.context.set_code(code)
        self.context.set_details(details)
        self.context.set_trailing_metadata(list(metadata))
        raise Aborted(details)


Method = Callable[[Any, Any, RayServegRPCContext], Awaitable[Any]]


def rpc_method(name: str) -> Method:
    """The replica's method for RPC ``name``: Serve passes the request and its context."""

    async def call(self: Any, request: Any, grpc_context: RayServegRPCContext) -> Any:
        servicer: InferenceServicer = self.grpc_servicer
        return await getattr(servicer, name)(request, ServeCallContext(grpc_context))

    call.__name__ = call.__qualname__ = name
    return call
