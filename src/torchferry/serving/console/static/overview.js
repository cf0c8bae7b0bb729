// How a version's state, signature status and source read on every page.

import { badge, h } from "./dom.js";

/** The state a person reads: "unloading" is shown as "draining". */
export function stateBadge(version) {
  switch (version.state) {
    case "ready":
      return badge("ready", "ok");
    case "loading":
      return badge("loading", "info");
    case "unloading":
      return badge("draining", "warn");
    case "failed":
      return badge("failed", "bad");
    default:
      return badge(String(version.state), "muted");
  }
}

export function stateCell(version) {
  return h(
    "span.state",
    { dataset: { state: version.state } },
    stateBadge(version),
    version.reason ? h("span.reason", {}, ` ${version.reason}`) : null,
  );
}

export function signatureCell(version) {
  // signed: a trusted key verified it; unverified: signed, but no trusted key checked it
  const kind = { signed: "ok", unverified: "warn", unsigned: "muted", refused: "bad" }[version.signature_status] || "muted";
  return h(
    "span",
    {},
    badge(version.signature_status || "unknown", kind),
    version.signature_detail && version.signature_detail !== version.signature_status
      ? h("span.reason", {}, ` ${version.signature_detail}`)
      : null,
  );
}

export function modelLink(name) {
  return h("a", { href: `#/models/${encodeURIComponent(name)}` }, name);
}

/** The cells every table of versions starts with: version, state, default, weight, runtime, handler. */
export function versionCells(v) {
  return [
    String(v.version),
    stateCell(v),
    v.is_default ? "default" : "",
    v.weight === null || v.weight === undefined ? "—" : `${v.weight} %`,
    v.runtime || "—",
    v.handler || "—",
  ];
}
