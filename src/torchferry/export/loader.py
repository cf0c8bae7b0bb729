"""Resolve an export target, ``FILE.py:FACTORY`` or ``package.module:factory``, to an ``nn.Module``."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from torchferry.archive.code import (
    attribute_of,
    import_file,
    is_file_reference,
    split_reference,
)
from torchferry.errors import ArchiveError, ExportError


def _import_file(path: Path) -> ModuleType:
    try:
        return import_file(path)
    except ArchiveError as exc:
        raise ExportError(exc.message) from exc.__cause__


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportError(f"cannot import module {name!r}: {exc}") from exc
    except Exception as exc:
        raise ExportError(f"importing module {name!r} failed: {type(exc).__name__}: {exc}") from exc


def resolve_factory(target: str) -> Any:
    """Return the object ``target`` names (not yet called)."""
    try:
        source, attribute = split_reference(target)
    except ArchiveError:
        raise ExportError(
            f"target {target!r} must be FILE.py:FACTORY or package.module:factory"
        ) from None
    module = _import_file(Path(source)) if is_file_reference(source) else _import_module(source)
    try:
        return attribute_of(module, attribute, source)
    except ArchiveError as exc:
        raise ExportError(exc.message) from None


def load_model(target: str) -> nn.Module:
    """Import ``target``, call the factory with no arguments, and return the ``nn.Module``.

    A target naming an ``nn.Module`` instance rather than a factory is returned as it is.
    """
    factory = resolve_factory(target)
    if isinstance(factory, nn.Module):
        return factory  # a module instance at module level is taken as it is
    if not callable(factory):
        raise ExportError(
            f"{target!r} is a {type(factory).__name__}, not a callable that returns an nn.Module"
        )
    try:
        model = factory()
    except Exception as exc:
        raise ExportError(f"calling {target!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ExportError(
            f"{target!r} returned a {type(model).__name__}, expected a torch.nn.Module"
        )
    return model
