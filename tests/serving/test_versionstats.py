"""Per-version live figures and the shadow comparison, on their own."""

from __future__ import annotations

import numpy as np
import pytest

from torchferry.serving.shadow import compare
from torchferry.serving.versionstats import RESERVOIR, VersionStats, server_error


def test_only_server_side_statuses_are_errors():
    assert [server_error(s) for s in ("500", "503", "504", "200", "400", "404", "413")] == [
        True, True, True, False, False, False, False,
    ]  # fmt: skip
    for code in ("INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"):
        assert server_error(code)
    for code in ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED"):
        assert not server_error(code)


def test_the_latency_sample_is_bounded_and_drained():
    stats = VersionStats()
    for i in range(RESERVOIR * 3):
        stats.finished("200", i / 1000)
    stats.finished("503", 0.001)
    report = stats.report(drain=True)
    assert report["requests"] == RESERVOIR * 3 + 1 and report["errors"] == 1
    sample = report["latencies_ms"]
    assert len(sample) == RESERVOIR
    assert max(sample) > RESERVOIR * 1.5  # later requests made it into the sample
    assert stats.report(drain=True)["latencies_ms"] == []


def test_comparison_is_argmax_per_row_and_the_largest_difference():
    primary = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.4]], np.float32)
    shadow = np.array([[0.2, 0.8], [0.1, 0.9], [0.6, 0.3]], np.float32)
    rows, agreed, diff = compare(primary, shadow)
    assert (rows, agreed) == (3, 2)
    assert diff == pytest.approx(0.7, abs=1e-6)  # row 2: |0.1 - 0.8|, in float64
    assert compare(primary, primary) == (3, 3, 0.0)
    assert compare(primary, shadow[:2]) == (3, 0, None)  # shapes differ: nothing agrees
    words = np.array([b"a", b"b"], dtype=object)
    assert compare(words, np.array([b"a", b"c"], dtype=object)) == (2, 1, None)
