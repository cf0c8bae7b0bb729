"""Who is calling: an ``Authorization`` value to a :class:`Principal`, or the error to answer.

A :class:`KeyRing` holds the key file's tokens and re-reads the file when it changes (its
mtime, size or inode), looking at most once a second, on use: ``torchferry token revoke``
takes effect within about a second, with no restart. A file that turns unreadable or
invalid leaves the last good tokens in force and logs a warning (a half-edited file locks
nobody out); a file that is deleted refuses every token, with a warning, until it is back
(deleting it is a way to lock everyone out). Neither ever lets everyone in.

Every check costs the same whether the id exists or not: the token's hash is compared, with
:func:`hmac.compare_digest`, against the entry's hash or a dummy one, so timing does not
tell which ids exist. Nothing here keeps or logs a token's text.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from torchferry.errors import TooManyRequests, TorchferryError, Unauthenticated
from torchferry.serving.auth.keyfile import (
    KeyFileError,
    TokenEntry,
    hash_token,
    read_key_file,
    token_id,
)
from torchferry.serving.auth.ratelimit import TokenBucket
from torchferry.serving.auth.scopes import Scopes

log = logging.getLogger("torchferry.auth")

#: Seconds between two looks at the key file's status.
RELOAD_CHECK_S = 1.0
_DUMMY_HASH = hash_token("tf_000000000000_" + "A" * 43)
_BEARER = "bearer "
#: The stamp of a file that exists but cannot be looked at (never a real file's stamp).
_UNREADABLE = (-1, -1, -1)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its token's id (fit for logs) and scopes."""

    id: str
    scopes: Scopes


#: What the entry point stores on a request's record: who called, or why nobody did.
Grant = Principal | TorchferryError


def authorization_of(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> str | None:
    """The ``Authorization`` value a request carries: its first ``authorization`` entry (one
    rule for every listener: ASGI headers as bytes, gRPC metadata as text; both lowercase
    their keys), so that a second header a proxy appends changes nothing."""
    for key, value in pairs:
        if key == b"authorization" or key == "authorization":
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


class KeyRing:
    """The tokens of one key file, kept current, and the checks that use them."""

    def __init__(
        self,
        path: Path,
        share: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Reads ``path`` now: :class:`KeyFileError` if it cannot. ``share``: the processes
        that serve the same listeners (workers); each enforces ``1/share`` of a token's
        rate, since the kernel spreads connections evenly among them."""
        self.path = path
        self.share = max(1, share)
        self.clock = clock
        self._entries: dict[str, TokenEntry] = {}
        self._principals: dict[str, Principal] = {}
        #: id -> expiry as ``time.time()`` seconds (a float compare per request, not a datetime)
        self._expiry: dict[str, float] = {}
        self._buckets: dict[str, tuple[object, TokenBucket]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = clock()
        self._load(self._status())

    # -- the file --------------------------------------------------------------------------

    def _status(self) -> tuple[int, int, int] | None:
        """The file's (mtime, size, inode); None when it does not exist; ``_UNREADABLE``
        when it cannot be looked at (the load then fails and keeps the last good tokens)."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError:
            return _UNREADABLE
        return (status.st_mtime_ns, status.st_size, status.st_ino)

    def _load(self, stamp: tuple[int, int, int] | None) -> None:
        entries = read_key_file(self.path)  # KeyFileError for a missing or bad file
        self._entries = entries
        self._principals = {
            entry_id: Principal(entry_id, Scopes.parse(entry.scopes))
            for entry_id, entry in entries.items()
        }
        self._expiry = {
            entry_id: entry.expires.timestamp()
            for entry_id, entry in entries.items()
            if entry.expires is not None
        }
        self._stamp = stamp

    def refresh(self, force: bool = False) -> None:
        """Re-read the file if it changed since the last read (looking at most once a
        second unless ``force``); a bad file keeps the last good tokens."""
        now = self.clock()
        if not force and now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        stamp = self._status()
        if stamp == self._stamp:
            return
        if stamp is None:  # deleted: fail closed, warned once (the stamp stays None)
            self._stamp = None
            self._entries, self._principals, self._expiry = {}, {}, {}
            log.warning(
                "key file %s is gone: every token is refused until it is back",
                self.path,
                extra={"event": "key_file_missing"},
            )
            return
        try:
            self._load(stamp)
        except Exception as exc:  # KeyFileError, or worse (a JSON nested past recursion)
            self._stamp = stamp  # warn once per change, not once per second
            reason = exc if isinstance(exc, KeyFileError) else f"{self.path}: {exc!r}"
            log.warning(
                "%s; the tokens read before stay in force until the file is fixed",
                reason,
                extra={"event": "key_file_invalid"},
            )
        else:
            log.info(
                "key file %s reloaded: %d token(s)",
                self.path,
                len(self._entries),
                extra={"event": "key_file_reloaded", "tokens": len(self._entries)},
            )

    # -- checks ----------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Grant:
        """The caller an ``Authorization`` value (``Bearer <token>``, or the bare token over
        gRPC metadata too) names, after its rate check; else the error to answer with."""
        self.refresh()
        if not authorization:
            return Unauthenticated(
                "this server needs a token: send the header 'Authorization: Bearer <token>' "
                "(gRPC: 'authorization' metadata)"
            )
        text = authorization.strip()
        if text[:7].lower() == _BEARER:
            text = text[7:].strip()
        # the id is only a lookup key: the hash comparison checks the whole text
        entry_id = token_id(text)
        entry = self._entries.get(entry_id) if entry_id is not None else None
        digest = hash_token(text)
        # compared whether or not the id exists: the time taken tells nothing
        matches = hmac.compare_digest(digest, entry.hash if entry is not None else _DUMMY_HASH)
        if entry is None or not matches:
            return Unauthenticated("invalid token")
        expiry = self._expiry.get(entry.id)
        if expiry is not None and time.time() >= expiry:
            return Unauthenticated("token expired")
        if entry.rate is not None:
            wait = self._bucket(entry).take(self.clock())
            if wait:
                return TooManyRequests(
                    f"token {entry.id} is over its rate of {entry.rate.per_second:g} requests "
                    "a second; retry later",
                    retry_after=wait,
                )
        return self._principals[entry.id]

    def _bucket(self, entry: TokenEntry) -> TokenBucket:
        rate = entry.rate
        assert rate is not None
        held = self._buckets.get(entry.id)
        if held is None or held[0] != rate:  # new, or its rate was changed in the file
            bucket = TokenBucket(rate.per_second / self.share, max(1.0, rate.burst / self.share))
            held = self._buckets[entry.id] = (rate, bucket)
        return held[1]
