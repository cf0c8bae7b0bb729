"""Parity of every exported form with its source model (eager PyTorch, or TensorFlow for an
import), on random inputs of several batch sizes.

The rule, per output tensor: with ``abs`` the largest absolute difference and ``rel`` that
difference divided by the largest magnitude of the reference output, the form fails when
``abs > tolerance`` **and** ``rel > tolerance``. So small outputs are held to an absolute
bound and large ones to a relative one; an integer or boolean output must match exactly
(any difference is at least 1). NaNs must sit in the same places.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from torchferry.archive.manifest import ParityReport
from torchferry.errors import ExportError
from torchferry.export.inputs import random_inputs
from torchferry.export.outputs import flatten_outputs
from torchferry.export.quiet import quiet
from torchferry.signature import ModelSignature

BATCH_SIZES = (1, 3)
DEFAULT_TOLERANCE = 1e-3
#: What ``check_parity`` compares with unless told otherwise.
EAGER_PYTORCH = "eager PyTorch"

#: Named torch inputs -> outputs as numpy arrays, in signature order.
Runner = Callable[[dict[str, torch.Tensor]], list[np.ndarray]]


def onnx_runner(path: Path, signature: ModelSignature) -> Runner:
    """Run the ONNX graph with ONNX Runtime on CPU, as the ``onnxruntime`` runtime does."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the exported graph: {exc}") from exc
    names = signature.output_names

    def run(inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        feed = {name: tensor.numpy() for name, tensor in inputs.items()}
        return [np.asarray(a) for a in session.run(names, feed)]

    return run


def torchscript_runner(path: Path, signature: ModelSignature, device: str = "cpu") -> Runner:
    """Run the saved TorchScript file, loaded back with ``torch.jit.load``."""
    module = torch.jit.load(str(path), map_location=device).eval()
    names = signature.output_names

    def run(inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        with torch.no_grad():
            result = module(*(t.to(device) for t in inputs.values()))
        return [t.detach().cpu().numpy() for t in flatten_outputs(result, names)]

    return run


def module_runner(
    model: nn.Module, signature: ModelSignature, device: torch.device | str = "cpu"
) -> Runner:
    """Run the eager ``nn.Module`` itself, on ``device`` (the model's): the usual reference."""

    def run(inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        with torch.no_grad():
            result = model(*(t.to(device) for t in inputs.values()))
        return [t.detach().cpu().numpy() for t in flatten_outputs(result, signature.output_names)]

    return run


def compare(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """Max absolute error, and it relative to the largest magnitude of ``expected``."""
    if expected.shape != actual.shape:
        return float("inf"), float("inf")
    want = expected.astype(np.float64)
    got = actual.astype(np.float64)
    both_nan = np.isnan(want) & np.isnan(got)
    diff = np.where(both_nan, 0.0, np.abs(want - got))
    diff = np.where(np.isnan(diff), np.inf, diff)
    abs_err = float(diff.max()) if diff.size else 0.0
    finite = want[np.isfinite(want)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
    return abs_err, rel_err


def fails(abs_err: float, rel_err: float, tolerance: float) -> bool:
    return abs_err > tolerance and rel_err > tolerance


def check_parity(
    reference: Runner,
    signature: ModelSignature,
    runners: Mapping[str, Runner],
    *,
    reference_name: str = EAGER_PYTORCH,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    int_high: Mapping[str, int] | None = None,
    seed: int = 0,
) -> list[ParityReport]:
    """Compare each form with ``reference`` (the source model, e.g. :func:`module_runner`);
    raise ``ExportError`` if any strays too far.

    Inputs are made on the CPU, each runner moves them where it runs. Every form is checked
    before raising, so the message lists every failure.
    """
    reports: list[ParityReport] = []
    failures: list[str] = []
    for batch in batch_sizes:
        inputs = random_inputs(signature.inputs, batch, seed=seed + batch, int_high=int_high)
        try:
            with quiet():
                expected = reference(dict(inputs))
        except Exception as exc:
            raise ExportError(
                f"{reference_name} failed on random inputs of batch size {batch}: {one_line(exc)}"
            ) from exc
        for form, run in runners.items():
            try:
                with quiet():
                    actual = run(dict(inputs))
            except Exception as exc:
                failures.append(f"{form} failed to run at batch size {batch}: {one_line(exc)}")
                continue
            worst_abs = worst_rel = 0.0
            for name, want, got in zip(signature.output_names, expected, actual, strict=True):
                if want.shape != got.shape:
                    failures.append(
                        f"{form} at batch size {batch}: output {name!r} has shape "
                        f"{list(got.shape)}, {reference_name} {list(want.shape)}"
                    )
                abs_err, rel_err = compare(want, got)
                if want.shape == got.shape and fails(abs_err, rel_err, tolerance):
                    failures.append(
                        f"{form} at batch size {batch}: output {name!r} max abs error "
                        f"{abs_err:.3g}, max rel error {rel_err:.3g}"
                    )
                worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
            reports.append(
                ParityReport(
                    format=form,
                    batch_size=batch,
                    max_abs_error=worst_abs,
                    max_rel_error=worst_rel,
                    reference=reference_name,
                )
            )
    if failures:
        raise ExportError(
            f"parity check failed, the converted model disagrees with {reference_name}: "
            + "; ".join(failures)
            + f" (tolerance {tolerance:g}: a form fails when both the abs and rel error exceed it)"
        )
    order = list(runners)
    return sorted(reports, key=lambda r: (order.index(r.format), r.batch_size))


def one_line(exc: Any) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
