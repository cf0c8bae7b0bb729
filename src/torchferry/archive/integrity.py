"""SHA-256 hashing of archive files, and the check that a directory matches its manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from torchferry.archive.manifest import FileEntry, Manifest
from torchferry.errors import ArchiveError

_CHUNK = 1 << 20


def hash_file(path: Path) -> FileEntry:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(sha256=digest.hexdigest(), size=size)


def safe_relative(name: str) -> PurePosixPath:
    """A manifest's file name as a path that cannot leave the archive directory."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in name:
        raise ArchiveError(f"archive file name {name!r} is not a plain relative path")
    return rel


def verify_archive(directory: Path, manifest: Manifest) -> None:
    """Refuse the archive unless every listed file exists and matches its SHA-256.

    Every graph the manifest names must also be listed, so that nothing is loaded unchecked.
    """
    for graph in manifest.graphs.values():
        if graph not in manifest.files:
            raise ArchiveError(
                f"{directory}: graph file {graph!r} is not listed with a SHA-256 in the manifest"
            )
    for name, expected in manifest.files.items():
        path = directory / safe_relative(name)
        if not path.is_file():
            raise ArchiveError(f"{directory}: file {name!r} listed in the manifest is missing")
        actual = hash_file(path)
        if actual.sha256 != expected.sha256:
            raise ArchiveError(
                f"{directory}: file {name!r} does not match the manifest "
                f"(SHA-256 {actual.sha256[:16]}..., expected {expected.sha256[:16]}...); "
                "the archive was modified or corrupted, refusing to load it"
            )
