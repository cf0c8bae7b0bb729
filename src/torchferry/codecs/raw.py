"""Raw tensor bytes, as the V2 binary tensor extension and gRPC's raw contents carry them.

Little-endian, row-major; BOOL is one byte per element; each BYTES element is a 4-byte
little-endian length followed by its bytes. Numeric tensors decode with ``np.frombuffer``
(zero-copy: the array is a read-only view of the request body) and encode from a view of
the array's memory when it is already contiguous and little-endian.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from torchferry.codecs.datatypes import V2_TO_NUMPY
from torchferry.errors import InvalidInput
from torchferry.redact import type_name

_LENGTH = struct.Struct("<I")


def _wire_dtype(datatype: str, where: str) -> np.dtype:
    try:
        dtype = V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(
            f"{where}: datatype {type_name(datatype)} is not supported; expected one of "
            f"{list(V2_TO_NUMPY)}"
        ) from None
    return dtype.newbyteorder("<") if dtype.kind in "iuf" else dtype


def decode_raw(
    buffer: bytes | memoryview, datatype: str, shape: tuple[int, ...], where: str
) -> np.ndarray:
    """Bytes to an array of ``shape``; a size that does not fit the shape is a clear 400."""
    count = math.prod(shape)
    dtype = _wire_dtype(datatype, where)
    if dtype.kind == "O":
        if count * _LENGTH.size > len(buffer):  # before allocating ``count`` objects
            raise InvalidInput(
                f"{where}: shape {list(shape)} of BYTES needs at least {count * _LENGTH.size} "
                f"bytes (a 4-byte length per element), received {len(buffer)}"
            )
        return _decode_bytes(memoryview(buffer), count, where).reshape(shape)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"{where}: shape {list(shape)} of {datatype} needs {expected} bytes, received "
            f"{len(buffer)}"
        )
    if dtype.kind == "b":
        raw = np.frombuffer(buffer, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise InvalidInput(f"{where}: BOOL bytes must be 0 or 1")
        return raw.view(np.bool_).reshape(shape)
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def _decode_bytes(view: memoryview, count: int, where: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(view):
            raise InvalidInput(
                f"{where}: BYTES data ends after {index} of {count} elements (each element is "
                "a 4-byte little-endian length, then its bytes)"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise InvalidInput(f"{where}: BYTES element {index} claims {length} bytes past the end")
        out[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(
            f"{where}: {len(view) - offset} bytes left over after {count} BYTES elements"
        )
    return out


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")


def encode_raw(array: np.ndarray) -> bytes | memoryview:
    """An array's raw wire bytes (a zero-copy view where the memory already has that layout)."""
    if array.dtype.kind == "O":
        parts: list[bytes] = []
        for value in array.flat:
            data = _as_bytes(value)
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if array.dtype.kind == "b":
        array = array.view(np.uint8)
    elif array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # one flat byte view (also for empty and 0-d arrays, which memoryview.cast refuses)
    flat: Any = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return memoryview(flat)
