"""How a request's data is described where its values may not be shown: error messages and
log lines name a value's kind and shape, never the value.

No payload value, output value or token reaches a log line, a metric, a trace or an error
message (docs/security.md, "Data handling"). Errors that a client causes say what was
expected and what kind of thing came (:func:`kind_of`); an exception nobody expected is
logged as its types and traceback (:func:`traceback_without_messages`), since the messages
of Python, numpy and the libraries below quote the data they choked on (``could not
convert string to float: 'x'``, ``invalid start byte 0xff``).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping

#: What a datatype name looks like (``FP32``, ``float32``): echoing one is naming a type.
_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,15}")


def kind_of(value: object) -> str:
    """A value as an error may name it: its kind (and length or shape), never its content."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if isinstance(shape, tuple) and dtype is not None:  # an array (numpy is not imported here)
        return f"an array of shape {list(shape)} and dtype {dtype}"
    return f"a {type(value).__name__}"


def count_or_kind(value: object) -> str:
    """A size or a time the client gave (``binary_data_size``, ``timeout``): an integer is a
    figure of the request, not its data, and is named; anything else by its kind."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return kind_of(value)


def type_name(text: str) -> str:
    """A datatype name the client sent, quoted when it looks like one, else described."""
    return repr(text) if _TYPE_NAME.fullmatch(text) else "a datatype name that is no type"


def exception_types(exc: BaseException) -> str:
    """``ValueError`` (``OSError <- ValueError`` for a chain): an exception's classes only."""
    return " <- ".join(type(error).__name__ for error in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, then what it was raised from or during, as Python prints a traceback."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        else:
            current = None if current.__suppress_context__ else current.__context__
    return chain


def traceback_without_messages(exc: BaseException) -> str:
    """The traceback of ``exc`` (and the exceptions it was raised from) as Python prints it,
    with each exception's message left out: where it happened, never what data it saw."""
    parts: list[str] = []
    for error in reversed(_chain(exc)):
        if parts:  # how Python links an exception to the one it was raised from or during
            parts.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if error.__cause__ is not None
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        frames = "".join(traceback.format_tb(error.__traceback__))
        parts.append(
            f"Traceback (most recent call last):\n{frames}"
            f"{type(error).__module__}.{type(error).__qualname__}: (message withheld)\n"
        )
    return "".join(parts).rstrip("\n")
