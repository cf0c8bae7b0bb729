"""Fast JSON in and out with orjson; numpy arrays serialize natively, without Python lists."""

from __future__ import annotations

from typing import Any

import orjson

from torchferry.errors import InvalidInput

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    # Non-contiguous or object arrays and numpy scalars reach here.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"cannot serialize {type(value).__name__} to JSON")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_DUMP_OPTIONS)


def loads(body: bytes | bytearray | memoryview | str, what: str = "the request body") -> Any:
    """Parse JSON; an empty or malformed body is a 400 that says which part was wrong."""
    if not body:
        raise InvalidInput(f"{what} is empty; expected JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
