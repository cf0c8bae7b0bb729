"""KServe V2 over gRPC with the project's own generated stub: typed ``contents`` (which
tritonclient never sends) and malformed raw requests; then, in process, the typed-contents
decoder and the mapping of errors to status codes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from torchferry.errors import (
    InferenceTimeout,
    InvalidInput,
    ModelError,
    ModelNotReady,
    Overloaded,
    TorchferryError,
)
from torchferry.serving.observe import Observers
from torchferry.serving.protocols.grpc import (
    CONTENTS,
    InferenceServicer,
    decode_contents,
    decode_request,
)
from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub
from torchferry.signature import ModelSignature, TensorSpec

Tensor = pb.ModelInferRequest.InferInputTensor


@pytest.fixture(scope="module")
def stub(live_server) -> Iterator[GRPCInferenceServiceStub]:
    with grpc.insecure_channel(live_server.grpc_target) as channel:
        yield GRPCInferenceServiceStub(channel)


def typed(name: str, datatype: str, shape: list[int], **contents: list) -> Tensor:
    return Tensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


def raw_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": np.float32, "INT64": np.int64}
    return {
        o.name: np.frombuffer(data, dtypes[o.datatype]).reshape(list(o.shape))
        for o, data in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def rpc_error(call: object, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)  # type: ignore[operator]
    return caught.value


def test_typed_contents_in_and_raw_outputs_back(stub):
    x = [float(i) for i in range(8)]
    request = pb.ModelInferRequest(
        model_name="adder", model_version="1", id="t-1",
        inputs=[typed("x", "FP32", [2, 4], fp32_contents=x)],
    )  # fmt: skip
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "t-1" and response.model_version == "1"
    assert not any(o.HasField("contents") for o in response.outputs)
    out = raw_outputs(response)
    np.testing.assert_allclose(out["y"], np.array(x, np.float32).reshape(2, 4) * 2 + 1)
    np.testing.assert_allclose(out["total"], [6.0, 22.0])


def test_typed_int64_fp32_and_requested_outputs(stub):
    request = pb.ModelInferRequest(
        model_name="multi",
        inputs=[
            typed("a", "FP32", [1, 3], fp32_contents=[0.5, 1.5, 2.5]),
            typed("b", "INT64", [1, 3], int64_contents=[1, -2, 2**40]),
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="twice")],
    )
    out = raw_outputs(stub.ModelInfer(request, timeout=30))
    assert list(out) == ["twice"] and out["twice"].tolist() == [[2, -4, 2**41]]


def test_typed_bytes(stub):
    request = pb.ModelInferRequest(
        model_name="strings", inputs=[typed("text", "BYTES", [2], bytes_contents=[b"hi", b""])]
    )
    response = stub.ModelInfer(request, timeout=30)
    shout = response.raw_output_contents[0]
    # each BYTES element raw: a 4-byte little-endian length, then its bytes
    assert shout == b"\x03\x00\x00\x00hi!\x01\x00\x00\x00!"


@pytest.mark.parametrize(
    ("tensors", "raw", "fragments"),
    [
        ([typed("x", "FP32", [2, 4], fp32_contents=[1.0] * 7)], [], ["needs 8 elements, received 7"]),
        ([typed("x", "FP32", [1, 4], fp64_contents=[1.0] * 4)], [], ["travels in fp32_contents"]),
        ([Tensor(name="x", datatype="FP32", shape=[1, 4])], [b"\x00" * 12], ["needs 16 bytes"]),
        ([Tensor(name="x", datatype="FP32", shape=[1, 4])], [b"", b""], ["2 entries for 1 inputs"]),
        ([Tensor(name="x", datatype="FP32", shape=[1, -4])], [b""], ["negative dimension"]),
        ([Tensor(name="x", shape=[1, 4])], [b"\x00" * 16], ["expected datatype FP32, received no"]),
        ([typed("x", "FP32", [1, 4], fp32_contents=[1.0] * 4)], [b"\x00" * 16], ["not both"]),
        ([typed("x", "FP32", [1, 4], fp32_contents=[1.0] * 4)] * 2, [], ["given twice"]),
        ([], [], ["missing input 'x'"]),
    ],
    ids=[
        "count", "wrong-field", "raw-size", "raw-entries", "negative", "no-datatype", "both",
        "twice", "none",
    ],
)  # fmt: skip
def test_malformed_requests_are_invalid_argument(stub, tensors, raw, fragments):
    request = pb.ModelInferRequest(model_name="adder", inputs=tensors, raw_input_contents=raw)
    error = rpc_error(stub.ModelInfer, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    for fragment in fragments:
        assert fragment in error.details()


def test_fp16_has_no_typed_contents(stub):
    request = pb.ModelInferRequest(
        model_name="alltypes", inputs=[typed("in_FP16", "FP16", [1, 2], fp32_contents=[1, 2])]
    )
    error = rpc_error(stub.ModelInfer, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 has no typed contents; send it in raw_input_contents" in error.details()


def test_unknown_model_and_other_calls(stub):
    error = rpc_error(stub.ModelInfer, pb.ModelInferRequest(model_name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "nope" in error.details()
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert not stub.ModelReady(pb.ModelReadyRequest(name="adder", version="x")).ready
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="adder"))
    assert [s.version for s in stats.model_stats] == ["1", "2"]


# -- in process ----------------------------------------------------------------------------------


class Aborted(Exception):
    pass


class FakeContext:
    """What ``grpc.aio.ServicerContext.abort`` records: code, details, trailing metadata;
    the call came with a request id."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "stub-1"),)

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str, metadata: tuple = ()) -> None:
        self.code, self.details, self.metadata = code, details, tuple(metadata)
        raise Aborted


