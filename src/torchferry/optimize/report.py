"""The candidate table (for the terminal and the report) and the self-contained HTML report.

Both show the same formatted numbers, from :func:`cells`. The report has inline CSS and an
inline SVG plot of batch-1 latency against the metric; it loads nothing from anywhere.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from torchferry.optimize.outcome import budget_text
from torchferry.optimize.plot import Point, scatter_svg

if TYPE_CHECKING:
    from torchferry.optimize.outcome import AutotuneResult, CandidateRow

#: Column headings, in order; ``cells`` returns one string per column.
COLUMNS = (
    "candidate",
    "status",
    "runtime",
    "latency b1 (ms)",
    "rows/s",
    "at batch",
    "size (MB)",
    "{metric}",
    "Δ",
    "note",
)
STATUS_STYLE = {
    "accepted": "green",
    "rejected": "yellow",
    "failed": "bold red",
    "skipped": "dim",
}
#: The terminal shows this much of a note (an error message); the report shows all of it.
NOTE_CHARS = 300
COLORS = {"winner": "#1a7f37", "accepted": "#0969da", "rejected": "#cf222e"}


def significant(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits and no exponent (0.142, 12.3, 1234)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def metric_text(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    if metric == "max-abs":
        return f"{value:.2e}"
    return f"{value * 100:.2f}%"


def delta_text(metric: str, value: float | None, baseline: float) -> str:
    if value is None:
        return ""
    if metric == "max-abs":
        return ""
    return f"{(value - baseline) * 100:+.2f} pt"


def cells(row: CandidateRow, result: AutotuneResult) -> list[str]:
    """The row's table cells, formatted once for both the terminal and the report."""
    name = row.name + (" ★" if row.winner else "") + (" (original)" if row.original else "")
    value = row.scores.get(result.metric) if row.measured else None
    return [
        name,
        row.status,
        row.runtime or "",
        significant(row.latency_ms) if row.latency_ms is not None else "",
        f"{row.throughput:,.0f}" if row.throughput is not None else "",
        str(row.best_batch) if row.best_batch is not None else "",
        f"{row.size_bytes / 1e6:.3f}" if row.size_bytes is not None else "",
        metric_text(result.metric, value),
        delta_text(result.metric, value, result.baseline),
        row.reason,
    ]


def headings(result: AutotuneResult) -> list[str]:
    return [c.format(metric=result.metric) for c in COLUMNS]


def rich_table(result: AutotuneResult) -> Table:
    table = Table(
        title=Text(
            f"autotune {result.source.manifest.name} v{result.source.manifest.version}: "
            f"{result.metric} on {result.data_source} ({result.data_rows} rows), "
            f"budget {budget_text(result.metric, result.budget)}"
        ),
        title_justify="left",
    )
    for index, heading in enumerate(headings(result)):
        numeric = 3 <= index <= 8
        table.add_column(
            heading,
            justify="right" if numeric else "left",
            overflow="fold",
            max_width=60 if heading == "note" else None,
        )
    for row in result.rows:
        values = [Text(value) for value in cells(row, result)]  # never read as markup
        if len(values[-1]) > NOTE_CHARS:
            values[-1] = Text(values[-1].plain[: NOTE_CHARS - 30] + "... (all of it in the report)")
        values[1].stylize(STATUS_STYLE.get(row.status, ""))
        table.add_row(*values, style="bold" if row.winner else None)
    return table


