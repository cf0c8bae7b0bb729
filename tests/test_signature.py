"""TensorSpec parsing and ModelSignature.validate_inputs: each error names what went wrong."""

from __future__ import annotations

import numpy as np
import pytest

from torchferry.codecs.datatypes import datatype_of, normalize_datatype
from torchferry.errors import InvalidInput
from torchferry.signature import ModelSignature, TensorSpec


def test_parse_name_shape_dtype():
    spec = TensorSpec.parse("image:-1,3,224,224:float32")
    assert spec == TensorSpec(name="image", datatype="FP32", shape=(-1, 3, 224, 224))


def test_parse_first_dim_is_always_the_batch():
    assert TensorSpec.parse("tokens:8,16:int64").shape == (-1, 16)
    assert TensorSpec.parse("tokens:2x16:int64").shape == (-1, 16)


def test_parse_dtype_defaults_to_fp32_and_accepts_v2_names():
    assert TensorSpec.parse("x:-1,4").datatype == "FP32"
    assert TensorSpec.parse("x:-1,4:INT32").datatype == "INT32"
    assert TensorSpec.parse("x:-1,4:double").datatype == "FP64"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "expected NAME:SHAPE[:DTYPE]"),
        ("x:-1,3:float32:extra", "expected NAME:SHAPE[:DTYPE]"),
        ("x:a,b:float32", "shape 'a,b' is not a list of integers"),
        (":-1,3", "needs a name"),
        ("x::float32", "at least one dimension"),
        ("x:-1,3:complex64", "unknown datatype 'complex64'"),
        ("x:-1,0:float32", "neither -1 nor positive"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ValueError) as info:
        TensorSpec.parse(text)
    assert message in str(info.value)


def test_normalize_datatype_and_datatype_of():
    assert normalize_datatype("fp16") == "FP16"
    assert normalize_datatype("half") == "FP16"
    assert datatype_of(np.zeros(2, dtype=np.int8)) == "INT8"
    with pytest.raises(InvalidInput, match="complex64"):
        datatype_of(np.zeros(2, dtype=np.complex64))


@pytest.fixture
def signature():
    return ModelSignature(
        inputs=(
            TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),
            TensorSpec(name="ids", datatype="INT64", shape=(-1, -1)),
        ),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 2)),),
    )


def good(batch=2):
    return {"x": np.zeros((batch, 4), np.float32), "ids": np.zeros((batch, 7), np.int64)}


def test_validate_returns_inputs_in_signature_order(signature):
    tensors = dict(reversed(list(good().items())))
    assert list(signature.validate_inputs(tensors)) == ["x", "ids"]


def test_validate_wrong_dtype_names_input_expected_received(signature):
    tensors = good() | {"x": np.zeros((2, 4), np.float64)}
    with pytest.raises(InvalidInput) as info:
        signature.validate_inputs(tensors)
    assert info.value.message == "input 'x': expected datatype FP32, received FP64"
    assert info.value.status_code == 400


def test_validate_wrong_shape_names_input_expected_received(signature):
    tensors = good() | {"x": np.zeros((2, 5), np.float32)}
    with pytest.raises(InvalidInput) as info:
        signature.validate_inputs(tensors)
    assert info.value.message == "input 'x': expected shape [-1, 4], received [2, 5]"


def test_validate_wrong_rank(signature):
    tensors = good() | {"ids": np.zeros((2,), np.int64)}
    with pytest.raises(
        InvalidInput, match=r"input 'ids': expected shape \[-1, -1\], received \[2\]"
    ):
        signature.validate_inputs(tensors)


def test_validate_missing_and_unknown_inputs(signature):
    with pytest.raises(InvalidInput, match=r"missing input 'ids'; the model needs \['x', 'ids'\]"):
        signature.validate_inputs({"x": good()["x"]})
    with pytest.raises(InvalidInput, match=r"unknown input 'z'; the model's inputs are"):
        signature.validate_inputs(good() | {"z": np.zeros(1)})


def test_validate_batch_sizes_must_agree(signature):
    tensors = {"x": good(2)["x"], "ids": good(3)["ids"]}
    with pytest.raises(
        InvalidInput, match="input 'ids': batch size 3 differs from the other inputs' 2"
    ):
        signature.validate_inputs(tensors)


def test_validate_empty_batch(signature):
    with pytest.raises(InvalidInput, match="input 'x': the batch is empty"):
        signature.validate_inputs(good(0))


def test_signature_lookup_errors(signature):
    assert signature.input("ids").datatype == "INT64"
    with pytest.raises(InvalidInput, match=r"unknown output 'z'; the model's outputs are \['y'\]"):
        signature.output("z")
