"""A written archive verifies; a tampered or incomplete one is refused with a clear message."""

from __future__ import annotations

import pytest
from small_archive import write_small_archive

from torchferry.archive import Archive, ModelStore
from torchferry.errors import ArchiveError


def test_written_archive_lists_and_verifies_every_file(tmp_path):
    archive = write_small_archive(ModelStore(tmp_path))
    assert set(archive.manifest.files) == {"model.onnx", "extra/labels.json"}
    assert Archive.open(archive.path).manifest == archive.manifest


def test_tampered_file_is_refused(tmp_path):
    archive = write_small_archive(ModelStore(tmp_path))
    (archive.path / "model.onnx").write_bytes(b"graph bytes, modified")
    with pytest.raises(ArchiveError) as info:
        Archive.open(archive.path)
    message = info.value.message
    assert "file 'model.onnx' does not match the manifest" in message
    assert "the archive was modified or corrupted, refusing to load it" in message
    assert archive.manifest.files["model.onnx"].sha256[:16] in message
    with pytest.raises(ArchiveError, match="does not match the manifest"):
        ModelStore(tmp_path).open("m")
    assert Archive.open(archive.path, verify=False).manifest.name == "m"


def test_missing_file_is_refused(tmp_path):
    archive = write_small_archive(ModelStore(tmp_path))
    (archive.path / "extra" / "labels.json").unlink()
    with pytest.raises(
        ArchiveError, match=r"file 'extra/labels\.json' listed in the manifest is missing"
    ):
        Archive.open(archive.path)


def test_directory_without_manifest(tmp_path):
    with pytest.raises(ArchiveError, match=r"is not a torchferry archive: no manifest\.json"):
        Archive.open(tmp_path)
