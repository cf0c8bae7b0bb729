"""The request rules of KServe V2 that its HTTP and gRPC bindings share, written once.

Each binding reads its own wire format (JSON or binary tensors, protobuf), and both ask
these functions the same questions: is an input given twice, is its datatype one V2 knows
and numpy can hold, does it or a requested output use an extension we do not offer, and
when must the answer be ready (Triton's ``timeout`` parameter). Names, dtypes and shapes
against the model, and which outputs to answer, are the data plane's to check, once.
"""

from __future__ import annotations

import time
from collections.abc import Container
from typing import Any

import numpy as np

from torchferry.codecs.datatypes import V2_TO_NUMPY
from torchferry.errors import InvalidInput
from torchferry.redact import count_or_kind, type_name
from torchferry.serving.repository import LoadedModel

SHARED_MEMORY = "shared_memory_region"


def check_input(model: LoadedModel, name: str, datatype: str, parameters: Container[str]) -> None:
    """An input's declared datatype and parameters, before its data is decoded."""
    where = f"input {name!r}"
    if datatype not in V2_TO_NUMPY:
        expected = model.signature.input(name).datatype  # an unknown name says so first
        if datatype == "BF16":
            raise InvalidInput(
                f"{where}: BF16 is not supported (numpy has no bfloat16); the model expects "
                f"{expected}"
            )
        received = type_name(datatype) if datatype else "no datatype"
        raise InvalidInput(f"{where}: expected datatype {expected}, received {received}")
    if SHARED_MEMORY in parameters:
        raise InvalidInput(f"{where}: the shared memory extension is not supported")


def add_input(arrays: dict[str, np.ndarray], name: str, array: np.ndarray) -> None:
    if name in arrays:
        raise InvalidInput(f"input {name!r} is given twice")
    arrays[name] = array


def check_output(name: str, parameters: Container[str]) -> None:
    """A requested output's parameters: extensions we do not offer are refused by name."""
    if "classification" in parameters:
        raise InvalidInput(f"output {name!r}: the classification extension is not supported")
    if SHARED_MEMORY in parameters:
        raise InvalidInput(f"output {name!r}: the shared memory extension is not supported")


def deadline_from(timeout_us: Any, other: float | None = None) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds) as a ``time.monotonic`` deadline,
    or ``other`` (a deadline the transport gives, such as gRPC's) when that is sooner."""
    if timeout_us is None:
        return other
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us < 0:
        raise InvalidInput(
            f"parameters.timeout must be a non-negative integer of microseconds, received "
            f"{count_or_kind(timeout_us)}"
        )
    if not timeout_us:
        return other
    deadline = time.monotonic() + timeout_us / 1e6
    return deadline if other is None else min(deadline, other)


def priority_from(priority: Any) -> int:
    """V2's ``priority`` request parameter: a non-negative integer, lower runs first; 0 or
    absent is the default level."""
    if priority is None:
        return 0
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise InvalidInput(
            f"parameters.priority must be a non-negative integer (lower runs first, 0 the "
            f"default level), received {count_or_kind(priority)}"
        )
    return priority
