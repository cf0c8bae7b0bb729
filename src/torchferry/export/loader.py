"""Resolve an export target, ``FILE.py:FACTORY`` or ``package.module:factory``, to an ``nn.Module``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from torchferry.errors import ExportError


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ExportError(f"cannot load {str(path)!r}: no such file")
    module_name = f"_torchferry_target_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ExportError(f"cannot load {str(path)!r}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered before executing, so that dataclasses and pickling inside the file work.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ExportError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportError(f"cannot import module {name!r}: {exc}") from exc
    except Exception as exc:
        raise ExportError(f"importing module {name!r} failed: {type(exc).__name__}: {exc}") from exc


def resolve_factory(target: str) -> Any:
    """Return the object ``target`` names (not yet called)."""
    source, sep, attribute = target.rpartition(":")
    if not sep or not source or not attribute:
        raise ExportError(f"target {target!r} must be FILE.py:FACTORY or package.module:factory")
    is_file = source.endswith(".py") or "/" in source or "\\" in source
    module = _import_file(Path(source)) if is_file else _import_module(source)
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ExportError(f"{source!r} has no attribute {attribute!r}") from None
    return obj


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
