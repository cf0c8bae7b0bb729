"""The on-disk model package: manifest, integrity checks, and the model store."""

from torchferry.archive.integrity import hash_file, verify_archive
from torchferry.archive.manifest import (
    BatchingSpec,
    FileEntry,
    HandlerSpec,
    Manifest,
    ParityReport,
)
from torchferry.archive.store import Archive, ModelStore

__all__ = [
    "Archive",
    "BatchingSpec",
    "FileEntry",
    "HandlerSpec",
    "Manifest",
    "ModelStore",
    "ParityReport",
    "hash_file",
    "verify_archive",
]
