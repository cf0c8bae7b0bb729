"""ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from torchferry.errors import ArchiveError
from torchferry.runtimes.base import Runtime


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    platform = "onnxruntime_onnx"

    def load(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        graph = self.archive.file(self.archive.manifest.graph_file(self.name))
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ArchiveError(f"ONNX Runtime cannot load {graph}: {exc}") from exc
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, results, strict=True))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
