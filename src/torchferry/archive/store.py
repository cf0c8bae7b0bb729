"""The model store on disk: ``STORE/NAME/VERSION/`` directories, each one archive.

New versions are written into a hidden staging directory and renamed into place, so a
reader never sees a half-written version and a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchferry.archive.integrity import hash_file, safe_relative, verify_archive
from torchferry.archive.manifest import MANIFEST_NAME, Manifest
from torchferry.errors import ArchiveError, ModelNotFound
from torchferry.store_layout import is_version_dir, store_models, store_versions


@dataclass(frozen=True)
class Archive:
    """One verified model version on disk."""

    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        return self.path / safe_relative(name)

    @classmethod
    def open(cls, path: Path, verify: bool = True) -> Archive:
        manifest = Manifest.read(path)
        if verify:
            verify_archive(path, manifest)
        return cls(path=path, manifest=manifest)


class ModelStore:
    """A directory of models, each a directory of integer versions."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        return store_models(self.root)

    def versions(self, name: str) -> list[int]:
        return store_versions(self.root, name)

    def next_version(self, name: str) -> int:
        model_dir = self.root / name
        taken = (
            [int(p.name) for p in model_dir.iterdir() if is_version_dir(p)]
            if model_dir.is_dir()
            else []
        )
        return max(taken, default=0) + 1

    def path(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def open(self, name: str, version: int | None = None, verify: bool = True) -> Archive:
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not in the store {self.root}")
        chosen = max(versions) if version is None else version
        if chosen not in versions:
            raise ModelNotFound(f"model {name!r} has no version {chosen}; it has {versions}")
        return Archive.open(self.path(name, chosen), verify=verify)

    def write(
        self,
        manifest: Manifest,
        populate: Callable[[Path], None],
    ) -> Archive:
        """Create ``NAME/VERSION`` from ``manifest``: ``populate(staging_dir)`` writes the files.

        Every file ``populate`` leaves in the staging directory is hashed into the manifest.
        The version directory appears only once complete; an existing version is never replaced.
        """
        staged: list[Manifest] = []

        def fill(staging: Path) -> None:
            populate(staging)
            files = {
                p.relative_to(staging).as_posix(): hash_file(p)
                for p in sorted(staging.rglob("*"))
                if p.is_file() and p.name != MANIFEST_NAME
            }
            final = manifest.model_copy(update={"files": files})
            Manifest.model_validate(final.model_dump())
            (staging / MANIFEST_NAME).write_text(final.to_json(), encoding="utf-8")
            verify_archive(staging, final)
            staged.append(final)

        target = self._stage(manifest.name, manifest.version, fill)
        return Archive(path=target, manifest=staged[0])

    def write_verbatim(self, name: str, version: int, populate: Callable[[Path], None]) -> Archive:
        """Create ``NAME/VERSION`` from exactly the files ``populate(staging_dir)`` writes,
        its manifest as it came (a signed archive's signature covers it): checked against
        its SHA-256 list, never rewritten. Served as ``name`` ``version`` whatever its
        manifest says (the directory decides)."""

        def fill(staging: Path) -> None:
            populate(staging)
            verify_archive(staging, Manifest.read(staging))

        target = self._stage(name, version, fill)
        return Archive(path=target, manifest=Manifest.read(target))

    def _stage(self, name: str, version: int, fill: Callable[[Path], None]) -> Path:
        """``fill`` a hidden staging directory, then rename it to ``NAME/VERSION``: the
        version appears only once complete, and an existing one is never replaced."""
        target = self.path(name, version)
        if target.exists():
            raise ArchiveError(f"{target} already exists; versions are never overwritten")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=target.parent))
        try:
            fill(staging)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target
