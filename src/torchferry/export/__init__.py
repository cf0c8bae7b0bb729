"""``nn.Module`` -> TorchScript and ONNX (dynamic batch), safetensors weights, parity-checked.

``export()`` writes the result as a versioned archive in a model store; ``load_model()``
resolves a ``FILE.py:FACTORY`` or ``package.module:factory`` target for the CLI.
"""

from torchferry.export.api import export, framework_versions
from torchferry.export.loader import load_model
from torchferry.export.parity import DEFAULT_TOLERANCE

__all__ = ["DEFAULT_TOLERANCE", "export", "framework_versions", "load_model"]
