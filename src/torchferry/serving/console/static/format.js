// How every page writes figures: sizes, numbers, milliseconds, percentages, times,
// durations, and JSON for reading.

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let value = n;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return `${i === 0 ? value : value.toFixed(1)} ${units[i]}`;
}

export function num(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  if (!Number.isFinite(x)) return String(x);
  return Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(digits);
}

export function ms(x) {
  return x === null || x === undefined ? "—" : `${num(x)} ms`;
}

export function percent(x, digits = 1) {
  return x === null || x === undefined ? "—" : `${(x * 100).toFixed(digits)} %`;
}

export function when(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleTimeString();
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const parts = [
    [d, "d"],
    [Math.floor((s % 86400) / 3600), "h"],
    [Math.floor((s % 3600) / 60), "min"],
    [s % 60, "s"],
  ];
  const first = parts.findIndex(([value]) => value > 0);
  return first < 0 ? "0 s" : parts.slice(first, first + 2).map(([v, u]) => `${v} ${u}`).join(" ");
}

const SHOWN_VALUES = 1000;

/**
 * JSON indented for reading, with arrays of plain values on one line (a tensor's data is
 * not one number per line) and cut after 1000 values, saying how many more there are.
 */
export function prettyJSON(value, indent = "") {
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    if (value.every((x) => x === null || typeof x !== "object")) {
      const shown = value.slice(0, SHOWN_VALUES).map((x) => JSON.stringify(x));
      if (value.length > SHOWN_VALUES) shown.push(`… ${value.length - SHOWN_VALUES} more`);
      return `[${shown.join(", ")}]`;
    }
    return `[\n${value.map((x) => inner + prettyJSON(x, inner)).join(",\n")}\n${indent}]`;
  }
  if (value && typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${prettyJSON(v, inner)}`).join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}
