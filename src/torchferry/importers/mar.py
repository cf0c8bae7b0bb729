"""Import a TorchServe model archive (``.mar``) without running any of its code.

A ``.mar`` is a zip: ``MAR-INF/MANIFEST.json`` (``model.modelName``, ``serializedFile``,
``handler``, ``modelVersion``, ``modelFile`` for eager models), the serialized model, and
extra files such as ``index_to_name.json``. What maps onto torchferry:

- the serialized file when it is TorchScript (``torch.jit.load``, never unpickled) or ONNX;
- TorchServe's built-in ``image_classifier`` -> the ``image`` handler with the same
  preprocessing (resize 256, center crop 224, ImageNet mean/std) and softmax top-5;
  ``base_handler`` (or none) -> ``tensor``; ``index_to_name.json`` -> ``labels.json``.

What does not: a handler that is Python code (a ``.py`` in the archive, or a module the
archive does not carry) would run with the server's privileges, so it is refused unless the
user passes ``trust_custom_handler``; even then it is stored for reference and never run, and
the model gets the built-in handler closest to the class it extends. An eager-mode archive
(``modelFile`` + a pickled ``state_dict``) cannot be loaded without running its code at all.

The zip is read defensively: no absolute or ``..`` names, no links, no duplicate names, and
bounded entry count, total size and compression ratio (zip bombs).
"""

from __future__ import annotations

import ast
import json
import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

import torch

from torchferry.archive.integrity import safe_relative
from torchferry.archive.manifest import HandlerSpec
from torchferry.errors import ArchiveError
from torchferry.importers.base import Imported, ImportOptions
from torchferry.importers.graph import import_onnx, import_torchscript
from torchferry.signature import TensorSpec

MANIFEST_PATH = "MAR-INF/MANIFEST.json"
LABELS_PATH = "index_to_name.json"
#: Where the files torchferry does not use (custom handler source, configs...) are kept.
REFERENCE_DIR = "torchserve"
#: TorchServe's own handlers (``ts.torch_handler.*``) -> the torchferry handler, or ``None``
#: where torchferry has no equivalent.
BUILTIN_HANDLERS: dict[str, str | None] = {
    "image_classifier": "image",
    "base_handler": "tensor",
    "text_classifier": None,
    "object_detector": None,
    "image_segmenter": None,
    "dali_image_classifier": None,
}
#: What TorchServe's ``image_classifier`` does (``Resize(256)``, ``CenterCrop(224)``,
#: ImageNet ``Normalize``, softmax, ``topk = 5``).
IMAGE_CLASSIFIER_CONFIG: dict[str, Any] = {
    "resize": 256,
    "crop": 224,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "top_k": 5,
    "softmax": True,
}
IMAGE_INPUT_SHAPE = (-1, 3, 224, 224)
#: Base classes of TorchServe's handlers whose custom subclasses get the ``image`` handler.
_IMAGE_BASES = {"ImageClassifier", "VisionHandler"}

MAX_ENTRIES = 10_000
MAX_UNPACKED_BYTES = 32 * 1024**3
#: Refuse entries that inflate more than this (zeros deflate ~1000:1; real weights ~1.1:1).
MAX_RATIO = 200
_RATIO_FLOOR = 16 * 1024**2  # small files (JSON, code) may compress better than that


@dataclass(frozen=True)
class MarHandler:
    """The archive's ``handler`` entry, resolved without importing anything."""

    declared: str
    #: TorchServe's built-in handler it names, when it is one.
    builtin: str | None
    #: The archive member holding its Python source, when the archive carries one.
    source: str | None


