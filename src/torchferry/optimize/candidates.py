"""The candidates autotune tries: each a name and a builder that writes a real archive.

A builder takes a :class:`BuildContext` and returns an :class:`Archive` in the context's
scratch store, served as ``torchferry serve`` would serve it. It raises
:class:`~torchferry.optimize.errors.Skipped` when its technique does not apply here; any other
exception marks the candidate failed. The technique modules are imported inside the builders,
so a missing or broken technique fails only its own candidates.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from torchferry.archive.formats import ONNXRUNTIME, ONNXRUNTIME_TRT, TORCHSCRIPT
from torchferry.archive.manifest import Manifest
from torchferry.archive.store import Archive
from torchferry.errors import DeviceUnavailable, InvalidInput
from torchferry.optimize.context import BuildContext
from torchferry.optimize.errors import Skipped
from torchferry.runtimes.onnx_providers import (
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    Provider,
    require_available,
)

Builder = Callable[[BuildContext], Archive]


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    build: Builder
    #: Where it is measured: "cuda" for the half-precision, CUDA and TensorRT candidates.
    device: str = "cpu"


# -- builders ---------------------------------------------------------------------------
def _ort_level(level: str, ctx: BuildContext) -> Archive:
    name = "fp32-onnxruntime" if level == "all" else f"ort-level-{level}"
    return ctx.variant(name, ctx.onnx_base(), ONNXRUNTIME, {"graph_optimization_level": level})


def _fp32_torchscript(ctx: BuildContext) -> Archive:
    if TORCHSCRIPT in ctx.source.manifest.graphs:
        return ctx.variant("fp32-torchscript", ctx.source, TORCHSCRIPT, {})
    try:
        model = ctx.eager()
    except Skipped as exc:
        raise Skipped(f"the archive has no TorchScript graph, and {exc.reason}") from None
    return ctx.export("fp32-torchscript", model, "torchscript", keep_factory=True)


def _ort_dynamic(ctx: BuildContext) -> Archive:
    from torchferry.optimize.quantize_onnx import quantize_dynamic_onnx

    base = ctx.onnx_base()
    graph = ctx.scratch_file("ort-dynamic-int8")
    quantize_dynamic_onnx(base.file(base.manifest.graph_file(ONNXRUNTIME)), graph)
    return ctx.onnx_graph_archive("ort-dynamic-int8", graph)


def _ort_static(method: str, ctx: BuildContext) -> Archive:
    from torchferry.optimize.quantize_onnx import quantize_static_onnx

    name = f"ort-static-int8-{method}"
    base = ctx.onnx_base()
    graph = ctx.scratch_file(name)
    source = base.file(base.manifest.graph_file(ONNXRUNTIME))
    quantize_static_onnx(source, graph, ctx.calibration_feeds(), method)  # type: ignore[arg-type]
    return ctx.onnx_graph_archive(name, graph)


def _torch_dynamic(ctx: BuildContext) -> Archive:
    from torchferry.optimize.quantize_torch import quantize_dynamic_torch

    return ctx.torchscript("torch-dynamic-int8", quantize_dynamic_torch(ctx.eager()))


def _torch_static(ctx: BuildContext) -> Archive:
    from torchferry.optimize.quantize_torch import quantize_static_torch

    model = quantize_static_torch(
        ctx.eager(), ctx.calibration_tensors(), ctx.example_inputs(), backend="x86"
    )
    return ctx.torchscript("torch-static-int8", model)


def _prune_l1(percent: int, ctx: BuildContext) -> Archive:
    from torchferry.optimize.prune import prune_unstructured

    model = prune_unstructured(ctx.eager(), percent / 100)
    # same module class and state-dict keys: the factory still rebuilds it from its weights
    return ctx.export(f"prune-l1-{percent}", model, "both", keep_factory=True)


def _prune_channels(percent: int, ctx: BuildContext) -> Archive:
    from torchferry.optimize.prune import prune_channels

    # no fine-tuning: the data file is the evaluation set, and training on it would flatter
    model = prune_channels(ctx.eager(), percent / 100, ctx.example_inputs())
    return ctx.export(f"prune-channels-{percent}", model, "both")  # new shapes: no factory


def _require_gpu(name: str, providers: tuple[str, ...]) -> None:
    """Skipped unless PyTorch sees a CUDA device and this onnxruntime has ``providers``
    (onnxruntime-gpu; the CPU wheel has neither CUDA's nor TensorRT's): the providers by the
    rule a runtime refuses them with at load, its message the reason."""
    import onnxruntime as ort

    from torchferry.optimize.half import gpu_available

    reasons = [] if gpu_available() else [f"{name} needs a CUDA device (PyTorch sees none)"]
    try:
        wanted: list[Provider] = [(provider, {}) for provider in providers]
        require_available(wanted, ort.get_available_providers(), name, ort.__version__)
    except DeviceUnavailable as exc:
        reasons.append(exc.message)
    if reasons:
        raise Skipped("; ".join(reasons))


def _ort_cuda(ctx: BuildContext) -> Archive:
    name = "cuda-fp32-onnxruntime"
    _require_gpu(name, (CUDA_PROVIDER,))
    return ctx.variant(name, ctx.onnx_base(), ONNXRUNTIME, {})


def _trt(precision: str, ctx: BuildContext) -> Archive:
    name = f"trt-{precision}"
    _require_gpu(name, (TENSORRT_PROVIDER, CUDA_PROVIDER))
    base = ctx.onnx_base()
    if precision != "int8":
        return ctx.variant(name, base, ONNXRUNTIME_TRT, TRT_PRECISIONS[precision])
    from torchferry.optimize.trt_calibration import (
        TABLE_NAME,
        has_qdq,
        write_trt_calibration_table,
    )

    graph = base.file(base.manifest.graph_file(ONNXRUNTIME))
    # fp16 too: TensorRT runs the layers int8 does not suit in fp16 rather than fp32
    options: dict[str, bool | str] = {"trt_int8": True, "trt_fp16": True}
    if has_qdq(graph):  # a statically quantized graph: its own scales, no table
        return ctx.variant(name, base, ONNXRUNTIME_TRT, options)
    table = write_trt_calibration_table(
        graph, ctx.calibration_feeds(), ctx.scratch_file(name).parent
    )
    files = {**{n: base.file(n) for n in base.manifest.files}, TABLE_NAME: table}
    options["trt_int8_calibration_table_name"] = TABLE_NAME
    return ctx.write(name, base.manifest, files, runtime=ONNXRUNTIME_TRT, runtime_options=options)


#: The TensorRT candidates' ``runtime_options`` by precision (int8's also name the table).
TRT_PRECISIONS: dict[str, dict[str, bool]] = {"fp32": {}, "fp16": {"trt_fp16": True}}


def _half(dtype: str, ctx: BuildContext) -> Archive:
    from torchferry.optimize.half import half_precision

    model = half_precision(ctx.eager(), dtype)  # type: ignore[arg-type]
    device = str(next(model.parameters()).device)
    return ctx.torchscript(dtype, model, device=device)


CANDIDATES: list[Candidate] = [
    Candidate("fp32-onnxruntime", "the original, ONNX Runtime, all graph optimizations",
              partial(_ort_level, "all")),
    Candidate("ort-level-disabled", "fp32, ONNX Runtime, graph optimizations off",
              partial(_ort_level, "disabled")),
    Candidate("ort-level-basic", "fp32, ONNX Runtime, basic graph optimizations",
              partial(_ort_level, "basic")),
    Candidate("ort-level-extended", "fp32, ONNX Runtime, extended graph optimizations",
              partial(_ort_level, "extended")),
    Candidate("fp32-torchscript", "the original, TorchScript", _fp32_torchscript),
    Candidate("ort-dynamic-int8", "ONNX Runtime dynamic int8 quantization", _ort_dynamic),
    *(
        Candidate(f"ort-static-int8-{m}", f"ONNX Runtime static int8 (QDQ), {m} calibration",
                  partial(_ort_static, m))
        for m in ("minmax", "entropy", "percentile")
    ),
    Candidate("torch-dynamic-int8", "PyTorch dynamic int8 quantization, TorchScript",
              _torch_dynamic),
    Candidate("torch-static-int8", "PyTorch FX static int8 (conv-bn fused), TorchScript",
              _torch_static),
    *(
        Candidate(f"prune-l1-{p}", f"{p}% of weights zeroed (L1, unstructured), ONNX Runtime",
                  partial(_prune_l1, p))
        for p in (30, 50)
    ),
    *(
        Candidate(f"prune-channels-{p}", f"{p}% of channels removed (structured), ONNX Runtime",
                  partial(_prune_channels, p))
        for p in (25, 50)
    ),
    Candidate("fp16", "half precision (fp16) on the GPU, TorchScript", partial(_half, "fp16"),
              device="cuda"),
    Candidate("bf16", "bfloat16 on the GPU, TorchScript", partial(_half, "bf16"),
              device="cuda"),
    Candidate("cuda-fp32-onnxruntime", "fp32 on the GPU, ONNX Runtime's CUDA provider",
              _ort_cuda, device="cuda"),
    Candidate("trt-fp32", "fp32 (TF32) on the GPU, TensorRT through ONNX Runtime",
              partial(_trt, "fp32"), device="cuda"),
    Candidate("trt-fp16", "fp16 on the GPU, TensorRT through ONNX Runtime",
              partial(_trt, "fp16"), device="cuda"),
    Candidate("trt-int8", "int8 (calibrated on the data) and fp16 on the GPU, TensorRT",
              partial(_trt, "int8"), device="cuda"),
]  # fmt: skip


def original_name(manifest: Manifest) -> str:
    """The candidate that serves the source exactly as it is served now."""
    if manifest.runtime == TORCHSCRIPT:
        return "fp32-torchscript"
    if manifest.runtime == ONNXRUNTIME_TRT:
        options = manifest.runtime_options
        return (
            "trt-int8"
            if options.get("trt_int8")
            else "trt-fp16"
            if options.get("trt_fp16")
            else "trt-fp32"
        )
    level = str(manifest.runtime_options.get("graph_optimization_level", "all"))
    return "fp32-onnxruntime" if level == "all" else f"ort-level-{level}"


def select(
    patterns: Sequence[str] | None, registry: Sequence[Candidate] = CANDIDATES
) -> list[Candidate]:
    """The candidates whose names match any of ``patterns`` (names or globs), in registry
    order; all of them when ``patterns`` is empty or None. A pattern that matches nothing
    is an error naming the candidates."""
    if not patterns:
        return list(registry)
    names = [c.name for c in registry]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise InvalidInput(
                f"--candidates {pattern!r} matches no candidate; candidates are {names}"
            )
    return [c for c in registry if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
