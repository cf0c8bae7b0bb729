"""Signed archives (OpenSSF model signing, EC keys, offline): a signed archive verifies
against any one of its trusted keys, and every way it can be wrong is refused with its own
reason: unsigned, a file changed, added or removed, signed by another key, an altered or
unreadable signature, keys on curves model signing does not take."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from certs import make_signing_keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from small_archive import write_small_archive

from torchferry.archive import Archive, Manifest, ModelStore
from torchferry.archive.signing import SIGNATURE_NAME, is_signed, sign_archive, verify_signature
from torchferry.errors import ArchiveError, SignatureRefused
from torchferry.serving.staging import stage_source
from torchferry.signing_keys import generate_key_pair, read_trusted_key


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("keys")
    private, public = make_signing_keys(directory)
    other_private, other_public = make_signing_keys(directory, "other")
    return {
        "private": private,
        "public": public,
        "other": other_public,
        "other_private": other_private,
    }


@pytest.fixture
def signed(tmp_path: Path, keys: dict[str, Path]) -> Path:
    archive = write_small_archive(ModelStore(tmp_path / "store"))
    sign_archive(archive.path, keys["private"])
    return archive.path


def refusal(directory: Path, *public: Path) -> str:
    with pytest.raises(SignatureRefused) as caught:
        verify_signature(directory, [read_trusted_key(p) for p in public])
    return caught.value.message


def test_signing_writes_model_sig_and_leaves_every_other_file_as_it_was(tmp_path, keys):
    archive = write_small_archive(ModelStore(tmp_path))
    before = {p.name: p.read_bytes() for p in archive.path.rglob("*") if p.is_file()}
    assert not is_signed(archive.path)
    signature = sign_archive(archive.path, keys["private"])
    assert signature == archive.path / SIGNATURE_NAME and is_signed(archive.path)
    after = {p.name: p.read_bytes() for p in archive.path.rglob("*") if p.is_file()}
    assert after.pop(SIGNATURE_NAME).startswith(b"{")  # a Sigstore bundle, JSON
    assert after == before  # the manifest included: signing never rewrites it
    assert [p.name for p in archive.path.parent.iterdir()] == [archive.path.name]  # no leftovers
    bundle = json.loads(signature.read_text())
    assert bundle["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    # any one trusted key is enough; it says which one it was
    trusted = [read_trusted_key(keys["other"]), read_trusted_key(keys["public"])]
    assert verify_signature(archive.path, trusted).path == keys["public"]
    assert Archive.open(archive.path).manifest == archive.manifest  # still passes its hashes


def test_an_archive_signed_from_inside_verifies(tmp_path, keys, monkeypatch):
    archive = write_small_archive(ModelStore(tmp_path))
    monkeypatch.chdir(archive.path)
    sign_archive(Path("."), keys["private"])
    assert sorted(p.name for p in archive.path.iterdir()) == [
        "extra",
        "manifest.json",
        "model.onnx",
        "model.sig",
    ]
    assert verify_signature(Path("."), [read_trusted_key(keys["public"])]).path == keys["public"]


def test_an_unsigned_archive_is_refused(tmp_path, keys):
    archive = write_small_archive(ModelStore(tmp_path))
    reason = refusal(archive.path, keys["public"])
    assert "is not signed: no signature file model.sig" in reason, reason
    assert "torchferry sign" in reason


def test_a_changed_file_is_refused_naming_it(signed, keys):
    (signed / "extra" / "labels.json").write_text('["b"]')
    reason = refusal(signed, keys["public"])
    assert (
        "do not match its signature" in reason
        and "changed since signing: extra/labels.json" in reason
    ), reason


def test_a_rewritten_manifest_is_refused_even_when_its_hashes_agree(signed, keys):
    """A graph swapped and the manifest updated to match passes the SHA-256 check: only the
    signature catches it."""
    (signed / "model.onnx").write_bytes(b"other graph")
    manifest = Manifest.read(signed)
    from torchferry.archive.integrity import hash_file

    files = {**manifest.files, "model.onnx": hash_file(signed / "model.onnx")}
    (signed / "manifest.json").write_text(manifest.model_copy(update={"files": files}).to_json())
    Archive.open(signed)  # its hashes agree
    reason = refusal(signed, keys["public"])
    assert "changed since signing: manifest.json" in reason and "model.onnx" in reason, reason


@pytest.mark.parametrize("added", ["notes.txt", "extra/more.py", ".gitignore"])
def test_a_file_added_after_signing_is_refused_naming_it(signed, keys, added):
    (signed / added).write_text("print('hello')")
    reason = refusal(signed, keys["public"])
    assert f"added after signing: {added}" in reason, reason


def test_a_removed_file_is_refused_naming_it(signed, keys):
    (signed / "extra" / "labels.json").unlink()
    reason = refusal(signed, keys["public"])
    assert "missing since signing: extra/labels.json" in reason, reason


def test_a_signature_by_an_unknown_key_is_refused(signed, keys):
    reason = refusal(signed, keys["other"])
    assert "signed by a key not in --trusted-key" in reason, reason
    assert read_trusted_key(keys["other"]).short_id in reason  # which keys were trusted


def test_an_altered_signature_is_refused(signed, keys):
    bundle = json.loads((signed / SIGNATURE_NAME).read_text())
    envelope = bundle["dsseEnvelope"]
    sig = envelope["signatures"][0]["sig"]
    envelope["signatures"][0]["sig"] = ("B" if sig[0] == "A" else "A") + sig[1:]
    (signed / SIGNATURE_NAME).write_text(json.dumps(bundle))
    reason = refusal(signed, keys["public"])
    assert "does not verify with the trusted key" in reason, reason


@pytest.mark.parametrize("content", ["not json", '{"mediaType": "x"}', "[]"])
def test_an_unreadable_signature_is_refused(signed, keys, content):
    (signed / SIGNATURE_NAME).write_text(content)
    reason = refusal(signed, keys["public"])
    assert "model.sig is not a valid signature bundle" in reason, reason


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_the_larger_nist_curves_sign_and_verify(tmp_path, curve):
    key = ec.generate_private_key(curve)
    private, public = make_signing_keys(tmp_path, key=key)
    archive = write_small_archive(ModelStore(tmp_path / "store"))
    sign_archive(archive.path, private)
    assert verify_signature(archive.path, [read_trusted_key(public)]).path == public


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: ec.generate_private_key(ec.SECP256K1()), "an EC key on curve secp256k1"),
        (lambda: rsa.generate_private_key(65537, 2048), "an RSA key"),
        (ed25519.Ed25519PrivateKey.generate, "an Ed25519 key"),
    ],
)
def test_keys_model_signing_cannot_use_are_refused_clearly(tmp_path, make, kind):
    key = make()
    private, public = make_signing_keys(tmp_path, key=key)
    needs = "model signing needs an EC key on P-256, P-384 or P-521"
    with pytest.raises(ArchiveError) as caught:
        read_trusted_key(public)
    assert (
        f"trusted key {public} is {kind}" in caught.value.message and needs in caught.value.message
    )
    archive = write_small_archive(ModelStore(tmp_path / "store"))
    with pytest.raises(ArchiveError) as caught:
        sign_archive(archive.path, private)
    assert f"signing key {private} is {kind}" in caught.value.message, caught.value.message
    assert not is_signed(archive.path)


def test_key_files_that_are_not_keys_are_refused_clearly(tmp_path, keys):
    with pytest.raises(
        ArchiveError, match=re.escape("is not a PEM public key (that is a private key")
    ):
        read_trusted_key(keys["private"])
    with pytest.raises(ArchiveError, match="cannot be read"):
        read_trusted_key(tmp_path / "missing.pem")
    archive = write_small_archive(ModelStore(tmp_path / "store"))
    with pytest.raises(
        ArchiveError, match=re.escape("is not a PEM private key (that is a public key")
    ):
        sign_archive(archive.path, keys["public"])


def test_a_corrupt_archive_is_not_signed(tmp_path, keys):
    archive = write_small_archive(ModelStore(tmp_path))
    (archive.path / "model.onnx").write_bytes(b"changed")
    with pytest.raises(ArchiveError, match="does not match the manifest"):
        sign_archive(archive.path, keys["private"])
    assert not is_signed(archive.path)


def test_keygen_makes_a_pair_that_signs_and_verifies_and_never_overwrites(tmp_path):
    private, public = generate_key_pair(tmp_path / "keys")
    assert private.stat().st_mode & 0o077 == 0  # the private key: its owner's only
    archive = write_small_archive(ModelStore(tmp_path / "store"))
    sign_archive(archive.path, private)
    assert verify_signature(archive.path, [read_trusted_key(public)]).path == public
    with pytest.raises(ArchiveError, match="already exists"):
        generate_key_pair(tmp_path / "keys")


def test_a_manifest_with_the_old_placeholder_still_loads(tmp_path):
    archive = write_small_archive(ModelStore(tmp_path))
    data = json.loads((archive.path / "manifest.json").read_text())
    data["signature_ed25519"] = None
    (archive.path / "manifest.json").write_text(json.dumps(data))
    assert Manifest.read(archive.path).name == "m"


def test_a_signed_archive_is_staged_verbatim_and_still_verifies(tmp_path, keys):
    """A management load copies a signed archive into the store as is (its manifest is
    signed: rewriting it, as unsigned archives are, would break the signature)."""
    source = write_small_archive(ModelStore(tmp_path / "outside"), name="original").path
    sign_archive(source, keys["private"])
    store = ModelStore(tmp_path / "store")
    write_small_archive(store, name="m")  # m 1 exists: the source comes in as m 2
    staged = stage_source(source, store.root, "m")
    assert staged.path == store.path("m", 2)
    assert (staged.manifest.name, staged.manifest.version) == ("m", 2)  # as its directory says
    copied = {
        p.relative_to(staged.path): p.read_bytes() for p in staged.path.rglob("*") if p.is_file()
    }
    originals = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    assert copied == originals
    assert verify_signature(staged.path, [read_trusted_key(keys["public"])]).path == keys["public"]
    # an unsigned archive is still staged with a manifest of its own (and nothing else)
    plain = tmp_path / "plain"
    shutil.copytree(source, plain)
    (plain / SIGNATURE_NAME).unlink()
    rewritten = stage_source(plain, store.root, "m")
    assert rewritten.path == store.path("m", 3) and not is_signed(rewritten.path)
    assert Manifest.read(rewritten.path).version == 3


def test_an_encrypted_key_signs_with_its_password_and_is_refused_clearly_without(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "key.pem", tmp_path / "pub.pem"
    encryption = serialization.BestAvailableEncryption(b"secret")
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    archive = write_small_archive(ModelStore(tmp_path / "store"))
    with pytest.raises(ArchiveError, match="is encrypted: give its password"):
        sign_archive(archive.path, private)
    with pytest.raises(ArchiveError, match="wrong password"):
        sign_archive(archive.path, private, "guess")
    assert not is_signed(archive.path)
    sign_archive(archive.path, private, "secret")
    assert verify_signature(archive.path, [read_trusted_key(public)]).path == public
