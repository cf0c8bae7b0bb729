"""Put a model source into the store, so that every worker (and every restart) loads the
same files: what a management load does first with a source outside the store.

- an archive directory inside the store (``STORE/NAME/V``): as is, served as NAME version V
  whatever its manifest says (``build.served_as``);
- any other archive directory: verified, then copied in as the next version of ``name``
  (or of its manifest's name), its manifest renamed and renumbered and every file hashed
  again through ``ModelStore.write``, which never overwrites a version;
- a model file (``.mar``, ``.onnx``...): imported through ``importers.import_model``.

Slow (hashing, copying): the worker runs it in a thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torchferry.archive.integrity import safe_relative, verify_archive
from torchferry.archive.manifest import MANIFEST_NAME, Manifest
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError
from torchferry.importers import import_model
from torchferry.serving.build import served_as


def stage_source(source: Path, store: Path, name: str | None) -> Archive:
    """The archive in ``store`` that ``source`` is (or becomes), verified."""
    models = ModelStore(store)
    if (source / MANIFEST_NAME).is_file():
        placed = _in_store(source, store)
        if placed is not None and name in (None, placed[0]):
            return served_as(Archive.open(source), *placed)  # its directory names it
        return _copy_archive(source, models, name)
    if source.is_dir():
        raise ArchiveError(f"{source} is not a model archive: it has no {MANIFEST_NAME}")
    if not source.is_file():
        raise ArchiveError(f"no model source at {source}")
    return import_model(source, name=name, store=models)


def _in_store(source: Path, store: Path) -> tuple[str, int] | None:
    """The model name and version when ``source`` is a version directory ``STORE/NAME/V``."""
    try:
        relative = source.resolve().relative_to(store.resolve())
    except ValueError:
        return None
    parts = relative.parts
    if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) >= 1:
        return parts[0], int(parts[1])
    return None


def _copy_archive(source: Path, models: ModelStore, name: str | None) -> Archive:
    manifest = Manifest.read(source)
    verify_archive(source, manifest)  # never copy a corrupt archive into the store
    target = name or manifest.name
    version = models.next_version(target)
    renamed = manifest.model_copy(update={"name": target, "version": version, "files": {}})

    def populate(directory: Path) -> None:
        for file_name in manifest.files:
            relative = safe_relative(file_name)
            (directory / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, directory / relative)

    return models.write(renamed, populate)
