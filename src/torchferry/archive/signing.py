"""Signed archives: OpenSSF model signing (the ``model-signing`` library), with EC keys.

The signature is a Sigstore bundle (a DSSE envelope around an in-toto statement that lists
every file's SHA-256), stored in the archive itself as ``model.sig``. It covers every file
in the archive directory but ``model.sig`` (``manifest.json`` included, so the manifest can
never change after signing, and signing never rewrites it); git's files are not exempt. A
file changed, removed *or added* after signing makes the archive fail verification, as does
a signature made by a key that is not trusted, or one that was altered.

``model_signing`` brings sigstore, which is slow to import (~0.7 s): it is imported only
where an archive is signed or verified.
"""

from __future__ import annotations

import ast
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchferry.archive.integrity import verify_archive
from torchferry.archive.manifest import Manifest
from torchferry.errors import SignatureRefused
from torchferry.signing_keys import TrustedKey, read_signing_key

#: The signature file, inside the archive directory.
SIGNATURE_NAME = "model.sig"


def is_signed(directory: Path) -> bool:
    """Whether the archive carries a signature (present, not verified)."""
    return (directory / SIGNATURE_NAME).is_file()


def _hashing() -> Any:
    """What is hashed: every file but the signature; the same when signing and verifying."""
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)


def sign_archive(directory: Path, private_key: Path, password: str | None = None) -> Path:
    """Sign the archive at ``directory`` with an EC private key (PEM); the path of its new
    ``model.sig`` (an older one is replaced). The archive must pass its integrity check
    first: a signature vouches for what the manifest promises."""
    manifest = Manifest.read(directory)
    verify_archive(directory, manifest)
    read_signing_key(private_key, password)  # a clear message for a wrong key, before signing
    from model_signing import signing

    config = signing.Config().use_elliptic_key_signer(
        private_key=private_key,
        # model-signing hands the password to cryptography as is, which takes bytes
        password=password.encode() if password is not None else None,  # type: ignore[arg-type]
    )
    config.set_hashing_config(_hashing())
    # written beside the archive (resolved: the parent of "." is "." itself, where the file
    # would be signed too), then moved in: a half-written signature never shows
    beside = directory.resolve()
    handle, staging = tempfile.mkstemp(
        prefix=f".{beside.name}-{SIGNATURE_NAME}-", dir=beside.parent
    )
    os.close(handle)
    try:
        config.sign(directory, staging)
        os.replace(staging, directory / SIGNATURE_NAME)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return directory / SIGNATURE_NAME


def verify_signature(directory: Path, keys: Sequence[TrustedKey]) -> TrustedKey:
    """The trusted key that signed the archive at ``directory``; ``SignatureRefused`` with
    the reason when it is unsigned, signed by another key, altered since it was signed, or
    its signature is not a valid bundle."""
    signature = directory / SIGNATURE_NAME
    if not signature.is_file():
        raise SignatureRefused(
            f"{directory} is not signed: no signature file {SIGNATURE_NAME} (sign it with "
            f"`torchferry sign {directory} --key PRIVATE.pem`)"
        )
    hint = _key_hint(signature)
    candidates = [k for k in keys if k.key_id == hint] if hint else list(keys)
    if not candidates:
        trusted = ", ".join(k.short_id for k in keys) or "none"
        raise SignatureRefused(
            f"{directory} is signed by a key not in --trusted-key (key id {hint[:16]}...; "
            f"trusted key ids: {trusted})"
        )
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    reasons = []
    for key in candidates:
        config = verifying.Config().use_elliptic_key_verifier(public_key=key.path)
        config.set_hashing_config(_hashing())
        try:
            config.verify(directory, signature)
        except InvalidSignature:
            reasons.append(
                f"its signature {SIGNATURE_NAME} does not verify with the trusted key "
                f"{key.path} (the signature was altered, or made by another key)"
            )
        except ValueError as exc:
            reasons.append(_mismatch(str(exc)))
        except Exception as exc:  # a bundle model-signing cannot read
            reasons.append(
                f"{SIGNATURE_NAME} is not a valid signature: {type(exc).__name__}: {exc}"
            )
        else:
            return key
    raise SignatureRefused(f"{directory}: " + "; ".join(dict.fromkeys(reasons)))


def _key_hint(signature: Path) -> str:
    """The id of the key a bundle says it was made with ('' for older bundles, which name
    none); ``SignatureRefused`` for a file that is no key-signed Sigstore bundle."""
    try:
        bundle = json.loads(signature.read_text(encoding="utf-8"))
        material = bundle["verificationMaterial"]
        bundle["dsseEnvelope"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyError) else f"no {exc}"
        raise SignatureRefused(f"{signature} is not a valid signature bundle ({detail})") from None
    if not isinstance(material, dict) or "publicKey" not in material:
        raise SignatureRefused(
            f"{signature} was not made with a key (a certificate or keyless Sigstore "
            "signature); --trusted-key verifies signatures made with EC keys"
        )
    hint = (material.get("publicKey") or {}).get("hint")
    return hint if isinstance(hint, str) else ""


_ITEM = re.compile(r"^(Extra files found|Missing files) in model '.*?': (?P<files>.*)$")
_CHANGED = re.compile(r"^Hash mismatch for '(?P<file>.*?)'")


def _mismatch(message: str) -> str:
    """model-signing's ``Signature mismatch: [...]`` as a reason that names the files."""
    prefix = "Signature mismatch: "
    if not message.startswith(prefix):
        return f"cannot verify its signature: {message}"
    try:
        items = ast.literal_eval(message[len(prefix) :])
    except (ValueError, SyntaxError):
        items = [message[len(prefix) :]]
    grouped: dict[str, list[str]] = {}
    for item in items if isinstance(items, list) else [str(items)]:
        if (found := _ITEM.match(item)) is not None:
            what = "added after signing" if item.startswith("Extra") else "missing since signing"
            grouped.setdefault(what, []).append(found["files"])
        elif (changed := _CHANGED.match(item)) is not None:
            grouped.setdefault("changed since signing", []).append(changed["file"])
        else:
            grouped.setdefault("", []).append(item)
    parts = [
        f"{what}: {', '.join(files)}" if what else "; ".join(files)
        for what, files in grouped.items()
    ]
    return "its files do not match its signature (" + "; ".join(parts) + ")"
