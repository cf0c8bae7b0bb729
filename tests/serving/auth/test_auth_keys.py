"""The key file, the key ring and scopes, without a server: what is stored, who is let in,
when a change takes effect, and what a bad file does."""

from __future__ import annotations

import hmac
import json
import logging
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from torchferry.errors import TooManyRequests, Unauthenticated
from torchferry.serving.auth import keyring as keyring_module
from torchferry.serving.auth.guard import AuthSetupError, open_key_ring
from torchferry.serving.auth.keyfile import (
    KeyFileError,
    Rate,
    create_token,
    hash_token,
    read_key_file,
    revoke_token,
)
from torchferry.serving.auth.keyring import KeyRing, Principal
from torchferry.serving.auth.ratelimit import TokenBucket
from torchferry.serving.auth.scopes import ScopeError, Scopes, canonical_scopes, parse_scope


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "keys.json"


# -- scopes --------------------------------------------------------------------------------------


def test_scopes_parse_and_refuse_unknown_ones():
    assert parse_scope("infer:b, a,b") == "infer:a,b"
    assert canonical_scopes(["infer:a", "metrics", "infer:b"]) == ["infer:a,b", "metrics"]
    assert canonical_scopes(["infer:a", "infer"]) == ["infer"]
    # a model name as the store allows it: no leading '.' or '-', at most 128 characters
    for bad in ("admin", "infer:", "infer:a b", "metadata:x", "", "infer:.x", "infer:" + "a" * 129):
        with pytest.raises(ScopeError):
            parse_scope(bad)
    scopes = Scopes.parse(["infer:digits", "manage"])
    assert scopes.may_infer("digits") and not scopes.may_infer("other")
    assert scopes.may_see("digits") and not scopes.may_see("other") and scopes.manage
    assert Scopes.parse(["metadata"]).may_see("any") and not Scopes.parse(["metadata"]).may_infer(
        "any"
    )


# -- the key file --------------------------------------------------------------------------------


def test_the_file_keeps_a_hash_never_the_token_and_only_its_owner_reads_it(key_file):
    entry, text = create_token(key_file, ["infer:digits"], timedelta(hours=24), name="ci")
    raw = key_file.read_text()
    assert text.startswith(f"tf_{entry.id}_") and text not in raw
    assert text.split("_", 2)[2] not in raw  # nor its secret part
    assert json.loads(raw)["tokens"][0]["hash"] == hash_token(text)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert entry.expires - entry.created == timedelta(hours=24)
    assert read_key_file(key_file)[entry.id] == entry
    second, other = create_token(key_file, ["metrics"], None)
    assert other != text and second.expires is None and len(read_key_file(key_file)) == 2
    assert revoke_token(key_file, entry.id) == entry
    assert revoke_token(key_file, entry.id) is None
    assert list(read_key_file(key_file)) == [second.id]
    assert not list(key_file.parent.glob(".keys.json.*"))  # no temporary file left


def test_a_malformed_key_file_says_what_is_wrong(key_file):
    key_file.parent.mkdir(parents=True)
    cases = {
        "not json": "is not JSON",
        '{"tokens": []}': '"version": 1',
        '{"version": 1, "tokens": [{"id": "abc"}]}': "token 0",
        '{"version": 1, "tokens": [{"id": "0123456789ab", "hash": "sha256:' + "0" * 64
        + '", "scopes": ["admin"], "created": "2026-01-01T00:00:00Z"}]}': "unknown scope",
    }  # fmt: skip
    for text, message in cases.items():
        key_file.write_text(text)
        with pytest.raises(KeyFileError, match=message):
            read_key_file(key_file)


def test_auth_without_a_key_file_names_the_command_that_makes_one(key_file):
    with pytest.raises(AuthSetupError, match="torchferry token create"):
        open_key_ring(key_file)


# -- the key ring --------------------------------------------------------------------------------


