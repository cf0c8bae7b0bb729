"""Tensor specs and model signatures, and validation of a request's tensors against them.

Datatype names are those of the KServe V2 / Open Inference Protocol (``FP32``,
``INT64``, ``BYTES``...); the table that maps them to numpy is ``torchferry.codecs.datatypes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from torchferry.codecs.datatypes import NUMPY_TO_V2, V2_TO_NUMPY, normalize_datatype
from torchferry.errors import InvalidInput


class TensorSpec(BaseModel):
    """One named tensor: V2 datatype and shape, ``-1`` for a dynamic dimension."""

    model_config = ConfigDict(frozen=True)

    name: str
    datatype: str
    shape: tuple[int, ...]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        return normalize_datatype(value)

    @field_validator("shape")
    @classmethod
    def _valid_dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < -1 or d == 0 for d in value):
            raise ValueError(f"shape {list(value)} has a dimension that is neither -1 nor positive")
        return value

    @property
    def numpy_dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    @classmethod
    def parse(cls, text: str) -> TensorSpec:
        """Parse ``NAME:SHAPE:DTYPE`` as written on the command line, e.g. ``x:-1,3,224,224:float32``.

        The first dimension is always the dynamic batch dimension, whatever is written there.
        """
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(
                f"--input {text!r}: expected NAME:SHAPE[:DTYPE], e.g. x:-1,3,224,224:float32"
            )
        name, shape_text = parts[0], parts[1]
        dtype = parts[2] if len(parts) == 3 else "FP32"
        try:
            dims = [int(d) for d in shape_text.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            raise ValueError(
                f"--input {text!r}: shape {shape_text!r} is not a list of integers"
            ) from None
        if not name or not dims:
            raise ValueError(f"--input {text!r}: needs a name and at least one dimension")
        return cls(name=name, datatype=dtype, shape=(-1, *dims[1:]))


class ModelSignature(BaseModel):
    """A model's named inputs and outputs. Dimension 0 of every tensor is the batch dimension."""

    model_config = ConfigDict(frozen=True)

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise InvalidInput(f"unknown input {name!r}; the model's inputs are {self.input_names}")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise InvalidInput(f"unknown output {name!r}; the model's outputs are {self.output_names}")

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def validate_inputs(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, dtypes and shapes; return the tensors in signature order.

        Every input must share one batch size. The message of each failure names the input,
        what was expected and what was received.
        """
        unknown = [n for n in tensors if n not in self.input_names]
        if unknown:
            raise InvalidInput(
                f"unknown input {unknown[0]!r}; the model's inputs are {self.input_names}"
            )
        missing = [n for n in self.input_names if n not in tensors]
        if missing:
            raise InvalidInput(f"missing input {missing[0]!r}; the model needs {self.input_names}")
        ordered: dict[str, np.ndarray] = {}
        batch: int | None = None
        for spec in self.inputs:
            array = tensors[spec.name]
            if array.dtype != spec.numpy_dtype:
                raise InvalidInput(
                    f"input {spec.name!r}: expected datatype {spec.datatype}, "
                    f"received {NUMPY_TO_V2.get(array.dtype, str(array.dtype))}"
                )
            if not spec.accepts_shape(array.shape):
                raise InvalidInput(
                    f"input {spec.name!r}: expected shape {list(spec.shape)}, "
                    f"received {list(array.shape)}"
                )
            if array.ndim and array.shape[0] == 0:
                raise InvalidInput(f"input {spec.name!r}: the batch is empty")
            rows = array.shape[0] if array.ndim else 1
            if batch is None:
                batch = rows
            elif rows != batch:
                raise InvalidInput(
                    f"input {spec.name!r}: batch size {rows} differs from the other inputs' {batch}"
                )
            ordered[spec.name] = array
        return ordered
