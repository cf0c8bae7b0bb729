"""Latency against throughput as inline SVG: one line per percentile, a point per step.

The axes and frame are ``optimize.plot``'s (round ticks, log scale past a 10x span).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from torchferry.optimize.plot import BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH, Axis, axes_svg


@dataclass(frozen=True)
class Series:
    label: str
    color: str
    #: (throughput req/s, latency ms, point label) per step, in step order.
    points: list[tuple[float, float, str]]


def latency_svg(series: list[Series], *, x_label: str, y_label: str) -> str:
    drawn = [s for s in series if s.points]
    if not drawn:
        return "<p>No step completed a request, so there is nothing to plot.</p>"
    xs = [x for s in drawn for x, _, _ in s.points]
    ys = [y for s in drawn for _, y, _ in s.points]
    x = Axis(xs, LEFT, WIDTH - RIGHT, log=True)
    y = Axis(ys, HEIGHT - BOTTOM, TOP + 10, log=True)
    parts = axes_svg(x, y, x_label=x_label, y_label=y_label)
    legend_x = LEFT + 10
    for line in drawn:
        coords = [(x(px), y(py), label) for px, py, label in line.points]
        path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy, _ in coords)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{line.color}" stroke-width="2"/>'
        )
        for (cx, cy, label), (px, py, _) in zip(coords, line.points, strict=True):
            title = f"{line.label} {label}: {px:.4g} req/s, {py:.4g} ms"
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{line.color}">'
                f"<title>{html.escape(title)}</title></circle>"
                f'<text x="{cx + 6:.1f}" y="{cy - 6:.1f}">{html.escape(label)}</text>'
            )
        parts.append(
            f'<line x1="{legend_x}" y1="12" x2="{legend_x + 18}" y2="12" stroke="{line.color}" '
            f'stroke-width="2"/><text x="{legend_x + 22}" y="16">{html.escape(line.label)}</text>'
        )
        legend_x += 40 + 7 * len(line.label)
    parts.append("</svg>")
    return "\n".join(parts)
