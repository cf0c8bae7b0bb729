"""ONNX Runtime."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from torchferry.archive.formats import ONNXRUNTIME
from torchferry.devices import parse_device
from torchferry.errors import ArchiveError, ModelNotReady
from torchferry.runtimes.base import Runtime
from torchferry.runtimes.onnx_providers import (
    Provider,
    providers_for,
    require_available,
    require_started,
)
from torchferry.runtimes.onnx_shared import shared_graph, source_sha256

log = logging.getLogger(__name__)

_decode = np.frompyfunc(lambda x: x.decode("utf-8", "replace") if isinstance(x, bytes) else x, 1, 1)


#: ONNX Runtime's log severity that only a crash reaches (0 verbose ... 3 error, 4 fatal).
_FATAL = 4


def _to_str(array: np.ndarray) -> np.ndarray:
    """BYTES as ONNX Runtime wants them: ``str`` elements. Text from JSON already is; only
    ``bytes`` elements (raw or base64 inputs) are decoded, once."""
    if not any(isinstance(x, bytes) for x in array.flat):
        return array
    return np.asarray(_decode(array), dtype=object).reshape(array.shape)


#: The manifest's ``runtime_options.graph_optimization_level`` names.
GRAPH_OPTIMIZATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OnnxRuntime(Runtime):
    """ONNX Runtime on the CPU, or with ``--device cuda[:N]`` its CUDA provider on that GPU
    (then the CPU, for operators CUDA has no kernel for); a GPU asked for and not usable is
    refused at load, never run on the CPU instead (``onnx_providers``)."""

    name = ONNXRUNTIME
    platform = "onnxruntime_onnx"

    def check(self) -> None:
        self._providers()

    def load(self) -> None:
        self.session = self._session()
        self.output_names = [o.name for o in self.session.get_outputs()]
        # a failing run's message can quote an input (a Gather's out-of-range index): it goes
        # to the client in the exception, and ONNX Runtime's own log must not write it too
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = _FATAL

    def _options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Idle intra-op threads spin for a while after each run by default. In a server the
        # event loop and the batcher share the cores with them: spinning cost a small model
        # 2.3x the CPU per request (771 -> 340 us, 2 threads, 2 cores) for no speed-up.
        spinning = self.archive.manifest.runtime_options.get("allow_spinning", False)
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
        options.graph_optimization_level = self._optimization_level()
        return options

    def _graph(self) -> Path:
        return self.archive.file(self.archive.manifest.graph_file(self.name))

    def _asked(self) -> str:
        """What the operator asked for, as messages name it."""
        return f"--device {self.device}"

    def _providers(self) -> list[Provider]:
        """The providers for this runtime's device, refused (``DeviceUnavailable``) when this
        onnxruntime lacks one."""
        providers = providers_for(parse_device(self.device))
        require_available(providers, ort.get_available_providers(), self._asked(), ort.__version__)
        return providers

    def _session(self) -> ort.InferenceSession:
        providers = self._providers()
        shared = self._shared_session(providers)
        if shared is not None:
            return shared
        return self._new_session(self._graph(), self._options(), providers)

    def _new_session(
        self, graph: Path, options: ort.SessionOptions, providers: list[Provider]
    ) -> ort.InferenceSession:
        """A session on ``graph`` that runs with every provider it was given."""
        try:
            session = ort.InferenceSession(str(graph), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ArchiveError(f"ONNX Runtime cannot load {graph}: {exc}") from exc
        require_started(providers, session.get_providers(), self._asked())
        return session

    def _shared_session(self, providers: list[Provider]) -> ort.InferenceSession | None:
        """A session on the graph optimized once, whose weights every worker maps from one
        file (``onnx_shared``); None when sharing is off or fails (the archive's own graph is
        loaded then, each worker with its private copy, and any error is that load's)."""
        manifest = self.archive.manifest
        if not self.shares_weights() or manifest.graph_file(self.name) not in manifest.files:
            return None  # no verified hash: nothing to key
        options = self._options()
        try:
            source = source_sha256(manifest, self.name, self._graph())
            graph = shared_graph(self._graph(), source, options.graph_optimization_level)
            # optimized already (layouts and fusions are in the file): optimizing again would
            # find nothing to do, and any rewrite it made would be a private copy
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            return ort.InferenceSession(str(graph), options, providers=providers)
        except Exception as exc:  # UnsafeCache, OSError, and ONNX Runtime's untyped errors
            log.warning("%s: weights not shared between workers: %s", self._graph(), exc)
            return None

    def _level_name(self) -> str:
        """The manifest's ``graph_optimization_level`` (``all`` when not given), checked."""
        level = str(self.archive.manifest.runtime_options.get("graph_optimization_level", "all"))
        if level not in GRAPH_OPTIMIZATION_LEVELS:
            raise ArchiveError(
                f"runtime option graph_optimization_level {level!r}: expected one of "
                f"{sorted(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        return level

    def _optimization_level(self) -> ort.GraphOptimizationLevel:
        return GRAPH_OPTIMIZATION_LEVELS[self._level_name()]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # ONNX Runtime takes string tensors as str objects (it would str() a bytes object);
        # its string outputs stay str, which every encoder takes as BYTES
        feed = {n: _to_str(a) if a.dtype.kind == "O" else a for n, a in inputs.items()}
        session = self.session
        if session is None:  # closed (released by the memory budget): not a crash, a 503
            raise ModelNotReady(f"model {self.archive.manifest.name!r} is not loaded")
        results = session.run(self.output_names, feed, self.run_options)
        return dict(zip(self.output_names, results, strict=True))

    def close(self) -> None:
        self.session = None