def _points(result: AutotuneResult) -> list[Point]:
    points = []
    for row in result.rows:
        value = row.scores.get(result.metric)
        if not row.measured or row.latency_ms is None or value is None:
            continue
        kind = "winner" if row.winner else row.status
        y = value if result.metric == "max-abs" else value * 100
        points.append(Point(row.name, row.latency_ms, y, COLORS[kind], row.original, row.winner))
    return points


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#1f2328}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border-bottom:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.winner td{background:#dafbe1;font-weight:600}
.accepted{color:#1a7f37}.rejected{color:#9a6700}.failed{color:#cf222e;font-weight:600}
.skipped{color:#656d76}.warning{color:#9a6700;font-weight:600}.summary{font-size:1.1em;padding:.6em 1em;background:#f6f8fa;
border-left:4px solid #1a7f37}dl{display:grid;grid-template-columns:max-content auto;
gap:2px 1em}dt{font-weight:600}dd{margin:0}svg{max-width:100%;height:auto}
"""


def _table_html(result: AutotuneResult) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings(result))
    body = []
    for row in result.rows:
        tds = []
        for index, value in enumerate(cells(row, result)):
            css = "num" if 3 <= index <= 8 else (row.status if index == 1 else "")
            tds.append(f'<td class="{css}">{html.escape(value)}</td>')
        body.append(f'<tr class="{"winner" if row.winner else ""}">{"".join(tds)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _details_html(result: AutotuneResult) -> str:
    """Every score, the throughput at each batch size tried, and the time each step took."""
    head = (
        "<tr><th>candidate</th><th>top1</th><th>agreement</th><th>max-abs</th>"
        "<th>latency p90 (ms)</th><th>latency runs</th><th>rows/s by batch size</th>"
        "<th>files counted in size</th><th>build (s)</th><th>measure (s)</th></tr>"
    )
    body = []
    for row in result.rows:
        by_batch = ", ".join(f"{b}: {v:,.0f}" for b, v in sorted(row.throughput_by_batch.items()))
        values = [
            row.name,
            metric_text("top1", row.scores.get("top1")),
            metric_text("agreement", row.scores.get("agreement")),
            metric_text("max-abs", row.scores.get("max-abs")),
            significant(row.latency_p90_ms) if row.latency_p90_ms is not None else "",
            str(row.latency_runs) if row.latency_runs else "",
            by_batch,
            ", ".join(row.size_files),
            f"{row.build_seconds:.1f}",
            f"{row.measure_seconds:.1f}",
        ]
        body.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def instances_text(instances: int, rates: dict[int, float]) -> str:
    """The chosen instance count, and the rows per second measured with each count."""
    if not rates:
        return f"{instances} (not measured)"
    measured = ", ".join(f"{n}: {rate:,.0f} rows/s" for n, rate in sorted(rates.items()))
    return f"{instances} ({measured})"


def render_html(result: AutotuneResult, version: int | None) -> str:
    manifest = result.source.manifest
    settings = result.settings
    y_label = (
        "max abs difference to the original"
        if result.metric == "max-abs"
        else f"{result.metric} (%)"
    )
    if result.metric == "max-abs":
        budget_y = result.budget
    else:
        budget_y = (result.baseline - result.budget) * 100
    svg = scatter_svg(
        _points(result),
        x_label="latency at batch 1 (ms, median)",
        y_label=y_label,
        budget_y=budget_y,
        y_bounds=None if result.metric == "max-abs" else (0.0, 100.0),
    )
    written = (
        f"{manifest.name} version {version} ({result.winner.name})"
        if version is not None and result.winner is not None
        else "nothing"
    )
    facts = {
        "model": f"{manifest.name} version {manifest.version} ({manifest.runtime}, "
        f"{manifest.source})",
        "data": f"{result.data_source}: {result.data_rows} rows"
        + ", with labels" * ("top1" in result.original.scores)
        + (f" (SHA-256 {result.data_sha256})" if result.data_sha256 else ""),
        "metric": result.metric,
        "budget": budget_text(result.metric, result.budget),
        "original's " + result.metric: metric_text(result.metric, result.baseline),
        "written": written,
        "instances per worker": instances_text(result.instances, result.instances_rates),
        "date": result.started,
        "duration": f"{result.seconds:.1f} s",
        **result.machine,
    }
    facts_html = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts.items()
    )
    method = (
        f"Every candidate is a real archive, loaded through its runtime as "
        f"<code>torchferry serve</code> loads it, with {settings.threads} threads, on this "
        f"machine, in this run. <b>Latency</b>: median of batch-1 runs on the first row of the "
        f"data after {settings.warmup_runs} warm-up runs (about {settings.latency_seconds:g} s, "
        f"at least {settings.latency_min_runs} runs). <b>Throughput</b>: rows per second at "
        f"batch sizes 1, 2, 4, ... up to {settings.max_batch} and the model's max_batch_size "
        f"({manifest.batching.max_batch_size}), for {settings.throughput_seconds:g} s and at "
        f"least {settings.throughput_min_runs} runs each after two warm-up runs (batch 1: the "
        "latency runs), stopping after two sizes that do not improve or when the "
        f"search would pass {settings.search_seconds:g} s; the best size is shown. "
        "<b>Size</b>: the graph file(s) the runtime loads (not the weights copy or other "
        "files). <b>Accuracy</b>: top1 is the argmax over dim 1 of the first output against "
        "<code>labels</code>; agreement is the share of rows whose argmax matches the "
        "original's; max-abs is the largest absolute difference to the original's outputs. "
        f"Static quantization calibrates on the first {result.calibration_rows} rows of the "
        "data. Pruned models are not fine-tuned. <b>Winner</b>: the highest throughput among candidates within the "
        "budget; the original wins ties. <b>Instances</b>: the winner at its best batch size, "
        "with 1, 2 and 4 runtimes sharing the threads, each driven by a thread of its own; "
        "more instances are chosen only when they bring 5% more rows per second."
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>torchferry autotune: {html.escape(manifest.name)}</title>
<style>{_CSS}</style></head><body>
<h1>torchferry autotune: {html.escape(manifest.name)} version {manifest.version}</h1>
<p class="summary">{html.escape(result.summary)}</p>
{"".join(f'<p class="warning">warning: {html.escape(w)}</p>' for w in result.warnings)}
<h2>Latency and {html.escape(result.metric)}</h2>
{svg}
<h2>Candidates</h2>
{_table_html(result)}
<h2>Details</h2>
{_details_html(result)}
<h2>Run</h2>
<dl>{facts_html}</dl>
<h2>Method</h2>
<p>{method}</p>
</body></html>
"""
