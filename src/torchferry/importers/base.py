"""What every importer shares: the caller's options, and what an importer found.

An importer is a function ``(path, ImportOptions) -> Imported``; it reads a foreign file,
works out the signature (and, for archives of other servers, the handler and extra files),
and says which files the archive gets. :func:`torchferry.importers.import_model` writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torchferry.archive.manifest import HandlerSpec, ParityReport
from torchferry.signature import ModelSignature, TensorSpec

#: Batch size of the random inputs a model is run on to learn its outputs.
PROBE_BATCH = 2


@dataclass(frozen=True)
class ImportOptions:
    """What the caller says besides the file."""

    inputs: Sequence[TensorSpec] | None = None
    output_names: Sequence[str] | None = None
    #: The handler the caller chose, if any (an importer's own choice is then only a default).
    handler: str | None = None
    #: Import a TorchServe archive whose handler is custom Python (kept, never run).
    trust_custom_handler: bool = False
    #: A private directory to unpack into; it lives until the archive is written.
    scratch: Path | None = None


@dataclass(frozen=True)
class Imported:
    """What an importer found: the runtime, the signature, and the files to copy."""

    #: A runtime name of :mod:`torchferry.archive.formats`.
    runtime: str
    signature: ModelSignature
    #: Archive file name -> source file; the runtime's graph file is among them.
    files: dict[str, Path]
    source: str
    #: The handler the foreign format asks for, when it says (the caller's choice wins).
    handler: HandlerSpec | None = None
    #: Further files for the archive (labels, reference copies); the caller's files win.
    extra_files: Mapping[str, bytes | Path] = field(default_factory=dict)
    #: The model name the file gives, used when the caller gives none.
    name: str | None = None
    #: What the user should know about the import (printed by the CLI).
    notes: tuple[str, ...] = ()
    #: The converted graph checked against the source framework, when the import converts.
    parity: tuple[ParityReport, ...] = ()
    #: Versions of the frameworks the import read the model with, besides torchferry's own.
    framework_versions: Mapping[str, str] = field(default_factory=dict)


Importer = Callable[[Path, ImportOptions], Imported]
