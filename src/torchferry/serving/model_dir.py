"""What ``--model-dir`` (KServe's ``--model_dir=/mnt/models``) holds, and how to serve it.

KServe's storage initializer leaves whatever the ``storageUri`` named in ``/mnt/models``,
mounted read-only. :func:`detect` tells the layouts apart with nothing but the file system:

- a torchferry archive (``manifest.json``), or a folder of numbered versions: served as
  ``--model-name`` straight from the folder, as ``--model-dir`` always did;
- a model store (``NAME/VERSION/manifest.json``): served as a store, each model by its
  folder's name;
- a TorchServe layout as KServe's TorchServe runtime expects it (``config/config.properties``
  and ``model-store/*.mar``), or ``*.mar`` files alone;
- a bare ``model.onnx`` (or the only ``*.onnx``).

``.mar`` and ``.onnx`` files are imported (``importers.import_model`` through
``staging.stage_source``, as a management load does; a ``.mar``'s code never runs) into a
writable store: ``--store`` when given, else a temporary folder under ``$TMPDIR`` that
lives as long as the server. :func:`mounted` runs the import in a child
process, so that the supervisor, which runs in this process, never loads torch (the ``.mar``
importer needs it) and stays small.

Anything else is a :class:`LayoutError` that names what the folder holds and what is
accepted; ``torchferry serve`` exits with 2 on it.
"""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from torchferry.errors import ArchiveError, TorchferryError
from torchferry.store_layout import MANIFEST_NAME, is_version_dir, store_models

#: Where KServe's storage initializer puts the model; a TorchServe ``config.properties``
#: written for KServe names its ``model_store`` under it.
KSERVE_MOUNT = PurePosixPath("/mnt/models")
TORCHSERVE_CONFIG = Path("config") / "config.properties"
TORCHSERVE_MODEL_STORE = "model-store"
#: ``load_models`` values that mean every ``.mar`` in the model store.
_ALL_MODELS = {"", "all", "standalone"}
ACCEPTED = (
    "a torchferry archive (manifest.json), a folder of versions (1/manifest.json...), "
    "a model store (NAME/VERSION/manifest.json), a TorchServe layout "
    "(config/config.properties and model-store/*.mar, or *.mar files), or a model.onnx"
)

Kind = Literal["archive", "versions", "store", "torchserve", "onnx"]


class LayoutError(ArchiveError):
    """The model folder holds nothing servable, or its TorchServe config cannot be read:
    a usage error (exit code 2), raised before anything starts."""


@dataclass(frozen=True)
class MountedModel:
    """A file to import: a ``.mar`` or an ``.onnx``."""

    file: Path
    #: The name to serve it as; None: the file's own (a ``.mar``'s ``modelName``).
    name: str | None = None


