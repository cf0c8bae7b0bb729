"""torchferry: export, optimize and serve PyTorch models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from torchferry.client import Client
    from torchferry.export import export

__all__ = ["Client", "__version__", "export"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import torchferry` does not pull in torch for the client alone.
    if name == "export":
        # The subpackage is callable: torchferry.export(...) works before and after its import.
        import torchferry.export

        return torchferry.export
    if name == "Client":
        from torchferry.client import Client

        return Client
    raise AttributeError(f"module 'torchferry' has no attribute {name!r}")
