"""``torchferry inspect DIR/NAME[/VERSION]``: show an archive's manifest and verify its files."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from torchferry.archive.integrity import verify_archive
from torchferry.archive.manifest import MANIFEST_NAME, Manifest, ParityReport
from torchferry.archive.signing import SIGNATURE_NAME, is_signed
from torchferry.archive.store import ModelStore
from torchferry.errors import ArchiveError, ModelNotFound
from torchferry.signature import TensorSpec


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show a model archive's manifest and check its hashes",
        description=(
            "Show the manifest of STORE/NAME/VERSION (or of the latest version of STORE/NAME) "
            "and verify every file against its SHA-256. Exits 1 if a file does not match."
        ),
    )
    parser.add_argument("path", type=Path, metavar="DIR/NAME[/VERSION]")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.set_defaults(func=run)


def parity_table(reports: Sequence[ParityReport]) -> Table:
    references = sorted({report.reference for report in reports}) or ["the source model"]
    table = Table(title=f"parity with {' and '.join(references)}", title_justify="left")
    table.add_column("form")
    table.add_column("batch", justify="right")
    table.add_column("max abs err", justify="right")
    table.add_column("max rel err", justify="right")
    for report in reports:
        table.add_row(
            report.format,
            str(report.batch_size),
            f"{report.max_abs_error:.3g}",
            f"{report.max_rel_error:.3g}",
        )
    return table


def tensors_table(title: str, specs: Sequence[TensorSpec]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("name", overflow="fold")
    table.add_column("datatype")
    table.add_column("shape")
    for spec in specs:
        table.add_row(spec.name, spec.datatype, str(list(spec.shape)))
    return table


def _model_table(manifest: Manifest, signed: bool) -> Table:
    table = Table(title="model", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = {
        "name": manifest.name,
        "version": str(manifest.version),
        "runtime": manifest.runtime,
        "graphs": ", ".join(f"{k}: {v}" for k, v in manifest.graphs.items()),
        "handler": manifest.handler.name
        + (f" {json.dumps(manifest.handler.config)}" if manifest.handler.config else ""),
        "batching": f"max_batch_size {manifest.batching.max_batch_size}, "
        f"max_delay_ms {manifest.batching.max_delay_ms:g}",
        "source": manifest.source,
        "created": manifest.created,
        "frameworks": ", ".join(f"{k} {v}" for k, v in manifest.framework_versions.items()),
        "signed": f"yes ({SIGNATURE_NAME}; check it with torchferry verify)" if signed else "no",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def _files_table(manifest: Manifest) -> Table:
    table = Table(title="files", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("sha256")
    table.add_column("size", justify="right")
    for name, entry in manifest.files.items():
        table.add_row(name, entry.sha256[:16], f"{entry.size:,}")
    return table


def resolve(path: Path) -> tuple[Path, list[int]]:
    """The archive directory to show, and the model's other versions (when given DIR/NAME)."""
    if (path / MANIFEST_NAME).is_file():
        return path, []
    store = ModelStore(path.parent)
    versions = store.versions(path.name)
    if not versions:
        if not path.exists():
            raise ModelNotFound(f"{path} does not exist")
        raise ArchiveError(
            f"{path} is neither an archive (no {MANIFEST_NAME}) nor a model directory "
            "holding version directories"
        )
    latest = max(versions)
    return store.path(path.name, latest), [v for v in versions if v != latest]


def run(args: argparse.Namespace) -> int:
    console = Console()
    directory, others = resolve(args.path)
    manifest = Manifest.read(directory)
    try:
        verify_archive(directory, manifest)
        problem = None
    except ArchiveError as exc:
        problem = exc.message
    if args.json:
        console.print_json(manifest.to_json())
    else:
        console.print(f"[bold]{directory}[/]")
        console.print(_model_table(manifest, is_signed(directory)))
        console.print(tensors_table("inputs", manifest.signature.inputs))
        console.print(tensors_table("outputs", manifest.signature.outputs))
        console.print(_files_table(manifest))
        if manifest.parity:
            console.print(parity_table(manifest.parity))
        if others:
            console.print(f"other versions of {manifest.name}: {', '.join(map(str, others))}")
    if problem is None:
        console.print(
            f"[green]integrity: OK[/], all {len(manifest.files)} files match their SHA-256"
        )
        return 0
    console.print(f"[bold red]integrity: FAILED[/]: {problem}")
    return 1
