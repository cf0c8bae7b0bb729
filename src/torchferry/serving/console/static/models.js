// The Models page: every model and version (state, default, weight, runtime, handler,
// size, signature status, source), refreshed every 3 s without moving the user's focus,
// and the Load action for a new model or version.

import { statusRegion } from "./actions.js";
import { getJSON } from "./api.js";
import { bytes, h, fill } from "./dom.js";
import { loadForm } from "./forms.js";
import { poller } from "./poll.js";
import { modelLink, signatureCell, versionCells } from "./overview.js";

const REFRESH_MS = 3000;

function rowCells(model, version) {
  return [
    modelLink(model.name),
    ...versionCells(version),
    bytes(version.size_bytes),
    signatureCell(version),
    h("span.source", {}, version.source || "—"),
  ];
}

const HEADERS = ["Model", "Version", "State", "Default", "Weight", "Runtime", "Handler", "Size", "Signature", "Source"];

/**
 * Bring tbody up to date row by row: a row whose data did not change is left alone, so a
 * focused link in it keeps its focus and the page keeps its scroll.
 */
function updateRows(tbody, overview) {
  const wanted = [];
  for (const model of overview.models) {
    const versions = model.versions.length ? model.versions : [null];
    for (const version of versions) {
      const key = `${model.name}/${version ? version.version : "-"}`;
      wanted.push({ key, data: JSON.stringify([model.name, version]), model, version });
    }
  }
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
  const rows = wanted.map(({ key, data, model, version }) => {
    const old = existing.get(key);
    if (old && old.dataset.data === data) return old;
    const cells = version ? rowCells(model, version) : [modelLink(model.name), "—", "no versions", "", "", "", "", "", "", ""];
    const row = h("tr", { dataset: { key, data } }, cells.map((cell, i) => (i === 0 ? h("th", { scope: "row" }, cell) : h("td", {}, cell))));
    if (old) old.replaceWith(row);
    return row;
  });
  for (const [key, row] of existing) if (!wanted.some((w) => w.key === key)) row.remove();
  const inOrder = [...tbody.rows].every((row, i) => row === rows[i]) && tbody.rows.length === rows.length;
  if (!inOrder) tbody.append(...rows);
}

export function render(main, ctx) {
  const updated = h("span#models-updated", {}, "loading…");
  const tbody = h("tbody");
  const problem = h("div#models-problem", { role: "alert" });
  const empty = h("p#models-empty", { hidden: true }, "No models are loaded. Load one below.");
  const region = statusRegion("load-status");
  const readOnly = !ctx.who.can_manage
    ? h("p.notice.notice-warn", {}, "This token has no manage scope: the server will refuse a load.")
    : null;
  fill(
    main,
    h("h1", {}, "Models"),
    problem,
    h(
      "table.models#models-table",
      {},
      h("caption", {}, "Every model and version. Refreshed every 3 s; last update: ", updated),
      h("thead", {}, h("tr", {}, HEADERS.map((name) => h("th", { scope: "col" }, name)))),
      tbody,
    ),
    empty,
    h(
      "section.card",
      { "aria-labelledby": "load-heading" },
      h("h2#load-heading", {}, "Load a model"),
      readOnly,
      loadForm({ model: null, region, onDone: () => poll.now(), idPrefix: "load" }),
      region,
    ),
  );
  async function refresh(stopped) {
    try {
      const overview = await getJSON("api/overview");
      if (stopped()) return;
      updateRows(tbody, overview);
      empty.hidden = overview.models.length > 0;
      updated.textContent = new Date().toLocaleTimeString();
      problem.replaceChildren();
    } catch (err) {
      if (stopped()) return;
      fill(problem, h("p.notice.notice-bad", {}, `The models cannot be read: ${err.status ? err.status + " " : ""}${err.message}`));
    }
  }
  const poll = poller(refresh, REFRESH_MS);
  return () => poll.stop();
}
