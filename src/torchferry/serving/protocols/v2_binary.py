"""Triton's binary tensor data extension (``binary_tensor_data``) for V2 over HTTP.

A request whose ``Inference-Header-Content-Length`` header is N > 0 carries a JSON header in
its first N bytes and, after it, the bytes of every input that has
``parameters.binary_data_size``, in the order those inputs appear in the JSON (raw layout in
``raw.py``). Numeric inputs decode with ``np.frombuffer`` over a memoryview of the body, so
the arrays the model receives are views of the request body, never copies.

``Inference-Header-Content-Length: 0`` is Triton's raw binary request: the whole body is the
single input of a single-input model, and every output is answered as binary. Its shape comes
from the signature, as Triton takes it from the model configuration: the batch dimension
(dim 0, when dynamic) is 1, and at most one other dynamic dimension is deduced from the byte
count; a BYTES input must then have one element, and the whole body is that element.

Outputs asked for as binary (``binary_data: true`` on a requested output, or
``binary_data_output: true`` on the request for outputs without their own setting) carry
``parameters.binary_data_size`` and no ``data``; the response body is the JSON header followed
by their bytes in output order, with ``Inference-Header-Content-Length`` giving the JSON's
length and content type ``application/octet-stream``, as Triton answers.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from starlette.responses import Response

from torchferry.codecs.datatypes import V2_TO_NUMPY
from torchferry.codecs.jsonarray import element_count, to_jsonable
from torchferry.codecs.jsonio import dumps, loads
from torchferry.codecs.raw import decode_raw, encode_raw
from torchferry.errors import InvalidInput
from torchferry.redact import count_or_kind
from torchferry.serving.dataplane import InferResponse, OutputTensor
from torchferry.serving.protocols.common import BytesResponse
from torchferry.signature import ModelSignature

HEADER = "Inference-Header-Content-Length"
_HEADER_RAW = HEADER.lower().encode("latin-1")
_RAW_REQUEST = f"a raw binary request ({HEADER}: 0)"
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")


def header_length(value: str | None, body_size: int) -> int | None:
    """The JSON header's length from the request header (None when absent), checked."""
    if value is None:
        return None
    text = value.strip()
    length = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else -1
    if length < 0:
        # a number is named; anything else only by its length (a header may carry anything)
        received = text if _INTEGER.fullmatch(text) else f"{len(text)} characters of text"
        raise InvalidInput(f"{HEADER} must be a non-negative integer, received {received}")
    if length > body_size:
        raise InvalidInput(f"{HEADER} is {length} but the request body has only {body_size} bytes")
    return length


def split_body(body: bytes, length: int) -> tuple[Any, memoryview]:
    """The parsed JSON header (the first ``length`` bytes) and a view of the rest."""
    view = memoryview(body)
    what = f"the JSON header (the first {length} bytes of the body, per {HEADER})"
    return loads(view[:length], what), view[length:]


