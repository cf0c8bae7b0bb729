// The Models page: every model and version (state, default, weight, runtime, handler,
// size, signature status, source), refreshed every 3 s without moving the user's focus,
// and the Load action for a new model or version.

import { statusRegion } from "./actions.js";
import { describeError, getJSON } from "./api.js";
import { alertRegion, h, fill, syncRows } from "./dom.js";
import { bytes } from "./format.js";
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

function rows(overview) {
  const wanted = [];
  for (const model of overview.models) {
    if (!model.versions.length) {
      wanted.push({ key: `${model.name}/-`, cells: [modelLink(model.name), "—", "no versions", "", "", "", "", "", "", ""] });
    }
    for (const version of model.versions) wanted.push({ key: `${model.name}/${version.version}`, cells: rowCells(model, version) });
  }
  return wanted;
}

export function render(main, ctx) {
  let poll = null; // none when the token cannot read
  const updated = h("span#models-updated", {}, "loading…");
  const tbody = h("tbody");
  const problem = alertRegion("models-problem");
  const empty = h("p#models-empty", { hidden: true }, "No models are loaded. Load one below.");
  const region = statusRegion("load-status");
  const readOnly = !ctx.who.can_manage
    ? h("p.notice.notice-warn", {}, "This token has no manage scope: the server will refuse a load.")
    : null;
  fill(
    main,
    h("h1", {}, "Models"),
    problem.element,
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
      loadForm({ model: null, region, onDone: () => poll?.now(), idPrefix: "load" }),
      region,
    ),
  );
  if (!ctx.who.can_read) {
    // no polling: the server would refuse every read, every 3 s
    updated.textContent = "never (this token cannot read)";
    fill(tbody, h("tr", {}, h("td", { colspan: HEADERS.length }, "This token cannot read the models (it needs the manage or metadata scope).")));
    return () => {};
  }
  async function refresh(stopped) {
    try {
      const overview = await getJSON("api/overview");
      if (stopped()) return true;
      syncRows(tbody, rows(overview));
      empty.hidden = overview.models.length > 0;
      updated.textContent = new Date().toLocaleTimeString();
      problem.clear();
      return true;
    } catch (err) {
      if (stopped()) return true;
      problem.show(`The models cannot be read: ${describeError(err)}`);
      return false;
    }
  }
  poll = poller(refresh, REFRESH_MS);
  return () => poll.stop();
}
