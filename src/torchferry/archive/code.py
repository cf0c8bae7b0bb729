"""Python code carried in an archive (a handler class, an eager model's factory), and the
operator's consent to run it.

At export, a reference ``FILE.py:Name`` or ``package.module:Name`` is turned into a copy of
that one source file under ``code/`` in the archive, hashed like every other file, and the
manifest records ``code/FILE.py:Name``. At load, that file is imported from the archive,
never from wherever it once lay, and only when the operator has said ``--trust-code``:
nothing from an archive runs unless the operator says so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torchferry.archive.integrity import safe_relative
from torchferry.archive.store import Archive
from torchferry.errors import ArchiveError, UntrustedCode

CODE_DIR = "code"
TRUST_FLAG = "--trust-code"


def split_reference(reference: str) -> tuple[str, str]:
    """``FILE.py:Name`` or ``package.module:Name`` -> (source, attribute path)."""
    source, sep, attribute = reference.rpartition(":")
    if not sep or not source or not attribute:
        raise ArchiveError(
            f"{reference!r} must be FILE.py:NAME or package.module:NAME (a file or module, "
            "a colon, then the class or function in it)"
        )
    return source, attribute


def is_file_reference(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source


def source_file(reference: str) -> Path:
    """The Python file that holds what ``reference`` names, on this machine."""
    source, _ = split_reference(reference)
    if is_file_reference(source):
        path = Path(source)
    else:
        try:
            spec = importlib.util.find_spec(source)
        except (ImportError, ValueError) as exc:
            raise ArchiveError(f"cannot find module {source!r}: {exc}") from None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise ArchiveError(f"module {source!r} is not a Python source file that can be stored")
        path = Path(spec.origin)
    if not path.is_file():
        raise ArchiveError(f"{str(path)!r} is not a file")
    return path


def archived_reference(reference: str) -> tuple[str, Path]:
    """Where ``reference``'s source file goes in an archive, and the reference to record:
    ``("code/embedder.py", Path(...))`` and ``"code/embedder.py:Embedder"``."""
    path = source_file(reference)
    _, attribute = split_reference(reference)
    return f"{CODE_DIR}/{path.name}:{attribute}", path


def is_archived_reference(reference: str) -> bool:
    return reference.startswith(f"{CODE_DIR}/") and ":" in reference


def import_file(path: Path) -> ModuleType:
    """Import a Python file by its path, under a private module name derived from it."""
    if not path.is_file():
        raise ArchiveError(f"cannot load {str(path)!r}: no such file")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    module_name = f"_torchferry_code_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ArchiveError(f"cannot load {str(path)!r}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    # registered before it runs, so that dataclasses and pickle-free references inside work
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ArchiveError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
    return module


def attribute_of(module: ModuleType, attribute: str, source: str) -> Any:
    """``module``'s (dotted) ``attribute``, or an error that names ``source``."""
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ArchiveError(f"{source!r} has no attribute {attribute!r}") from None
    return obj


def untrusted_code(archive: Archive, reference: str, what: str) -> UntrustedCode:
    """The refusal of code ``reference`` in ``archive`` that the operator does not trust."""
    manifest = archive.manifest
    return UntrustedCode(
        f"model {manifest.name!r} version {manifest.version} carries Python code ({what} "
        f"{reference!r}); it runs only if you trust the archive: serve with {TRUST_FLAG}"
    )


def load_archived(archive: Archive, reference: str, *, trust_code: bool, what: str) -> Any:
    """Import ``code/FILE.py:Name`` from ``archive`` and return ``Name``, if the operator
    trusts code; ``what`` says what the code is for (``"handler"``, ``"eager model"``)."""
    manifest = archive.manifest
    label = f"model {manifest.name!r} version {manifest.version}"
    if not trust_code:
        raise untrusted_code(archive, reference, what)
    file_name, attribute = split_reference(reference)
    safe_relative(file_name)
    if file_name not in manifest.files:
        raise ArchiveError(f"{label}: {what} file {file_name!r} is not listed in the manifest")
    try:
        return attribute_of(import_file(archive.file(file_name)), attribute, file_name)
    except ArchiveError as exc:
        raise ArchiveError(f"{label}: {exc.message}") from exc
