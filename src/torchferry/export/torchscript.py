"""``nn.Module`` -> TorchScript ``model.pt``, by tracing (default) or scripting."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from torchferry.errors import ExportError
from torchferry.export.quiet import quiet

TorchScriptMethod = Literal["trace", "script"]


def export_torchscript(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    method: TorchScriptMethod = "trace",
) -> None:
    """Write ``model`` as TorchScript to ``path``.

    Tracing records the operations run on ``args``: Python control flow that depends on the
    data is frozen on the branch the example took (the parity check catches that). Scripting
    compiles ``forward`` and keeps control flow, but accepts only TorchScript's Python subset.
    """
    if method not in ("trace", "script"):
        raise ExportError(f"unknown TorchScript method {method!r}; use 'trace' or 'script'")
    try:
        with quiet(), torch.no_grad():
            if method == "trace":
                # strict=False lets a model return a dict or a list.
                module = torch.jit.trace(model, args, check_trace=False, strict=False)
            else:
                module = torch.jit.script(model)
            torch.jit.save(module, str(path))
    except ExportError:
        raise
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(
            f"TorchScript {method} failed: {type(exc).__name__}: {first_line}"
        ) from exc
