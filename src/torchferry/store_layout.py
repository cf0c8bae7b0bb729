"""The model store's directory layout (``STORE/NAME/VERSION/manifest.json``), read with
nothing but the file system: the one rule for what counts as a model and a version, shared
by ``archive.store.ModelStore`` and by the supervisor, which never imports a manifest (that
would bring numpy)."""

from __future__ import annotations

import re
from pathlib import Path

MANIFEST_NAME = "manifest.json"

#: A model's name is a directory of the store: ASCII letters, digits, '_', '.' and '-', no
#: separator, no leading dot (hidden, ``..``) or dash (an option to a shell tool), at most 128.
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
MODEL_NAME_RULE = (
    "use letters, digits, '_', '.' and '-' (at most 128), not starting with '.' or '-'"
)


def is_model_name(name: str) -> bool:
    """Whether ``name`` may name a model, hence a folder of the store (the one rule: the
    management API, the supervisor and every archive written follow it)."""
    return MODEL_NAME.fullmatch(name) is not None


def is_version_dir(path: Path) -> bool:
    """An integer directory from 1 (complete or not)."""
    return path.is_dir() and path.name.isdigit() and int(path.name) >= 1


def store_versions(store: Path, name: str) -> list[int]:
    """The versions of ``name`` in ``store``: integer directories holding a manifest (a
    version being copied in may still be incomplete: loading it verifies its hashes)."""
    model_dir = store / name
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if is_version_dir(p) and (p / MANIFEST_NAME).is_file()
    )


def store_models(store: Path) -> list[str]:
    """The models in ``store`` that have at least one version."""
    if not store.is_dir():
        return []
    return sorted(
        p.name
        for p in store.iterdir()
        if p.is_dir() and not p.name.startswith(".") and store_versions(store, p.name)
    )
