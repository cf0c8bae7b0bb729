"""Where a management load may read from: local paths under the source roots only, checked
after symlinks and ``..`` are resolved."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_fleet import write_archive

from torchferry.errors import InvalidInput, ModelNotFound, SourceRefused
from torchferry.serving.management.sources import resolve_source
from torchferry.serving.settings import ServerSettings


@pytest.fixture
def roots(tmp_path: Path) -> list[Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    write_archive(first / "digits", "digits")
    (second / "nested").mkdir(parents=True)
    (second / "nested" / "resnet.mar").write_bytes(b"PK")
    (second / "plain.onnx").write_bytes(b"onnx")
    return [first, second]


@pytest.fixture
def settings(roots: list[Path]) -> ServerSettings:
    return ServerSettings(model_source_roots=roots)


def test_relative_paths_are_looked_up_under_each_root(
    settings: ServerSettings, roots: list[Path]
) -> None:
    assert resolve_source("digits", settings) == (roots[0] / "digits").resolve()
    assert resolve_source("nested/resnet.mar", settings) == (roots[1] / "nested/resnet.mar")
    assert resolve_source(" plain.onnx ", settings) == roots[1] / "plain.onnx"


def test_absolute_paths_and_file_urls(settings: ServerSettings, roots: list[Path]) -> None:
    target = roots[1] / "nested" / "resnet.mar"
    assert resolve_source(str(target), settings) == target
    assert resolve_source(f"file://{target}", settings) == target
    assert resolve_source(f"file://localhost{target}", settings) == target
    spaced = roots[0] / "with space"
    write_archive(spaced, "spaced")
    assert resolve_source(f"file://{roots[0]}/with%20space", settings) == spaced


def test_the_store_is_the_root_without_source_roots(tmp_path: Path) -> None:
    version = write_archive(tmp_path / "store" / "digits" / "3", "digits", 3)
    settings = ServerSettings(store=tmp_path / "store")
    assert resolve_source("digits/3", settings) == version
    with pytest.raises(SourceRefused, match="no model source roots"):
        resolve_source("digits/3", ServerSettings(model_dir=tmp_path))


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/m.mar",
        "https://example.com/m.mar",
        "s3://bucket/m.mar",
        "gs://bucket/m",
        "HTTPS://EXAMPLE.COM/M.MAR",
    ],
)
def test_remote_sources_are_refused(settings: ServerSettings, url: str) -> None:
    with pytest.raises(SourceRefused, match="sources are not fetched"):
        resolve_source(url, settings)


def test_a_file_url_naming_another_host_is_refused(settings: ServerSettings) -> None:
    with pytest.raises(SourceRefused, match="local path"):
        resolve_source("file://otherhost/tmp/m.mar", settings)


@pytest.mark.parametrize("url", ["/etc", "/etc/passwd", "../../../../etc", "digits/../../.."])
def test_paths_outside_the_roots_are_refused(settings: ServerSettings, url: str) -> None:
    with pytest.raises(SourceRefused) as refused:
        resolve_source(url, settings)
    assert "outside the model source roots" in refused.value.message
    assert str(settings.model_source_roots[0].resolve()) in refused.value.message


def test_dotdot_inside_the_roots_is_fine(settings: ServerSettings, roots: list[Path]) -> None:
    assert resolve_source("digits/../digits", settings) == roots[0] / "digits"
    # from the first root into the second: still inside an allowed root
    assert resolve_source("../second/plain.onnx", settings) == roots[1] / "plain.onnx"


def test_a_symlink_leading_out_is_refused(
    settings: ServerSettings, roots: list[Path], tmp_path: Path
) -> None:
    outside = write_archive(tmp_path / "outside" / "evil", "evil")
    os.symlink(outside, roots[0] / "link")
    with pytest.raises(SourceRefused, match="outside the model source roots"):
        resolve_source("link", settings)
    with pytest.raises(SourceRefused):
        resolve_source(str(roots[0] / "link"), settings)


def test_a_symlink_inside_an_archive_leading_out_is_refused(
    settings: ServerSettings, roots: list[Path], tmp_path: Path
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"secret")
    os.symlink(secret, roots[0] / "digits" / "weights.safetensors")
    with pytest.raises(SourceRefused, match=r"weights\.safetensors links outside"):
        resolve_source("digits", settings)


def test_a_symlink_within_the_roots_is_followed(
    settings: ServerSettings, roots: list[Path]
) -> None:
    os.symlink(roots[1] / "plain.onnx", roots[0] / "alias.onnx")
    assert resolve_source("alias.onnx", settings) == roots[1] / "plain.onnx"


def test_missing_and_non_model_sources(settings: ServerSettings, roots: list[Path]) -> None:
    with pytest.raises(ModelNotFound, match="not found under"):
        resolve_source("missing.mar", settings)
    (roots[0] / "notes.txt").write_text("hello")
    (roots[0] / "empty").mkdir()
    for url in ("notes.txt", "empty"):
        with pytest.raises(InvalidInput, match="is not a model"):
            resolve_source(url, settings)
    with pytest.raises(InvalidInput, match="url is required"):
        resolve_source("  ", settings)
