"""Files derived from an archive once and memory-mapped by every worker: the weight cache.

A worker that maps a file read-only shares its pages with every other process mapping it
(one copy in the page cache), where a loaded engine's own buffers are private to it. An
engine that can map its weights (ONNX Runtime's external data) gets them from a directory
here, built once per source graph, engine version and machine.

The cache lives outside the store (``$TORCHFERRY_CACHE_DIR``, else
``$XDG_CACHE_HOME/torchferry``, else ``~/.cache/torchferry``): an archive's files are
exactly its signed file list, a store may be read-only or shared by machines whose CPUs
want different layouts, and nothing derived belongs in it.

Each entry is a directory published by one ``rename`` (a reader never sees half of it),
never modified in place (a truncated mapped file would crash its readers with SIGBUS),
and carries ``sidecar.json``: the SHA-256 of the archive file it was built from (the one
the signed manifest lists) and of each file in it. An entry whose source is not the
archive's verified file, or whose files do not hash to the record, is rebuilt (an entry is
hashed once per process; later loads compare its files' stat). The cache directory must
belong to this user, be writable by no one else and not be a symbolic link, or nothing is
shared. Entries are never pruned: one per distinct source, engine version and machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from torchferry.archive.integrity import hash_file

log = logging.getLogger(__name__)

RECORD_NAME = "sidecar.json"
CACHE_ENV = "TORCHFERRY_CACHE_DIR"


class UnsafeCache(Exception):
    """The cache directory could be written by someone else: its files are not trusted."""


def cache_root() -> Path:
    """Where derived weight files live (see the module's docstring)."""
    if explicit := os.environ.get(CACHE_ENV):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "torchferry"


def private_dir(path: Path) -> Path:
    """``path``, created 0700 if missing; refused unless this user owns it and no one else
    may write it (as ssh checks ``~/.ssh``): a file someone else can swap is not a copy
    of the signed archive. A symbolic link is refused too (``lstat``): whoever can change
    where it points chooses the files."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeCache(
            f"{path} is a symbolic link or not a directory; set {CACHE_ENV} to the real "
            "private directory"
        )
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCache(
            f"{path} is not owned by this user or is writable by others; "
            f"set {CACHE_ENV} to a private directory"
        )
    return path


def cache_key(*parts: str) -> str:
    """One directory name for everything the derived files depend on."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _record(directory: Path, source_sha256: str) -> dict[str, object]:
    files = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != RECORD_NAME)
    return {
        "source_sha256": source_sha256,
        "files": {name: hash_file(directory / name).sha256 for name in files},
    }


#: Entries this process has hashed and found as recorded, by what their files' stat says:
#: an entry is read-only and never rewritten, so the same files need no second hashing
#: (a change to one would change its inode, size or mtime).
_checked: set[tuple[str, tuple[tuple[str, int, int, int, int], ...]]] = set()


def _identity(
    directory: Path, source_sha256: str
) -> tuple[str, tuple[tuple[str, int, int, int, int], ...]]:
    files = []
    for path in sorted(directory.iterdir()):
        info = path.lstat()
        files.append((path.name, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    return f"{directory}\0{source_sha256}", tuple(files)


def _verified(directory: Path, source_sha256: str) -> bool:
    """Whether ``directory`` was built from ``source_sha256`` and is unchanged since
    (hashed once per process; later, its files' stat compared)."""
    try:
        identity = _identity(directory, source_sha256)
    except OSError:
        return False
    if identity in _checked:
        return True
    if _hashed_as_recorded(directory, source_sha256):
        _checked.add(identity)
        return True
    return False


def _hashed_as_recorded(directory: Path, source_sha256: str) -> bool:
    try:
        recorded = json.loads((directory / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict):
        return False
    try:
        return recorded == _record(directory, source_sha256)
    except OSError:
        return False


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """One builder per entry at a time: workers that start together build it once."""
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_entry(
    key: str,
    source_sha256: str,
    build: Callable[[Path], None],
    kind: str = "weights",
    *,
    sealed: bool = False,
) -> Path:
    """The verified cache directory for ``key``, built by ``build(empty_dir)`` if missing or
    failing its check, under the cache's folder ``kind`` (``weights``; ``tensorrt`` for
    TensorRT's engines). With ``sealed`` the published directory is read-only too (0500),
    not only its files: for an entry that an engine is handed as a directory it may write
    into (TensorRT's engine cache), so that no file can be added to a verified entry.
    Raises ``UnsafeCache`` when the cache is not private."""
    root = private_dir(private_dir(cache_root()) / kind)
    final = root / key
    with _locked(root / f"{key}.lock"):
        _remove_leftovers(root, key)
        if final.is_dir():
            if _verified(final, source_sha256):
                return final
            log.warning("weight cache %s does not match its record or source: rebuilding", final)
            # renamed aside, not removed in place: a process may still map its files; a
            # sealed directory cannot move to another parent (its ".." entry is rewritten)
            final.chmod(0o700)
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{key}-", dir=root))
            os.rename(final, stale / key)
            _remove_tree(stale)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{key}-", dir=root))
        try:
            build(staging)
            record = json.dumps(_record(staging, source_sha256), indent=2)
            (staging / RECORD_NAME).write_text(record, encoding="utf-8")
            for path in staging.iterdir():
                path.chmod(0o400)  # never written again: a mapped file must not change
            if sealed:
                staging.chmod(0o500)  # a rename in the same directory needs no write on it
            os.rename(staging, final)
            _checked.add(_identity(final, source_sha256))  # hashed as it was recorded
        except BaseException:
            _remove_tree(staging)
            raise
    return final


def _remove_tree(path: Path) -> None:
    """``path`` and all in it, sealed directories too: removing a file needs write
    permission on its directory, which a sealed entry's lacks."""
    for directory in [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
        with contextlib.suppress(OSError):
            directory.chmod(0o700)
    shutil.rmtree(path, ignore_errors=True)


def _remove_leftovers(root: Path, key: str) -> None:
    """Staging and stale directories of ``key`` that a killed process left: its builders
    hold the lock while they use theirs, so under the lock any found is abandoned."""
    for leftover in [*root.glob(f".staging-{key}-*"), *root.glob(f".stale-{key}-*")]:
        if leftover.is_dir() and not leftover.is_symlink():
            log.info("weight cache: removing %s, left by a build that did not finish", leftover)
            _remove_tree(leftover)


def return_freed_memory() -> None:
    """Hand freed heap back to the system after the private copies a load made are dropped
    (a building session's, ``torch.jit.load``'s): glibc keeps it otherwise, and the process
    would still hold a private copy's worth of memory beside the shared one."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
