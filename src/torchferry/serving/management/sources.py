"""Where a management load may read a model from.

A source is a local path: an archive folder (``manifest.json``; a store version folder is
one), a TorchServe ``.mar`` or a plain ``.onnx``. A relative path is looked up under each
source root in turn (``--model-source-root``, else the store); ``file://`` is the same path.
The path is resolved (symlinks followed, ``..`` folded) before it is checked, so a link or
a ``..`` cannot lead outside the roots; neither can a link inside an archive folder, whose
target the staging would copy into the store. Remote ``https://`` sources are fetched by
``remote`` (under its own policy); every other scheme (http, s3, ...) is refused here.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from torchferry.errors import InvalidInput, ModelNotFound, SourceRefused
from torchferry.serving.settings import ServerSettings

#: ``scheme://...``: a URL rather than a path (``file://`` is the one local scheme).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MANIFEST = "manifest.json"
_FILE_SUFFIXES = (".mar", ".onnx")


def source_kind(path: Path) -> str | None:
    """``archive`` (a folder with a manifest), ``mar`` or ``onnx``: what a load can read;
    None for anything else."""
    if path.is_dir():
        return "archive" if (path / _MANIFEST).is_file() else None
    suffix = path.suffix.lower()
    return suffix[1:] if path.is_file() and suffix in _FILE_SUFFIXES else None


def allowed_roots(settings: ServerSettings) -> list[Path]:
    """The source roots, resolved (what every source is checked against)."""
    return [root.resolve() for root in settings.source_roots()]


def inside_roots(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _roots_text(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def _local_path(url: str) -> str:
    match = _SCHEME.match(url)
    if match is None:
        return url
    if match.group(1).lower() != "file":
        raise SourceRefused(  # https:// goes through management.remote; nothing else is fetched
            f"{match.group(1)}:// sources are not fetched: give an https:// URL (with "
            "--allowed-urls), or copy the model under a source root (--model-source-root) "
            "and give its path"
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise SourceRefused(f"{url}: a file:// URL must name a local path (file:///PATH)")
    return unquote(parts.path)


def _resolved(path: Path, shown: str) -> Path:
    """``path`` resolved; a link loop (RuntimeError on 3.11, OSError later) or an unreadable
    path is the caller's error (400), not the server's."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:
        raise InvalidInput(f"{shown}: {path} cannot be resolved (a link loop?): {exc}") from None


def _check_links(folder: Path, roots: list[Path], shown: str) -> None:
    for item in folder.rglob("*"):
        if item.is_symlink() and not inside_roots(_resolved(item, shown), roots):
            raise SourceRefused(
                f"{shown}: {item.relative_to(folder)} links outside the model source roots "
                f"({_roots_text(roots)})"
            )


def _check_kind(path: Path, shown: str) -> None:
    if source_kind(path) is not None:
        return
    raise InvalidInput(
        f"{shown} is not a model: expected an archive folder (with {_MANIFEST}), "
        "a .mar or a .onnx file"
    )


def resolve_source(url: str, settings: ServerSettings) -> Path:
    """The real, allowed path that ``url`` names (SourceRefused, ModelNotFound or
    InvalidInput with the reason otherwise)."""
    text = url.strip()
    if not text:
        raise InvalidInput("Parameter url is required.")
    if "\x00" in text:
        raise InvalidInput("the model source contains a NUL character")
    given = Path(_local_path(text))
    roots = allowed_roots(settings)
    if not roots:
        raise SourceRefused(
            "no model source roots: start the server with --store or --model-source-root DIR"
        )
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    refusal = SourceRefused(
        f"{text} is outside the model source roots ({_roots_text(roots)}); "
        "models may be loaded only from there"
    )
    inside = False
    # in root order, the first that exists wins; one that exists but leads out is refused
    # rather than skipped, so a link never silently falls through to another root
    for candidate in candidates:
        path = _resolved(candidate, text)
        if not inside_roots(path, roots):
            if candidate.exists() or candidate.is_symlink():
                raise refusal
            continue
        inside = True
        if path.exists():
            _check_kind(path, text)
            if path.is_dir():
                _check_links(path, roots, text)
            return path
    if not inside:
        raise refusal
    raise ModelNotFound(f"model source {text} not found under {_roots_text(roots)}")
