"""Per-model pre- and post-processing, chosen by the manifest's ``handler.name``."""

from __future__ import annotations

from torchferry.archive.store import Archive
from torchferry.errors import ArchiveError
from torchferry.handlers.base import Handler, HandlerInput
from torchferry.handlers.image import ImageHandler
from torchferry.handlers.tensor import TensorHandler

#: One line per handler: a new handler is a new file plus an entry here.
HANDLERS: dict[str, type[Handler]] = {
    TensorHandler.name: TensorHandler,
    ImageHandler.name: ImageHandler,
}


def load_handler(archive: Archive) -> Handler:
    """Instantiate the handler the archive's manifest names, with its config."""
    name = archive.manifest.handler.name
    try:
        cls = HANDLERS[name]
    except KeyError:
        raise ArchiveError(
            f"model {archive.manifest.name!r} version {archive.manifest.version} asks for "
            f"handler {name!r}; known handlers are {sorted(HANDLERS)}"
        ) from None
    return cls(archive)


__all__ = ["HANDLERS", "Handler", "HandlerInput", "ImageHandler", "TensorHandler", "load_handler"]
