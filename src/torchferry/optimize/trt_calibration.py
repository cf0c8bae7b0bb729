"""TensorRT's int8 calibration table for a float ONNX graph, from autotune's calibration rows.

TensorRT runs a float graph in int8 when it knows each tensor's range. ONNX Runtime's
quantization tools measure them (``create_calibrator``, min-max over the rows, on the CPU)
and write them as the table its TensorRT provider reads (``write_calibration_table``:
``calibration.flatbuffers``, with a JSON and a plain-text copy that are not kept). The table
goes into the candidate's archive, named by ``runtime_options.trt_int8_calibration_table_name``
(``runtimes/trt_options.py``). Ranges of tensors that ONNX Runtime's own graph
optimizations remove before TensorRT sees the graph are simply unused.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np

from torchferry.optimize.errors import Skipped
from torchferry.optimize.onnx_calibration import (
    CalibrationBatches,
    first_rows,
    graph_inputs,
    read_graph,
)
from torchferry.optimize.quantize_onnx import MAX_CALIBRATION_ROWS

TABLE_NAME = "calibration.flatbuffers"
QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})


def has_qdq(graph: Path) -> bool:
    """Whether ``graph`` carries its own int8 scales (Q/DQ nodes, a static quantization's):
    TensorRT then takes no calibration table (it refuses one for such a graph)."""
    model, _ = read_graph(graph)
    return any(node.op_type in QDQ for node in model.graph.node)


def write_trt_calibration_table(
    graph: Path, calibration: list[dict[str, np.ndarray]], directory: Path
) -> Path:
    """Measure the range of every float tensor of ``graph`` on ``calibration`` (batches of
    rows by input name; at most the min-max row cap of static quantization is used) and
    write ``directory/calibration.flatbuffers``; its path.

    Raises :class:`Skipped` when ONNX Runtime's calibration tools or the ``flatbuffers``
    package they write with are missing, and ``ValueError`` for batches that do not name
    the graph's inputs."""
    try:
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
        from onnxruntime.quantization.quant_utils import write_calibration_table
    except ImportError as exc:
        raise Skipped(_missing(exc.name or "onnxruntime.quantization")) from None
    if importlib.util.find_spec("flatbuffers") is None:  # imported late, by the writer
        raise Skipped(_missing("flatbuffers"))
    model, external = read_graph(graph)
    inputs = graph_inputs(model.graph)
    batches = first_rows(calibration, inputs, MAX_CALIBRATION_ROWS["minmax"])
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".torchferry-calibrate-", dir=directory) as scratch:
        calibrator = create_calibrator(
            str(graph),
            None,  # every float tensor: TensorRT wants a range for each
            augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=external,
        )
        # the augmented graph outputs each tensor's min and max, not the tensor: a batch's
        # collection holds scalars, and collect_data merges them as it goes
        calibrator.collect_data(CalibrationBatches(batches))
        write_calibration_table(calibrator.compute_data(), dir=scratch)
        target = directory / TABLE_NAME
        os.replace(Path(scratch) / TABLE_NAME, target)
    return target


def _missing(module: str) -> str:
    return (
        f"building TensorRT's int8 calibration table needs {module} (for onnxruntime."
        "quantization's create_calibrator and write_calibration_table), which is not installed"
    )