class MarFile:
    """A ``.mar`` opened for reading, every member name and size checked up front."""

    def __init__(self, path: Path, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ArchiveError(
                f"{path.name} is not a TorchServe .mar (a zip file): {exc}"
            ) from None
        try:
            self.members = self._check(self.zip.infolist(), max_unpacked_bytes)
            self.manifest = self._manifest()
        except BaseException:
            self.zip.close()
            raise

    def __enter__(self) -> MarFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zip.close()

    def _check(self, infos: list[zipfile.ZipInfo], limit: int) -> dict[str, zipfile.ZipInfo]:
        if len(infos) > MAX_ENTRIES:
            raise ArchiveError(f"{self.path.name} has {len(infos)} entries (limit {MAX_ENTRIES})")
        members: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.filename
            if PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
                raise ArchiveError(f"{self.path.name}: entry {name!r} has an absolute path")
            if info.is_dir():  # never created: files make their own parents
                continue
            try:
                relative = safe_relative(name).as_posix()
            except ArchiveError:
                raise ArchiveError(
                    f"{self.path.name}: entry {name!r} would be written outside the archive "
                    "('..' or backslashes in its path); refusing it"
                ) from None
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ArchiveError(f"{self.path.name}: entry {name!r} is a symbolic link")
            if relative in members:
                raise ArchiveError(f"{self.path.name}: entry {name!r} appears twice")
            ratio = info.file_size / max(1, info.compress_size)
            if info.file_size > _RATIO_FLOOR and ratio > MAX_RATIO:
                raise ArchiveError(
                    f"{self.path.name}: entry {name!r} inflates {ratio:.0f}:1 to "
                    f"{info.file_size} bytes; refusing a likely zip bomb"
                )
            total += info.file_size
            if total > limit:
                raise ArchiveError(
                    f"{self.path.name} unpacks to more than {limit} bytes; refusing it"
                )
            members[relative] = info
        return members

    def _manifest(self) -> dict[str, Any]:
        if MANIFEST_PATH not in self.members:
            raise ArchiveError(f"{self.path.name} is not a TorchServe .mar: no {MANIFEST_PATH}")
        try:
            manifest = json.loads(self.read(MANIFEST_PATH))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"{self.path.name}: {MANIFEST_PATH} is not JSON: {exc}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
            raise ArchiveError(f'{self.path.name}: {MANIFEST_PATH} has no "model" object')
        return manifest

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.manifest["model"])

    def field(self, key: str) -> str | None:
        """A ``model`` field as a non-empty string, else ``None``."""
        value = self.model.get(key)
        text = "" if value is None else str(value).strip()
        return text or None

    def read(self, name: str) -> bytes:
        with self._open(name) as stream:
            return b"".join(iter(lambda: stream.read(1 << 20), b""))

    def extract(self, name: str, directory: Path) -> Path:
        """Copy one member to ``directory`` under its own relative name; never more bytes
        than its header declares (zipfile stops there and checks the CRC)."""
        target = directory / safe_relative(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._open(name) as source, target.open("wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        return target

    @contextmanager
    def _open(self, name: str) -> Iterator[IO[bytes]]:
        try:
            with self.zip.open(self.members[name]) as stream:
                yield stream
        except (zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as exc:
            raise ArchiveError(f"{self.path.name}: entry {name!r} cannot be read: {exc}") from None

    def resolve_handler(self) -> MarHandler:
        """TorchServe imports ``handler`` (``module[:function]``) from the model's directory
        first and from ``ts.torch_handler`` second; so a ``.py`` of that name wins."""
        declared = self.field("handler") or "base_handler"
        module = declared.split(":", 1)[0].removesuffix(".py").split("/")[-1]
        module = module.removeprefix("ts.torch_handler.")
        source = next(
            (m for m in (f"{module}.py", declared.split(":", 1)[0]) if m in self.members), None
        )
        builtin = module if module in BUILTIN_HANDLERS and source is None else None
        return MarHandler(declared=declared, builtin=builtin, source=source)


def closest_builtin(source: str | None) -> tuple[str, str | None]:
    """The torchferry handler for a custom handler's source, read with ``ast`` (never run):
    ``image`` when a class extends ``ImageClassifier`` or ``VisionHandler``, else ``tensor``."""
    if source is None:
        return "tensor", None
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return "tensor", None
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                if name in _IMAGE_BASES:
                    return "image", name
    return "tensor", None


def _labels(mar: MarFile) -> bytes | None:
    """``index_to_name.json`` as torchferry labels (also TorchServe's ``object_type_names``)."""
    if LABELS_PATH not in mar.members:
        return None
    where = f"{mar.path.name}: {LABELS_PATH}"
    try:
        value = json.loads(mar.read(LABELS_PATH))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{where} is not JSON: {exc}") from None
    if isinstance(value, dict) and isinstance(value.get("object_type_names"), list):
        value = value["object_type_names"]
    keys = value.keys() if isinstance(value, dict) else []
    if not isinstance(value, list | dict) or not all(str(k).isdigit() for k in keys):
        raise ArchiveError(f"{where}: expected {{class index: name or [id, name]}} or a list")
    return json.dumps(value, indent=1, ensure_ascii=False).encode("utf-8")


def _refuse_custom(mar: MarFile, handler: MarHandler, closest: str, base: str | None) -> None:
    where = f"the archive's {handler.source}" if handler.source else "a module it does not carry"
    extends = f", from its base class {base}" if base else ""
    raise ArchiveError(
        f"{mar.path.name} declares a custom handler {handler.declared!r} ({where}). A TorchServe "
        "handler is arbitrary Python that would run with the server's privileges; torchferry "
        "runs only its built-in handlers from untrusted archives. Pass --trust-custom-handler "
        f"to import the model with the closest built-in handler ({closest}{extends}); the "
        "handler's source is then kept in the archive for reference and never run."
    )


def _handler(mar: MarFile, options: ImportOptions) -> tuple[str, list[str]]:
    """The torchferry handler for the archive, and notes for the user; refusals raise."""
    handler = mar.resolve_handler()
    if handler.builtin is not None:
        mapped = BUILTIN_HANDLERS[handler.builtin]
        if mapped is None and options.handler is None:
            supported = sorted(k for k, v in BUILTIN_HANDLERS.items() if v)
            raise ArchiveError(
                f"{mar.path.name} uses TorchServe's {handler.builtin} handler, which torchferry "
                f"does not have (it maps {supported}); choose one with --handler image|tensor"
            )
        return options.handler or mapped or "tensor", []
    source = mar.read(handler.source).decode("utf-8", "replace") if handler.source else None
    closest, base = closest_builtin(source)
    if not options.trust_custom_handler:
        _refuse_custom(mar, handler, closest, base)
    chosen = options.handler or closest
    kept = f"kept as {REFERENCE_DIR}/{handler.source}" if handler.source else "not in the archive"
    return chosen, [
        f"custom handler {handler.declared!r} was NOT imported and will never run ({kept}); "
        f"the model is served with torchferry's {chosen!r} handler instead, so its custom "
        "pre- and post-processing does not apply"
    ]


def _torchscript_inputs(path: Path, handler: str, options: ImportOptions) -> list[TensorSpec]:
    if options.inputs:
        return list(options.inputs)
    if handler != "image":
        raise ArchiveError(
            f"{path.name} is TorchScript, which does not record its inputs; give them, "
            "e.g. --input x:-1,3,224,224:float32"
        )
    name = "input"
    try:  # the forward() argument's own name, where the file keeps it
        arguments = torch.jit.load(str(path), map_location="cpu").forward.schema.arguments
        name = arguments[1].name if len(arguments) == 2 else name
    except Exception:  # not TorchScript: import_torchscript says so
        pass
    return [TensorSpec(name=name, datatype="FP32", shape=IMAGE_INPUT_SHAPE)]


def _check_image_input(mar: MarFile, imported: Imported) -> None:
    inputs = imported.signature.inputs
    ok = len(inputs) == 1 and len(inputs[0].shape) == 4 and inputs[0].datatype.startswith("FP")
    if not ok or inputs[0].shape[1] not in (-1, 3):
        found = [f"{s.name} {list(s.shape)} {s.datatype}" for s in inputs]
        raise ArchiveError(
            f"{mar.path.name}: the image handler needs one float input [N, 3, H, W]; the model "
            f"takes {found}. Give --input, or --handler tensor"
        )


def import_mar(path: Path, options: ImportOptions) -> Imported:
    """Read a ``.mar`` into an :class:`Imported`; see the module's docstring."""
    if options.scratch is None:
        raise ArchiveError("importing a .mar needs a scratch directory to unpack into")
    with MarFile(path) as mar:
        if mar.field("modelFile"):
            raise ArchiveError(
                f"{path.name} is an eager-mode archive (modelFile {mar.field('modelFile')!r} "
                f"with serializedFile {mar.field('serializedFile')!r}): loading it means running "
                "its Python code and unpickling its weights, which torchferry never does. "
                "Export the model instead: torchferry export MODEL.py:FACTORY --input ... "
                "(TorchScript and ONNX, checked against eager PyTorch), or re-archive it with a "
                "TorchScript or ONNX serializedFile"
            )
        serialized = mar.field("serializedFile")
        if serialized is None or serialized not in mar.members:
            raise ArchiveError(f"{path.name}: serializedFile {serialized!r} is not in the archive")
        handler, notes = _handler(mar, options)
        unpacked = options.scratch / "mar"
        files = {name: mar.extract(name, unpacked) for name in mar.members}
        graph = files[serialized]
        if graph.suffix.lower() == ".onnx":
            imported = import_onnx(graph, options)
        else:
            inputs = _torchscript_inputs(graph, handler, options)
            imported = import_torchscript(graph, replace(options, inputs=inputs))
        config: dict[str, Any] = dict(IMAGE_CLASSIFIER_CONFIG) if handler == "image" else {}
        if handler == "image":
            _check_image_input(mar, imported)
        extra: dict[str, bytes | Path] = {}
        labels = _labels(mar)
        if labels is not None:
            extra["labels.json"] = labels
            if handler == "image":
                config["labels"] = "labels.json"
        used = {source.resolve() for source in imported.files.values()}
        for name, source in files.items():  # the rest is kept for reference, never run
            if name != LABELS_PATH and source.resolve() not in used:
                extra[f"{REFERENCE_DIR}/{name}"] = source
        version = mar.field("modelVersion")
        return replace(
            imported,
            handler=HandlerSpec(name=handler, config=config),
            extra_files=extra,
            name=mar.field("modelName"),
            source=f"import (torchserve .mar {path.name}, handler {mar.field('handler')}, "
            f"modelVersion {version}, {imported.runtime})",
            notes=tuple(notes),
        )
