"""Which archives a worker loads under the signing settings (``build.check_signature``):
without keys nothing is verified (the status says whether a signature is there); with
keys a signed archive must verify, and ``require_signed`` refuses unsigned ones too; a
refusal is a ``SignatureRefused`` at start and a ``ModelLoadFailed`` (400) while serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from certs import make_signing_keys
from versions_store import WEIGHTS, write_lin

from torchferry.archive import Archive, ModelStore
from torchferry.archive.signing import sign_archive
from torchferry.errors import ModelLoadFailed, SignatureRefused
from torchferry.serving.build import check_signature
from torchferry.serving.settings import ServerSettings


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("policy")
    private, public = make_signing_keys(root / "keys")
    stranger, _ = make_signing_keys(root / "keys", "stranger")
    store = ModelStore(root / "store")
    unsigned = write_lin(store, 1, WEIGHTS)
    signed = write_lin(store, 2, WEIGHTS)
    sign_archive(signed, private)
    foreign = write_lin(store, 3, WEIGHTS)
    sign_archive(foreign, stranger)
    return {"unsigned": unsigned, "signed": signed, "foreign": foreign, "public": public}


def status(archives: dict[str, Path], which: str, **settings: object) -> str:
    archive = Archive.open(archives[which])
    return check_signature(archive, ServerSettings(**settings), while_serving=False)


def test_without_keys_nothing_is_verified(archives):
    assert status(archives, "unsigned") == "unsigned"
    assert status(archives, "signed") == "unverified"
    assert status(archives, "foreign") == "unverified"


def test_with_keys_signed_archives_must_verify_and_unsigned_ones_still_serve(archives):
    keys = {"trusted_keys": [archives["public"]]}
    assert status(archives, "unsigned", **keys) == "unsigned"
    assert status(archives, "signed", **keys) == "verified"
    with pytest.raises(
        SignatureRefused, match=r"version 3: signature refused: .* not in --trusted"
    ):
        status(archives, "foreign", **keys)


def test_require_signed_refuses_unsigned_archives_at_start_and_while_serving(archives):
    settings = ServerSettings(require_signed=True, trusted_keys=[archives["public"]])
    unsigned = Archive.open(archives["unsigned"])
    assert check_signature(Archive.open(archives["signed"]), settings, True) == "verified"
    with pytest.raises(SignatureRefused, match=r"version 1: signature refused: .* is not signed"):
        check_signature(unsigned, settings, while_serving=False)
    with pytest.raises(ModelLoadFailed, match="is not signed") as caught:
        check_signature(unsigned, settings, while_serving=True)
    assert caught.value.status_code == 400


@pytest.mark.parametrize("which", ["signed", "unsigned"])
def test_require_signed_without_keys_refuses_everything(archives, which):
    # check_signing stops such a server at start; the load itself refuses it as well
    settings = ServerSettings(require_signed=True)
    archive = Archive.open(archives[which])
    with pytest.raises(SignatureRefused, match="--require-signed without a --trusted-key"):
        check_signature(archive, settings, while_serving=False)
    with pytest.raises(ModelLoadFailed, match="--require-signed without a --trusted-key"):
        check_signature(archive, settings, while_serving=True)
