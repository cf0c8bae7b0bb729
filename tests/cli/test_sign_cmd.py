"""``torchferry keygen``, ``sign`` and ``verify``: exit 0 when an archive verifies, 1 with the
reason when it does not; ``serve``'s signing flags reach the settings, and a server asked
to require signatures it cannot check refuses to start, saying why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from torchferry.archive import Manifest, ModelStore
from torchferry.cli import build_parser, main
from torchferry.cli.serve_cmd import settings_from_args
from torchferry.errors import ArchiveError
from torchferry.signature import ModelSignature, TensorSpec


def archive(root: Path) -> Path:
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, 2))
    manifest = Manifest(
        name="m",
        version=1,
        runtime="onnxruntime",
        graphs={"onnxruntime": "model.onnx"},
        signature=ModelSignature(inputs=(spec,), outputs=(spec,)),
    )
    return ModelStore(root).write(manifest, lambda d: (d / "model.onnx").write_bytes(b"g")).path


def said(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """What the command printed (out, err), unwrapped: rich folds long lines to the terminal
    (at a space, or inside a long path)."""
    out, err = capsys.readouterr()
    return " ".join(out.split()), " ".join(err.split())


def test_keygen_sign_and_verify_exit_codes(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert main(["keygen", "--out", str(keys)]) == 0
    assert main(["keygen", "--out", str(keys), "--name", "other"]) == 0
    private, public, other = (
        keys / "signing-key.pem",
        keys / "signing-pub.pem",
        keys / "other-pub.pem",
    )
    path = archive(tmp_path / "store")
    capsys.readouterr()

    assert main(["verify", str(path), "--trusted-key", str(public)]) == 1
    assert "is not signed: no signature file model.sig" in said(capsys)[1]

    assert main(["sign", str(path), "--key", str(private)]) == 0
    assert "signed" in said(capsys)[0] and (path / "model.sig").is_file()

    argv = ["verify", str(path), "--trusted-key", str(other), "--trusted-key", str(public)]
    assert main(argv) == 0
    out = said(capsys)[0]
    assert out.startswith("verified") and "P-256" in out

    assert main(["verify", str(path), "--trusted-key", str(other)]) == 1
    assert "signed by a key not in --trusted-key" in said(capsys)[1]

    (path / "added.txt").write_text("x")
    assert main(["verify", str(path), "--trusted-key", str(public)]) == 1
    assert "added after signing: added.txt" in said(capsys)[1]

    assert main(["sign", str(path), "--key", str(public)]) == 1
    assert "is not a PEM private key" in said(capsys)[1]


def test_serve_signing_flags_reach_the_settings():
    args = ["serve", "--store", "s", "--require-signed"]
    args += ["--trusted-key", "a.pem", "--trusted-key", "b.pem"]
    settings = settings_from_args(build_parser().parse_args(args))
    assert settings.require_signed is True
    assert settings.trusted_keys == [Path("a.pem"), Path("b.pem")]
    plain = settings_from_args(build_parser().parse_args(["serve", "--store", "s"]))
    assert plain.require_signed is False and plain.trusted_keys == []


def test_serve_refuses_to_start_with_keys_it_cannot_use(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    rsa_key = tmp_path / "rsa.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key.write_bytes(
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for extra, expected in [
        ([], "--require-signed needs at least one --trusted-key"),
        (["--trusted-key", str(tmp_path / "missing.pem")], "cannot be read"),
        (["--trusted-key", str(rsa_key)], "is an RSA key; model signing needs an EC key"),
    ]:
        argv = ["serve", "--store", str(store), "--require-signed", *extra]
        settings = settings_from_args(build_parser().parse_args(argv))
        with pytest.raises(ArchiveError, match=expected):
            settings.check_sources()


def test_the_serve_command_exits_1_with_the_reason():
    command = [sys.executable, "-m", "torchferry.cli", "serve", "--store", ".", "--require-signed"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "--require-signed needs at least one --trusted-key" in " ".join(done.stderr.split())
