"""Building one model version: its archive opened and verified, its runtime and handler,
and a warm-up inference through the runtime. Slow (hashing, engine start), so a load while
serving runs it in a thread; the repository assembles the result.

A version is served under the name and number of its place in the store, whatever its
manifest says (``served_as``, the one rule for a start, a load while serving and staging),
as TorchServe's ``--model-dir`` renaming does: a version copied as ``m/2`` whose manifest
says 1 is served as 2, before a restart and after.

Signatures are checked right after the SHA-256 check (``check_signature``), on the same
path for a start, a management load and store polling.

A failure while serving is a ``ModelLoadFailed`` whose message names the model, the version
and the cause (the reason goes to users verbatim); whatever was built is released first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchferry.archive.integrity import verify_archive
from torchferry.archive.manifest import Manifest
from torchferry.archive.signing import is_signed, verify_signature
from torchferry.archive.store import Archive
from torchferry.errors import SIGNATURE_REFUSED, ModelLoadFailed, SignatureRefused, TorchferryError
from torchferry.handlers import load_handler
from torchferry.handlers.base import Handler
from torchferry.runtimes import Runtime, runtime_class
from torchferry.serving.settings import ServerSettings
from torchferry.signature import ModelSignature
from torchferry.signing_keys import read_trusted_keys


def runtime_for(manifest: Manifest, settings: ServerSettings) -> str:
    """The runtime a version is served with: ``--runtime`` where the archive has its
    graph, else the manifest's own."""
    preferred = settings.runtime
    if preferred is not None and manifest.has_graph(preferred):
        return preferred
    return manifest.runtime


def build_version(
    archive: Archive, settings: ServerSettings, warm_up: bool, load: bool = True
) -> tuple[list[Runtime], Handler]:
    """Runtimes (one per instance of its batching) and handler for ``archive``; releases
    what it built if a later step fails.

    ``warm_up`` (a load while serving): one inference on every instance first, and every
    failure a ``ModelLoadFailed`` with its reason. Without it (the start), errors keep their
    own class, which tells the operator what to do (``--trust-code``...). Without ``load`` (a
    memory budget: ``residency.py``), the runtimes are made but not loaded, and nothing runs."""
    manifest = archive.manifest
    instances = instances_of(manifest, settings)
    # one instance keeps the runtime's own default; several share the worker's threads
    threads = settings.threads if instances == 1 else instance_threads(settings, instances)
    runtimes: list[Runtime] = []
    try:
        engine = runtime_class(runtime_for(manifest, settings))
        for _ in range(instances):
            runtime = engine(
                archive,
                device=settings.device,
                threads=threads,
                trust_code=settings.trust_code,
                share_weights=settings.share_weights,
            )
            runtimes.append(runtime)
            if load:
                runtime.load()
            else:
                runtime.check()
    except Exception as exc:
        _close(runtimes)
        if not warm_up:  # at start: the error itself, whose class says what to do
            raise
        raise _failed(manifest, "cannot build the runtime", exc) from exc
    step = "cannot set up the handler"
    try:
        handler = load_handler(archive, trust_code=settings.trust_code)
        if warm_up and load:
            step = "the warm-up inference failed"
            inputs = warm_up_inputs(manifest.signature)
            for runtime in runtimes:
                runtime.infer(inputs)
    except Exception as exc:
        _close(runtimes)
        if not warm_up:
            raise
        raise _failed(manifest, step, exc) from exc
    return runtimes, handler


def instances_of(manifest: Manifest, settings: ServerSettings) -> int:
    """How many instances of the model each worker runs: the settings', else the manifest's."""
    instances = settings.batching_for(manifest.name).get("instances")
    return int(instances) if instances is not None else manifest.batching.instances


def instance_threads(settings: ServerSettings, instances: int) -> int:
    """Intra-op threads of each of ``instances`` instances: the worker's, shared."""
    return max(1, settings.resolved_threads() // instances)


def _close(runtimes: list[Runtime]) -> None:
    for runtime in runtimes:
        runtime.close()


def open_archive(name: str, version: int, path: Path) -> Archive:
    """The archive at ``path``, verified, served as ``name`` version ``version``."""
    where = f"model {name!r} version {version}"
    try:
        manifest = Manifest.read(path)
    except Exception as exc:
        raise ModelLoadFailed(f"{where}: cannot read the archive at {path}: {_cause(exc)}") from exc
    try:
        verify_archive(path, manifest)
    except Exception as exc:
        raise ModelLoadFailed(f"{where}: integrity check failed: {_cause(exc)}") from exc
    return served_as(Archive(path=path, manifest=manifest), name, version)


#: What ``check_signature`` found: verified against a trusted key; signed, but no key to
#: verify it with; no signature.
VERIFIED, UNVERIFIED, UNSIGNED = "verified", "unverified", "unsigned"


def check_signature(archive: Archive, settings: ServerSettings, while_serving: bool) -> str:
    """Whether ``archive`` may be served under the signing settings, and its status.

    With trusted keys, a signed archive must verify against one of them; with
    ``require_signed``, an unsigned one is refused too. A refusal is a ``SignatureRefused`` at
    start, a ``ModelLoadFailed`` while serving, naming the model, the version and the reason.
    Hashes every file again: once per load, never per request or description.
    ``require_signed`` without trusted keys refuses everything (the start refuses that
    setting too: ``check_signing``; this holds whatever path a load comes by)."""
    signed = is_signed(archive.path)
    manifest = archive.manifest
    where = f"model {manifest.name!r} version {manifest.version}: {SIGNATURE_REFUSED}"
    if settings.require_signed and not settings.trusted_keys:
        reason = f"{where}: --require-signed without a --trusted-key cannot verify any signature"
        raise ModelLoadFailed(reason) if while_serving else SignatureRefused(reason)
    if not settings.trusted_keys or not (signed or settings.require_signed):
        return UNVERIFIED if signed else UNSIGNED
    try:
        verify_signature(archive.path, read_trusted_keys(settings.trusted_keys))
    except TorchferryError as exc:
        reason = f"{where}: {exc.message}"
        if while_serving:
            raise ModelLoadFailed(reason) from exc
        raise SignatureRefused(reason) from exc
    return VERIFIED


def served_as(archive: Archive, name: str, version: int) -> Archive:
    """``archive`` as version ``version`` of ``name``: the directory it sits in decides
    (``STORE/NAME/VERSION``), not its manifest."""
    manifest = archive.manifest
    if manifest.name == name and manifest.version == version:
        return archive
    renamed = manifest.model_copy(update={"name": name, "version": version})
    return Archive(path=archive.path, manifest=renamed)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, TorchferryError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _failed(manifest: Manifest, what: str, exc: Exception) -> ModelLoadFailed:
    """A load while serving failed: the reason names the model, the version and the cause."""
    return ModelLoadFailed(
        f"model {manifest.name!r} version {manifest.version}: {what}: {_cause(exc)}"
    )


def warm_up_inputs(signature: ModelSignature) -> dict[str, np.ndarray]:
    """One row of zeros for every input (each dynamic dimension 1); empty strings for BYTES."""
    inputs: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = tuple(1 if d == -1 else d for d in spec.shape)
        dtype = spec.numpy_dtype
        if dtype.kind == "O":
            inputs[spec.name] = np.full(shape, b"", dtype=object)
        else:
            inputs[spec.name] = np.zeros(shape, dtype=dtype)
    return inputs
