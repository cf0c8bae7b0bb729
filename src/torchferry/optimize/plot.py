"""A labelled scatter plot as inline SVG (no plotting library): latency against accuracy."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 820, 460
LEFT, RIGHT, TOP, BOTTOM = 70, 30, 34, 56
CHAR_WIDTH = 6.6  # px per character of the 11px labels, roughly
LABEL_HEIGHT = 12


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    color: str
    ring: bool = False  # drawn with a black ring (the original)
    winner: bool = False  # drawn larger and on top, labelled first and in bold


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values covering ``[low, high]``."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(low / step), math.ceil(high / step)
    return [round(i * step, 12) for i in range(first, last + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if low / 1.0001 <= value <= high * 1.0001:
                ticks.append(value)
    return ticks


def format_tick(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.0e}"


class Axis:
    def __init__(
        self,
        values: list[float],
        start: float,
        end: float,
        log: bool,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        low, high = min(values), max(values)
        self.log = log and low > 0 and high / low > 10
        if self.log:
            self.low, self.high = low / 1.3, high * 1.3
            self.ticks = log_ticks(self.low, self.high)
        else:
            pad = (high - low) * 0.08 or (abs(high) * 0.05 or 1.0)
            self.ticks = nice_ticks(low - pad, high + pad)
            if bounds is not None:  # e.g. a percentage never leaves 0..100
                kept = [t for t in self.ticks if bounds[0] <= t <= bounds[1]]
                self.ticks = sorted(
                    {
                        bounds[0] if low - pad < bounds[0] else kept[0],
                        *kept,
                        bounds[1] if high + pad > bounds[1] else kept[-1],
                    }
                )
            self.low, self.high = self.ticks[0], self.ticks[-1]
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        if self.log:
            fraction = math.log(value / self.low) / math.log(self.high / self.low)
        else:
            fraction = (value - self.low) / (self.high - self.low)
        return self.start + fraction * (self.end - self.start)


def _overlaps(box: tuple[float, float, float, float], boxes: list[tuple]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def _first_free(
    px: float,
    py: float,
    width: float,
    spots: Sequence[tuple[float, float, bool]],
    placed: list[tuple[float, float, float, float]],
) -> tuple[float, float, bool, tuple[float, float, float, float]]:
    """The first spot (offset from the point) whose label box is in the plot and free;
    the first spot when none is."""
    for dx, dy, away in spots:
        x, y = px + dx, py + dy
        box = (x, y - LABEL_HEIGHT + 2, x + width, y + 2)
        inside = box[0] >= LEFT and box[2] <= WIDTH - 4 and box[1] >= TOP and box[3] <= HEIGHT
        if inside and not _overlaps(box, placed):
            return x, y, away, box
    dx, dy, away = spots[0]
    x, y = px + dx, py + dy
    return x, y, away, (x, y - LABEL_HEIGHT + 2, x + width, y + 2)


def _place_labels(
    points: list[tuple[float, float, str]],
    obstacles: Sequence[tuple[float, float, float, float]],
) -> list[tuple[float, float, str, bool]]:
    """Put each label near its point, over no other label and no point (greedy, nearest
    spot first); ``True`` marks a label placed away from its point, which gets a leader."""
    placed: list[tuple[float, float, float, float]] = [
        *obstacles,
        *((px - 6, py - 6, px + 6, py + 6) for px, py, _ in points),
    ]
    result = []
    for px, py, text in points:
        width = len(text) * CHAR_WIDTH
        near = [(8, 4), (8, -6), (8, 14), (-8 - width, 4), (-8 - width, -6), (-8 - width, 14)]
        far = [
            (dx, 4 + k * LABEL_HEIGHT * sign)
            for k in range(2, 12)
            for sign in (-1, 1)
            for dx in (14, -14 - width)
        ]
        spots = [(dx, dy, False) for dx, dy in near] + [(dx, dy, True) for dx, dy in far]
        x, y, away, box = _first_free(px, py, width, spots, placed)
        placed.append(box)
        result.append((x, y, text, away))
    return result


def axes_svg(x: Axis, y: Axis, *, x_label: str, y_label: str) -> list[str]:
    """The opening ``<svg>``, the plot frame, grid lines, tick values and axis titles (a log
    axis says so); the caller adds its marks and the closing tag."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" font-family="system-ui,sans-serif" font-size="11">',
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{HEIGHT - TOP - BOTTOM}" fill="#fff" stroke="#d0d7de"/>',
    ]
    for tick in x.ticks:
        px = x(tick)
        parts.append(
            f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{HEIGHT - BOTTOM}" stroke="#eaeef2"/>'
            f'<text x="{px:.1f}" y="{HEIGHT - BOTTOM + 15}" text-anchor="middle">{format_tick(tick)}</text>'
        )
    for tick in y.ticks:
        py = y(tick)
        parts.append(
            f'<line x1="{LEFT}" y1="{py:.1f}" x2="{WIDTH - RIGHT}" y2="{py:.1f}" stroke="#eaeef2"/>'
            f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{format_tick(tick)}</text>'
        )
    scale = " (log scale)" if x.log else ""
    y_scale = " (log scale)" if y.log else ""
    parts.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 14}" text-anchor="middle" '
        f'font-size="13">{html.escape(x_label + scale)}</text>'
        f'<text transform="translate(16 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" '
        f'text-anchor="middle" font-size="13">{html.escape(y_label + y_scale)}</text>'
    )
    return parts


