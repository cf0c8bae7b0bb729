"""JSON values <-> numpy arrays for the tensor protocols (V2 JSON tensors, V1 rows and columns).

Conversion is strict: the datatype comes from the wire (V2) or the model's signature (V1),
and values that do not fit it (strings in numeric data, fractions in integer data, numbers
out of range, non-booleans for ``BOOL``) are refused with a message naming the tensor. Large
numeric arrays go through numpy in one call, never element by element in Python.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from torchferry.errors import InvalidInput
from torchferry.signature import NUMPY_TO_V2
from torchferry.tensorjson import json_to_array


def element_count(shape: Any, where: str) -> tuple[tuple[int, ...], int]:
    """Check a declared V2 shape (a list of non-negative integers); return it and its size."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInput(f'{where}: "shape" must be a list of integers, received {shape!r}')
    if any(d < 0 for d in shape):
        raise InvalidInput(f'{where}: "shape" {shape} has a negative dimension')
    return tuple(shape), math.prod(shape)


def decode_v2_data(value: Any, datatype: str, shape: Any, where: str) -> np.ndarray:
    """A V2 JSON tensor's ``data`` (flat or nested) to an array of its declared shape."""
    dims, count = element_count(shape, where)
    if not isinstance(value, list):
        raise InvalidInput(f'{where}: "data" must be a JSON array, received {type(value).__name__}')
    array = json_to_array(value, datatype, where)
    if array.size != count:
        raise InvalidInput(
            f"{where}: shape {list(dims)} needs {count} elements, received {array.size}"
        )
    return array.reshape(dims)


def bytes_to_str(array: np.ndarray, b64_fallback: bool = False) -> np.ndarray:
    """An object array of ``bytes`` to one of ``str`` (utf-8), JSON-serializable as it is.

    Bytes that are not utf-8 become ``{"b64": ...}`` with ``b64_fallback``, else are decoded
    with replacement characters.
    """

    def convert(item: object) -> object:
        if not isinstance(item, bytes):
            return item if isinstance(item, str) else str(item)
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            if b64_fallback:
                return {"b64": base64.b64encode(item).decode("ascii")}
            return item.decode("utf-8", "replace")

    return np.asarray(np.frompyfunc(convert, 1, 1)(array), dtype=object).reshape(array.shape)


def to_jsonable(array: np.ndarray, b64_fallback: bool = False) -> Any:
    """An output array in a form orjson writes natively (numpy) or as lists (strings)."""
    if array.dtype.kind == "O":
        return bytes_to_str(array, b64_fallback).tolist()
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array


def encode_v2_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """One V2 output tensor: ``{name, datatype, shape, data}`` with flat, row-major data."""
    datatype = NUMPY_TO_V2.get(array.dtype)
    if datatype is None:
        raise InvalidInput(f"output {name!r} has dtype {array.dtype}, which V2 cannot carry")
    flat = array.reshape(-1)
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "data": to_jsonable(flat),
    }
