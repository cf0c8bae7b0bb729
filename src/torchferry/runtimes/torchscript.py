"""TorchScript, through ``torch.jit.load`` (no arbitrary unpickling)."""

from __future__ import annotations

import numpy as np
import torch

from torchferry.archive.formats import TORCHSCRIPT, WEIGHTS_FILE
from torchferry.errors import ArchiveError, ModelError, ModelNotReady
from torchferry.runtimes.base import Runtime
from torchferry.runtimes.torch_io import PinnedInputs, to_arrays, to_tensors, torch_device
from torchferry.runtimes.torch_shared import map_archive_weights


def _model_message(exc: Exception) -> str:
    """The model's own message, without the TorchScript interpreter's traceback around it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.removeprefix("builtins.")


class TorchScriptRuntime(Runtime):
    name = TORCHSCRIPT
    platform = "pytorch_torchscript"

    #: The CUDA path's reused pinned input buffers; None on the CPU.
    pinned: PinnedInputs | None = None

    def check(self) -> None:
        torch_device(self.device)

    def load(self) -> None:
        device = torch_device(self.device)
        # torch's thread count is process-wide; the last model loaded sets it.
        torch.set_num_threads(self.threads)
        graph = self.archive.file(self.archive.manifest.graph_file(self.name))
        try:
            self.module = torch.jit.load(str(graph), map_location=device).eval()
        except Exception as exc:
            raise ArchiveError(f"TorchScript cannot load {graph}: {exc}") from exc
        self.pinned = PinnedInputs(device) if device.type == "cuda" else None
        #: Bytes of weights mapped from the archive's safetensors, shared between workers.
        self.mapped_bytes = map_archive_weights(self, self.module, WEIGHTS_FILE)
        signature = self.archive.manifest.signature
        self.input_names = signature.input_names
        self.output_names = signature.output_names

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        module = self.module
        if module is None:  # closed (released by the memory budget): not a crash, a 503
            raise ModelNotReady(f"model {self.archive.manifest.name!r} is not loaded")
        pinned = self.pinned
        if pinned is None:
            args = to_tensors(inputs, self.input_names, self.device)
        else:
            args = pinned.to_device(inputs, self.input_names)
        with torch.inference_mode():
            try:
                result = module(*args)
            except torch.jit.Error as exc:
                raise ModelError(_model_message(exc), log_message=type(exc).__name__) from exc
        return to_arrays(result, self.output_names)

    def close(self) -> None:
        self.module = None
        self.pinned = None
