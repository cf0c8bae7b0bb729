"""The parity comparison and its failure rule, without exporting anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchferry.errors import ExportError
from torchferry.export.parity import check_parity, compare, fails, module_runner
from torchferry.signature import ModelSignature, TensorSpec


def test_compare_abs_and_relative_to_output_scale():
    expected = np.array([[10.0, -20.0]], np.float32)
    actual = np.array([[10.5, -20.0]], np.float32)
    abs_err, rel_err = compare(expected, actual)
    assert abs_err == pytest.approx(0.5)
    assert rel_err == pytest.approx(0.5 / 20)


def test_compare_nans_in_the_same_place_agree():
    expected = np.array([np.nan, 1.0])
    assert compare(expected, expected.copy()) == (0.0, 0.0)
    assert compare(expected, np.array([0.0, 1.0]))[0] == float("inf")


def test_compare_shape_mismatch_is_infinite():
    assert compare(np.zeros((2, 3)), np.zeros((3, 2))) == (float("inf"), float("inf"))


def test_compare_integers_and_all_zero_outputs():
    assert compare(np.array([1, 2]), np.array([1, 3])) == (1.0, 0.5)
    assert compare(np.zeros(3), np.zeros(3)) == (0.0, 0.0)
    assert compare(np.zeros(3), np.full(3, 1e-6)) == (1e-6, float("inf"))


def test_rule_fails_only_when_both_errors_exceed_the_tolerance():
    assert not fails(1e-4, 10.0, 1e-3)  # tiny absolute error on a tiny output
    assert not fails(5.0, 1e-4, 1e-3)  # large absolute error on a huge output
    assert fails(2e-3, 2e-3, 1e-3)


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 3


SIGNATURE = ModelSignature(
    inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 2)),),
    outputs=(TensorSpec(name="output", datatype="FP32", shape=(-1, 2)),),
)
SCALE = module_runner(Scale(), SIGNATURE)


def test_check_parity_reports_every_form_and_batch():
    exact = lambda inputs: [inputs["x"].numpy() * 3]  # noqa: E731
    reports = check_parity(SCALE, SIGNATURE, {"a": exact, "b": exact})
    assert [(r.format, r.batch_size) for r in reports] == [("a", 1), ("a", 3), ("b", 1), ("b", 3)]
    assert all(r.max_abs_error == 0 for r in reports)
    assert {r.reference for r in reports} == {"eager PyTorch"}


def test_check_parity_names_form_batch_and_errors():
    off = lambda inputs: [inputs["x"].numpy() * 3 + 0.5]  # noqa: E731
    with pytest.raises(ExportError) as info:
        check_parity(SCALE, SIGNATURE, {"bad": off})
    message = info.value.message
    assert "bad at batch size 1: output 'output' max abs error 0.5" in message
    assert "bad at batch size 3" in message
    assert "tolerance 0.001" in message


def test_check_parity_form_that_crashes():
    def crash(inputs):
        raise RuntimeError("shape mismatch in node 7")

    with pytest.raises(ExportError, match="crashy failed to run at batch size 1: RuntimeError"):
        check_parity(SCALE, SIGNATURE, {"crashy": crash})


def test_check_parity_names_the_reference_it_was_given():
    def tensorflow(inputs):
        return [inputs["x"].numpy() * 3]

    half = lambda inputs: [inputs["x"].numpy() * 1.5]  # noqa: E731
    with pytest.raises(ExportError, match="disagrees with TensorFlow"):
        check_parity(tensorflow, SIGNATURE, {"onnx": half}, reference_name="TensorFlow")
    reports = check_parity(tensorflow, SIGNATURE, {"onnx": tensorflow}, reference_name="TensorFlow")
    assert {r.reference for r in reports} == {"TensorFlow"}


def test_a_reference_that_fails_is_named():
    def broken(inputs):
        raise ValueError("no kernel")

    with pytest.raises(ExportError, match="TensorFlow failed on random inputs of batch size 1"):
        check_parity(broken, SIGNATURE, {"onnx": broken}, reference_name="TensorFlow")
