"""Describing request data without its values: kinds for errors, tracebacks without messages."""

from __future__ import annotations

import numpy as np
import pytest

from torchferry.errors import internal_error
from torchferry.redact import (
    count_or_kind,
    exception_types,
    kind_of,
    traceback_without_messages,
    type_name,
)

SECRET = "MARK-secret-value"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (None, "null"),
        (True, "a boolean"),
        (12345, "an integer"),
        (1.5, "a number"),
        (SECRET, "a string"),
        (SECRET.encode(), "bytes"),
        ({SECRET: SECRET}, "an object"),
        ([SECRET, 1], "a list of 2"),
        (np.zeros((2, 3), np.float32), "an array of shape [2, 3] and dtype float32"),
        ({SECRET}, "a set"),
    ],
)
def test_a_value_is_named_by_its_kind(value, said):
    assert kind_of(value) == said


def test_sizes_are_named_and_other_things_described():
    assert count_or_kind(-16) == "-16"
    assert count_or_kind(SECRET) == "a string" and count_or_kind(True) == "a boolean"


def test_a_datatype_name_is_quoted_only_when_it_looks_like_one():
    assert type_name("FLOAT") == "'FLOAT'" and type_name("float32") == "'float32'"
    assert SECRET not in type_name(SECRET)
    assert "x" * 40 not in type_name("x" * 40)


def _parse(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise RuntimeError(f"cannot parse {text!r}") from exc


def test_an_unexpected_error_keeps_its_frames_and_types_but_not_its_messages():
    with pytest.raises(RuntimeError) as raised:
        _parse(SECRET)
    error = raised.value
    assert SECRET in str(error) and SECRET in str(error.__cause__)  # what Python would print
    written = traceback_without_messages(error)
    assert SECRET not in written
    assert "in _parse" in written and "return float(text)" in written  # where it happened
    assert "builtins.ValueError: (message withheld)" in written
    assert "builtins.RuntimeError: (message withheld)" in written
    assert exception_types(error) == "RuntimeError <- ValueError"
    assert internal_error(error, quote=False).message == "internal error: RuntimeError"
