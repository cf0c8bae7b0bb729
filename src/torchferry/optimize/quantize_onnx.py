"""ONNX Runtime's int8 quantization of an ONNX graph: dynamic, and static in QDQ format.

Both read a float graph file and write the quantized graph to ``dst`` (plus ``dst.data``
when the source keeps its weights in external data); inputs and outputs keep their names,
dtypes and dynamic dimensions (the batch), so the result is a drop-in graph for
torchferry's ``OnnxRuntime`` runtime. The graph is first run through ONNX Runtime's
recommended pre-processing (``quant_pre_process``: symbolic shape inference, graph
optimization such as folding batch norm into convolutions, ONNX shape inference); if that
step fails the graph is quantized as it is, with a warning.

Data types follow ONNX Runtime's guidance for CPUs ("Quantize ONNX models", *Data type
selection*): signed int8 weights (``QInt8``) for both methods, and signed int8 activations
in QDQ (S8S8) for static quantization, "the first choice"; dynamic quantization computes
activations as uint8 (U8S8). On x86-64 CPUs without VNNI, ONNX Runtime's U8S8 kernels use
``VPMADDUBSW``, which can saturate, and the guidance is 7-bit weights (``reduce_range``):
that is turned on there (see :func:`reduce_range_here`), and off on VNNI and ARM CPUs.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from torchferry.export.quiet import quiet
from torchferry.optimize.onnx_calibration import (
    CalibrationBatches,
    first_rows,
    graph_inputs,
    read_graph,
)

log = logging.getLogger(__name__)

METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
#: At most this many calibration rows are used (the first ones). Entropy and percentile
#: build a histogram of every activation tensor, which costs time in proportion to the rows.
MAX_CALIBRATION_ROWS: dict[str, int] = {"minmax": 512, "entropy": 128, "percentile": 128}
#: CPU flags of the x86-64 int8 dot-product instructions that do not saturate.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def reduce_range_here() -> bool:
    """Whether to quantize weights to 7 bits on this machine: on an x86-64 CPU without VNNI
    (as ONNX Runtime advises for U8S8 on AVX2/AVX-512). Read from ``/proc/cpuinfo``; where
    it cannot be read (not Linux), False, ONNX Runtime's default."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return not VNNI_FLAGS.intersection(line.partition(":")[2].split())
    return False


def _summary(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """Fixed dims as ints, dynamic ones (named or unknown) as None."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _check_interface(before: onnx.ModelProto, after: Path) -> None:
    """The quantized graph keeps the inputs' and outputs' names and dynamic dimensions."""
    quantized, _ = read_graph(after)
    for kind in ("input", "output"):
        old = list(getattr(before.graph, kind))
        new = {v.name: v for v in getattr(quantized.graph, kind)}
        if [v.name for v in old] != list(new):
            raise RuntimeError(
                f"quantization changed the graph's {kind}s: {[v.name for v in old]} -> {list(new)}"
            )
        for value in old:
            dims, quantized_dims = _dims(value), _dims(new[value.name])
            pinned = [
                i for i, (a, b) in enumerate(zip(dims, quantized_dims, strict=False)) if a != b
            ]
            if any(dims[i] is None for i in pinned):
                raise RuntimeError(
                    f"quantization fixed dynamic dims of {kind} {value.name!r}: "
                    f"{dims} -> {quantized_dims}"
                )


def _preprocess(src: Path, work: Path, external: bool) -> Path:
    """ONNX Runtime's pre-processing into ``work``; ``src`` itself when it fails."""
    target = work / "preprocessed.onnx"
    try:
        with quiet():
            quant_pre_process(
                str(src),
                str(target),
                save_as_external_data=external,
                all_tensors_to_one_file=True,
                external_data_location=f"{target.name}.data",
            )
    except Exception as exc:
        log.warning("ONNX Runtime's pre-processing failed (%s); quantizing as is", _summary(exc))
        return src
    return target


def _quantize(src: Path, dst: Path, run: functools.partial[None]) -> None:
    """Pre-process ``src``, ``run(model_input, model_output, use_external_data_format)``,
    check the interface, and move the result to ``dst`` (written next to it, then renamed)."""
    src, dst = Path(src), Path(dst)
    before, external = read_graph(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".torchferry-quantize-", dir=dst.parent) as scratch:
        work = Path(scratch)
        model_input = _preprocess(src, work, external)
        (work / "out").mkdir()
        # named as dst already: an external data file is referenced by name from the graph
        out = work / "out" / dst.name
        with quiet():
            run(model_input=model_input, model_output=out, use_external_data_format=external)
        _check_interface(before, out)
        for item in out.parent.iterdir():
            os.replace(item, dst.parent / item.name)


def quantize_dynamic_onnx(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization with ONNX Runtime: int8 weights (``QInt8``, per tensor),
    activations quantized to uint8 at run time (``DynamicQuantizeLinear``).

    Quantizes what ONNX Runtime's integer-ops registry covers: ``MatMul``/``Gemm``
    (``MatMulInteger``), ``Conv`` (``ConvInteger``), ``LSTM``, ``Attention``, ``Gather``...
    No calibration data is needed. ONNX Runtime recommends it for RNNs and transformers;
    for CNNs static quantization is usually faster, as ``ConvInteger`` is not a fast kernel.
    """
    run = functools.partial(
        quantize_dynamic,
        weight_type=QuantType.QInt8,
        per_channel=False,
        reduce_range=reduce_range_here(),
    )
    _quantize(src, dst, run)


def quantize_static_onnx(
    src: Path,
    dst: Path,
    calibration: list[dict[str, np.ndarray]],
    method: Literal["minmax", "entropy", "percentile"] = "minmax",
) -> None:
    """Static int8 quantization with ONNX Runtime, in QDQ format (S8S8).

    ``calibration`` is a list of batches, each mapping every graph input name to an array
    whose dim 0 is the batch. The activation ranges come from running them through the
    (pre-processed) graph with ``method``: ``minmax`` (the observed range), ``entropy``
    (the range minimizing KL divergence, 128 bins) or ``percentile`` (99.999th percentile
    of absolute values, 2048 bins). Weights are quantized per channel (per output channel
    of ``Conv``, per output feature of ``Gemm``/``MatMul``): this costs a few bytes per
    channel and keeps layers with uneven channel ranges accurate. Activations are per
    tensor, so the quantized graph takes any batch size, like the source.

    Calibration cost is bounded: at most :data:`MAX_CALIBRATION_ROWS` rows are used (512
    for minmax, 128 for the histogram methods; the first ones), and ONNX Runtime collects
    one batch at a time (``CalibStridedMinMax=1``, which every calibrator honours), so
    memory holds one batch's activations plus the running ranges or histograms, not every
    batch's activations: keep batches modest for big activations. The histogram methods
    then take their bin width from the first batch and widen the histogram for later ones,
    so the first batch should be representative (on the digits and ResNet-18 tests the
    entropy scales came within 10% of one-pass calibration). ``CalibMaxIntermediateOutputs``
    is not used: in onnxruntime 1.32 it discards the batches collected so far instead of
    merging them.

    Raises ``ValueError`` for an unknown method, batches that do not name the graph's
    inputs, or no calibration rows.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {list(METHODS)}")
    inputs = graph_inputs(read_graph(Path(src))[0].graph)
    batches = first_rows(calibration, inputs, MAX_CALIBRATION_ROWS[method])
    run = functools.partial(
        quantize_static,
        calibration_data_reader=CalibrationBatches(batches),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range_here(),
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=METHODS[method],
        extra_options={"CalibStridedMinMax": 1},
    )
    _quantize(src, dst, run)
