"""``torchferry sign``, ``verify`` and ``keygen``: sign an archive with an EC key (OpenSSF
model signing, a Sigstore bundle written into the archive as ``model.sig``), check one
against trusted public keys, and make a key pair."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from torchferry.errors import ArchiveError

_PATH_HELP = "the archive directory, STORE/NAME/VERSION"


def register(subparsers: argparse._SubParsersAction) -> None:
    sign = subparsers.add_parser(
        "sign",
        help="sign a model archive with an EC private key (writes model.sig into it)",
        description=(
            "Sign every file of STORE/NAME/VERSION (the manifest included) with an EC private "
            "key (PEM; P-256, P-384 or P-521) using OpenSSF model signing; the signature, a "
            "Sigstore bundle, is written into the archive as model.sig (an older one is "
            "replaced). The archive must pass its SHA-256 check first. Nothing may change in "
            "the archive afterwards: a file changed, removed or added makes it fail "
            "verification."
        ),
    )
    sign.add_argument("path", type=Path, metavar="STORE/NAME/VERSION", help=_PATH_HELP)
    sign.add_argument("--key", type=Path, required=True, metavar="PRIVATE.pem")
    sign.add_argument(
        "--password-env",
        metavar="VAR",
        help="the environment variable holding the key's password (for an encrypted key)",
    )
    sign.set_defaults(func=run_sign)

    verify = subparsers.add_parser(
        "verify",
        help="check an archive's files and its signature against trusted public keys",
        description=(
            "Check STORE/NAME/VERSION against its manifest's SHA-256 list and its model.sig "
            "against the trusted public keys (any one is enough). Exits 0 when it verifies, "
            "1 with the reason when it does not (unsigned, altered, signed by another key)."
        ),
    )
    verify.add_argument("path", type=Path, metavar="STORE/NAME/VERSION", help=_PATH_HELP)
    verify.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        required=True,
        metavar="PUBLIC.pem",
        help="a public key whose signatures are accepted (repeatable)",
    )
    verify.set_defaults(func=run_verify)

    keygen = subparsers.add_parser(
        "keygen",
        help="make an EC P-256 key pair for signing models",
        description=(
            "Write a new EC P-256 key pair: OUT/NAME-key.pem (private, unencrypted, readable "
            "by its owner only) and OUT/NAME-pub.pem (public, for --trusted-key). Existing "
            "files are never overwritten."
        ),
    )
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR")
    keygen.add_argument("--name", default="signing", help="file name stem (default: signing)")
    keygen.set_defaults(func=run_keygen)


def run_sign(args: argparse.Namespace) -> int:
    from torchferry.archive.signing import sign_archive
    from torchferry.signing_keys import key_id, read_signing_key

    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            raise ArchiveError(f"--password-env {args.password_env}: that variable is not set")
    signature = sign_archive(args.path, args.key, password)
    ident = key_id(read_signing_key(args.key, password).public_key())
    Console().print(
        f"signed {escape(str(args.path))}: {escape(str(signature))} (key id {ident[:16]})"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from torchferry.archive.integrity import verify_archive
    from torchferry.archive.manifest import Manifest
    from torchferry.archive.signing import verify_signature
    from torchferry.signing_keys import read_trusted_keys

    keys = read_trusted_keys(args.trusted_key)
    verify_archive(args.path, Manifest.read(args.path))
    key = verify_signature(args.path, keys)
    Console().print(
        f"verified {escape(str(args.path))}: signed by {escape(str(key.path))} "
        f"(key id {key.short_id}, {key.curve})"
    )
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    from torchferry.signing_keys import generate_key_pair

    private, public = generate_key_pair(args.out, args.name)
    console = Console()
    console.print(f"private key: {escape(str(private))} (keep it secret; sign with --key)")
    console.print(f"public key:  {escape(str(public))} (serve with --trusted-key)")
    return 0
