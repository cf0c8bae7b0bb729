// Small DOM helpers: build elements without innerHTML (no markup from server data ever
// reaches the parser), and format the figures every page shows.

/** h("tag.class#id", {attr: value, onclick: fn}, child, ...): an element. */
export function h(spec, attrs, ...children) {
  const [tagAndClasses, id] = spec.split("#");
  const [tag, ...classes] = tagAndClasses.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  if (id) el.id = id;
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) {
      // never an attribute: an on* attribute is script from text (and the CSP forbids it)
      if (typeof value !== "function") throw new TypeError(`h(${spec}): ${key} must be a function`);
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key in el && typeof value !== "string") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replace el's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/**
 * The one alert of a page: a role=alert region that is always there, whose text changes
 * only when the problem does (a screen reader hears a problem once, not every poll).
 * show(text) / clear(); `extra` nodes (a Retry button) may follow the text.
 */
export function alertRegion(id) {
  const element = h(`div#${id}`, { role: "alert" });
  let shown = null;
  return {
    element,
    show(text, ...extra) {
      if (text === shown) return;
      shown = text;
      fill(element, h("div.notice.notice-bad", {}, h("p", {}, text), extra));
    },
    clear() {
      if (shown === null) return;
      shown = null;
      element.replaceChildren();
    },
  };
}

/**
 * Bring a tbody up to date in place: rows are keyed ({key, cells}, the first cell a row
 * header), a cell is touched only when its content changed, and a row is moved only when
 * the order changed, so a focused link keeps its focus and the page its scroll.
 */
export function syncRows(tbody, rows) {
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
  const wanted = new Set(rows.map((r) => r.key));
  for (const [key, row] of existing) if (!wanted.has(key)) row.remove();
  rows.forEach(({ key, cells }, index) => {
    const fresh = cells.map((cell, i) => h(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {}, cell));
    let row = existing.get(key);
    if (!row) {
      row = h("tr", { dataset: { key } }, fresh);
    } else {
      fresh.forEach((cell, i) => {
        const old = row.cells[i];
        if (!old) row.append(cell);
        else if (!old.isEqualNode(cell)) old.replaceChildren(...cell.childNodes);
      });
      while (row.cells.length > fresh.length) row.lastElementChild.remove();
    }
    if (tbody.rows[index] !== row) tbody.insertBefore(row, tbody.rows[index] || null);
  });
}

/** A table with a caption and header row; rows are arrays of cells (Node or text). */
export function table(caption, headers, rows, className = "") {
  return h(
    `table${className ? "." + className : ""}`,
    {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))),
  );
}

/** Definition list from [term, value] pairs. */
export function facts(pairs, className = "facts") {
  return h(`dl.${className}`, {}, pairs.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

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

/** A small coloured badge; kind is one of ok / warn / bad / info / muted. */
export function badge(text, kind) {
  return h(`span.badge.badge-${kind}`, {}, text);
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
