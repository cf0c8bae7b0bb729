"""The console's ``metrics`` answer for one model: the server's own Prometheus samples (the
workers' multiprocess files, summed as for ``/metrics``) regrouped per version.

Every figure is cumulative since the server started; the page takes the difference between
two readings for rates and quantiles. Histograms are Prometheus' cumulative ``le`` buckets,
``+Inf`` last. Pure: samples in, JSON out."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.core import Metric

from torchferry.serving.metrics import BATCH_BUCKETS, QUEUE_BUCKETS, REQUEST_BUCKETS

#: Triton's per-version counters (and the pending gauge) -> the answer's names.
COUNTERS = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_count": "rows",
    "nv_inference_exec_count": "executions",
    "nv_inference_pending_request_count": "pending",
}
#: Histogram families -> the answer's names, with the bounds each is made with.
HISTOGRAMS: dict[str, tuple[str, Sequence[float]]] = {
    "torchferry_inference_duration_seconds": ("latency", REQUEST_BUCKETS),
    "torchferry_queue_duration_seconds": ("queue", QUEUE_BUCKETS),
    "torchferry_batch_size": ("batch", BATCH_BUCKETS),
}
SHADOW = {
    "torchferry_shadow_rows": "rows",
    "torchferry_shadow_agreed_rows": "agreed",
    "torchferry_shadow_max_abs_diff": "max_abs_diff",
}
INF = "+Inf"


class _Histogram:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.buckets: dict[float, float] = {float(b): 0.0 for b in bounds}
        self.buckets[math.inf] = 0.0
        self.sum = 0.0

    def as_json(self) -> dict[str, Any]:
        bounds = sorted(self.buckets)
        return {
            "bounds": [INF if math.isinf(b) else _number(b) for b in bounds],
            "counts": [_number(self.buckets[b]) for b in bounds],
            "sum": self.sum,
        }


class _Version:
    def __init__(self) -> None:
        self.counters: dict[str, float] = dict.fromkeys(COUNTERS.values(), 0.0)
        self.histograms = {name: _Histogram(bounds) for name, bounds in HISTOGRAMS.values()}
        self.shadow: dict[str, float | None] = {"rows": 0.0, "agreed": 0.0, "max_abs_diff": None}

    def as_json(self) -> dict[str, Any]:
        shadow = self.shadow
        return {
            **{name: _number(value) for name, value in self.counters.items()},
            **{name: h.as_json() for name, h in self.histograms.items()},
            "shadow": {
                "rows": _number(shadow["rows"] or 0.0),
                "agreed": _number(shadow["agreed"] or 0.0),
                "max_abs_diff": shadow["max_abs_diff"],
            },
        }


def _number(value: float) -> int | float:
    """Whole numbers (counts, batch sizes) as integers: Prometheus keeps every value as a
    float."""
    return int(value) if value.is_integer() else value


def version_figures(metrics: Iterable[Metric], model: str) -> dict[str, dict[str, Any]]:
    """Each version of ``model`` seen in ``metrics``: version -> its figures."""
    versions: dict[str, _Version] = {}
    for metric in metrics:
        family = metric.name
        if family not in COUNTERS and family not in HISTOGRAMS and family not in SHADOW:
            continue
        for sample in metric.samples:
            labels = sample.labels
            if labels.get("model") != model or "version" not in labels:
                continue
            if sample.name.endswith("_created"):
                continue
            figures = versions.setdefault(labels["version"], _Version())
            if family in COUNTERS:
                figures.counters[COUNTERS[family]] += sample.value
            elif family in SHADOW:
                _add_shadow(figures, SHADOW[family], sample.value)
            else:
                _add_histogram(
                    figures.histograms[HISTOGRAMS[family][0]], sample.name, labels, sample.value
                )
    return {
        version: figures.as_json()
        for version, figures in sorted(versions.items(), key=lambda item: _order(item[0]))
    }


def _add_shadow(figures: _Version, name: str, value: float) -> None:
    if name == "max_abs_diff":
        current = figures.shadow[name]
        figures.shadow[name] = value if current is None else max(current, value)
    else:
        figures.shadow[name] = (figures.shadow[name] or 0.0) + value


def _add_histogram(
    histogram: _Histogram, sample: str, labels: dict[str, str], value: float
) -> None:
    if sample.endswith("_bucket") and "le" in labels:
        bound = float(labels["le"])  # "+Inf" reads as inf
        histogram.buckets[bound] = histogram.buckets.get(bound, 0.0) + value
    elif sample.endswith("_sum"):
        histogram.sum += value


def _order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
