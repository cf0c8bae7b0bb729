"""The identity handler: JSON arrays to model tensors, model tensors to JSON rows.

It takes ``{"data": X}``, X being the single input's rows (nested lists) or an object mapping
each input name to its rows. On TorchServe's route it also takes X bare (a JSON list, or the
object of inputs), JSON sent without a JSON content type (``curl -T rows.json``, ``curl -d``),
and JSON in a multipart field (``data``, ``file`` or ``body``, as a file or a text part).
A value one rank short of its input is one row. Names, datatypes and shapes are checked once,
after ``preprocess``, by the data plane.

With ``top_k`` in its config (classification models) it answers each row with its best
classes instead of the raw output row; see :mod:`torchferry.handlers.topk`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from torchferry.codecs.jsonarray import json_to_batch
from torchferry.codecs.jsonio import loads
from torchferry.errors import InvalidInput
from torchferry.handlers.base import Handler, HandlerContext, HandlerRequest
from torchferry.handlers.payload import (
    TORCHSERVE,
    PayloadState,
    body_json,
    classes_answer,
    form_texts,
    is_file_media,
    is_multipart,
    request_data,
    shape_rows,
    unsupported,
    uploads,
)
from torchferry.handlers.topk import TopK
from torchferry.signature import ModelSignature, TensorSpec


def to_array(spec: TensorSpec, value: Any) -> np.ndarray:
    """Convert one input's JSON value (nested lists) to an array of the spec's datatype.

    A value one rank short of the spec is taken as a single row and gets the batch dimension.
    Shapes are checked later, by the data plane.
    """
    where = f"input {spec.name!r} of shape {list(spec.shape)}"
    return json_to_batch(value, spec.datatype, len(spec.shape), where)


def tensors_from_json(signature: ModelSignature, data: Any) -> dict[str, np.ndarray]:
    """A request's tensor ``data`` to input arrays, in signature order (checked later).

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
    return {name: arrays[name] for name in names if name in arrays}


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

    def setup(self, ctx: HandlerContext) -> None:
        super().setup(ctx)
        self.signature = ctx.signature
        self.top_k: TopK | None = None
        if "top_k" in ctx.config:
            self.top_k = TopK.from_config(ctx.files, ctx.config, k=1, apply_softmax=False)

    def _no_files(self) -> InvalidInput:
        return InvalidInput(
            f'model {self.ctx.model_name!r} takes JSON tensors in "data" '
            f"(inputs {self.signature.input_names}), not uploaded files"
        )

    def _data(self, request: HandlerRequest) -> Any:
        """The request's tensor data, from its body or a multipart field."""
        torchserve = request.route == TORCHSERVE
        if is_multipart(request):
            files = uploads(request)
            if files and not torchserve:
                raise self._no_files()
            if len(files) > 1:
                raise InvalidInput(
                    f"model {self.ctx.model_name!r} takes one JSON file, got {len(files)}"
                )
            if files:
                try:
                    value = loads(files[0], "the uploaded file")
                except InvalidInput as exc:
                    raise InvalidInput(
                        f"model {self.ctx.model_name!r} takes JSON tensors "
                        f"(inputs {self.signature.input_names}); {exc.message}"
                    ) from None
            else:
                texts = form_texts(request)
                if not texts:
                    raise InvalidInput('the multipart body has no "data" field')
                value = loads(texts[-1].encode("utf-8"), 'the multipart field "data"')
            return request_data(value, self.signature, strict=False)
        if request.is_json or (not torchserve and request.media_type == ""):
            return request_data(body_json(request), self.signature, strict=not torchserve)
        if is_file_media(request.media_type):
            raise self._no_files()
        if torchserve:
            return request_data(body_json(request), self.signature, strict=False)
        raise unsupported(request, 'application/json {"data": ...}')

    def preprocess(self, request: HandlerRequest) -> tuple[dict[str, np.ndarray], PayloadState]:
        return tensors_from_json(self.signature, self._data(request)), PayloadState(request.route)

    def postprocess(self, outputs: dict[str, np.ndarray], state: PayloadState) -> Any:
        names = output_order(self.signature, outputs)
        if self.top_k is None:
            return shape_rows(rows_from_outputs(outputs, names), state)
        return classes_answer(self.top_k(outputs[names[0]]), state)
