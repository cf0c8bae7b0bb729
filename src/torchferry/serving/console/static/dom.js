// Small DOM helpers: build elements without innerHTML (no markup from server data ever
// reaches the parser), the page's alert region, tables updated in place. The figures'
// formatting is in format.js.

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

/** A small coloured badge; kind is one of ok / warn / bad / info / muted. */
export function badge(text, kind) {
  return h(`span.badge.badge-${kind}`, {}, text);
}
