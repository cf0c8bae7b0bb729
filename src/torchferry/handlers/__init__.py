"""Per-model pre- and post-processing, chosen by the manifest's ``handler.name``, which is:

- a built-in handler's name (``tensor``, ``image``: :data:`HANDLERS`);
- the name of an installed entry point in group ``torchferry.handlers`` (installed code, which
  the operator chose by installing it: no trust needed), e.g. in a plugin's ``pyproject.toml``
  ``[project.entry-points."torchferry.handlers"] text = "mypkg.handlers:TextHandler"``;
- or ``code/FILE.py:Class``, a handler whose source file the archive carries
  (``torchferry export --handler FILE.py:Class``), imported only under ``--trust-code``.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from torchferry.archive.code import (
    archived_reference,
    is_archived_reference,
    load_archived,
    split_reference,
)
from torchferry.archive.integrity import hash_file, safe_relative
from torchferry.archive.manifest import HandlerSpec, Manifest
from torchferry.archive.store import Archive
from torchferry.errors import ArchiveError, ExportError, TorchferryError, UntrustedCode
from torchferry.handlers.base import Handler, HandlerContext, HandlerRequest
from torchferry.handlers.image import ImageHandler
from torchferry.handlers.tensor import TensorHandler
from torchferry.signature import ModelSignature

#: One line per built-in handler: a new handler is a new file plus an entry here.
HANDLERS: dict[str, type[Handler]] = {
    TensorHandler.name: TensorHandler,
    ImageHandler.name: ImageHandler,
}
#: The entry point group of installed handlers.
ENTRY_POINT_GROUP = "torchferry.handlers"


def installed_handlers() -> list[str]:
    """The names of the handlers installed as entry points."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def _named(name: str, label: str) -> Any:
    """The built-in or installed handler ``name``."""
    if name in HANDLERS:
        return HANDLERS[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            return ep.load()
        except Exception as exc:
            raise ArchiveError(
                f"{label}: handler {name!r}: importing its entry point {ep.value!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    installed = installed_handlers()
    raise ArchiveError(
        f"{label} asks for handler {name!r}; known handlers are {sorted(HANDLERS)} (built in)"
        + (f" and {installed} (installed)" if installed else "")
        + ", or code/FILE.py:Class carried in the archive"
    )


def handler_class(archive: Archive, *, trust_code: bool) -> type[Handler]:
    """The class of the handler that ``archive``'s manifest names (code only with trust)."""
    manifest = archive.manifest
    name = manifest.handler.name
    label = f"model {manifest.name!r} version {manifest.version}"
    if is_archived_reference(name):
        found = load_archived(archive, name, trust_code=trust_code, what="handler")
    else:
        found = _named(name, label)
    if not (isinstance(found, type) and issubclass(found, Handler)):
        raise ArchiveError(
            f"{label}: handler {name!r} is not a class derived from torchferry.Handler "
            f"(it is {found!r})"
        )
    return found


def handler_context(archive: Archive) -> HandlerContext:
    """The context ``setup`` gets: every file the manifest lists, the config, the signature."""
    manifest = archive.manifest
    return HandlerContext(
        files={name: archive.file(name) for name in manifest.files},
        config=dict(manifest.handler.config),
        signature=manifest.signature,
        model_name=manifest.name,
        model_version=manifest.version,
    )


def load_handler(archive: Archive, *, trust_code: bool) -> Handler:
    """Create the handler ``archive``'s manifest names and run its ``setup``.

    Raises ``UntrustedCode`` (naming ``--trust-code``) for a handler carried in the archive
    when ``trust_code`` is false, and ``ArchiveError`` for an unknown handler, a class that is
    not a ``Handler``, or a ``setup`` that fails (with the handler's message).
    """
    cls = handler_class(archive, trust_code=trust_code)
    manifest = archive.manifest
    label = f"model {manifest.name!r} version {manifest.version}: handler {manifest.handler.name!r}"
    try:
        handler = cls()
        handler.setup(handler_context(archive))
    except UntrustedCode:
        raise
    except TorchferryError as exc:
        raise ArchiveError(f"{label}: {exc.message}") from exc
    except Exception as exc:
        raise ArchiveError(f"{label} failed in setup: {type(exc).__name__}: {exc}") from exc
    return handler


def stage_handler(
    handler: str | type[Handler],
    directory: Path,
    *,
    config: Mapping[str, Any],
    signature: ModelSignature,
    model_name: str,
    model_version: int,
) -> str:
    """At export: the handler's name for the manifest, with a code handler's source file
    copied under ``directory`` (the archive being staged); then the handler is created and
    its ``setup`` run once over the files staged so far, so that a broken handler fails the
    export rather than the server. The code is the exporting user's own: no trust is asked.

    ``handler`` is a built-in or installed name, ``FILE.py:Class``, ``package.module:Class``,
    or a ``Handler`` subclass (stored as its source file). A ``code/FILE.py:Class`` whose file
    is already staged (an archive's files exported again, as ``torchferry optimize`` does) is
    recorded as it is and not run: it is that archive's code, which runs only with trust.
    """
    if isinstance(handler, type):
        if handler in HANDLERS.values():
            handler = handler.name
        else:
            try:
                source = inspect.getsourcefile(handler)
            except (OSError, TypeError):
                source = None
            if source is None:
                raise ExportError(
                    f"handler {handler!r} has no source file to store; define it in a .py file"
                )
            handler = f"{source}:{handler.__qualname__}"
    if is_archived_reference(handler):
        # re-exported with the files of an archive (``torchferry optimize``): that archive's
        # code, which runs only with the operator's trust, so it is recorded, not run; it is
        # never looked for anywhere but among the files staged from that archive
        file_name = split_reference(handler)[0]
        try:
            carried = (directory / safe_relative(file_name)).is_file()
        except ArchiveError as exc:
            raise ExportError(f"handler {handler!r}: {exc.message}") from None
        if not carried:
            raise ExportError(f"handler {handler!r}: {file_name} is not among the archive's files")
        return handler
    name = handler
    if ":" in handler:
        try:
            name, source_path = archived_reference(handler)
        except ArchiveError as exc:
            raise ExportError(f"handler {handler!r}: {exc.message}") from None
        file_name = name.rpartition(":")[0]
        target = directory / file_name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source_path, target)
        elif target.read_bytes() != source_path.read_bytes():
            raise ExportError(
                f"handler {handler!r}: another file is already archived as {file_name}; "
                "rename one of them"
            )
    files = {
        p.relative_to(directory).as_posix(): hash_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    staged = Manifest(
        name=model_name,
        version=model_version,
        runtime="staged",
        graphs={},
        signature=signature,
        handler=HandlerSpec(name=name, config=dict(config)),
        files=files,
    )
    try:
        load_handler(Archive(path=directory, manifest=staged), trust_code=True)
    except ArchiveError as exc:
        raise ExportError(f"handler {handler!r} fails at export: {exc.message}") from exc
    return name


__all__ = [
    "ENTRY_POINT_GROUP",
    "HANDLERS",
    "Handler",
    "HandlerContext",
    "HandlerRequest",
    "ImageHandler",
    "TensorHandler",
    "handler_class",
    "handler_context",
    "installed_handlers",
    "load_handler",
    "stage_handler",
]