class BrokenPlane:
    """A data plane whose every model lookup fails with ``error``."""

    repository = None
    keys = None  # no --auth

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.observers = Observers()

    def authorize_infer(self, name: str | None) -> None:
        """Without --auth every caller may run every model (as ``DataPlane``'s)."""

    def resolve(self, name: str, version: str | None = None, key: str | None = None) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Overloaded("queue full", retry_after=2.4), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (InferenceTimeout("waited too long"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (ModelNotReady("still loading"), grpc.StatusCode.UNAVAILABLE),
        (ModelError("the model failed"), grpc.StatusCode.INTERNAL),
        (ZeroDivisionError("a bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_every_error_ends_the_call_with_its_status(error, code):
    servicer = InferenceServicer(BrokenPlane(error))  # type: ignore[arg-type]
    context = FakeContext()
    with pytest.raises(Aborted):
        asyncio.run(servicer.ModelInfer(pb.ModelInferRequest(model_name="m"), context))
    # an unexpected exception is named by its type: its message may quote the request
    said = str(error) if isinstance(error, TorchferryError) else type(error).__name__
    assert context.code == code and said in context.details
    assert isinstance(error, TorchferryError) or str(error) not in context.details
    retry = (("retry-after", "2"),) if isinstance(error, Overloaded) else ()
    assert context.metadata == (("x-request-id", "stub-1"), *retry)


@pytest.mark.parametrize("datatype", [t for t in CONTENTS if t != "BYTES"])
def test_every_typed_datatype_decodes_to_its_dtype(datatype):
    field, _ = CONTENTS[datatype]
    dtype = TensorSpec(name="v", datatype=datatype, shape=(-1,)).numpy_dtype
    if dtype.kind == "b":
        values = [True, False, True, True]
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [int(info.min), int(info.max), 0, 1]
    else:
        values = [1.5, -2.0, float(np.finfo(dtype).max), 0.0]
    array = decode_contents(pb.InferTensorContents(**{field: values}), datatype, (2, 2), "v")
    assert array.dtype == dtype and array.shape == (2, 2)
    assert array.ravel().tolist() == np.array(values, dtype).tolist()


@pytest.mark.parametrize(("datatype", "value"), [("INT8", 128), ("INT16", -40000), ("UINT8", 256)])
def test_narrow_integers_out_of_range_are_refused(datatype, value):
    field, _ = CONTENTS[datatype]
    contents = pb.InferTensorContents(**{field: [0, value]})
    with pytest.raises(InvalidInput, match=f"v: {datatype} values must lie in"):
        decode_contents(contents, datatype, (2,), "v")


def test_raw_numeric_inputs_are_views_of_the_request_bytes():
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, 4))
    model = SimpleNamespace(name="m", signature=ModelSignature(inputs=(spec,), outputs=(spec,)))
    data = np.arange(8, dtype="<f4").tobytes()
    request = pb.ModelInferRequest(
        inputs=[Tensor(name="x", datatype="FP32", shape=[2, 4])], raw_input_contents=[data]
    )
    (array,) = decode_request(model, request, None).inputs.values()  # type: ignore[arg-type]
    assert array.tolist() == np.arange(8, dtype=np.float32).reshape(2, 4).tolist()
    assert not array.flags.owndata and not array.flags.writeable  # np.frombuffer, no copy
