"""Train, export and query the demo model ``digits`` (:class:`~torchferry.zoo.digits.DigitsCNN`)."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchferry.archive.store import Archive, ModelStore

if TYPE_CHECKING:
    from torch import nn

DEMO_MODEL = "digits"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
LABELS_FILE = "labels.json"
REQUEST_FILE = "request.json"
DEFAULT_URL = "http://127.0.0.1:8080"


def _test_rows(count: int, start: int = 0) -> tuple[list[list[int]], list[int]]:
    """``count`` held-out digits as integer pixel rows (0..16), and their true labels."""
    from torchferry.zoo.digits import digits_split

    _, x_test, _, y_test = digits_split()
    rows = x_test[start : start + count]
    return rows.astype(int).tolist(), y_test[start : start + count].tolist()


def sample_request(count: int = 1, start: int = 0) -> tuple[dict[str, Any], list[int]]:
    """A ``/predict`` body ``{"data": [[...64 pixels...], ...]}`` of real test digits, and
    the digits' true labels."""
    rows, labels = _test_rows(count, start)
    return {"data": rows}, labels


def export_digits(model: nn.Module, store: Path, *, format: str = "both") -> Archive:
    """Export a trained :class:`DigitsCNN` into ``store`` as the demo's ``digits`` model: its
    input and output names, labels and top-3 handler, and its factory (for optimization)."""
    import torch

    from torchferry.export import export
    from torchferry.zoo.digits import digits_split

    _, x_test, _, _ = digits_split()
    labels = json.dumps([str(digit) for digit in range(10)]).encode()
    return export(
        model,
        torch.from_numpy(x_test[:8]),
        name=DEMO_MODEL,
        store=store,
        format=format,  # type: ignore[arg-type]
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        handler="tensor",
        handler_config={"top_k": 3, "labels": LABELS_FILE},
        extra_files={LABELS_FILE: labels},
        factory="torchferry.zoo.digits:DigitsCNN",
    )


def write_test_data(path: Path) -> Path:
    """The held-out digits as ``torchferry optimize`` data: ``pixels`` and ``labels``."""
    import numpy as np

    from torchferry.zoo.digits import digits_split

    _, x_test, _, y_test = digits_split()
    arrays: dict[str, Any] = {INPUT_NAME: x_test, "labels": y_test}
    np.savez(path, **arrays)
    return path


def build_demo(
    store: Path,
    *,
    force: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Archive:
    """Train :class:`DigitsCNN`, export it into ``store`` as ``digits``, write a sample request.

    Where the store already holds a ``digits`` version, that version is returned untouched
    unless ``force`` (which exports a new version).
    """
    model_store = ModelStore(store)
    versions = model_store.versions(DEMO_MODEL)
    if versions and not force:
        log(
            f"{store}/{DEMO_MODEL} already has version {max(versions)}; "
            "skipping (--force exports a new version)"
        )
        return model_store.open(DEMO_MODEL)

    from torchferry.zoo.digits import train_digits

    started = time.perf_counter()
    model, accuracy = train_digits(seed=seed)
    log(f"trained DigitsCNN: test accuracy {accuracy:.2%} ({time.perf_counter() - started:.1f} s)")
    archive = export_digits(model, store)
    manifest = archive.manifest
    log(f"exported {manifest.name} version {manifest.version} to {archive.path}")
    worst: dict[str, float] = {}
    for report in manifest.parity:
        worst[report.format] = max(worst.get(report.format, 0.0), report.max_abs_error)
    log(
        "parity with eager PyTorch, max abs error: "
        + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    )
    body, truth = sample_request(count=4)
    request_path = store / DEMO_MODEL / REQUEST_FILE
    request_path.write_text(json.dumps(body) + "\n", encoding="utf-8")
    log(f"wrote a sample request of 4 test digits (labels {truth}) to {request_path}")
    return archive


def curl_command(url: str = DEFAULT_URL, index: int = 0) -> tuple[str, int]:
    """A curl line that posts one real test digit to ``/predict/digits``, and its true label."""
    body, labels = sample_request(count=1, start=index)
    payload = json.dumps(body, separators=(", ", ": "))
    endpoint = f"{url.rstrip('/')}/predict/{DEMO_MODEL}"
    line = (
        f"curl -s {shlex.quote(endpoint)} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(payload)}"
    )
    return line, labels[0]
