"""What autotune reports: one row per candidate, the run's result, and the budget rule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchferry.archive.store import Archive
from torchferry.errors import InvalidInput
from torchferry.optimize.measure import MeasureSettings

METRICS = ("top1", "agreement", "max-abs")


@dataclass
class CandidateRow:
    """One candidate's outcome: ``status`` is accepted, rejected, failed or skipped."""

    name: str
    description: str
    status: str = "pending"
    #: Why it was skipped, failed or rejected.
    reason: str = ""
    #: The source archive served as it is now (always measured, first).
    original: bool = False
    winner: bool = False
    runtime: str | None = None
    device: str = "cpu"
    #: Median and 90th percentile of batch-1 latency, over ``latency_runs`` runs.
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_runs: int = 0
    #: Rows per second at ``best_batch``, the best of ``throughput_by_batch``.
    throughput: float | None = None
    best_batch: int | None = None
    throughput_by_batch: dict[int, float] = field(default_factory=dict)
    #: Bytes of ``size_files``: the graph file(s) the runtime loads.
    size_bytes: int | None = None
    size_files: list[str] = field(default_factory=list)
    #: ``top1`` (with labels), ``agreement``, ``max-abs``.
    scores: dict[str, float] = field(default_factory=dict)
    build_seconds: float = 0.0
    measure_seconds: float = 0.0

    @property
    def measured(self) -> bool:
        return self.status in ("accepted", "rejected")


@dataclass
class AutotuneResult:
    source: Archive
    metric: str
    budget: float
    #: The original's value of the metric, which the budget counts from.
    baseline: float
    data_source: str
    data_sha256: str | None
    data_rows: int
    #: Rows of the data that static quantization calibrated on (the first ones).
    calibration_rows: int
    rows: list[CandidateRow]
    winner: CandidateRow | None
    #: The version written, or None when nothing was (original fastest, nothing accepted).
    archive: Archive | None
    report_path: Path | None
    #: One line saying what happened.
    summary: str
    machine: dict[str, str]
    #: Caveats about this run's numbers (e.g. a degenerate agreement).
    warnings: list[str]
    started: str
    seconds: float
    settings: MeasureSettings
    #: Instances per worker chosen for the winner (``batching.instances``), and the rows
    #: per second measured with each count (``optimize.instances``).
    instances: int = 1
    instances_rates: dict[int, float] = field(default_factory=dict)

    def row(self, name: str) -> CandidateRow:
        return next(r for r in self.rows if r.name == name)

    @property
    def original(self) -> CandidateRow:
        return next(r for r in self.rows if r.original)


def parse_budget(budget: float | str, metric: str) -> float:
    """``"1%"`` -> 0.01 (one accuracy point); a number is a fraction for top1/agreement and
    an absolute bound for max-abs, which takes no percentage."""
    text = str(budget).strip()
    try:
        if text.endswith("%"):
            if metric == "max-abs":
                raise InvalidInput(
                    f"budget {text!r}: max-abs takes an absolute bound such as 0.01, "
                    "not a percentage"
                )
            value = float(text[:-1]) / 100
        else:
            value = float(text)
    except ValueError:
        raise InvalidInput(f"budget {text!r} is not a number or a percentage") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(f"budget {text!r} must be a finite number >= 0")
    if metric != "max-abs" and value > 1:
        raise InvalidInput(f"budget {text!r}: an accuracy budget is at most 100% (1.0)")
    return value


def budget_text(metric: str, budget: float) -> str:
    if metric == "max-abs":
        return f"max-abs <= {budget:g}"
    points = budget * 100
    return f"{points:g} point{'' if points == 1 else 's'} below the original"


def judge(row: CandidateRow, metric: str, budget: float, baseline: float) -> None:
    """Accept or reject a measured row (a tiny tolerance absorbs float rounding)."""
    value = row.scores.get(metric)
    if value is None:
        row.status, row.reason = "failed", f"no {metric} for its outputs"
        return
    if metric == "max-abs":
        ok = value <= budget
        why = f"max-abs {value:.3g} exceeds the budget {budget:g}"
    else:
        ok = value >= baseline - budget - 1e-12
        why = (
            f"{metric} {value:.2%} is {(baseline - value) * 100:.2f} points below the "
            f"original's {baseline:.2%} (budget: {budget * 100:g} point{'' if budget == 0.01 else 's'})"
        )
    row.status, row.reason = ("accepted", "") if ok else ("rejected", why)


def metric_unavailable(metric: str, outputs: list[np.ndarray]) -> str:
    return (
        f"metric {metric} takes the argmax over dim 1 of the first output, which has shape "
        f"{list(outputs[0].shape)} (it needs class scores of shape rows x classes"
        + (", and one integer label per row" if metric == "top1" else "")
        + "); use max-abs"
    )


def caveats(metric: str, reference: list[np.ndarray]) -> list[str]:
    """Warnings about what the metric can tell on this data."""
    first = reference[0] if reference else None
    if metric != "agreement" or first is None or first.ndim < 2 or len(first) < 2:
        return []
    classes = np.unique(first.argmax(axis=1))
    if len(classes) > 1:
        return []
    return [
        f"the original predicts the same class ({int(classes[0])}) for every row of the data, "
        "so agreement can only be 100% or 0%: it says little here (see max-abs in the report)"
    ]
