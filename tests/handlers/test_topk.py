from __future__ import annotations

import numpy as np
import pytest

from torchferry.errors import ArchiveError
from torchferry.handlers.topk import TopK, parse_labels, softmax


def test_softmax_rows_sum_to_one_and_survive_large_logits():
    out = softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.5, 0.5], [0.25, 0.75]], rtol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    "value",
    [
        ["cat", "dog", "eel"],
        {"0": "cat", "1": "dog", "2": "eel"},
        {"0": ["n01", "cat"], "1": ["n02", "dog"], "2": ["n03", "eel"]},
    ],
)
def test_parse_labels_formats(value):
    assert parse_labels(value) == ["cat", "dog", "eel"]


def test_parse_labels_gaps_are_none():
    assert parse_labels({"2": "eel"}) == [None, None, "eel"]


@pytest.mark.parametrize("value", ["cat", {"x": "cat"}, {"0": {"a": 1}}, {"-1": "cat"}])
def test_parse_labels_rejects(value):
    with pytest.raises(ArchiveError):
        parse_labels(value)


def test_top_k_orders_scores_and_breaks_ties_by_class():
    top = TopK(k=3, labels=["a", "b"])
    scores = np.array([[0.1, 0.5, 0.2, 0.5], [4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    rows = top(scores)
    assert [[c["class"] for c in row] for row in rows] == [[1, 3, 2], [0, 1, 2]]
    assert rows[0][0] == {"class": 1, "label": "b", "score": pytest.approx(0.5)}
    assert rows[0][1]["label"] is None  # class 3 has no label
    assert all(isinstance(c["score"], float) for c in rows[1])


def test_top_k_larger_than_classes_and_softmax():
    rows = TopK(k=10, apply_softmax=True)(np.array([[0.0, np.log(3.0)]]))
    assert [c["class"] for c in rows[0]] == [1, 0]
    assert [c["score"] for c in rows[0]] == pytest.approx([0.75, 0.25])
