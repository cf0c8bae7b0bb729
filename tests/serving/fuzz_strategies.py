"""Hypothesis strategies for malformed KServe V2 requests: gRPC ``ModelInferRequest``s and V2
binary-extension HTTP bodies, and the rule each answer must keep.

Each request starts near a real one (a served model, its input names and datatypes, a body
whose size fits its shape) and then draws what may go wrong: wrong or unknown datatypes,
shapes that do not match the contents, negative and huge dimensions, raw contents of the
wrong length, typed and raw contents at once, duplicate inputs, unknown outputs, odd
parameters, empty names, many inputs; over HTTP, an ``Inference-Header-Content-Length``
that lies, truncated or non-UTF-8 JSON headers, ``binary_data_size`` that is negative, huge,
not an integer or does not add up, and deeply nested JSON. Near-valid requests reach the
model; the rest test the refusals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
from fuzz_support import grpc_server_error, server_error
from hypothesis import strategies as st

from torchferry.serving.protos import inference_pb2 as pb

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]  # fmt: skip
ODD_DATATYPES = ["BF16", "", "fp32", "FP8", "STRING", "INT128", "FP32 ", "\x00", "é"]
ITEM_SIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "UINT32": 4,
             "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}  # fmt: skip
#: Served models and their inputs (name, datatype, trailing dims after the batch).
MODELS: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {
    "adder": [("x", "FP32", (4,))],
    "faulty": [("x", "FP32", (2,))],
    "multi": [("a", "FP32", (3,)), ("b", "INT64", (3,))],
    "strings": [("text", "BYTES", ())],
    "mlp": [("features", "FP32", (4,))],
    "alltypes": [(f"in_{t}", t, (2,)) for t in DATATYPES],
}
OUTPUTS = ["y", "total", "sum", "twice", "shout", "same", "scores", "out_FP32", "nope", ""]
HUGE = [2**31, 2**32 + 1, 2**62, 2**63 - 1]
NEGATIVE = [-1, -2, -(2**63)]

# Strategies are built once, here: building them inside each draw costs more than the call.
names = st.text(max_size=12)
small_dims = st.lists(st.integers(0, 5), max_size=4)
_SHAPE_KIND = st.sampled_from(["true"] * 4 + ["small", "negative", "huge", "empty"])
_NEGATIVE = st.sampled_from(NEGATIVE)
_HUGE = st.sampled_from(HUGE)
_BYTES_HOW = st.sampled_from(["fit"] * 4 + ["short", "long", "random"])
_SEED = st.integers(0, 2**32 - 1)
_ANY_DATATYPE = st.sampled_from(DATATYPES + ODD_DATATYPES)
_INDEX = st.integers(0, 2**16)


class Fuzz:
    """One case's draws, and whether the case is pristine: a third of the cases are valid
    requests (no odd draw at all), so that the fuzz reaches the models and the encoders as
    well as the refusals."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.pristine = bool(draw(_ONE_IN[3]) == 0)

    def odd(self, n: int) -> bool:
        """True about once in ``n`` draws, never in a pristine case."""
        return not self.pristine and bool(self.draw(_ONE_IN[n]) == 0)


def draw_shape(f: Fuzz, batch: int, trailing: tuple[int, ...]) -> list[int]:
    """The true shape most of the time; else a wrong, negative, huge or empty one."""
    draw = f.draw
    true = [batch, *trailing]
    kind = "true" if f.pristine else draw(_SHAPE_KIND)
    if kind == "true":
        return true
    if kind == "small":
        return draw(small_dims)
    if kind == "empty":
        return []
    index = draw(_INDEX) % len(true)
    true[index] = draw(_NEGATIVE if kind == "negative" else _HUGE)
    return true


def values_bytes(rng: np.random.Generator, datatype: str, count: int) -> bytes:
    """``count`` elements of ``datatype`` in V2's raw layout (BYTES: 4-byte length prefixes),
    random values from ``rng`` (a seed Hypothesis draws: values are not what these test)."""
    if datatype == "BYTES":
        items = [rng.bytes(int(rng.integers(0, 7))) for _ in range(count)]
        return b"".join(len(i).to_bytes(4, "little") + i for i in items)
    if datatype == "BOOL":
        return rng.integers(0, 2, count, dtype=np.uint8).tobytes()
    return rng.bytes(count * ITEM_SIZE[datatype])


