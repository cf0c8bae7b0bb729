"""torchferry: export, optimize and serve PyTorch models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchferry._version import __version__

if TYPE_CHECKING:
    from torchferry.client import Client
    from torchferry.errors import InvalidInput
    from torchferry.export import export
    from torchferry.handlers.base import Handler, HandlerContext, HandlerRequest

__all__ = [
    "Client",
    "Handler",
    "HandlerContext",
    "HandlerRequest",
    "InvalidInput",
    "__version__",
    "export",
]
#: Names importable from ``torchferry`` -> the module that defines them, imported on first use.
_LAZY = {
    "Handler": "torchferry.handlers.base",
    "HandlerContext": "torchferry.handlers.base",
    "HandlerRequest": "torchferry.handlers.base",
    "InvalidInput": "torchferry.errors",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `import torchferry` does not pull in torch for the client alone.
    if name == "export":
        # The subpackage is callable: torchferry.export(...) works before and after its import.
        import torchferry.export

        return torchferry.export
    if name == "Client":
        from torchferry.client import Client

        return Client
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torchferry' has no attribute {name!r}")
