"""ONNX Runtime with NVIDIA TensorRT: ``--runtime onnxruntime-trt --device cuda[:N]``.

The archive's ONNX graph (the ``onnxruntime`` one: this runtime has none of its own) runs
on ONNX Runtime's TensorRT provider, then its CUDA provider for what TensorRT cannot run,
then the CPU. The engine is built for the shapes of ``trt_options.shape_profile`` (batch 1
to the manifest's ``max_batch_size``) at load, in the precision the manifest's
``runtime_options`` ask for, and kept in the TensorRT cache (``trt_cache``) for the next
load. A batch past the profile's largest runs in parts: a request above ``max_batch_size``
runs alone, and ``--max-batch-size`` may be larger than the manifest's.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from torchferry.archive.formats import ONNXRUNTIME, ONNXRUNTIME_TRT
from torchferry.devices import Device, parse_device
from torchferry.errors import ArchiveError, DeviceUnavailable
from torchferry.runtimes.onnx import OnnxRuntime
from torchferry.runtimes.onnx_providers import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    Provider,
    cuda_options,
    require_available,
)
from torchferry.runtimes.onnx_shared import source_sha256
from torchferry.runtimes.trt_cache import EngineKey, engine_entry, gpu_identity, tensorrt_version
from torchferry.runtimes.trt_options import (
    Precision,
    ShapeProfile,
    format_shapes,
    precision_of,
    profile_feeds,
    shape_profile,
    tensorrt_options,
)
from torchferry.runtimes.weight_cache import UnsafeCache

log = logging.getLogger(__name__)


class TensorRtRuntime(OnnxRuntime):
    name = ONNXRUNTIME_TRT
    #: Rows one run may have: the profile's largest batch (None: no dynamic batch).
    max_rows: int | None = None
    #: The inputs whose dim 0 is the batch.
    _batched: tuple[str, ...] = ()
    #: The engine directory of a load that could not use the cache (removed by close()).
    _scratch: tempfile.TemporaryDirectory[str] | None = None

    def _asked(self) -> str:
        return f"--runtime {self.name} --device {self.device}"

    def _device(self) -> Device:
        device = parse_device(self.device)
        if not device.is_cuda:
            raise DeviceUnavailable(
                f"runtime {self.name} runs on an NVIDIA GPU: serve it with --device cuda "
                f"(or cuda:N), not --device {self.device}"
            )
        return device

    def _settings(self) -> tuple[Precision, ShapeProfile]:
        """The precision and shapes the manifest asks for (``ArchiveError`` when malformed)."""
        manifest = self.archive.manifest
        options = manifest.runtime_options
        profile = shape_profile(manifest.signature, manifest.batching.max_batch_size, options)
        return precision_of(options, manifest.files), profile

    def _providers(self) -> list[Provider]:
        """Refuses (``DeviceUnavailable``) a CPU device or an onnxruntime without TensorRT
        or CUDA; the providers after TensorRT's, whose options depend on the engine cache."""
        device = self._device()
        names: list[Provider] = [(TENSORRT_PROVIDER, {}), (CUDA_PROVIDER, {}), (CPU_PROVIDER, {})]
        require_available(names, ort.get_available_providers(), self._asked(), ort.__version__)
        return [(CUDA_PROVIDER, cuda_options(device)), (CPU_PROVIDER, {})]

    def check(self) -> None:
        super().check()
        self._settings()

    def _session(self) -> ort.InferenceSession:
        fallbacks = self._providers()
        device = self._device()
        precision, profile = self._settings()
        self.max_rows = profile.max_rows
        signature = self.archive.manifest.signature
        self._batched = tuple(s.name for s in signature.inputs if s.shape[:1] == (-1,))

        def providers(directory: Path, cache: bool) -> list[Provider]:
            trt = tensorrt_options(device, precision, profile, directory, cache=cache)
            return [(TENSORRT_PROVIDER, trt), *fallbacks]

        def build(directory: Path) -> None:
            # the engine, its profile and TensorRT's timing cache written into the entry;
            # this session is dropped, and every load (this one too) reads the engine there
            self._stage_table(precision, directory)
            session = self._new_session(self._graph(), self._options(), providers(directory, True))
            # a part of the graph whose inputs no profile names (ONNX Runtime split the graph
            # around operators TensorRT lacks) gets its engine at its first run: run the
            # profile's two ends here, so that its engines are in the entry too
            for feed in profile_feeds(self.archive.manifest.signature, profile):
                self._run_profile(session, feed)

        key = self._engine_key(device, precision, profile)
        if key is not None:
            try:
                entry = engine_entry(key, build)
            except (UnsafeCache, OSError) as exc:
                log.warning("%s: TensorRT engine not cached: %s", self._graph(), exc)
            else:
                return self._new_session(self._graph(), self._options(), providers(entry, True))
        # kept until close(): the profile's engine is built with the session, but a part of
        # the graph that no profile names gets its engine at its first run, and an int8 one
        # reads the calibration table from here then
        scratch = tempfile.TemporaryDirectory(prefix="torchferry-trt-")
        try:
            self._stage_table(precision, Path(scratch.name))
            session = self._new_session(
                self._graph(), self._options(), providers(Path(scratch.name), False)
            )
        except BaseException:
            scratch.cleanup()
            raise
        self._drop_scratch()  # a load again without close(): its session is replaced now
        self._scratch = scratch
        return session

    def _run_profile(self, session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> None:
        """One run at a profile's end while the engines are built; ONNX Runtime's untyped
        error (TensorRT could not build an engine for that shape, or the GPU ran out of
        memory) as an ``ArchiveError`` naming the shapes."""
        try:
            session.run(None, feed)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            shapes = format_shapes({name: array.shape for name, array in feed.items()})
            raise ArchiveError(
                f"ONNX Runtime cannot build the TensorRT engines of {self._graph()}: its run "
                f"at input shapes {shapes} failed: {exc}"
            ) from exc

    def _engine_key(
        self, device: Device, precision: Precision, profile: ShapeProfile
    ) -> EngineKey | None:
        """What keys this engine in the cache; None (no caching) when the GPU or TensorRT
        cannot be named, so that an engine is never reused on another."""
        gpu, tensorrt = gpu_identity(device.index), tensorrt_version()
        if gpu is None or tensorrt is None:
            unknown = (
                f"PyTorch sees no CUDA device {device.index} to name the GPU by"
                if gpu is None
                else "TensorRT's version cannot be read (no libnvinfer by name, no tensorrt "
                "package)"
            )
            log.warning(
                "%s: TensorRT engine not cached, built at every load: %s", self._graph(), unknown
            )
            return None
        manifest = self.archive.manifest
        table = precision.calibration_table
        return EngineKey(
            gpu=gpu,
            profile=profile,
            precision=precision,
            calibration_sha256=manifest.files[table].sha256 if table else None,
            onnxruntime=ort.__version__,
            tensorrt=tensorrt,
            graph_sha256=source_sha256(manifest, ONNXRUNTIME, self._graph()),
            graph_optimization_level=self._level_name(),
        )

    def _stage_table(self, precision: Precision, directory: Path) -> None:
        """The archive's calibration table copied where ONNX Runtime reads it: the engine
        cache's directory."""
        if precision.calibration_table and precision.staged_table:
            source = self.archive.file(precision.calibration_table)
            shutil.copyfile(source, directory / precision.staged_table)

    def close(self) -> None:
        super().close()
        self._drop_scratch()

    def _drop_scratch(self) -> None:
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            scratch.cleanup()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        limit, batched = self.max_rows, self._batched
        rows = len(inputs[batched[0]]) if batched and batched[0] in inputs else 0
        if limit is None or rows <= limit:
            return super().infer(inputs)
        # past the engine's profile: in parts, as the batcher would have split them
        parts = [
            super().infer(
                {
                    name: array[start : start + limit] if name in batched else array
                    for name, array in inputs.items()
                }
            )
            for start in range(0, rows, limit)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
