"""What ONNX Runtime's two calibrations of a float graph share: static int8 quantization
(``quantize_onnx``) and TensorRT's int8 table (``trt_calibration``) both read the graph's
inputs, take the first rows of autotune's calibration data, and hand them to ONNX
Runtime's calibrator one batch at a time."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data
from onnxruntime.quantization import CalibrationDataReader

log = logging.getLogger(__name__)


def read_graph(path: Path) -> tuple[onnx.ModelProto, bool]:
    """The graph at ``path`` without its external weights (cheap for a large model), and
    whether it has any."""
    model = onnx.load(str(path), load_external_data=False)
    return model, any(uses_external_data(t) for t in model.graph.initializer)


def graph_inputs(graph: onnx.GraphProto) -> list[str]:
    """The names a caller feeds: the graph's inputs less its initializers (older exporters
    list weights as inputs too)."""
    weights = {t.name for t in graph.initializer}
    return [value.name for value in graph.input if value.name not in weights]


class CalibrationBatches(CalibrationDataReader):
    """The calibration batches, one at a time, as ONNX Runtime's calibrators read them;
    ``set_range`` lets ONNX Runtime calibrate a slice at a time (``CalibStridedMinMax``),
    so only one batch's activations are held."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches = batches
        self._pending = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._pending, None)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self.batches[start_index:end_index])


def first_rows(
    calibration: Iterable[dict[str, np.ndarray]], inputs: list[str], max_rows: int
) -> list[dict[str, np.ndarray]]:
    """The first ``max_rows`` rows of ``calibration`` (dim 0 of every input), as contiguous
    batches; ``ValueError`` when a batch does not name exactly the graph's ``inputs``, or no
    batch has a row."""
    taken: list[dict[str, np.ndarray]] = []
    rows = total = 0
    for batch in calibration:
        if sorted(batch) != sorted(inputs):
            raise ValueError(
                f"calibration batch {len(taken)} has inputs {sorted(batch)}; "
                f"the graph's inputs are {sorted(inputs)}"
            )
        size = len(batch[inputs[0]])
        total += size
        if rows < max_rows and size:
            take = min(size, max_rows - rows)
            taken.append({name: np.ascontiguousarray(batch[name][:take]) for name in inputs})
            rows += take
    if not taken:
        raise ValueError("calibration needs at least one non-empty batch")
    if total > rows:
        log.info("calibrating on the first %d of %d rows", rows, total)
    return taken


__all__ = ["CalibrationBatches", "first_rows", "graph_inputs", "read_graph"]
