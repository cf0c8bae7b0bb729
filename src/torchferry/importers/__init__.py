"""Import a foreign model into the model store: a plain ``.onnx``, a TorchScript ``.pt``, a
TorchServe ``.mar``, a Keras ``.keras``/``.h5`` file or a TensorFlow SavedModel directory.

Each file type is one importer function in ``IMPORTERS`` (suffix -> function; a SavedModel
is a directory): :mod:`~torchferry.importers.graph` reads bare graphs,
:mod:`~torchferry.importers.mar` TorchServe archives (using the graph importers for the model
inside), :mod:`~torchferry.importers.tensorflow` converts TensorFlow models to ONNX (and
reads the result with the graph importer). An importer says what it found
(:class:`~torchferry.importers.base.Imported`); :func:`import_model` writes it through
:meth:`ModelStore.write`, which hashes every file. Imports point one way: ``__init__`` ->
``mar`` | ``tensorflow`` -> ``graph`` -> ``base``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from torchferry.archive.formats import GRAPH_FILES
from torchferry.archive.integrity import safe_relative
from torchferry.archive.manifest import MANIFEST_NAME, BatchingSpec, HandlerSpec, Manifest
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError
from torchferry.export.api import framework_versions
from torchferry.importers.base import PROBE_BATCH, Imported, Importer, ImportOptions
from torchferry.importers.graph import import_onnx, import_torchscript
from torchferry.importers.mar import import_mar
from torchferry.importers.tensorflow import KERAS_SUFFIXES, import_tensorflow, is_saved_model
from torchferry.signature import TensorSpec

#: File suffix -> importer. A new foreign format is one function plus one line here.
IMPORTERS: dict[str, Importer] = {
    ".onnx": import_onnx,
    ".pt": import_torchscript,
    ".ts": import_torchscript,
    ".mar": import_mar,
    **dict.fromkeys(KERAS_SUFFIXES, import_tensorflow),
}
#: A directory is imported only as a TensorFlow SavedModel.
DIRECTORY_IMPORTER: Importer = import_tensorflow


def _handler_spec(
    imported: Imported, handler: str | None, config: Mapping[str, Any]
) -> HandlerSpec:
    """The caller's handler and config over the importer's (its config only for its handler)."""
    base = imported.handler or HandlerSpec()
    name = handler or base.name
    merged = dict(base.config) if name == base.name else {}
    merged.update(config)
    return HandlerSpec(name=name, config=merged)


def _importer(path: Path) -> Importer:
    if path.is_dir():
        if not is_saved_model(path):
            raise ArchiveError(
                f"cannot import the directory {str(path)!r}: it is not a TensorFlow SavedModel "
                "(no saved_model.pb); other models are single files"
            )
        return DIRECTORY_IMPORTER
    if not path.is_file():
        raise ArchiveError(f"cannot import {str(path)!r}: no such file or directory")
    importer = IMPORTERS.get(path.suffix.lower())
    if importer is None:
        raise ArchiveError(
            f"cannot import {path.name}: unknown file type {path.suffix!r}; "
            f"supported: {', '.join(sorted(IMPORTERS))} files and SavedModel directories"
        )
    return importer


def import_model(
    path: Path | str,
    *,
    name: str | None = None,
    store: ModelStore | Path | str,
    version: int | None = None,
    inputs: Sequence[TensorSpec] | None = None,
    output_names: Sequence[str] | None = None,
    handler: str | None = None,
    handler_config: dict[str, Any] | None = None,
    batching: BatchingSpec | None = None,
    extra_files: Mapping[str, bytes | Path] | None = None,
    trust_custom_handler: bool = False,
    allow_tensorflow: bool = True,
    report: Callable[[str], None] | None = None,
) -> Archive:
    """Import the model file at ``path`` as ``STORE/NAME/VERSION`` (the next version by default).

    ``.onnx``: the signature is read from the graph (``inputs`` may override shapes).
    ``.pt``/``.ts`` (TorchScript): ``inputs`` are required; outputs are found by running the
    model once on random inputs. ``.mar`` (TorchServe): see :mod:`torchferry.importers.mar`;
    the name defaults to the archive's ``modelName`` and the handler to the closest built-in.
    ``.keras``/``.h5`` (Keras) and SavedModel directories: converted to ONNX by tf2onnx, the
    signature read from the model, parity-checked against TensorFlow (the ``tensorflow``
    extra). ``extra_files`` (e.g. ``labels.json``) are copied in. ``handler`` defaults to what the
    file asks for, else ``tensor``. ``allow_tensorflow=False`` refuses TensorFlow models (a
    serving worker's loads: converting runs TensorFlow, which would stay in its memory).
    ``report`` receives notes the user should read.
    """
    path = Path(path)
    importer = _importer(path)
    if importer is import_tensorflow and not allow_tensorflow:
        raise ArchiveError(
            f"{path.name} is a TensorFlow model: convert it first with `torchferry import "
            f"{path.name} --name NAME --store STORE` (which runs TensorFlow, as a server does "
            "not), then load the archive it writes"
        )
    if not name and importer is not import_mar:  # only a .mar names its model; say so early
        raise ArchiveError(f"cannot import {path.name}: give the model a name (--name)")
    model_store = store if isinstance(store, ModelStore) else ModelStore(store)
    model_store.root.mkdir(parents=True, exist_ok=True)
    # unpacked files stay next to the store (same disk) until the version is written
    with tempfile.TemporaryDirectory(prefix=".import-", dir=model_store.root) as scratch:
        options = ImportOptions(
            inputs=inputs,
            output_names=output_names,
            handler=handler,
            trust_custom_handler=trust_custom_handler,
            scratch=Path(scratch),
        )
        imported = importer(path, options)
        name = name or imported.name
        if not name:
            raise ArchiveError(f"cannot import {path.name}: give the model a name (--name)")
        files: dict[str, bytes | Path] = dict(imported.files)
        given = {safe_relative(k).as_posix(): v for k, v in (extra_files or {}).items()}
        for extra_name, content in {**imported.extra_files, **given}.items():
            relative = safe_relative(extra_name).as_posix()
            if relative in imported.files or relative == MANIFEST_NAME:
                raise ArchiveError(f"extra file {extra_name!r} would replace a file of the model")
            files[relative] = content if isinstance(content, bytes) else Path(content)
        for archive_name, source in files.items():
            if isinstance(source, Path) and not source.is_file():
                raise ArchiveError(
                    f"{path.name} needs {archive_name!r}, but {source} is not a file"
                )
        try:
            manifest = Manifest(
                name=name,
                version=version if version is not None else model_store.next_version(name),
                runtime=imported.runtime,
                graphs={imported.runtime: GRAPH_FILES[imported.runtime]},
                signature=imported.signature,
                handler=_handler_spec(imported, handler, handler_config or {}),
                batching=batching or BatchingSpec(),
                framework_versions={**framework_versions(), **imported.framework_versions},
                parity=list(imported.parity),
                source=imported.source,
            )
        except ValidationError as exc:
            raise ArchiveError(f"cannot import {path.name}: {exc}") from None

        def populate(staging: Path) -> None:
            for archive_name, source in files.items():
                target = staging / safe_relative(archive_name)
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(source, bytes):
                    target.write_bytes(source)
                else:
                    shutil.copyfile(source, target)

        archive = model_store.write(manifest, populate)
    if report is not None:
        for note in imported.notes:
            report(note)
    return archive


__all__ = [
    "IMPORTERS",
    "PROBE_BATCH",
    "ImportOptions",
    "Imported",
    "Importer",
    "import_mar",
    "import_model",
    "import_onnx",
    "import_tensorflow",
    "import_torchscript",
]
