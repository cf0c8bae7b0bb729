"""Put a model source into the store, so that every worker (and every restart) loads the
same files: what a management load does first with a source outside the store.

- an archive directory inside the store (``STORE/NAME/V``): as is, served as NAME version V
  whatever its manifest says (``build.served_as``);
- any other archive directory: refused if anything in it is a symbolic link; else every file
  its manifest lists is copied (never through a link), and the *copies* are checked against
  the manifest's SHA-256 before the version is written, so what the store serves is exactly
  what the source's manifest promised, even if a file changes while it is copied. It comes
  in as the next version of ``name`` (or of its manifest's name) through
  ``ModelStore.write``, which never overwrites a version;
- a *signed* archive directory (a ``model.sig``): the same, except that every file in it is
  copied verbatim, the signature and the manifest included (the signature covers the
  manifest, so rewriting it would break it); its directory gives it its name and version.
  The copies are checked against the manifest's SHA-256; the signature is verified by the
  load that follows, in every worker, like any other;
- a model file (``.mar``, ``.onnx``...): imported through ``importers.import_model``; an
  ``.onnx`` whose external data is a symbolic link or lies outside its folder is refused, and
  so is a TensorFlow model (``.keras``, ``.h5``): converting it would load TensorFlow into
  the worker for good, so ``torchferry import`` does that, outside the server.

Slow (hashing, copying): the worker runs it in a thread.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from torchferry.archive.integrity import hash_file, safe_relative
from torchferry.archive.manifest import MANIFEST_NAME, Manifest
from torchferry.archive.signing import is_signed
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError
from torchferry.serving.build import served_as


def stage_source(source: Path, store: Path, name: str | None) -> Archive:
    """The archive in ``store`` that ``source`` is (or becomes), verified."""
    models = ModelStore(store)
    if (source / MANIFEST_NAME).is_file():
        placed = _in_store(source, store)
        if placed is not None and name in (None, placed[0]):
            return served_as(Archive.open(source), *placed)  # its directory names it
        if is_signed(source):
            return _copy_signed(source, models, name)
        return _copy_archive(source, models, name)
    if source.is_dir():
        raise ArchiveError(f"{source} is not a model archive: it has no {MANIFEST_NAME}")
    if not source.is_file():
        raise ArchiveError(f"no model source at {source}")
    if source.suffix.lower() == ".onnx":
        _check_external_data(source)
    # imported here: the importers bring torch, which a worker serving ONNX never needs
    from torchferry.importers import import_model

    return import_model(source, name=name, store=models, allow_tensorflow=False)


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
    _refuse_links(source)
    manifest = Manifest.read(source)
    for graph in manifest.graphs.values():
        if graph not in manifest.files:
            raise ArchiveError(
                f"{source}: graph file {graph!r} is not listed with a SHA-256 in the manifest; "
                "refusing to stage it"
            )
    target = name or manifest.name
    version = models.next_version(target)
    renamed = manifest.model_copy(update={"name": target, "version": version, "files": {}})

    def populate(directory: Path) -> None:
        for file_name, expected in manifest.files.items():
            relative = safe_relative(file_name)
            copy = directory / relative
            copy.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(source, file_name, copy)
            actual = hash_file(copy).sha256  # the copy, not the source: what will be served
            if actual != expected.sha256:
                raise ArchiveError(
                    f"{source}: file {file_name!r} does not match the manifest (SHA-256 "
                    f"{actual[:16]}..., expected {expected.sha256[:16]}...); it was modified, "
                    "corrupted, or changed while it was copied; refusing to stage it"
                )

    return models.write(renamed, populate)


def _copy_signed(source: Path, models: ModelStore, name: str | None) -> Archive:
    _refuse_links(source)
    target = name or Manifest.read(source).name
    version = models.next_version(target)

    def populate(directory: Path) -> None:
        for folder, _, files in os.walk(source):
            for file in files:
                relative = (Path(folder) / file).relative_to(source).as_posix()
                copy = directory / relative
                copy.parent.mkdir(parents=True, exist_ok=True)
                _copy_file(source, relative, copy)

    return served_as(models.write_verbatim(target, version, populate), target, version)


def _refuse_links(source: Path) -> None:
    """Refuse an archive with a symbolic link anywhere inside it (its manifest included)."""
    for folder, folders, files in os.walk(source):  # never descends into a linked folder
        for entry in (*folders, *files):
            path = Path(folder) / entry
            if path.is_symlink():
                raise ArchiveError(
                    f"{source}: {path.relative_to(source).as_posix()!r} is a symbolic link "
                    f"(to {os.readlink(path)}); archives are staged from plain files only"
                )


def _copy_file(source: Path, file_name: str, target: Path) -> None:
    """Copy one listed file, refusing it if it is (or has become) a symbolic link."""
    path = source / safe_relative(file_name)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ArchiveError(
            f"{source}: file {file_name!r} listed in the manifest is missing"
        ) from None
    except OSError as exc:  # ELOOP: a link swapped in since the check
        raise ArchiveError(f"{source}: cannot read file {file_name!r}: {exc}") from exc
    with os.fdopen(descriptor, "rb") as reading, target.open("wb") as writing:
        shutil.copyfileobj(reading, writing, 1 << 20)


def _check_external_data(source: Path) -> None:
    """Refuse an ONNX graph whose external data files are symbolic links or lie outside its
    folder (the import would copy whatever they point to into the store)."""
    import onnx

    from torchferry.importers.graph import _external_files

    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:
        raise ArchiveError(f"{source} is not a valid ONNX model: {exc}") from exc
    try:
        locations = _external_files(model)  # plain relative names only
    except ArchiveError as exc:
        raise ArchiveError(f"{source}: its external data: {exc.message}") from exc
    folder = source.parent.resolve()
    for location in locations:
        path = source.parent / location
        if path.is_symlink():
            raise ArchiveError(
                f"{source}: its external data {location!r} is a symbolic link "
                f"(to {os.readlink(path)}); refusing to stage it"
            )
        resolved = path.resolve()
        if not resolved.is_relative_to(folder):
            raise ArchiveError(
                f"{source}: its external data {location!r} resolves to {resolved}, outside "
                f"the graph's folder {folder}; refusing to stage it"
            )
