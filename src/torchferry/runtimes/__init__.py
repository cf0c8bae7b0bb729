"""Engines behind the ``Runtime`` interface, chosen by the manifest's ``runtime`` field."""

from __future__ import annotations

from torchferry.archive.store import Archive
from torchferry.errors import ArchiveError
from torchferry.runtimes.base import Runtime, default_threads
from torchferry.runtimes.onnx import OnnxRuntime
from torchferry.runtimes.torchscript import TorchScriptRuntime

#: One line per engine: a new runtime is a new file plus an entry here.
RUNTIMES: dict[str, type[Runtime]] = {
    OnnxRuntime.name: OnnxRuntime,
    TorchScriptRuntime.name: TorchScriptRuntime,
}


def load_runtime(
    archive: Archive,
    runtime: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Runtime:
    """Instantiate and load the archive's runtime (or ``runtime`` when given)."""
    name = runtime or archive.manifest.runtime
    try:
        cls = RUNTIMES[name]
    except KeyError:
        raise ArchiveError(
            f"unknown runtime {name!r}; known runtimes are {sorted(RUNTIMES)}"
        ) from None
    engine = cls(archive, device=device, threads=threads)
    engine.load()
    return engine


__all__ = ["RUNTIMES", "Runtime", "default_threads", "load_runtime"]
