"""The key file: which tokens exist, what each may do, until when.

A JSON document, written by ``torchferry token`` and read by the server::

    {
      "version": 1,
      "tokens": [
        {
          "id": "3f9c2a7d1b04",
          "name": "ci",
          "hash": "sha256:<64 hex digits>",
          "scopes": ["infer:digits", "metadata"],
          "created": "2026-11-30T08:00:00Z",
          "expires": "2026-12-01T08:00:00Z",
          "rate": {"per_second": 10.0, "burst": 20}
        }
      ]
    }

``expires`` is null for a token that never expires; ``name`` and ``rate`` are optional.
A token's text is ``tf_<id>_<secret>``: the id (12 hex digits) finds the entry, the secret
is 32 random bytes from :mod:`secrets`, URL-safe base64. The file holds the SHA-256 of the
whole text, never the text: a plain hash is right here (no password KDF) because the secret
is 256 random bits, which no amount of hashing speed lets anyone guess; a slow KDF only
protects low-entropy passwords, and would cost every request its time.

The file is written atomically (a temporary file beside it, then a rename) with mode 0600,
under an exclusive lock so that two ``torchferry token`` commands do not lose a change.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from torchferry.serving.auth.scopes import ScopeError, canonical_scopes

KEY_FILE_VERSION = 1
TOKEN_PREFIX = "tf_"
#: ``tf_<12 hex>_<43 urlsafe base64>``
_TOKEN = re.compile(r"tf_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")
_ID = re.compile(r"[0-9a-f]{12}")
HASH_PREFIX = "sha256:"
_HASH = re.compile(r"sha256:[0-9a-f]{64}")


class KeyFileError(ValueError):
    """A key file that cannot be read, or is not a valid key file; the message says why."""


@dataclass(frozen=True, slots=True)
class Rate:
    """A token's request rate: ``per_second`` on average, up to ``burst`` at once."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1):
            raise ValueError("a rate needs per_second > 0 and burst >= 1")


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One token as the key file holds it (its hash, never its text)."""

    id: str
    hash: str
    scopes: tuple[str, ...]
    created: datetime
    expires: datetime | None = None
    name: str | None = None
    rate: Rate | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or datetime.now(UTC)) >= self.expires

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.name is not None:
            out["name"] = self.name
        out["hash"] = self.hash
        out["scopes"] = list(self.scopes)
        out["created"] = _time_text(self.created)
        out["expires"] = _time_text(self.expires) if self.expires is not None else None
        if self.rate is not None:
            out["rate"] = {"per_second": self.rate.per_second, "burst": self.rate.burst}
        return {**self.extra, **out}


def hash_token(text: str) -> str:
    """The key file's form of a token: ``sha256:<hex>`` of its whole text."""
    return HASH_PREFIX + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def token_id(text: str) -> str | None:
    """The id a token's text names, or None when it is not a torchferry token."""
    match = _TOKEN.fullmatch(text)
    return match.group(1) if match else None


def new_token() -> tuple[str, str]:
    """A fresh (id, token text)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)  # 32 bytes -> 43 characters
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}"


# -- reading -------------------------------------------------------------------------------------


def read_key_file(path: Path) -> dict[str, TokenEntry]:
    """Every token of the key file by id; :class:`KeyFileError` saying what is wrong."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    return parse_key_file(text, str(path))


