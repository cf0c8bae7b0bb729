"""Top-k classes per row, with optional softmax and labels read from a file in the archive.

Shared by the handlers that answer classification models (``tensor`` with ``top_k`` set, and
``image``). Labels may be a JSON list of names, or TorchServe's ``index_to_name.json``
(``{"0": ["n01440764", "tench"], ...}`` or ``{"0": "tench", ...}``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from torchferry.errors import ArchiveError


def softmax(scores: np.ndarray) -> np.ndarray:
    """Numerically stable softmax along the last axis, in float32 or wider."""
    x = scores.astype(np.promote_types(scores.dtype, np.float32), copy=False)
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def parse_labels(value: Any, source: str = "labels") -> list[str | None]:
    """Class index -> name from a decoded labels JSON value (list or index-keyed object)."""
    if isinstance(value, list):
        return [None if name is None else str(name) for name in value]
    if not isinstance(value, dict):
        raise ArchiveError(f"{source}: expected a JSON list of names or an object index -> name")
    by_index: dict[int, str] = {}
    for key, entry in value.items():
        try:
            index = int(key)
        except ValueError:
            raise ArchiveError(f"{source}: key {key!r} is not a class index") from None
        if index < 0:
            raise ArchiveError(f"{source}: class index {index} is negative")
        if isinstance(entry, list) and entry:
            # TorchServe's index_to_name.json: [synset id, human-readable name]
            by_index[index] = str(entry[-1])
        elif isinstance(entry, str | int | float):
            by_index[index] = str(entry)
        else:
            raise ArchiveError(f"{source}: entry {key!r} is neither a name nor [id, name]")
    labels: list[str | None] = [None] * (max(by_index, default=-1) + 1)
    for index, name in by_index.items():
        labels[index] = name
    return labels


def read_labels(files: Mapping[str, Path], name: str) -> list[str | None]:
    """Read and parse the labels file ``name`` among the archive's ``files``."""
    path = files.get(name)
    if path is None:
        raise ArchiveError(f"labels file {name!r} is not in the archive")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchiveError(f"labels file {name!r} is not in the archive") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{path}: labels file is not valid JSON: {exc}") from None
    return parse_labels(value, source=str(path))


@dataclass(frozen=True)
class TopK:
    """Answers each row of a score matrix with its ``k`` best ``{class, label, score}``."""

    k: int
    labels: list[str | None] | None = None
    apply_softmax: bool = False

    @classmethod
    def from_config(
        cls, files: Mapping[str, Path], config: Mapping[str, Any], *, k: int, apply_softmax: bool
    ) -> TopK:
        """Build from a handler config's ``top_k``, ``labels`` and ``softmax`` keys, reading the
        labels file among ``files`` (``HandlerContext.files``).

        ``k`` and ``apply_softmax`` are the defaults where the config does not set them.
        """
        k = config.get("top_k", k)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ArchiveError(f"handler config top_k must be a positive integer, got {k!r}")
        labels_file = config.get("labels")
        labels = read_labels(files, str(labels_file)) if labels_file else None
        return cls(k=k, labels=labels, apply_softmax=bool(config.get("softmax", apply_softmax)))

    def label(self, index: int) -> str | None:
        if self.labels is None or index >= len(self.labels):
            return None
        return self.labels[index]

    def __call__(self, scores: np.ndarray) -> list[list[dict[str, Any]]]:
        rows = scores.shape[0] if scores.ndim else 1
        matrix = scores.reshape(rows, -1)
        if self.apply_softmax:
            matrix = softmax(matrix)
        k = min(self.k, matrix.shape[1])
        if k < matrix.shape[1]:
            # sorted by index first, so that ties come out lowest class first
            best = np.sort(np.argpartition(-matrix, k - 1, axis=1)[:, :k], axis=1)
        else:
            best = np.broadcast_to(np.arange(k), (rows, k))
        best_scores = np.take_along_axis(matrix, best, axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")
        best = np.take_along_axis(best, order, axis=1).tolist()
        best_scores = np.take_along_axis(best_scores, order, axis=1).tolist()
        return [
            [
                {"class": index, "label": self.label(index), "score": score}
                for index, score in zip(row_index, row_score, strict=True)
            ]
            for row_index, row_score in zip(best, best_scores, strict=True)
        ]


def label_scores(classes: list[dict[str, Any]]) -> dict[str, float]:
    """One top-k row as TorchServe's classifiers answer it: ``{label: score}`` in descending
    order; an unlabelled class is its index as a string, a repeated label keeps its best score."""
    scores: dict[str, float] = {}
    for entry in classes:
        label = entry["label"]
        scores.setdefault(str(entry["class"]) if label is None else label, entry["score"])
    return scores