def scatter_svg(
    points: list[Point],
    *,
    x_label: str,
    y_label: str,
    budget_y: float | None = None,
    y_bounds: tuple[float, float] | None = None,
) -> str:
    """An SVG scatter of ``points`` (log x axis when the values span more than 10x), with a
    dashed horizontal line at ``budget_y``; the y axis stays within ``y_bounds``."""
    if not points:
        return "<p>No candidate was measured, so there is nothing to plot.</p>"
    ys = [p.y for p in points] + ([budget_y] if budget_y is not None else [])
    x = Axis([p.x for p in points], LEFT, WIDTH - RIGHT, log=True)
    # inset: points on the top or bottom tick keep room for a label above or below
    y = Axis(ys, HEIGHT - BOTTOM - 12, TOP + 18, log=False, bounds=y_bounds)
    parts = axes_svg(x, y, x_label=x_label, y_label=y_label)
    obstacles = [(LEFT, 0.0, float(WIDTH), float(TOP))]  # the legend
    if budget_y is not None:
        py = y(budget_y)
        obstacles.append((WIDTH - RIGHT - 50, py - 14, WIDTH - RIGHT, py))
        parts.append(
            f'<line x1="{LEFT}" y1="{py:.1f}" x2="{WIDTH - RIGHT}" y2="{py:.1f}" '
            'stroke="#9a6700" stroke-dasharray="6 4"/>'
            f'<text x="{WIDTH - RIGHT - 4}" y="{py - 4:.1f}" text-anchor="end" '
            'fill="#9a6700">budget</text>'
        )
    # the winner is drawn last (on top) and labelled first (nearest spot), then the original
    anchors = []
    for point in sorted(points, key=lambda p: p.winner):
        px, py = x(point.x), y(point.y)
        ring = ' stroke="#1f2328" stroke-width="2"' if point.ring else ' stroke="#fff"'
        parts.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{7 if point.winner else 5}" '
            f'fill="{point.color}" fill-opacity="0.85"{ring}><title>{html.escape(point.label)}: '
            f"{point.x:.4g} ms, {point.y:.4g}</title></circle>"
        )
        anchors.append((px, py, point))
    anchors.sort(key=lambda a: (not a[2].winner, not a[2].ring))
    labels = _place_labels([(px, py, p.label) for px, py, p in anchors], obstacles)
    for (px, py, point), (lx, ly, text, away) in zip(anchors, labels, strict=True):
        if away:  # a leader from the point to the label's near end
            ex = lx - 2 if lx > px else lx + len(text) * CHAR_WIDTH + 2
            parts.append(
                f'<line x1="{px:.1f}" y1="{py:.1f}" x2="{ex:.1f}" y2="{ly - 4:.1f}" '
                'stroke="#8c959f" stroke-width="0.8"/>'
            )
        weight = ' font-weight="bold"' if point.winner else ""
        parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}"{weight}>{html.escape(text)}</text>')
    legend = [("winner", "#1a7f37"), ("accepted", "#0969da"), ("rejected", "#cf222e")]
    lx = LEFT + 10
    for text, color in legend:
        parts.append(
            f'<circle cx="{lx}" cy="12" r="5" fill="{color}"/>'
            f'<text x="{lx + 9}" y="16">{text}</text>'
        )
        lx += 20 + len(text) * CHAR_WIDTH
    parts.append(
        f'<circle cx="{lx}" cy="12" r="5" fill="#fff" stroke="#1f2328" stroke-width="2"/>'
        f'<text x="{lx + 9}" y="16">original</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)
