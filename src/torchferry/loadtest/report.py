"""A bench run's outputs: the terminal table, the JSON file and the self-contained HTML report.

The table and the report show the same formatted cells, from :func:`cells`.
"""

from __future__ import annotations

import html
import math
import platform
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from torchferry.cores import cpu_name, default_threads
from torchferry.loadtest.calibrate import LIMITED_SHARE
from torchferry.loadtest.plot import Series, latency_svg
from torchferry.loadtest.run import BenchRun, Step, as_dict
from torchferry.optimize.report import significant

COLUMNS = (
    "conc.",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "errors",
    "gen. max req/s",
    "served /raw",
    "mean batch",
)
#: Marks a generator-limited step's ceiling.
LIMITED_MARK = " *"


def machine() -> dict[str, str]:
    """What the figures were measured on (no engine import: the plain path needs none)."""
    facts = {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": f"{cpu_name()}, {default_threads()} cores available",
        "python": platform.python_version(),
    }
    for module in ("torch", "onnxruntime"):  # versions of the engines --raw loaded
        if module in sys.modules:
            facts[module] = str(getattr(sys.modules[module], "__version__", "?"))
    return facts


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else significant(value)


def _errors(step: Step) -> str:
    if not step.errors:
        return "0"
    return ", ".join(f"{kind}: {count}" for kind, count in step.errors.items())


def _batches(step: Step) -> str:
    if step.batches is None:
        return ""
    if not step.batches:
        return "none"
    runs = sum(step.batches.values())
    rows = sum(size * count for size, count in step.batches.items())
    return f"{rows / runs:.1f}"


def cells(step: Step) -> list[str]:
    ceiling = _number(step.ceiling)
    if step.generator_limited:
        ceiling += LIMITED_MARK
    ratio = "" if step.ratio is None else f"{step.ratio:.2f}"
    return [
        str(step.concurrency),
        _number(step.throughput),
        _number(step.p50_ms),
        _number(step.p90_ms),
        _number(step.p99_ms),
        _errors(step),
        ceiling,
        ratio,
        _batches(step),
    ]


def _title(run: BenchRun) -> str:
    version = f" version {run.target.version}" if run.target.version else ""
    return f"{run.target.model}{version} over {run.settings.protocol} at {run.target.url}"


def rich_table(run: BenchRun) -> Table:
    table = Table(title=_title(run), caption=_caption(run))
    for index, heading in enumerate(COLUMNS):
        table.add_column(heading, justify="left" if index == 5 else "right")
    for step in run.steps:
        style = "yellow" if step.generator_limited else ("red" if step.errors else None)
        table.add_row(*cells(step), style=style)
    return table


def _caption(run: BenchRun) -> str:
    settings = run.settings
    parts = [
        f"{settings.seconds:g} s per step after {settings.warmup_s:g} s warm-up, "
        f"{settings.processes} generator process(es); payload {run.payload.describe()}"
    ]
    if any(step.generator_limited for step in run.steps):
        parts.append(
            f"generator-limited{LIMITED_MARK}: the rate reached {LIMITED_SHARE:.0%} or more "
            "of what the generator makes against a trivial endpoint, so the server may be "
            "faster than measured"
        )
    parts.extend(run.notes)
    return "\n".join(parts)


def write_document(figures: dict[str, Any], path: Path, command: list[str]) -> None:
    """A run's figures as JSON, with the command and the machine."""
    document: dict[str, Any] = {"command": command, "machine": machine(), **figures}
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


def write_json(run: BenchRun, path: Path, command: list[str]) -> None:
    write_document(as_dict(run), path, command)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 900px; color: #1f2328; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; font-size: 13px; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.limited td { background: #fff8c5; }
p.note { color: #9a6700; }
dt { font-weight: 600; float: left; clear: left; width: 8em; }
dd { margin-left: 9em; }
"""


def _table_html(run: BenchRun) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    rows = []
    for step in run.steps:
        tds = "".join(
            f'<td class="{"" if i == 5 else "num"}">{html.escape(v)}</td>'
            for i, v in enumerate(cells(step))
        )
        css = ' class="limited"' if step.generator_limited else ""
        rows.append(f"<tr{css}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(run: BenchRun, command: list[str]) -> str:
    def points(attribute: str) -> list[tuple[float, float, str]]:
        return [
            (step.throughput, getattr(step, attribute), f"c={step.concurrency}")
            for step in run.steps
            if step.ok and step.throughput > 0
        ]

    svg = latency_svg(
        [Series("p50", "#0969da", points("p50_ms")), Series("p99", "#cf222e", points("p99_ms"))],
        x_label="throughput (requests/s)",
        y_label="latency (ms)",
    )
    raw = "".join(
        f"<tr><td class='num'>{size}</td><td class='num'>{significant(rate)}</td></tr>"
        for size, rate in run.raw_rates.items()
    )
    raw_html = (
        "<h2>Raw, in-process</h2><table><thead><tr><th>batch</th><th>rows/s</th></tr></thead>"
        f"<tbody>{raw}</tbody></table>"
        if raw
        else ""
    )
    facts = {"command": " ".join(command), **machine()}
    facts_html = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts.items()
    )
    notes = "".join(
        f'<p class="note">{html.escape(line)}</p>' for line in _caption(run).splitlines()[1:]
    )
    method = (
        "Each step keeps <i>concurrency</i> requests in flight (closed loop) for the step's "
        "duration after a warm-up, from pre-encoded requests over keep-alive connections. "
        "Latency percentiles are of successful requests. Before each step the same generator "
        "drives a trivial endpoint in its own process with the same request and concurrency: "
        f"a step at {LIMITED_SHARE:.0%} or more of that ceiling is marked generator-limited. "
        "served/raw is the served rows per second over what the archive reaches in this "
        "process on the batch sizes the server ran in that step (from the V2 statistics "
        "extension), including the handler for /predict and TorchServe."
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>torchferry bench: {html.escape(run.target.model)}</title>
<style>{_CSS}</style></head><body>
<h1>torchferry bench: {html.escape(_title(run))}</h1>
<p>{html.escape(_caption(run).splitlines()[0])}</p>
{notes}
<h2>Latency against throughput</h2>
{svg}
<h2>Steps</h2>
{_table_html(run)}
{raw_html}
<h2>Run</h2>
<dl>{facts_html}</dl>
<h2>Method</h2>
<p>{method}</p>
</body></html>
"""


def write_html(run: BenchRun, path: Path, command: list[str]) -> None:
    path.write_text(render_html(run, command), encoding="utf-8")
