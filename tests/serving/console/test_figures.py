"""The console's per-version figures, from real Prometheus metric families: a registry of
the server's own metric names, and the serving process's recorder itself."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from torchferry.serving.console.figures import version_figures
from torchferry.serving.metrics import BATCH_BUCKETS, REQUEST_BUCKETS, Recorder
from torchferry.serving.observe import RequestRecord

LABELS = ("model", "version")


@pytest.fixture
def registry() -> CollectorRegistry:
    """Two versions of ``digits`` and one of ``other``, with known figures."""
    registry = CollectorRegistry()

    def counter(name: str) -> Counter:
        return Counter(name, name, LABELS, registry=registry)

    success = counter("nv_inference_request_success")
    failure = counter("nv_inference_request_failure")
    rows = counter("nv_inference_count")
    executions = counter("nv_inference_exec_count")
    pending = Gauge("nv_inference_pending_request_count", "p", LABELS, registry=registry)
    latency = Histogram(
        "torchferry_inference_duration_seconds", "l", LABELS, buckets=REQUEST_BUCKETS,
        registry=registry,
    )  # fmt: skip
    batch = Histogram(
        "torchferry_batch_size", "b", LABELS, buckets=BATCH_BUCKETS, registry=registry
    )
    shadow_rows = counter("torchferry_shadow_rows")
    agreed = counter("torchferry_shadow_agreed_rows")
    diff = Gauge("torchferry_shadow_max_abs_diff", "d", LABELS, registry=registry)
    success.labels("digits", "1").inc(3)
    failure.labels("digits", "1").inc(1)
    rows.labels("digits", "1").inc(7)
    executions.labels("digits", "1").inc(2)
    pending.labels("digits", "1").set(4)
    for seconds in (0.0004, 0.003, 0.003):
        latency.labels("digits", "1").observe(seconds)
    batch.labels("digits", "1").observe(3)
    batch.labels("digits", "1").observe(4)
    success.labels("digits", "2").inc(1)
    shadow_rows.labels("digits", "2").inc(10)
    agreed.labels("digits", "2").inc(9)
    diff.labels("digits", "2").set(0.25)
    success.labels("other", "1").inc(50)
    return registry


def test_counters_and_histograms_per_version(registry):
    versions = version_figures(registry.collect(), "digits")
    assert list(versions) == ["1", "2"]
    one = versions["1"]
    assert {k: one[k] for k in ("success", "failure", "rows", "executions", "pending")} == {
        "success": 3, "failure": 1, "rows": 7, "executions": 2, "pending": 4,
    }  # fmt: skip
    latency = one["latency"]
    assert latency["bounds"] == [*REQUEST_BUCKETS, "+Inf"]
    # cumulative: 0.0005 holds one, 0.005 and every bound above hold all three
    assert latency["counts"][:5] == [1, 1, 1, 3, 3]
    assert latency["counts"][-1] == 3
    assert latency["sum"] == pytest.approx(0.0064)
    assert one["batch"]["bounds"] == [*BATCH_BUCKETS, "+Inf"]
    assert one["batch"]["counts"][:3] == [0, 0, 2]
    assert one["batch"]["sum"] == 7
    # no queue samples: the bounds with zeros
    assert set(one["queue"]["counts"]) == {0}
    assert one["queue"]["bounds"][-1] == "+Inf"
    assert one["shadow"] == {"rows": 0, "agreed": 0, "max_abs_diff": None}
    assert versions["2"]["shadow"] == {"rows": 10, "agreed": 9, "max_abs_diff": 0.25}
    assert version_figures(registry.collect(), "other")["1"]["success"] == 50
    assert version_figures(registry.collect(), "nothing") == {}


def test_the_recorder_writes_the_per_version_latency_histogram():
    """A successful request's duration lands in ``torchferry_inference_duration_seconds``
    of its version; a failed one counts only as a failure."""
    recorder = Recorder()
    started = time.perf_counter()

    def record(success: bool, seconds: float) -> RequestRecord:
        return RequestRecord(
            request_id="r", protocol="v2", route="/v2/models/{model_name}/infer",
            started=started, wall_ns=0, model="figures_test", version="3",
            status="200" if success else "400", success=success, rows=1,
            ended=started + seconds,
        )  # fmt: skip

    before = version_figures(REGISTRY.collect(), "figures_test").get("3")
    assert before is None
    recorder.observe(record(True, 0.002))
    recorder.observe(record(True, 0.2))
    recorder.observe(record(False, 0.001))
    recorder.flush()
    figures = version_figures(REGISTRY.collect(), "figures_test")["3"]
    assert (figures["success"], figures["failure"]) == (2, 1)
    latency = figures["latency"]
    assert latency["counts"][-1] == 2
    assert latency["counts"][latency["bounds"].index(0.0025)] == 1
    assert latency["sum"] == pytest.approx(0.202)
