"""The identity handler: JSON arrays in ``data`` to model tensors, model tensors to JSON rows.

With ``top_k`` in its config (classification models) it answers each row with its best
classes instead of the raw output row; see :mod:`torchferry.handlers.topk`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from torchferry.archive.store import Archive
from torchferry.errors import InvalidInput
from torchferry.handlers.base import Handler, HandlerInput
from torchferry.handlers.topk import TopK
from torchferry.signature import ModelSignature, TensorSpec
from torchferry.tensorjson import json_to_array


def to_array(spec: TensorSpec, value: Any) -> np.ndarray:
    """Convert one input's JSON value (nested lists) to an array of the spec's datatype.

    A value one rank short of the spec is taken as a single row and gets the batch dimension.
    Shapes are checked later, by ``ModelSignature.validate_inputs``.
    """
    array = json_to_array(value, spec.datatype, f"input {spec.name!r} of shape {list(spec.shape)}")
    if array.ndim == len(spec.shape) - 1:
        array = array[np.newaxis]
    return array


def tensors_from_json(signature: ModelSignature, data: Any) -> dict[str, np.ndarray]:
    """A ``/predict`` request's ``data`` to validated input arrays, in signature order.

    ``data`` is the input's nested lists for a single-input model, or an object mapping each
    input name to its nested lists (accepted for single-input models too).
    """
    names = signature.input_names
    if data is None:
        raise InvalidInput(f'the request has no "data"; the model takes inputs {names}')
    if isinstance(data, Mapping):
        arrays = {str(k): to_array(signature.input(str(k)), v) for k, v in data.items()}
    elif len(names) == 1:
        arrays = {names[0]: to_array(signature.inputs[0], data)}
    else:
        raise InvalidInput(
            f'the model has several inputs {names}; send "data" as an object mapping each '
            "input name to its array"
        )
    return signature.validate_inputs(arrays)


def output_order(signature: ModelSignature, outputs: Mapping[str, np.ndarray]) -> list[str]:
    """The outputs' names in signature order (dict order for outputs the signature lacks)."""
    known = [name for name in signature.output_names if name in outputs]
    return known + [name for name in outputs if name not in known]


def _column(array: np.ndarray) -> list[Any]:
    if array.dtype.kind == "O":
        array = np.frompyfunc(
            lambda x: x.decode("utf-8", "replace") if isinstance(x, bytes) else x, 1, 1
        )(array)
    rows = array.tolist()
    return rows if isinstance(rows, list) else [rows]


def rows_from_outputs(outputs: Mapping[str, np.ndarray], names: list[str]) -> list[Any]:
    """One JSON-able answer per row: the row itself, or ``{name: row}`` for several outputs."""
    columns = {name: _column(outputs[name]) for name in names}
    if len(columns) == 1:
        return next(iter(columns.values()))
    rows = min((len(c) for c in columns.values()), default=0)
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)]


class TensorHandler(Handler):
    """JSON tensors in, output rows (or top-k classes, with ``top_k`` set) out."""

    name = "tensor"

    def __init__(self, archive: Archive) -> None:
        super().__init__(archive)
        self.top_k: TopK | None = None
        if "top_k" in self.config:
            self.top_k = TopK.from_config(archive, self.config, k=1, apply_softmax=False)

    def preprocess(self, request: HandlerInput) -> dict[str, np.ndarray]:
        if request.blobs:
            raise InvalidInput(
                f'model {self.archive.manifest.name!r} takes JSON tensors in "data" '
                f"(inputs {self.signature.input_names}), not uploaded files"
            )
        return tensors_from_json(self.signature, request.data)

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[Any]:
        names = output_order(self.signature, outputs)
        if self.top_k is not None:
            return self.top_k(outputs[names[0]])
        return rows_from_outputs(outputs, names)
