"""KServe V2 JSON <-> ``ModelInferRequest`` / ``ModelInferResponse``, for the console's
gRPC try-it (``grpc_try.py``), with ``struct`` alone: the supervisor never imports numpy.

A request's tensors go as typed contents (``fp32_contents``, ``int64_contents``...), flat
in C order; FP16 and BF16 have no typed field, so a request with one sends every input in
``raw_input_contents`` (the protocol allows no mix). Answers are read from the raw outputs
(little-endian) or from the typed contents, and written as V2's JSON answer, data flat."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from torchferry.errors import InvalidInput
from torchferry.serving.protos import inference_pb2 as pb

#: V2 datatype -> the typed contents field that carries it (narrow integers widened).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
#: V2 datatype -> its ``struct`` format character (little-endian raw tensors); BF16 is
#: read and written through the upper half of an FP32, BYTES is length-prefixed.
RAW_FORMAT = {
    "BOOL": "?",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
RAW_ONLY = ("FP16", "BF16")
DATATYPES = (*CONTENTS_FIELD, *RAW_ONLY)


# -- the request ---------------------------------------------------------------------------


def infer_request(body: object, model: str, version: str | None) -> pb.ModelInferRequest:
    """A V2 JSON inference request body as a ``ModelInferRequest``, or InvalidInput (400)
    naming what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InvalidInput('try-grpc: the body must be a V2 inference request: {"inputs": [...]}')
    inputs = [_input_of(item, i) for i, item in enumerate(body["inputs"])]
    if not inputs:
        raise InvalidInput("try-grpc: the request has no inputs")
    request = pb.ModelInferRequest(model_name=model, model_version=version or "")
    if body.get("id") is not None:
        request.id = str(body["id"])
    _set_parameters(request.parameters, body.get("parameters"), "the request")
    raw = any(datatype in RAW_ONLY for _, datatype, _, _, _ in inputs)
    for name, datatype, shape, values, parameters in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        _set_parameters(tensor.parameters, parameters, f"input {name!r}")
        try:
            if datatype == "BOOL" and not all(isinstance(v, bool) for v in values):
                raise TypeError("BOOL elements must be true or false")
            if raw:
                request.raw_input_contents.append(pack_raw(values, datatype))
            else:
                _fill_contents(tensor.contents, values, datatype)
        except (TypeError, ValueError, struct.error, OverflowError) as exc:
            raise InvalidInput(f"try-grpc: input {name!r}: {datatype} data: {exc}") from None
    for item in body.get("outputs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput('try-grpc: each output must be {"name": ...}')
        output = request.outputs.add(name=item["name"])
        _set_parameters(output.parameters, item.get("parameters"), f"output {item['name']!r}")
    return request


def _input_of(item: object, index: int) -> tuple[str, str, list[int], list[Any], object]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInput(f"try-grpc: input {index} must be an object with a name")
    name: str = item["name"]
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidInput(
            f"try-grpc: input {name!r}: datatype {datatype!r} is not one of {list(DATATYPES)}"
        )
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"try-grpc: input {name!r}: shape must be a list of sizes >= 0")
    if "data" not in item:
        raise InvalidInput(f"try-grpc: input {name!r} has no data")
    values = list(_flat(item["data"]))
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"try-grpc: input {name!r}: shape {shape} needs {count} elements, "
            f"the data has {len(values)}"
        )
    return name, datatype, shape, values, item.get("parameters")


def _flat(data: object) -> Iterable[Any]:
    """Nested lists in C order; a scalar is one element."""
    if isinstance(data, list):
        for item in data:
            yield from _flat(item)
    else:
        yield data


def _as_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"BYTES elements must be strings, not {type(value).__name__}")


def _fill_contents(contents: pb.InferTensorContents, values: list[Any], datatype: str) -> None:
    if datatype == "BYTES":
        contents.bytes_contents.extend(_as_bytes(v) for v in values)
        return
    getattr(contents, CONTENTS_FIELD[datatype]).extend(values)


def pack_raw(values: list[Any], datatype: str) -> bytes:
    """Flat values as the little-endian bytes of ``datatype``."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in map(_as_bytes, values))
    if datatype == "BF16":
        wide = struct.pack(f"<{len(values)}f", *values)
        return b"".join(wide[i + 2 : i + 4] for i in range(0, len(wide), 4))
    return struct.pack(f"<{len(values)}{RAW_FORMAT[datatype]}", *values)


def _set_parameters(target: Any, parameters: object, where: str) -> None:
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise InvalidInput(f"try-grpc: the parameters of {where} must be an object")
    for key, value in parameters.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        elif isinstance(value, str):
            slot.string_param = value
        else:
            raise InvalidInput(
                f"try-grpc: parameter {key!r} of {where} must be a boolean, number or string"
            )


# -- the answer ----------------------------------------------------------------------------


def response_json(response: pb.ModelInferResponse) -> dict[str, Any]:
    """V2's JSON answer: model, version, id, and each output's name, datatype, shape and
    flat data."""
    outputs: list[dict[str, Any]] = []
    for index, output in enumerate(response.outputs):
        count = math.prod(output.shape)
        if index < len(response.raw_output_contents):
            data = unpack_raw(response.raw_output_contents[index], output.datatype, count)
        else:
            data = _typed_values(output.contents, output.datatype)
        answer: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
            "data": data,
        }
        if output.parameters:
            answer["parameters"] = _parameters_json(output.parameters)
        outputs.append(answer)
    answer = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        answer["id"] = response.id
    if response.parameters:
        answer["parameters"] = _parameters_json(response.parameters)
    answer["outputs"] = outputs
    return answer


def unpack_raw(raw: bytes, datatype: str, count: int) -> list[Any]:
    """Little-endian bytes of ``datatype`` as flat values (BYTES as text where it is UTF-8)."""
    if datatype == "BYTES":
        values: list[Any] = []
        at = 0
        while at < len(raw):
            (size,) = struct.unpack_from("<I", raw, at)
            values.append(_text(raw[at + 4 : at + 4 + size]))
            at += 4 + size
        return values
    if datatype == "BF16":
        wide = b"".join(b"\0\0" + raw[i : i + 2] for i in range(0, len(raw), 2))
        return list(struct.unpack(f"<{len(wide) // 4}f", wide))
    return list(struct.unpack(f"<{count}{RAW_FORMAT[datatype]}", raw))


def _typed_values(contents: pb.InferTensorContents, datatype: str) -> list[Any]:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        return []
    values = list(getattr(contents, field))
    return [_text(v) for v in values] if datatype == "BYTES" else values


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _parameters_json(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
        for key, value in parameters.items()
    }
