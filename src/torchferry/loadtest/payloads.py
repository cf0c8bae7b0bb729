"""The one request a run sends, encoded once for its protocol; and what it holds as tensors.

Inputs come from ``--input FILE.npz`` (named arrays), ``--image FILE`` (raw bytes), or the
model's V2 metadata (zeros of each input's shape, with -1 dims as 1).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from torchferry.codecs.datatypes import V2_TO_NUMPY, datatype_of
from torchferry.codecs.raw import encode_raw
from torchferry.loadtest.generator import GrpcRequest, HttpRequest
from torchferry.loadtest.target import GRPC_SERVICE, BenchError, Target

IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


@dataclass(frozen=True)
class Payload:
    """What one request carries: named arrays, or an image's bytes."""

    arrays: dict[str, np.ndarray] | None = None
    image: bytes | None = None
    image_type: str = "application/octet-stream"

    @property
    def rows(self) -> int:
        """Rows per request (dim 0 of the inputs): one for an image."""
        if self.arrays:
            first = next(iter(self.arrays.values()))
            return int(first.shape[0]) if first.ndim else 1
        return 1

    def describe(self) -> str:
        if self.arrays is not None:
            return ", ".join(
                f"{name} {datatype_of(a)}{list(a.shape)}" for name, a in self.arrays.items()
            )
        return f"image, {len(self.image or b'')} bytes"


def _inputs_of(metadata: dict[str, Any] | None) -> list[dict[str, Any]]:
    if metadata is None:
        return []
    inputs = metadata.get("inputs")
    return inputs if isinstance(inputs, list) else []


def load_npz(path: Path, metadata: dict[str, Any] | None) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise BenchError(f"--input {path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BenchError(f"--input {path}: not a readable .npz file ({exc})") from None
    if not arrays:
        raise BenchError(f"--input {path}: the file holds no arrays")
    expected = [spec["name"] for spec in _inputs_of(metadata)]
    if expected and sorted(arrays) != sorted(expected):
        raise BenchError(
            f"--input {path}: arrays {sorted(arrays)} do not match the model's inputs "
            f"{sorted(expected)}"
        )
    return {name: arrays[name] for name in expected or list(arrays)}


def from_metadata(metadata: dict[str, Any] | None, model: str) -> dict[str, np.ndarray]:
    """Zeros of each input's shape (-1 dims as 1), from the model's V2 metadata."""
    inputs = _inputs_of(metadata)
    if not inputs:
        raise BenchError(
            f"the server gives no V2 metadata for {model!r}, so there is nothing to build "
            "inputs from: give --input FILE.npz or --image FILE"
        )
    arrays = {}
    for spec in inputs:
        datatype = spec.get("datatype", "")
        if datatype not in V2_TO_NUMPY:
            raise BenchError(f"input {spec.get('name')!r} has datatype {datatype!r}: give --input")
        shape = tuple(1 if int(d) < 0 else int(d) for d in spec.get("shape", []))
        if datatype == "BYTES":
            arrays[spec["name"]] = np.full(shape, b"x", dtype=object)
        else:
            arrays[spec["name"]] = np.zeros(shape, dtype=V2_TO_NUMPY[datatype])
    return arrays


def image_payload(path: Path) -> Payload:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BenchError(f"--image {path}: {exc.strerror or exc}") from None
    media = IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return Payload(image=data, image_type=media)


def _v2_bytes_input(payload: Payload, metadata: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """An image as the model's one BYTES input (shape [1]) for the V2 protocols."""
    inputs = _inputs_of(metadata)
    name = inputs[0]["name"] if len(inputs) == 1 else "INPUT"
    return {name: np.array([payload.image], dtype=object)}


def _json_data(array: np.ndarray) -> Any:
    if array.dtype.kind == "O":
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    return array.ravel()


def _http(target: Target, path: str, body: bytes, content_type: str, **extra: str) -> HttpRequest:
    headers = tuple({**target.headers, **extra}.items())
    return HttpRequest(target.prefix + path, body, content_type, headers)


def encode(
    protocol: str, target: Target, payload: Payload, metadata: dict[str, Any] | None
) -> HttpRequest | GrpcRequest:
    """The request for ``protocol``, encoded once."""
    if protocol in ("predict", "torchserve"):
        return _payload_request(protocol, target, payload)
    arrays = payload.arrays if payload.arrays is not None else _v2_bytes_input(payload, metadata)
    if protocol == "grpc":
        return _grpc_request(target, arrays)
    infer = target.v2_path + "/infer"
    if protocol == "v2-json":
        if payload.image is not None:
            raise BenchError(
                "--image over v2-json: BYTES in JSON must be text; use --protocol v2-binary or grpc"
            )
        tensors = [
            {"name": n, "shape": list(a.shape), "datatype": datatype_of(a), "data": _json_data(a)}
            for n, a in arrays.items()
        ]
        body = orjson.dumps({"inputs": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)
        return _http(target, infer, body, "application/json")
    raws = [bytes(encode_raw(a)) for a in arrays.values()]
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": datatype_of(a),
                    "parameters": {"binary_data_size": len(raw)},
                }
                for (n, a), raw in zip(arrays.items(), raws, strict=True)
            ]
        }
    )
    return _http(
        target,
        infer,
        header + b"".join(raws),
        "application/octet-stream",
        **{"Inference-Header-Content-Length": str(len(header))},
    )


def _payload_request(protocol: str, target: Target, payload: Payload) -> HttpRequest:
    if protocol == "predict":
        path = f"/predict/{target.model}" + (
            f"/versions/{target.version}" if target.version else ""
        )
    else:
        path = f"/predictions/{target.model}" + (f"/{target.version}" if target.version else "")
    if payload.image is not None:
        return _http(target, path, payload.image, payload.image_type)
    assert payload.arrays is not None
    data = {name: array.tolist() for name, array in payload.arrays.items()}
    body = orjson.dumps({"data": next(iter(data.values())) if len(data) == 1 else data})
    return _http(target, path, body, "application/json")


def _grpc_request(target: Target, arrays: dict[str, np.ndarray]) -> GrpcRequest:
    from torchferry.serving.protos import inference_pb2 as pb

    message = pb.ModelInferRequest(model_name=target.model, model_version=target.version or "")
    for name, array in arrays.items():
        message.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        message.raw_input_contents.append(bytes(encode_raw(array)))
    metadata = tuple((k.lower(), v) for k, v in target.headers.items())
    return GrpcRequest(f"/{GRPC_SERVICE}/ModelInfer", message.SerializeToString(), metadata)
