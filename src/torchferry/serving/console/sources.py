"""What the console's Load action can offer (``GET /console/api/sources``): the models found
under each model source root, by the rules a load checks (``management/sources.py``).

At most ``MAX_DEPTH`` folders down and ``MAX_CANDIDATES`` in all; hidden folders (the
store's own ``.torchferry`` among them) are skipped, and an archive folder is one candidate
(its inside is not searched). A link is offered only where it leads inside the roots, as a
load would refuse it otherwise. The user may still type any path or an https URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchferry.serving.management.sources import allowed_roots, inside_roots, source_kind
from torchferry.serving.settings import ServerSettings

MAX_DEPTH = 3
MAX_CANDIDATES = 200


def list_sources(settings: ServerSettings) -> dict[str, Any]:
    roots = allowed_roots(settings)
    found: list[dict[str, str]] = []
    truncated = False
    for root in roots:
        truncated = _walk(root, roots, 0, found)
        if truncated:
            break
    return {"roots": [str(r) for r in roots], "candidates": found, "truncated": truncated}


def _walk(folder: Path, roots: list[Path], depth: int, found: list[dict[str, str]]) -> bool:
    """Add the candidates under ``folder``; True once the list is full."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:  # unreadable, or gone meanwhile: nothing to offer there
        return False
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_symlink() and not inside_roots(path.resolve(), roots):
            continue
        kind = source_kind(path)
        if kind is not None:
            if len(found) >= MAX_CANDIDATES:
                return True
            found.append({"path": str(path), "kind": kind})
        elif (
            depth < MAX_DEPTH
            and entry.is_dir()
            and not entry.is_symlink()
            and _walk(path, roots, depth + 1, found)
        ):
            return True
    return False
