// A small SVG line chart of a few series over time, with a text summary of the latest
// values (the drawing is aria-hidden: the summary carries its figures).

import { h } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 360;
const HEIGHT = 150;
const PAD = { left: 44, right: 8, top: 8, bottom: 20 };

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  for (const child of children) el.append(child);
  return el;
}

/** A tidy upper bound for the y axis (1, 2 or 5 times a power of ten). */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function label(value) {
  if (value === 0) return "0";
  if (value >= 1000) return `${(value / 1000).toFixed(value >= 10000 ? 0 : 1)}k`;
  if (value >= 1) return String(Number(value.toFixed(1)));
  return String(Number(value.toPrecision(2)));
}

/**
 * series: [{name, colour (0..5), dashed, points: [{t, v}]}] with t in seconds; v null for
 * a gap. format(v) writes a value for the summary. Answers a <figure>.
 */
export function lineChart({ title, series, format, windowSeconds: most = 120 }) {
  const latest = series.map((s) => {
    const last = [...s.points].reverse().find((p) => p.v !== null && p.v !== undefined);
    return `${s.name}: ${last ? format(last.v) : "no data yet"}`;
  });
  const times = series.flatMap((s) => s.points.map((p) => p.t));
  const end = times.length ? Math.max(...times) : 0;
  // the x axis grows with the data, from 20 s up to `most`, so a new page is not a sliver
  const windowSeconds = Math.min(most, Math.max(20, end - (times.length ? Math.min(...times) : end)));
  const start = end - windowSeconds;
  const values = series.flatMap((s) => s.points.filter((p) => p.t >= start && p.v !== null).map((p) => p.v));
  const top = niceMax(values.length ? Math.max(...values) : 0);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - start) / windowSeconds) * plotW;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    // the drawing says nothing the text summary below it does not
    "aria-hidden": "true",
    class: "chart",
    preserveAspectRatio: "xMidYMid meet",
  });
  for (const fraction of [0, 0.5, 1]) {
    const gy = y(top * fraction);
    chart.append(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: gy, y2: gy, class: "grid" }));
    const text = svg("text", { x: PAD.left - 4, y: gy + 4, class: "tick", "text-anchor": "end" });
    text.textContent = label(top * fraction);
    chart.append(text);
  }
  const axisLabel = svg("text", { x: WIDTH - PAD.right, y: HEIGHT - 4, class: "tick", "text-anchor": "end" });
  axisLabel.textContent = windowSeconds >= 60 ? `last ${Math.round(windowSeconds / 6) / 10} min` : `last ${Math.round(windowSeconds)} s`;
  chart.append(axisLabel);
  for (const s of series) {
    // a gap (null) breaks the line; a lone point shows as a dot
    let run = [];
    const runs = [];
    for (const p of s.points) {
      if (p.t < start) continue;
      if (p.v === null || p.v === undefined) {
        if (run.length) runs.push(run);
        run = [];
      } else {
        run.push(p);
      }
    }
    if (run.length) runs.push(run);
    const cls = `series series-${s.colour % 6}${s.dashed ? " dashed" : ""}`;
    for (const r of runs) {
      if (r.length === 1) {
        chart.append(svg("circle", { cx: x(r[0].t), cy: y(r[0].v), r: 3, class: `${cls} dot` }));
      } else {
        const d = r.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
        chart.append(svg("path", { d, class: cls }));
      }
    }
  }
  const legend = h(
    "ul.legend",
    {},
    series.map((s) =>
      h("li", {}, h(`span.swatch.series-${s.colour % 6}${s.dashed ? ".dashed" : ""}`, { "aria-hidden": "true" }), s.name),
    ),
  );
  return h("figure.chart-card", {}, h("figcaption", {}, h("strong", {}, title)), chart, legend, h("p.sr-summary", {}, latest.join(" · ")));
}
