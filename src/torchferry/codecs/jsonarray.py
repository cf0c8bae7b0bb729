"""JSON values <-> numpy arrays, strictly: shared by the tensor protocols and the handlers.

The datatype comes from the wire (V2) or the model's signature (V1, ``/predict``); values
that do not fit it (strings in numeric data, fractions in integer data, numbers out of
range, non-booleans for ``BOOL``) are refused with a message naming the tensor. Numeric
arrays go through numpy in one call, never element by element in Python.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from torchferry.codecs.datatypes import V2_TO_NUMPY
from torchferry.errors import InvalidInput
from torchferry.redact import kind_of

_KIND_NAMES = {
    "b": "booleans",
    "U": "strings",
    "S": "strings",
    "O": "values that are not all numbers (null, objects, or integers too large)",
}


def _invalid(where: str, datatype: str, received: str) -> InvalidInput:
    return InvalidInput(f"{where}: expected {datatype} data, received {received}")


def _element(item: Any, allow_b64: bool) -> str | bytes:
    """A BYTES element as it stays: text as ``str`` (encoded once, where bytes are needed),
    ``{"b64": ...}`` as the ``bytes`` it stands for."""
    if isinstance(item, str | bytes):
        return item
    if allow_b64 and isinstance(item, Mapping) and set(item) == {"b64"}:
        encoded = item["b64"]
        if not isinstance(encoded, str):
            raise TypeError("b64")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise TypeError("b64") from None
    raise TypeError(type(item).__name__)


def _bytes_array(value: Any, where: str, allow_b64: bool) -> np.ndarray:
    """Strings, or ``{"b64": ...}`` objects with ``allow_b64``, to an object array."""
    # dtype=object keeps strings whole (fixed-width numpy strings drop trailing NULs); a
    # ragged nesting leaves lists as elements, which _element refuses below.
    try:
        array = np.asarray(value, dtype=object)
    except (ValueError, TypeError):
        raise _invalid(where, "BYTES", "a ragged nested list") from None
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    try:
        for i, item in enumerate(flat):
            out[i] = _element(item, allow_b64)
    except TypeError as exc:
        what = (
            'an invalid {"b64": ...} value'
            if str(exc) == "b64"
            else "values that are not all valid strings (or a ragged nested list); send strings"
        )
        raise _invalid(where, "BYTES", what) from None
    return out.reshape(array.shape)


def json_to_array(value: Any, datatype: str, where: str, *, allow_b64: bool = False) -> np.ndarray:
    """Convert one JSON value (a number, or nested lists) to an array of V2 ``datatype``.

    The array's shape is the nesting's; ``where`` names the tensor in error messages
    (``"input 'x'"``). ``allow_b64`` lets ``BYTES`` values be ``{"b64": "..."}`` (V1).
    """
    want = V2_TO_NUMPY[datatype]
    if want.kind == "O":
        return _bytes_array(value, where, allow_b64)
    if value is None or isinstance(value, Mapping | str):
        received = {type(None): "null", str: "a string"}.get(type(value), "a JSON object")
        raise _invalid(where, datatype, received)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise _invalid(
            where, datatype, "a ragged nested list (rows of different lengths)"
        ) from None
    kind = array.dtype.kind
    if kind in "USO":
        raise _invalid(where, datatype, _KIND_NAMES[kind])
    if want.kind == "b":
        if kind != "b" and array.size:
            raise _invalid(where, datatype, "numbers; send true/false")
        return array.astype(want, copy=False)
    if kind == "b" and array.size:
        raise _invalid(where, datatype, "booleans")
    if want.kind in "iu" and array.size:
        if kind == "f" and not np.array_equal(array, np.floor(array)):
            raise _invalid(where, datatype, "numbers with a fractional part")
        info = np.iinfo(want)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise _invalid(
                where, datatype, f"values outside {datatype}'s range [{info.min}, {info.max}]"
            )
        if kind == "f" and want.itemsize == 8:
            # float64 cannot hold every 64-bit integer: convert the JSON numbers directly
            try:
                return np.asarray(value, dtype=want)
            except (OverflowError, ValueError, TypeError):
                raise _invalid(where, datatype, f"values outside {datatype}'s range") from None
    return array.astype(want, copy=False)


def json_to_batch(
    value: Any, datatype: str, rank: int, where: str, *, allow_b64: bool = False
) -> np.ndarray:
    """One input's JSON value for a tensor of ``rank`` dimensions, batch first: a value one
    rank short is a single row and gets the batch dimension."""
    array = json_to_array(value, datatype, where, allow_b64=allow_b64)
    return array[np.newaxis] if array.ndim == rank - 1 else array


#: The most elements a declared shape may span, a dimension of 0 counted as 1: numpy cannot
#: describe an array of 2**63 bytes or more (8-byte elements: 2**60) even when a 0 makes
#: it empty (``[0, 2**62]`` has no elements, yet reshaping to it fails).
MAX_SHAPE_SPAN = 2**60 - 1


def element_count(shape: Any, where: str) -> tuple[tuple[int, ...], int]:
    """Check a declared V2 shape (a list of non-negative integers, not absurdly large);
    return it and its size."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInput(
            f'{where}: "shape" must be a list of integers, received {_shape_kind(shape)}'
        )
    if any(d < 0 for d in shape):
        raise InvalidInput(f'{where}: "shape" {shape} has a negative dimension')
    if math.prod(max(d, 1) for d in shape) > MAX_SHAPE_SPAN:
        raise InvalidInput(
            f'{where}: "shape" {shape} is too large: its dimensions (a 0 counted as 1) may '
            f"multiply to at most {MAX_SHAPE_SPAN}"
        )
    return tuple(shape), math.prod(shape)


def _shape_kind(shape: Any) -> str:
    """A shape that is not one, described: which of its entries are not integers."""
    if not isinstance(shape, list):
        return kind_of(shape)
    wrong = [kind_of(d) for d in shape if not isinstance(d, int) or isinstance(d, bool)]
    return f"a list of {len(shape)} with {wrong[0]} among them"


def decode_v2_data(value: Any, datatype: str, shape: Any, where: str) -> np.ndarray:
    """A V2 JSON tensor's ``data`` (flat or nested) to an array of its declared shape."""
    dims, count = element_count(shape, where)
    if not isinstance(value, list):
        raise InvalidInput(f'{where}: "data" must be a JSON array, received {kind_of(value)}')
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