@dataclass(frozen=True)
class Layout:
    kind: Kind
    root: Path
    #: The files to import (``torchserve`` and ``onnx`` layouts), in import order: a
    #: model's versions are numbered 1, 2... in this order.
    imports: tuple[MountedModel, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ServedSource:
    """What the server is given in the end: a store, or one model's folder and its name."""

    store: Path | None = None
    model_dir: Path | None = None
    #: (name, version, file) for each import, for the log.
    imported: tuple[tuple[str, int, str], ...] = ()


def detect(root: Path, model_name: str | None = None) -> Layout:
    """The layout of ``root`` (a folder, or a single ``.mar``/``.onnx`` file)."""
    if root.is_file() and root.suffix.lower() in (".mar", ".onnx"):
        kind: Kind = "onnx" if root.suffix.lower() == ".onnx" else "torchserve"
        return Layout(kind, root.parent, (MountedModel(root, _single_name(root, model_name)),))
    if root.is_file():
        raise LayoutError(
            f"{root} is a file, not a model folder, a .mar or a .onnx (a TorchScript .pt is "
            "imported with `torchferry import` first)"
        )
    if not root.is_dir():
        raise LayoutError(f"model folder {root} does not exist")
    if (root / MANIFEST_NAME).is_file():
        return Layout("archive", root)
    if any(is_version_dir(p) and (p / MANIFEST_NAME).is_file() for p in root.iterdir()):
        return Layout("versions", root)
    if store_models(root):
        return Layout("store", root)
    if (root / TORCHSERVE_CONFIG).is_file():
        return Layout("torchserve", root, _torchserve_models(root, model_name))
    for folder in (root / TORCHSERVE_MODEL_STORE, root):
        mars = _files(folder, ".mar")
        if mars:
            return Layout("torchserve", root, _unnamed(mars, model_name))
    onnx = _files(root, ".onnx")
    if len(onnx) > 1:
        onnx = [p for p in onnx if p.name == "model.onnx"] or onnx
    if len(onnx) == 1:
        return Layout("onnx", root, (MountedModel(onnx[0], _single_name(onnx[0], model_name)),))
    if onnx:
        names = ", ".join(p.name for p in onnx)
        raise LayoutError(
            f"{root} holds several ONNX files ({names}) and no model.onnx: "
            "keep one, or name one model.onnx"
        )
    raise LayoutError(
        f"{root} holds no model torchferry can serve ({_contents(root)}); accepted: {ACCEPTED}"
    )


def _single_name(file: Path, model_name: str | None) -> str | None:
    """An ``.onnx`` needs a name (its stem, without ``--model-name``); a ``.mar`` has one."""
    if model_name or file.suffix.lower() == ".mar":
        return model_name
    return file.stem


def _files(folder: Path, suffix: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix)


def _unnamed(mars: list[Path], model_name: str | None) -> tuple[MountedModel, ...]:
    """``.mar`` files the layout does not name: one alone is ``--model-name``; several keep
    their own names."""
    if len(mars) == 1:
        return (MountedModel(mars[0], model_name),)
    return tuple(MountedModel(mar) for mar in mars)


def _contents(root: Path) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    entries = [e for e in entries if not e.startswith(".")]  # Kubernetes' ..data links too
    if not entries:
        return "it is empty"
    shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
    return f"found {shown}"


# -- TorchServe's config.properties ---------------------------------------------------------


def read_properties(path: Path) -> dict[str, str]:
    """A Java properties file as TorchServe reads it, for one-line entries (``key=value`` or
    ``key: value``, ``#``/``!`` comments); a ``model_snapshot`` is one line of JSON."""
    parser = configparser.ConfigParser(
        interpolation=None,
        delimiters=("=", ":"),
        comment_prefixes=("#", "!"),
        strict=False,  # a key given twice: the last wins, as in Java
        allow_no_value=True,  # a line that is only a key
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    try:
        parser.read_string("[properties]\n" + path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise LayoutError(f"cannot read {path}: {exc}") from None
    return {key: value or "" for key, value in parser["properties"].items()}


def _torchserve_models(root: Path, model_name: str | None) -> tuple[MountedModel, ...]:
    """The models ``config/config.properties`` names, as TorchServe would load them:
    ``model_snapshot`` first, else ``load_models``, else every ``.mar`` of the model store."""
    config_path = root / TORCHSERVE_CONFIG
    config = read_properties(config_path)
    store = _model_store(root, config.get("model_store", ""), config_path)
    snapshot = config.get("model_snapshot", "").strip()
    if snapshot:
        return _snapshot_models(store, snapshot, config_path)
    load = [e.strip() for e in config.get("load_models", "").split(",") if e.strip()]
    if not load or (len(load) == 1 and load[0].lower() in _ALL_MODELS):
        mars = _files(store, ".mar")
        if not mars:
            raise LayoutError(f"{config_path}: the model store {store} holds no .mar file")
        return _unnamed(mars, model_name)
    models = []
    for entry in load:
        name, _, file = entry.rpartition("=")
        models.append(MountedModel(_mar_in(store, file, config_path), name.strip() or None))
    if len(models) == 1 and models[0].name is None:
        return (MountedModel(models[0].file, model_name),)
    return tuple(models)


def _model_store(root: Path, configured: str, config_path: Path) -> Path:
    """``model_store`` as configured, where a path under KServe's ``/mnt/models`` is taken
    relative to ``root`` (the config was written for that mount; ``root`` is where it is)."""
    if not configured.strip():
        store = root / TORCHSERVE_MODEL_STORE
    else:
        path = PurePosixPath(configured.strip())
        if path.is_absolute() and not path.is_relative_to(KSERVE_MOUNT):
            store = Path(path)  # the operator's own absolute path, as TorchServe reads it
        else:
            inside = path.relative_to(KSERVE_MOUNT) if path.is_absolute() else path
            store = root / inside
            # a relative path (or one under the mount) stays under the folder: ``..`` may
            # not lead out of it
            if not store.resolve().is_relative_to(root.resolve()):
                raise LayoutError(
                    f"{config_path}: model_store={configured.strip()} leads out of {root}"
                )
    if not store.is_dir():
        raise LayoutError(f"{config_path}: the model store {store} (model_store) is not a folder")
    return store


def _snapshot_models(store: Path, snapshot: str, config_path: Path) -> tuple[MountedModel, ...]:
    """``{"models": {NAME: {VERSION: {"marName": FILE, ...}}}}``, versions in their order."""
    try:
        models = json.loads(snapshot)["models"]
        entries = [
            (name, version, str(spec["marName"]))
            for name, versions in models.items()
            for version, spec in sorted(versions.items(), key=lambda item: _version_key(item[0]))
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LayoutError(
            f"{config_path}: model_snapshot is not TorchServe's "
            f'{{"models": {{NAME: {{VERSION: {{"marName": FILE}}}}}}}} ({exc!r})'
        ) from None
    if not entries:
        raise LayoutError(f"{config_path}: model_snapshot names no model")
    return tuple(MountedModel(_mar_in(store, mar, config_path), name) for name, _, mar in entries)


def _version_key(version: str) -> tuple[int, ...]:
    """``"1.0"`` < ``"2.0"`` < ``"10.0"``; anything else sorts first, as written."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()


def _mar_in(store: Path, file: str, config_path: Path) -> Path:
    """A ``.mar`` the config names: a plain file name in the model store, never a path."""
    name = file.strip()
    if not name.lower().endswith(".mar") or PurePosixPath(name).name != name or name in (".", ".."):
        raise LayoutError(
            f"{config_path}: {name!r} is not a .mar file name in the model store "
            "(URLs and paths are not loaded)"
        )
    path = store / name
    if not path.is_file():
        raise LayoutError(f"{config_path} names {name}, which is not in {store}")
    return path


# -- serving it -----------------------------------------------------------------------------


@contextmanager
def mounted(model_dir: Path, model_name: str | None, store: Path | None) -> Iterator[ServedSource]:
    """What to serve for ``--model-dir``: the folder itself, or a store, with any ``.mar``
    and ``.onnx`` imported first (into ``store``, else a temporary store removed on exit)."""
    layout = detect(model_dir, model_name)
    if layout.kind in ("archive", "versions"):
        yield ServedSource(store=store, model_dir=model_dir)
        return
    if layout.kind == "store":
        if store is not None and store.resolve() != model_dir.resolve():
            raise LayoutError(
                f"{model_dir} is a model store: serve it with --store {model_dir}, or without "
                f"--store (not both --store {store} and --model-dir {model_dir})"
            )
        yield ServedSource(store=model_dir)
        return
    if store is not None:
        yield _imported(layout, store)
        return
    with tempfile.TemporaryDirectory(prefix="torchferry-models-") as scratch:
        yield _imported(layout, Path(scratch))


def _imported(layout: Layout, store: Path) -> ServedSource:
    """The layout's files imported into ``store`` by a child process, where torch stays (a
    subprocess, not multiprocessing: no resource tracker outlives it beside the workers)."""
    request = {
        "store": str(store),
        "models": [{"file": str(m.file), "name": m.name} for m in layout.imports],
    }
    child = subprocess.run(
        [sys.executable, "-m", __name__],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines() or [f"exit code {child.returncode}"]
        raise ArchiveError(f"cannot import the models of {layout.root}: {lines[-1]}")
    imported = json.loads(child.stdout)
    return ServedSource(store=store, imported=tuple(tuple(row) for row in imported))


def import_files(models: list[MountedModel], store: Path) -> list[tuple[str, int, str]]:
    """Import each file into ``store`` (what the child process runs)."""
    # imported here: the importers bring torch, which only the child process loads
    from torchferry.serving.staging import stage_source

    done = []
    for model in models:
        archive = stage_source(model.file, store, model.name)
        done.append((archive.manifest.name, archive.manifest.version, model.file.name))
    return done


def _child_main() -> int:
    """``python -m torchferry.serving.model_dir`` < {"store", "models": [{"file", "name"}]}:
    print the imports as JSON; a refusal's message is the last line on stderr."""
    request = json.loads(sys.stdin.read())
    models = [MountedModel(Path(m["file"]), m["name"]) for m in request["models"]]
    try:
        done = import_files(models, Path(request["store"]))
    except TorchferryError as exc:
        print(exc.message.replace("\n", " "), file=sys.stderr)
        return 1
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
