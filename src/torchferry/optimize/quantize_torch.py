"""PyTorch's own int8 quantization: dynamic (weights only) and static (FX graph mode).

Both run on the CPU (PyTorch's quantized kernels are CPU kernels: ``x86``/``fbgemm`` on
x86-64, ``qnnpack`` on ARM) and return a new module; the model passed in is not changed.
The results are traceable by ``torch.jit.trace``, which is how they are shipped.

``torch.ao.quantization`` is deprecated in favour of torchao's PT2E flow (torch warns that
it "will be removed", and that the quantized tensors its kernels use are deprecated too);
it is still present and working in torch 2.13. It is imported on first use, so with a
torch that no longer has it these functions raise :class:`Skipped` instead of breaking
``import torchferry.optimize``. Its deprecation warnings are silenced here: callers can do
nothing about them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from torchferry.optimize.errors import Skipped

log = logging.getLogger(__name__)

#: What dynamic quantization swaps for int8 versions (exact types, as PyTorch matches them).
DYNAMIC_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM, nn.GRU)


@contextlib.contextmanager
def _no_deprecation_noise() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\.")
        yield


def _summary(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def quantize_dynamic_torch(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the model's ``Linear``, ``LSTM`` and ``GRU`` layers.

    Weights are stored as ``qint8`` (per tensor); activations stay float and are quantized
    on the fly inside each layer, so no calibration data is needed. Works on a deep copy,
    moved to the CPU. Other layers (convolutions, norms...) are left in float: PyTorch has
    no dynamic int8 kernels for them. Subclasses of these layers (e.g. attention's internal
    ``NonDynamicallyQuantizableLinear``) are not quantized, as PyTorch matches exact types.

    Raises :class:`Skipped` when the model has none of these layers.
    """
    found = sorted({type(m).__name__ for m in model.modules() if type(m) in DYNAMIC_TYPES})
    if not found:
        raise Skipped("no Linear/LSTM/GRU layers to quantize dynamically")
    try:
        with _no_deprecation_noise():
            from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # pragma: no cover - torch without torch.ao.quantization
        raise Skipped(f"this torch has no dynamic quantization ({_summary(exc)})") from None
    copied = copy.deepcopy(model).cpu().eval()
    with _no_deprecation_noise():
        quantized = quantize_dynamic(copied, set(DYNAMIC_TYPES), dtype=torch.qint8)
    log.info("dynamic int8: quantized the model's %s layers", ", ".join(found))
    return quantized.eval()


def _cpu(batch: Iterable[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(t.cpu() for t in batch)


def _fused_names(prepared: nn.Module) -> list[str]:
    """The fused modules (``ConvReLU2d``, ``LinearReLU``...) in a prepared model."""
    from torch.ao.nn.intrinsic import _FusedModule

    return [name for name, m in prepared.named_modules() if isinstance(m, _FusedModule)]


def quantize_static_torch(
    model: nn.Module,
    calibration: Iterable[tuple[torch.Tensor, ...]],
    example_inputs: tuple[torch.Tensor, ...],
    backend: str = "x86",
) -> nn.Module:
    """Static int8 quantization with PyTorch's FX graph mode: fuse, calibrate, convert.

    The steps, on a deep copy of ``model`` moved to the CPU and put in eval mode:

    1. ``prepare_fx`` traces the model with ``torch.fx`` and, before inserting observers,
       **fuses** the backend's patterns: conv-bn(-relu) (batch norm folded into the
       convolution's weights), conv-relu, linear(-bn)-relu... ``fuse_fx`` is not called
       separately: fusing twice breaks the lowering in torch 2.13 (``KeyError`` on
       ResNet's blocks). The fused modules are logged, and no ``BatchNorm`` that follows a
       convolution survives.
    2. Every batch of ``calibration`` (tuples of positional inputs) runs through the
       observers of ``get_default_qconfig_mapping(backend)`` (x86: histogram observers for
       activations, per-channel weights). All batches are used: keep them few (a few hundred
       rows is plenty).
    3. ``convert_fx`` lowers to quantized kernels of ``backend``.

    ``torch.backends.quantized.engine`` is set to ``backend`` (process-wide; it must match
    when the model runs). ``example_inputs`` give FX's tracing inputs. The result runs on
    the CPU, takes and returns float tensors, and can be traced with ``torch.jit.trace``.
    Layers whose inputs the backend cannot quantize (e.g. after an arbitrary division) stay
    in float.

    Raises :class:`Skipped` when the backend is not available in this torch, or when FX
    cannot trace or convert the model (dynamic control flow, unsupported constructs);
    ``ValueError`` when ``calibration`` is empty.
    """
    engines = torch.backends.quantized.supported_engines
    if backend not in engines:
        raise Skipped(f"quantized engine {backend!r} is not in this torch (it has {engines})")
    try:
        with _no_deprecation_noise():
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as exc:  # pragma: no cover - torch without torch.ao.quantization
        raise Skipped(f"this torch has no FX graph mode quantization ({_summary(exc)})") from None
    torch.backends.quantized.engine = backend
    copied = copy.deepcopy(model).cpu().eval()
    examples = _cpu(example_inputs)
    with _no_deprecation_noise():
        try:
            prepared = prepare_fx(copied, get_default_qconfig_mapping(backend), examples)
        except Exception as exc:
            raise Skipped(f"FX graph mode cannot trace the model: {_summary(exc)}") from exc
        fused = _fused_names(prepared)
        batches = 0
        with torch.no_grad():
            for batch in calibration:
                prepared(*_cpu(batch))
                batches += 1
        if not batches:
            raise ValueError("static quantization needs at least one calibration batch")
        try:
            quantized: Any = convert_fx(prepared)
        except Exception as exc:
            raise Skipped(f"FX graph mode cannot convert the model: {_summary(exc)}") from exc
    log.info(
        "static int8 (%s): %d fused modules (%s), calibrated on %d batches",
        backend,
        len(fused),
        ", ".join(fused) or "none",
        batches,
    )
    return quantized.eval()
