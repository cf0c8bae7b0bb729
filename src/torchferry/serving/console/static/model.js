// A model's page (#/models/NAME): versions, signature, live figures per version, the
// rollout with its decisions, shadow agreement, and the Actions. Polls every 2 s.

import { actionPanel } from "./actionpanel.js";
import { call, describeError, getJSON } from "./api.js";
import { alertRegion, facts, fill, h, table } from "./dom.js";
import { bytes, num, percent } from "./format.js";
import { LiveFigures } from "./live.js";
import { poller } from "./poll.js";
import { signatureCell, versionCells } from "./overview.js";
import { phaseName, rolloutView } from "./rollout.js";

const REFRESH_MS = 2000;

function versionsTable(model) {
  return table(
    "Versions",
    ["Version", "State", "Default", "Weight", "Runtime", "Handler", "Device", "Size", "Signature", "Batching", "Loaded in"],
    model.versions.map((v) => [
      ...versionCells(v),
      v.device || "—",
      bytes(v.size_bytes),
      signatureCell(v),
      v.max_batch_size ? `≤ ${v.max_batch_size} rows, ${v.max_delay_ms} ms` : "—",
      v.load_seconds === null || v.load_seconds === undefined ? "—" : `${num(v.load_seconds)} s`,
    ]),
    "versions#versions-table",
  );
}

function signatureTable(model) {
  const rows = [];
  for (const v of model.versions) {
    for (const [kind, specs] of [["input", v.inputs], ["output", v.outputs]]) {
      for (const s of specs || []) rows.push([String(v.version), kind, s.name, s.datatype, `[${s.shape.join(", ")}]`]);
    }
  }
  if (!rows.length) return h("p", {}, "No signature known yet (no version has loaded).");
  return table("Inputs and outputs per version (-1: any size)", ["Version", "Direction", "Name", "Datatype", "Shape"], rows, "signature#signature-table");
}

function summary(model) {
  const weights = Object.entries(model.weights || {});
  return facts([
    ["Default version", model.default === null || model.default === undefined ? "the highest loaded" : String(model.default)],
    ["Traffic weights", weights.length ? weights.map(([v, w]) => `v${v}: ${w} %`).join(", ") : "none (all to the default)"],
    ["Shadow", model.shadow ? `version ${model.shadow.version} sees ${percent(model.shadow.share, 0)} of the traffic` : "none"],
    ["Source of each version", model.versions.map((v) => `v${v.version}: ${v.source || "—"}`).join("; ") || "—"],
  ]);
}

function shadowView(model, shadow, live) {
  const parts = [];
  if (shadow && shadow.shadow) {
    const f = shadow.figures;
    parts.push(
      facts([
        ["Shadow version", `${shadow.shadow.version} (share ${percent(shadow.shadow.share, 0)})`],
        ["Rows compared", f ? String(f.compared) : "—"],
        ["Argmax agreement", f ? percent(f.agreement) : "—"],
        ["Largest |difference|", f ? num(f.max_abs_diff, 4) : "—"],
      ]),
    );
  } else {
    parts.push(h("p", {}, model.shadow ? "Shadow figures are not available." : "No version is shadowing this model now."));
  }
  const rows = live.shadowRows();
  if (rows.length) {
    parts.push(table("Shadow comparisons from the metrics (since start)", ["Version", "Rows", "Agreed", "Agreement", "Max |Δ|"], rows, "shadow"));
  }
  return parts;
}

export function render(main, ctx) {
  let poll = null; // none when the token cannot read
  const name = ctx.params.name;
  const live = new LiveFigures();
  const problem = alertRegion("model-problem");
  const summaryBox = h("div#model-summary");
  const versionsBox = h("div#model-versions");
  const signatureBox = h("div#model-signature");
  const liveBox = h("div#model-live", { "aria-live": "off" });
  const rolloutBox = h("div#model-rollout");
  const shadowBox = h("div#model-shadow");
  // a screen reader hears the rollout's phase change, not the whole section every 2 s
  const announce = h("p.sr-only#rollout-announce", { "aria-live": "polite" });
  const actions = actionPanel(name, ctx.who, () => poll?.now());
  const section = (id, title, ...content) => h(`section.card#${id}`, { "aria-labelledby": `${id}-heading` }, h(`h2#${id}-heading`, {}, title), ...content);
  fill(
    main,
    h("p.crumbs", {}, h("a", { href: "#/models" }, "Models"), " / ", name),
    h("h1", {}, `Model ${name}`),
    problem.element,
    section("sec-summary", "Summary", summaryBox, versionsBox),
    section("sec-signature", "Signature", signatureBox),
    section("sec-live", "Live figures", h("p.help", {}, "Per version, from the server's own metrics; refreshed every 2 s."), liveBox),
    section("sec-rollout", "Rollout", announce, rolloutBox),
    section("sec-shadow", "Shadow agreement", shadowBox),
    actions.element,
  );
  let seen = {};
  const changed = (key, value) => {
    const text = JSON.stringify(value);
    if (seen[key] === text) return false;
    seen[key] = text;
    return true;
  };

  if (!ctx.who.can_read) {
    // no polling: the server would refuse every read; the Actions stay (the server decides)
    for (const section of main.querySelectorAll("section.card:not(#actions)")) section.hidden = true;
    problem.element.after(h("p.notice.notice-warn#read-notice", {}, "This token cannot read this model's figures (that needs the manage or metadata scope)."));
    return () => {};
  }
  async function refresh(stopped) {
    try {
      const [overview, metrics] = await Promise.all([
        getJSON("api/overview"),
        getJSON(`api/metrics?model=${encodeURIComponent(name)}`).catch((err) => ({ available: false, reason: err.message })),
      ]);
      if (stopped()) return true;
      const model = overview.models.find((candidate) => candidate.name === name);
      if (!model) {
        problem.show(`No model named ${name} is loaded.`);
      } else {
        problem.clear();
        if (changed("summary", [model.default, model.weights, model.shadow, model.versions])) {
          fill(summaryBox, summary(model));
          fill(versionsBox, versionsTable(model));
          fill(signatureBox, signatureTable(model));
          actions.update(model);
        }
        if (changed("rollout", model.rollout)) fill(rolloutBox, rolloutView(model.rollout));
        if (model.rollout && changed("phase", model.rollout.phase)) {
          announce.textContent = `Rollout of version ${model.rollout.spec.version}: ${phaseName(model.rollout.phase)}`;
        }
        let shadow = null;
        if (model.shadow) {
          const answer = await call("GET", `../models/${encodeURIComponent(name)}/shadow`, { throwOnError: false });
          shadow = answer.ok ? answer.json : null;
        }
        live.add(metrics, model.versions.map((v) => String(v.version)));
        live.render(liveBox, metrics);
        if (changed("shadow", [shadow, live.shadowRows()])) fill(shadowBox, shadowView(model, shadow, live));
      }
      return true;
    } catch (err) {
      if (stopped()) return true;
      problem.show(`This model cannot be read: ${describeError(err)}`);
      for (const box of [summaryBox, signatureBox, liveBox, rolloutBox, shadowBox]) {
        if (!box.childElementCount) fill(box, h("p.help", {}, "Not available: see the message above."));
      }
      return false;
    }
  }
  poll = poller(refresh, REFRESH_MS);
  return () => poll.stop();
}
