"""What the console's Load action can offer (``GET /console/api/sources``): the models found
under each model source root, by the rules a load checks (``management/sources.py``).

At most ``MAX_DEPTH`` folders down and ``MAX_CANDIDATES`` in all; hidden folders (the
store's own ``.torchferry`` among them) are skipped, and an archive folder is one candidate
(its inside is not searched). A link is offered only where it leads inside the roots, as a
load would refuse it otherwise; one that loops or cannot be read is skipped. At most
``MAX_ENTRIES`` entries are looked at (then ``truncated``), so a huge root cannot hold the
caller long (the route runs this in a thread). The user may still type any path or an https
URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchferry.serving.management.sources import allowed_roots, inside_roots, source_kind
from torchferry.serving.settings import ServerSettings

MAX_DEPTH = 3
MAX_CANDIDATES = 200
MAX_ENTRIES = 5000


class _Walk:
    """One listing: what it found, and how many entries it may still look at."""

    def __init__(self, roots: list[Path], max_entries: int) -> None:
        self.roots = roots
        self.found: list[dict[str, str]] = []
        self.budget = max_entries

    def folder(self, folder: Path, depth: int) -> bool:
        """Add the candidates under ``folder``; True once the list (or the budget) is full."""
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # unreadable, or gone meanwhile: nothing to offer there
            return False
        for entry in entries:
            self.budget -= 1
            if self.budget < 0:
                return True
            if entry.name.startswith("."):
                continue
            try:
                if self.entry(entry, depth):
                    return True
            except (OSError, RuntimeError):  # a link loop (RuntimeError on 3.11), unreadable
                continue
        return False

    def entry(self, entry: os.DirEntry[str], depth: int) -> bool:
        path = Path(entry.path)
        if entry.is_symlink() and not inside_roots(path.resolve(), self.roots):
            return False
        kind = source_kind(path)
        if kind is not None:
            if len(self.found) >= MAX_CANDIDATES:
                return True
            self.found.append({"path": str(path), "kind": kind})
            return False
        return (
            depth < MAX_DEPTH
            and entry.is_dir()
            and not entry.is_symlink()
            and self.folder(path, depth + 1)
        )


def list_sources(settings: ServerSettings, max_entries: int = MAX_ENTRIES) -> dict[str, Any]:
    roots = allowed_roots(settings)
    walk = _Walk(roots, max_entries)
    truncated = any(walk.folder(root, 0) for root in roots)
    return {"roots": [str(r) for r in roots], "candidates": walk.found, "truncated": truncated}
