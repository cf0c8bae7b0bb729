// A model's live figures: keeps the last readings of api/metrics, turns each pair into
// per-version rates and quantiles, and draws them: a table of the latest figures that is
// updated in place, and charts (their drawing hidden from screen readers: the table and
// each chart's text summary carry the same figures).

import { lineChart } from "./chart.js";
import { fill, h, syncRows } from "./dom.js";
import { ms, num, percent } from "./format.js";
import { intervalFigures } from "./stats.js";

const WINDOW_S = 120;
const HEADERS = ["Version", "Requests/s", "p50", "p99", "Error rate", "Mean batch", "Queue p50", "Queue p99"];

export class LiveFigures {
  constructor() {
    this.previous = null;
    this.seconds = null;
    /** version -> [{t, ...figures}] */
    this.series = new Map();
    this.latest = new Map();
    this.tbody = h("tbody");
    this.caption = h("caption");
    this.table = h("table.latest#live-latest", {}, this.caption, h("thead", {}, h("tr", {}, HEADERS.map((name) => h("th", { scope: "col" }, name)))), this.tbody);
    this.charts = h("div.charts");
  }

  /** Add a reading of api/metrics; `loaded` (version strings) drops the figures of versions gone since. */
  add(reading, loaded) {
    for (const version of [...this.series.keys()]) {
      if (!loaded.includes(version)) {
        this.series.delete(version);
        this.latest.delete(version);
      }
    }
    if (!reading.available) return;
    const before = this.previous;
    this.previous = reading;
    if (!before) return;
    this.seconds = reading.at - before.at;
    for (const [version, now] of Object.entries(reading.versions)) {
      if (!loaded.includes(version)) continue;
      const figures = intervalFigures(now, before.versions[version], this.seconds);
      const points = this.series.get(version) || [];
      points.push({ t: reading.at, ...figures });
      while (points.length && points[0].t < reading.at - WINDOW_S - 5) points.shift();
      this.series.set(version, points);
      this.latest.set(version, { ...figures, shadow: now.shadow });
    }
  }

  versions() {
    return [...this.series.keys()].sort((a, b) => Number(a) - Number(b));
  }

  chart(title, pick, format, dashedPick) {
    const series = [];
    this.versions().forEach((version, i) => {
      const points = this.series.get(version);
      series.push({ name: `v${version}${dashedPick ? " p50" : ""}`, colour: i, points: points.map((p) => ({ t: p.t, v: p[pick] })) });
      if (dashedPick) {
        series.push({ name: `v${version} p99`, colour: i, dashed: true, points: points.map((p) => ({ t: p.t, v: p[dashedPick] })) });
      }
    });
    return lineChart({ title, series, format, windowSeconds: WINDOW_S });
  }

  /** Bring `box` up to date: the charts and the latest figures, or why there are none. */
  render(box, reading) {
    if (reading && !reading.available) {
      fill(box, h("p.notice.notice-warn", {}, `No live figures: ${reading.reason || "metrics are off"}.`));
      return;
    }
    if (!this.versions().length) {
      fill(box, h("p#live-waiting", {}, "Collecting: the figures appear after two readings (about 4 s)."));
      return;
    }
    const rows = this.versions().map((version) => {
      const f = this.latest.get(version);
      return { key: version, cells: [`v${version}`, num(f.rps), ms(f.p50), ms(f.p99), percent(f.errorRate, 2), num(f.batch), ms(f.queueP50), ms(f.queueP99)] };
    });
    syncRows(this.tbody, rows);
    const caption = `Latest figures, since the previous reading (${num(this.seconds, 1)} s before)`;
    if (this.caption.textContent !== caption) this.caption.textContent = caption;
    fill(
      this.charts,
      this.chart("Requests per second", "rps", (v) => `${num(v)}/s`),
      this.chart("Latency p50 and p99 (ms)", "p50", ms, "p99"),
      this.chart("Error rate", "errorRate", (v) => percent(v, 2)),
      this.chart("Mean batch size", "batch", num),
      this.chart("Queue time p50 and p99 (ms)", "queueP50", ms, "queueP99"),
    );
    if (this.table.parentNode !== box) fill(box, this.table, this.charts);
  }

  /** Shadow figures from the metrics, per version that has any. */
  shadowRows() {
    return this.versions()
      .map((version) => [version, this.latest.get(version)?.shadow])
      .filter(([, s]) => s && s.rows > 0)
      .map(([version, s]) => [`v${version}`, String(s.rows), String(s.agreed), percent(s.agreed / s.rows), num(s.max_abs_diff, 4)]);
  }
}
