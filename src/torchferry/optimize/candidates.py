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

from torchferry.archive.formats import ONNXRUNTIME, TORCHSCRIPT
from torchferry.archive.manifest import Manifest
from torchferry.archive.store import Archive
from torchferry.errors import InvalidInput
from torchferry.optimize.context import BuildContext
from torchferry.optimize.errors import Skipped

Builder = Callable[[BuildContext], Archive]


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    build: Builder
    #: Where it is measured: "cuda" for the half-precision candidates.
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
]  # fmt: skip


def original_name(manifest: Manifest) -> str:
    """The candidate that serves the source exactly as it is served now."""
    if manifest.runtime == TORCHSCRIPT:
        return "fp32-torchscript"
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