def test_valid_invalid_and_expired_tokens(key_file):
    entry, text = create_token(key_file, ["infer:digits", "metadata"], timedelta(days=1))
    _, old_text = create_token(
        key_file, ["infer"], timedelta(hours=1), now=datetime.now(UTC) - timedelta(hours=2)
    )
    ring = KeyRing(key_file)
    principal = ring.authenticate(f"Bearer {text}")
    assert isinstance(principal, Principal) and principal.id == entry.id
    assert principal.scopes.may_infer("digits") and principal.scopes.metadata
    assert ring.authenticate(f"bearer  {text} ") == principal  # the scheme in any case
    for header, message in (
        (None, "needs a token"),
        ("", "needs a token"),
        ("Bearer nope", "invalid token"),
        (f"Bearer {text[:-1]}x", "invalid token"),  # right id, wrong secret
        (f"Basic {text}", "invalid token"),
        (f"Bearer {old_text}", "token expired"),
    ):
        refusal = ring.authenticate(header)
        assert isinstance(refusal, Unauthenticated), header
        assert message in refusal.message and text not in refusal.message


def test_unknown_ids_are_compared_against_a_dummy_hash(key_file, monkeypatch):
    """The comparison runs (in constant time) whether or not the id exists."""
    _, text = create_token(key_file, ["infer"], None)
    ring = KeyRing(key_file)
    calls: list[tuple[str, str]] = []
    compare = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(keyring_module.hmac, "compare_digest", spy)
    ring.authenticate(f"Bearer {text}")
    ring.authenticate("Bearer tf_ffffffffffff_" + "A" * 43)  # well formed, unknown id
    ring.authenticate("Bearer garbage")
    assert len(calls) == 3 and all(len(a) == len(b) == 71 for a, b in calls)


def test_changes_take_effect_within_a_second_and_a_bad_file_keeps_the_last_good(key_file, caplog):
    _, first = create_token(key_file, ["infer"], None)
    clock = Clock()
    ring = KeyRing(key_file, clock=clock)
    entry, second = create_token(key_file, ["metrics"], None)
    assert isinstance(ring.authenticate(f"Bearer {second}"), Unauthenticated)  # not looked yet
    clock.now += 1.0
    assert isinstance(ring.authenticate(f"Bearer {second}"), Principal)
    revoke_token(key_file, entry.id)
    clock.now += 1.0
    assert isinstance(ring.authenticate(f"Bearer {second}"), Unauthenticated)
    key_file.write_text("{ broken")
    clock.now += 1.0
    with caplog.at_level(logging.WARNING, logger="torchferry.auth"):
        assert isinstance(ring.authenticate(f"Bearer {first}"), Principal)
        clock.now += 1.0
        assert isinstance(ring.authenticate(f"Bearer {first}"), Principal)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "stay in force" in warnings[0].getMessage()
    assert isinstance(ring.authenticate(None), Unauthenticated)


def test_a_deleted_key_file_refuses_every_token_until_it_is_back(key_file, caplog):
    """Deleting the file is a way to lock everyone out: it fails closed, with a warning."""
    _, text = create_token(key_file, ["infer"], None)
    clock = Clock()
    ring = KeyRing(key_file, clock=clock)
    kept = key_file.read_bytes()
    key_file.unlink()
    clock.now += 1.0
    with caplog.at_level(logging.WARNING, logger="torchferry.auth"):
        refusal = ring.authenticate(f"Bearer {text}")
        clock.now += 1.0
        assert isinstance(ring.authenticate(f"Bearer {text}"), Unauthenticated)
    assert isinstance(refusal, Unauthenticated) and refusal.message == "invalid token"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "every token is refused" in warnings[0], warnings
    key_file.write_bytes(kept)  # back: its tokens work again
    clock.now += 1.0
    assert isinstance(ring.authenticate(f"Bearer {text}"), Principal)


def test_a_rate_limited_token_is_refused_with_retry_after_then_let_in_again(key_file):
    _, text = create_token(key_file, ["infer"], None, rate=Rate(2.0, 3))
    clock = Clock()
    ring = KeyRing(key_file, clock=clock)
    assert all(isinstance(ring.authenticate(f"Bearer {text}"), Principal) for _ in range(3))
    refusal = ring.authenticate(f"Bearer {text}")
    assert isinstance(refusal, TooManyRequests) and refusal.status_code == 429
    assert refusal.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    assert isinstance(ring.authenticate(f"Bearer {text}"), Principal)
    shared = KeyRing(key_file, share=2, clock=clock)  # two workers: each allows half
    assert shared._bucket(read_key_file(key_file)[text[3:15]]).rate == 1.0


def test_token_bucket_refills_at_its_rate_up_to_its_burst():
    bucket = TokenBucket(rate=10.0, burst=2)
    assert bucket.take(0.0) == 0.0 and bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.1) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.take(100.0) == 0.0 and bucket.take(100.0) > 0
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
