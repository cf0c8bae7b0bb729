"""``nn.Module`` -> TorchScript and ONNX (dynamic batch), safetensors weights, parity-checked.

``export()`` writes the result as a versioned archive in a model store; ``load_model()``
resolves a ``FILE.py:FACTORY`` or ``package.module:factory`` target for the CLI.
"""

import sys
import types
from typing import Any

from torchferry.export.api import export, framework_versions
from torchferry.export.loader import load_model
from torchferry.export.parity import DEFAULT_TOLERANCE

__all__ = ["DEFAULT_TOLERANCE", "export", "framework_versions", "load_model"]


class _CallableModule(types.ModuleType):
    """Makes ``torchferry.export(...)`` call the function even after this subpackage, which
    shares its name, has been imported (Python then binds the package attribute to us)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
