"""The EC keys of model signing, read with ``cryptography`` alone.

``model-signing`` signs with elliptic-curve keys on P-256, P-384 or P-521 only. Key files are
checked here, with a message that says what is wrong, before anything signs or serves: the
supervisor checks ``--trusted-key`` files at start, and it never imports ``model_signing``
(which brings sigstore) or the archive package (which brings numpy).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from torchferry.errors import ArchiveError

#: The curves model-signing accepts, by their names in ``cryptography`` and in NIST's.
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_SUPPORTED = "an EC key on P-256, P-384 or P-521"


@dataclass(frozen=True)
class TrustedKey:
    """A public key whose signatures are accepted."""

    path: Path
    #: SHA-256 of the key's PEM (SubjectPublicKeyInfo): the hint model-signing writes into a
    #: signature bundle, which tells which key made it.
    key_id: str
    curve: str

    @property
    def short_id(self) -> str:
        return self.key_id[:16]


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ArchiveError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def _kind(key: object) -> str:
    kinds = (
        (rsa.RSAPublicKey, rsa.RSAPrivateKey, "an RSA"),
        (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey, "an Ed25519"),
        (ed448.Ed448PublicKey, ed448.Ed448PrivateKey, "an Ed448"),
        (dsa.DSAPublicKey, dsa.DSAPrivateKey, "a DSA"),
    )
    for public, private, kind in kinds:
        if isinstance(key, public | private):
            return kind
    return "a non-EC"


def _curve(key: object, path: Path, what: str) -> str:
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        raise ArchiveError(f"{what} {path} is {_kind(key)} key; model signing needs {_SUPPORTED}")
    name = key.curve.name
    if name not in CURVES:
        raise ArchiveError(
            f"{what} {path} is an EC key on curve {name}; model signing needs {_SUPPORTED}"
        )
    return CURVES[name]


def read_trusted_key(path: Path) -> TrustedKey:
    """A ``--trusted-key`` file: a PEM public key on a supported curve."""
    data = _read(path, "trusted key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        hint = " (that is a private key: give the public one)" if b"PRIVATE KEY" in data else ""
        raise ArchiveError(f"trusted key {path} is not a PEM public key{hint}") from None
    curve = _curve(key, path, "trusted key")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return TrustedKey(path=path, key_id=key_id(key), curve=curve)


def read_trusted_keys(paths: list[Path]) -> list[TrustedKey]:
    return [read_trusted_key(Path(p)) for p in paths]


def read_signing_key(path: Path, password: str | None = None) -> ec.EllipticCurvePrivateKey:
    """A signing key: a PEM private key on a supported curve (``password`` if encrypted)."""
    data = _read(path, "signing key")
    try:
        key = serialization.load_pem_private_key(
            data, password.encode() if password is not None else None
        )
    except TypeError:  # encrypted without a password, or a password for a plain key
        if password is None:
            raise ArchiveError(
                f"signing key {path} is encrypted: give its password (--password-env VAR)"
            ) from None
        raise ArchiveError(f"signing key {path} is not encrypted: give no password") from None
    except ValueError as exc:
        wrong = "password" in str(exc).lower() or "decrypt" in str(exc).lower()
        if wrong and password is not None:
            raise ArchiveError(f"signing key {path}: wrong password") from None
        hint = " (that is a public key: sign with the private one)" if b"PUBLIC KEY" in data else ""
        raise ArchiveError(f"signing key {path} is not a PEM private key{hint}") from None
    _curve(key, path, "signing key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def generate_key_pair(directory: Path, stem: str = "signing") -> tuple[Path, Path]:
    """A new P-256 pair in ``directory``: (``STEM-key.pem``, private, readable by its owner
    only; ``STEM-pub.pem``, public). Existing files are never overwritten."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / f"{stem}-key.pem"
    public_path = directory / f"{stem}-pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise ArchiveError(f"{path} already exists; keys are never overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(private_path, "xb", opener=_owner_only) as stream:
        stream.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def _owner_only(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