def parse_key_file(text: bytes | str, where: str) -> dict[str, TokenEntry]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise KeyFileError(f"key file {where} is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != KEY_FILE_VERSION:
        raise KeyFileError(
            f'key file {where}: expected an object with "version": {KEY_FILE_VERSION}'
        )
    tokens = document.get("tokens")
    if not isinstance(tokens, list):
        raise KeyFileError(f'key file {where}: "tokens" must be a list')
    entries: dict[str, TokenEntry] = {}
    for index, item in enumerate(tokens):
        try:
            entry = _entry(item)
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise KeyFileError(f"key file {where}: token {index}: {detail}") from None
        if entry.id in entries:
            raise KeyFileError(f"key file {where}: token id {entry.id} appears twice")
        entries[entry.id] = entry
    return entries


def _entry(item: Any) -> TokenEntry:
    if not isinstance(item, dict):
        raise TypeError("each token must be an object")
    token_id, digest, scopes = item["id"], item["hash"], item["scopes"]
    if not isinstance(token_id, str) or not _ID.fullmatch(token_id):
        raise ValueError("id must be 12 hex digits")
    if not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise ValueError('hash must be "sha256:" and 64 hex digits')
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise TypeError("scopes must be a list of strings")
    try:
        canonical = tuple(canonical_scopes(scopes))
    except ScopeError as exc:
        raise ValueError(str(exc)) from None
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError("name must be a string")
    expires = item.get("expires")
    rate = item.get("rate")
    known = {"id", "name", "hash", "scopes", "created", "expires", "rate"}
    return TokenEntry(
        token_id,
        digest,
        canonical,
        _parse_time(item["created"], "created"),
        None if expires is None else _parse_time(expires, "expires"),
        name,
        None if rate is None else _rate(rate),
        {k: v for k, v in item.items() if k not in known},
    )


def _rate(value: Any) -> Rate:
    if not isinstance(value, dict):
        raise TypeError('rate must be {"per_second": R, "burst": B}')
    per_second, burst = value.get("per_second"), value.get("burst", 1)
    if isinstance(per_second, bool) or not isinstance(per_second, int | float):
        raise TypeError("rate.per_second must be a number")
    if isinstance(burst, bool) or not isinstance(burst, int):
        raise TypeError("rate.burst must be a whole number")
    return Rate(float(per_second), burst)


def _parse_time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be an ISO-8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{what}: {value!r} has no time zone (write it in UTC: ...Z)")
    return moment.astimezone(UTC)


def _time_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- writing -------------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(path: Path) -> Iterator[dict[str, TokenEntry]]:
    """The key file's tokens (none if it does not exist yet) under an exclusive lock; what
    the block leaves in the dict is written back, atomically, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        entries = read_key_file(path) if path.exists() else {}
        before = dict(entries)
        yield entries
        if entries != before or not path.exists():
            write_key_file(path, entries.values())
    finally:
        os.close(fd)  # releases the lock


def write_key_file(path: Path, entries: Any) -> None:
    """Write ``entries`` (TokenEntry objects) as the key file: atomically, mode 0600."""
    document = {"version": KEY_FILE_VERSION, "tokens": [e.document() for e in entries]}
    data = (json.dumps(document, indent=2) + "\n").encode()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def create_token(
    path: Path,
    scopes: list[str],
    ttl: timedelta | None,
    name: str | None = None,
    rate: Rate | None = None,
    now: datetime | None = None,
) -> tuple[TokenEntry, str]:
    """Add a new token to the key file (created if missing); returns its entry and its text,
    which nothing stores: the caller shows it once."""
    if not scopes:
        raise ScopeError("a token needs at least one scope")
    canonical = tuple(canonical_scopes(scopes))
    created = (now or datetime.now(UTC)).replace(microsecond=0)
    with locked(path) as entries:
        token_id, text = new_token()
        while token_id in entries:  # 48 random bits: practically never
            token_id, text = new_token()
        entry = TokenEntry(
            token_id,
            hash_token(text),
            canonical,
            created,
            None if ttl is None else created + ttl,
            name,
            rate,
        )
        entries[token_id] = entry
    return entry, text


def revoke_token(path: Path, token_id: str) -> TokenEntry | None:
    """Remove a token from the key file; the removed entry, or None when there was none."""
    if not path.exists():
        raise KeyFileError(f"key file {path} does not exist")
    with locked(path) as entries:
        return entries.pop(token_id, None)