class BinaryReader:
    """Hands out the binary part of a request body to the binary inputs, in order."""

    def __init__(self, data: memoryview | None) -> None:
        self.data = data
        self.offset = 0
        self.last: str | None = None

    def take(self, tensor: dict[str, Any], datatype: str, where: str) -> np.ndarray:
        """The array of one input that has ``parameters.binary_data_size``."""
        size = tensor["parameters"]["binary_data_size"]
        if self.data is None:
            raise InvalidInput(
                f"{where} has parameters.binary_data_size but the request has no {HEADER} "
                "header to say where the JSON ends and the binary data begins"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(
                f"{where}: binary_data_size must be a non-negative integer, received "
                f"{count_or_kind(size)}"
            )
        if "data" in tensor:
            raise InvalidInput(f'{where} has both "data" and parameters.binary_data_size')
        remaining = len(self.data) - self.offset
        if size > remaining:
            raise InvalidInput(
                f"{where}: binary_data_size is {size} bytes but only {remaining} bytes of "
                "binary data are left in the body"
            )
        dims, _ = element_count(tensor.get("shape"), where)
        array = decode_raw(self.data[self.offset : self.offset + size], datatype, dims, where)
        self.offset += size
        self.last = where
        return array

    def finish(self) -> None:
        """Every byte after the JSON header must belong to a binary input."""
        if self.data is None or self.offset == len(self.data):
            return
        left = len(self.data) - self.offset
        if self.last is None:
            raise InvalidInput(
                f"the body has {left} bytes after the JSON header but no input has "
                "parameters.binary_data_size"
            )
        raise InvalidInput(
            f"{left} bytes left over after the binary data of {self.last}: the binary_data_size "
            f"values add up to {self.offset} bytes, the body has {len(self.data)} after the "
            "JSON header"
        )


def raw_request_inputs(name: str, signature: ModelSignature, body: bytes) -> dict[str, np.ndarray]:
    """The one input of a raw binary request (the whole body), shaped from the signature."""
    if len(signature.inputs) != 1:
        raise InvalidInput(
            f"{_RAW_REQUEST} needs a model with one input; model {name!r} takes "
            f"{signature.input_names}: send a JSON header that names them"
        )
    spec = signature.inputs[0]
    where = f"input {spec.name!r}"
    if not body:
        raise InvalidInput(f"{_RAW_REQUEST} has an empty body; {where} needs its bytes")
    shape = list(spec.shape)
    if shape and shape[0] == -1:
        shape[0] = 1  # a raw request is one row, as Triton treats it
    if spec.datatype == "BYTES":
        shape = [1 if d == -1 else d for d in shape]
        if math.prod(shape) != 1:
            raise InvalidInput(
                f"{_RAW_REQUEST} of BYTES needs an input of one element; {where} has shape "
                f"{list(spec.shape)}"
            )
        array = np.empty(1, dtype=object)
        array[0] = bytes(body)
        return {spec.name: array.reshape(shape)}
    dynamic = [i for i, d in enumerate(shape) if d == -1]
    if len(dynamic) > 1:
        raise InvalidInput(
            f"{_RAW_REQUEST} can deduce at most one dynamic dimension besides the batch; "
            f"{where} has shape {list(spec.shape)}: send a JSON header with the shape"
        )
    if dynamic:
        row = math.prod(d for d in shape if d != -1) * V2_TO_NUMPY[spec.datatype].itemsize
        if row == 0 or len(body) % row:
            raise InvalidInput(
                f"{where}: a raw body of {len(body)} bytes does not fill whole steps of "
                f"{row} bytes for shape {list(spec.shape)} of {spec.datatype}"
            )
        shape[dynamic[0]] = len(body) // row
    return {spec.name: decode_raw(memoryview(body), spec.datatype, tuple(shape), where)}


def binary_output(tensor: OutputTensor) -> tuple[dict[str, Any], bytes | memoryview]:
    """One output's JSON entry (with ``binary_data_size``, no data) and its raw bytes."""
    data = encode_raw(tensor.array)
    entry = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.array.shape),
        "parameters": {"binary_data_size": len(data)},
    }
    return entry, data


def json_output(tensor: OutputTensor) -> dict[str, Any]:
    """One output as a V2 JSON tensor: ``{name, datatype, shape, data}``, flat and row-major."""
    return {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.array.shape),
        "data": to_jsonable(tensor.array.reshape(-1)),
    }


def render_response(response: InferResponse) -> Response:
    """The infer response: plain JSON, or the JSON header then the binary outputs' bytes."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for tensor in response.outputs:
        if tensor.binary:
            entry, data = binary_output(tensor)
            tensors.append(entry)
            chunks.append(data)
        else:
            tensors.append(json_output(tensor))
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id is not None:
        document["id"] = response.id
    document["outputs"] = tensors
    header = dumps(document)
    if not chunks:
        return BytesResponse(header, b"application/json")
    # one copy of each output, into the body; the header says where the JSON ends
    return BytesResponse(
        b"".join([header, *chunks]),
        b"application/octet-stream",
        ((_HEADER_RAW, b"%d" % len(header)),),
    )