def element_guess(shape: list[int]) -> int:
    """The shape's element count when it is small and sane, else 1."""
    return int(np.prod(shape)) if shape and all(0 <= d <= 64 for d in shape) else 1


def draw_bytes(f: Fuzz, datatype: str, shape: list[int]) -> bytes:
    """Bytes that fit the shape (when they can), or a few bytes too many or too few."""
    draw = f.draw
    rng = np.random.default_rng(draw(_SEED))
    fits = datatype in ITEM_SIZE or datatype == "BYTES"
    count = element_guess(shape)
    data = values_bytes(rng, datatype, count) if fits else rng.bytes(int(rng.integers(0, 33)))
    how = "fit" if f.pristine else draw(_BYTES_HOW)
    if how == "short":
        return data[: int(rng.integers(0, max(1, len(data))))]
    if how == "long":
        return data + rng.bytes(int(rng.integers(1, 10)))
    if how == "random":
        return rng.bytes(int(rng.integers(0, 65)))
    return data


# -- gRPC ----------------------------------------------------------------------------------------

CONTENT_FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents",
                  "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"]  # fmt: skip
_TYPED_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}  # fmt: skip


def _parameters() -> st.SearchStrategy[dict[str, pb.InferParameter]]:
    values = st.one_of(
        st.booleans().map(lambda v: pb.InferParameter(bool_param=v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: pb.InferParameter(int64_param=v)),
        st.text(max_size=8).map(lambda v: pb.InferParameter(string_param=v)),
        st.floats().map(lambda v: pb.InferParameter(double_param=v)),
        st.integers(0, 2**64 - 1).map(lambda v: pb.InferParameter(uint64_param=v)),
        st.just(pb.InferParameter()),
    )
    keys = st.sampled_from(["timeout", "binary_data", "classification", "shared_memory_region",
                            "binary_data_size", "traffic_key", "sequence_id", ""]) | names  # fmt: skip
    return st.one_of(st.just({}), st.dictionaries(keys, values, max_size=3))


PARAMETERS = _parameters()
_MODEL = st.sampled_from(list(MODELS))
_SPECS = st.sampled_from(list(MODELS.values()))
_ALLTYPES = st.lists(st.sampled_from(MODELS["alltypes"]), min_size=1, max_size=4, unique=True)
_VERSION = st.sampled_from(["1", "2", "0", "-1", "x", "99", "1.0", " 1"])
_ID = st.sampled_from(["", "fuzz"]) | names
_ODD_NAME = st.sampled_from(["", "X", "x "]) | names
_CONTENT_FIELD = st.sampled_from(CONTENT_FIELDS)
_OUTPUT = st.sampled_from(OUTPUTS) | names
_ONE_IN = {n: st.integers(0, n - 1) for n in (3, 4, 5, 6, 8, 10, 16, 20)}
_BATCH = st.integers(1, 3)
_EXTRA = st.sampled_from(["duplicate", "stranger"])
_OUTPUT_COUNT = st.integers(0, 2)
_COUNT_OFF = st.integers(-1, 1)


def draw_model(f: Fuzz) -> tuple[str, str]:
    """A served model (now and then a made-up name) and a version: none, mostly."""
    model = f.draw(names) if f.odd(8) else f.draw(_MODEL)
    return model, f.draw(_VERSION) if f.odd(4) else ""


def draw_inputs(f: Fuzz, model: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """The model's inputs (a made-up model gets another's), now and then one missing, one
    twice or a stranger."""
    draw = f.draw
    specs = MODELS.get(model) or draw(_SPECS)
    if model == "alltypes":
        specs = draw(_ALLTYPES)
    inputs = list(specs)
    if f.odd(10):
        extra = draw(_EXTRA)
        inputs += inputs[:1] if extra == "duplicate" else [("zz", "FP32", (1,))]
    if f.odd(10) and len(inputs) > 1:
        inputs = inputs[1:]
    return inputs


def _typed(f: Fuzz, tensor: Any, datatype: str, shape: list[int], data: bytes) -> None:
    """Typed contents: the datatype's own field (or now and then another), with as many
    values as the shape holds (or about as many as the raw bytes)."""
    draw = f.draw
    field = _TYPED_FIELD.get(datatype) or draw(_CONTENT_FIELD)
    if f.odd(5):
        field = draw(_CONTENT_FIELD)
    if f.pristine:
        count = element_guess(shape)
    else:
        count = max(0, len(data) // ITEM_SIZE.get(datatype, 4) + draw(_COUNT_OFF))
    rng = np.random.default_rng(draw(_SEED))
    values: Any = {
        "bool_contents": lambda: rng.integers(0, 2, count).astype(bool).tolist(),
        "int_contents": lambda: rng.integers(
            -128 if f.pristine else -(2**31), 128 if f.pristine else 2**31, count
        ).tolist(),
        "int64_contents": lambda: rng.integers(-(2**63), 2**63 - 1, count).tolist(),
        "uint_contents": lambda: rng.integers(0, 256 if f.pristine else 2**32, count).tolist(),
        "uint64_contents": lambda: rng.integers(0, 2**64 - 1, count, dtype=np.uint64).tolist(),
        "fp32_contents": lambda: rng.standard_normal(count).astype(np.float32).tolist(),
        "fp64_contents": lambda: (rng.standard_normal(count) * 1e300).tolist(),
        "bytes_contents": lambda: [rng.bytes(int(rng.integers(0, 5))) for _ in range(count)],
    }[field]()
    getattr(tensor.contents, field).extend(values)


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    f = Fuzz(draw)
    model, version = draw_model(f)
    batch = 0 if f.odd(8) else draw(_BATCH)  # an empty batch, now and then
    typed = draw(st.booleans())
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=draw(_ID))
    odd_parameters = not f.pristine
    if odd_parameters:
        for key, value in draw(PARAMETERS).items():
            request.parameters[key].CopyFrom(value)
    raw: list[bytes] = []
    for name, datatype, trailing in draw_inputs(f, model):
        if f.odd(6):
            datatype = draw(_ANY_DATATYPE)
        if f.odd(16):
            name = draw(_ODD_NAME)
        shape = draw_shape(f, batch, trailing)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if odd_parameters:
            for key, value in draw(PARAMETERS).items():
                tensor.parameters[key].CopyFrom(value)
        data = draw_bytes(f, datatype, shape)
        if typed:
            _typed(f, tensor, datatype, shape, data)
        if not typed or f.odd(10):  # raw, or (wrongly) both
            raw.append(data)
    if f.odd(20):  # the lot forty times over (copies: no more draws)
        tensors = list(request.inputs)
        for _ in range(40):
            request.inputs.extend(tensors)
        raw *= 41
    if raw and f.odd(10):  # one raw entry too many or too few
        raw = raw[:-1] if draw(st.booleans()) else [*raw, b"\x00" * 4]
    request.raw_input_contents.extend(raw)
    for _ in range(0 if f.pristine else draw(_OUTPUT_COUNT)):
        output = request.outputs.add(name=draw(_OUTPUT))
        for key, value in draw(PARAMETERS).items():
            output.parameters[key].CopyFrom(value)
    return request


def grpc_problem(request: pb.ModelInferRequest, error: grpc.RpcError) -> str | None:
    """The invariant for one gRPC answer: a refusal, the injected fault or the client's own
    deadline are fine; any other server error is not."""
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "timeout" in request.parameters:
        return None
    return grpc_server_error(error, request.model_name)


# -- V2 binary over HTTP -------------------------------------------------------------------------


@dataclass
class BinaryCase:
    model: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        versioned = f"/versions/{quote(self.version, safe='')}" if self.version else ""
        return f"/v2/models/{quote(self.model, safe='')}{versioned}/infer"

    def problem(self, status: int, text: str) -> str | None:
        """The invariant for one HTTP answer (504 is fine when the body asked for a timeout)."""
        if status == 504 and b"timeout" in self.body:
            return None
        return server_error(status, f"POST {self.path}", text)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


_SIZE_LIE = st.sampled_from([-1, -(2**63), 2**64, 2**31, 1.5, "8", None, True, [4]])
_BINARY_DATA = st.booleans() | st.integers() | st.none()
_REQUEST_PARAMETER = st.sampled_from(["binary_data_output", "timeout", "x"])
_PARAMETER_VALUE = st.booleans() | st.integers() | st.text(max_size=3)
_HEADER_HOW = st.sampled_from(["good"] * 5 + ["truncated", "non-utf8", "nested", "not-object"])
_BAD_UTF8 = st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x00"])
_DEPTH = st.sampled_from([100, 1000, 5000, 100_000])
_NOT_OBJECT = st.sampled_from([b"[]", b"null", b"1", b'"x"', b"{}", b'{"inputs": {}}'])
_LIE = st.sampled_from(["true"] * 5 + ["off", "negative", "huge", "text", "absent", "body"])
_OFF = st.integers(-5, 5)
_NEGATIVE_TEXT = st.sampled_from(["-1", "-0", "-99999999999999999999"])
_HUGE_LENGTH = st.sampled_from([2**31, 2**64, 10**30])
_TEXT_LENGTH = st.sampled_from(["", "1 2", "12a", "0x10", "1e3", "+5", "1_0"])
_CONTENT_TYPE = st.sampled_from(["application/octet-stream", "application/json", "text/plain", ""])


def _header(draw: st.DrawFn, document: dict[str, Any]) -> bytes:
    """The JSON header, whole most of the time; else truncated, with bytes that are not
    UTF-8, deeply nested, or not an object."""
    header = json.dumps(document).encode()
    how = draw(_HEADER_HOW)
    if how == "truncated":
        return header[: draw(_INDEX) % len(header)]
    if how == "non-utf8":
        at = draw(_INDEX) % (len(header) + 1)
        return header[:at] + draw(_BAD_UTF8) + header[at:]
    if how == "nested":
        depth = draw(_DEPTH)
        return b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    if how == "not-object":
        return draw(_NOT_OBJECT)
    return header


def _length(draw: st.DrawFn, header: bytes, binary: bytes) -> str | None:
    """Inference-Header-Content-Length: true, or off, negative, huge, not a number, absent,
    or the length of the whole body."""
    lie = draw(_LIE)
    if lie == "off":
        return str(max(0, len(header) + draw(_OFF)))
    if lie == "negative":
        return str(draw(_NEGATIVE_TEXT))
    if lie == "huge":
        return str(draw(_HUGE_LENGTH))
    if lie == "text":
        return str(draw(_TEXT_LENGTH))
    if lie == "absent":
        return None
    if lie == "body":
        return str(len(header) + len(binary))
    return str(len(header))


@st.composite
def binary_cases(draw: st.DrawFn) -> BinaryCase:
    f = Fuzz(draw)
    model, version = draw_model(f)
    batch = 0 if f.odd(8) else draw(_BATCH)  # an empty batch, now and then
    inputs = draw_inputs(f, model)
    if draw(_ONE_IN[8]) == 0:  # a raw binary request: the header is 0, the body is the data
        _, datatype, trailing = inputs[0]
        body = draw_bytes(f, datatype, [1, *trailing])
        return BinaryCase(model, version, {"Inference-Header-Content-Length": "0"}, body)
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, datatype, trailing in inputs:
        if f.odd(6):
            datatype = draw(_ANY_DATATYPE)
        shape = draw_shape(f, batch, trailing)
        data = draw_bytes(f, datatype, shape)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if draw(_ONE_IN[10]) == 0:  # a JSON input among the binary ones
            entry["data"] = [0] * element_guess(shape)
        else:
            size = draw(_SIZE_LIE) if f.odd(6) else len(data)
            entry["parameters"] = {"binary_data_size": size}
            blobs.append(data)
        entries.append(entry)
    if f.odd(20):  # the lot forty times over
        entries, blobs = entries * 41, blobs * 41
    document: dict[str, Any] = {"inputs": entries}
    if f.pristine:
        document["parameters"] = {"binary_data_output": draw(st.booleans())}
    elif draw(st.booleans()):
        document["outputs"] = [
            {"name": draw(_OUTPUT), "parameters": {"binary_data": draw(_BINARY_DATA)}}
        ]
    if f.odd(6):
        document["parameters"] = {draw(_REQUEST_PARAMETER): draw(_PARAMETER_VALUE)}
    header = json.dumps(document).encode() if f.pristine else _header(draw, document)
    binary = b"".join(blobs)
    headers = {"Content-Type": "application/octet-stream" if f.pristine else draw(_CONTENT_TYPE)}
    length = str(len(header)) if f.pristine else _length(draw, header, binary)
    if length is not None:
        headers["Inference-Header-Content-Length"] = length
    return BinaryCase(model, version, headers, header + binary)
