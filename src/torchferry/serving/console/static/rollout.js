// A model's rollout: the state machine (pending -> stepping -> promoted / rolled back /
// aborted) with the current phase marked, what is going on now, and every decision with
// the figures that decided it.

import { h, table } from "./dom.js";
import { ms, num, percent, when } from "./format.js";

const PHASES = [
  ["pending", "pending"],
  ["stepping", "stepping"],
  ["promoted", "promoted"],
  ["rolled_back", "rolled back"],
  ["aborted", "aborted"],
];

// a fixed set of class names: the server's text never reaches a selector or a class
const VERDICT_CLASSES = { advance: "verdict-advance", promote: "verdict-promote", rollback: "verdict-rollback", abort: "verdict-abort" };

function verdictBadge(verdict) {
  const badge = h("span.verdict", {}, String(verdict));
  badge.classList.add(VERDICT_CLASSES[verdict] || "verdict-other");
  return badge;
}

export function phaseName(phase) {
  return (PHASES.find(([key]) => key === phase) || [phase, phase])[1];
}

function machine(phase) {
  const step = (key, text) =>
    h(`li.phase${key === phase ? ".current" : ""}`, { dataset: { phase: key }, "aria-current": key === phase ? "step" : null }, text);
  return h(
    "div.machine",
    {},
    h(
      "ol.machine-line#rollout-machine",
      { "aria-label": `Rollout state machine; current state: ${phaseName(phase)}` },
      step("pending", "pending"),
      h("li.arrow", { "aria-hidden": "true" }, "→"),
      step("stepping", "stepping"),
      h("li.arrow", { "aria-hidden": "true" }, "→"),
      h(
        "li.ends",
        {},
        h("ul.machine-ends", {}, step("promoted", "promoted"), step("rolled_back", "rolled back"), step("aborted", "aborted")),
      ),
    ),
  );
}

function figures(f) {
  if (!f) return "—";
  const parts = [`${f.requests} req`, `${f.errors} err (${percent(f.error_rate, 2)})`, `p99 ${ms(f.p99_ms)}`];
  if (f.compared) parts.push(`agreement ${percent(f.agreement)} over ${f.compared}, max |Δ| ${num(f.max_abs_diff, 4)}`);
  return parts.join(", ");
}

function criteria(spec) {
  const parts = [`steps ${spec.steps.join(" → ")} %`, `every ${spec.interval_s} s`, `≥ ${spec.min_requests} requests`];
  parts.push(`error rate ≤ ${percent(spec.max_error_rate, 2)}`);
  if (spec.max_p99_ms !== null && spec.max_p99_ms !== undefined) parts.push(`p99 ≤ ${spec.max_p99_ms} ms`);
  if (spec.max_p99_ratio !== null && spec.max_p99_ratio !== undefined) parts.push(`p99 ≤ ${spec.max_p99_ratio} × stable`);
  if (spec.min_agreement !== null && spec.min_agreement !== undefined) {
    parts.push(`shadow agreement ≥ ${percent(spec.min_agreement)} (share ${spec.shadow_share})`);
  }
  return parts.join(", ");
}

/** The rollout section's content for a RolloutStatus (or null: none yet). */
export function rolloutView(status) {
  if (!status) return [h("p#rollout-none", {}, "This model has had no rollout.")];
  const steps = status.spec.steps;
  const stepText = status.step < 0 ? "before the first step" : `step ${status.step + 1} of ${steps.length}`;
  const history = status.history.map((d) => [
    when(d.at),
    d.step < 0 ? "shadow" : `${d.step + 1}`,
    `${d.weight} %`,
    verdictBadge(d.verdict),
    d.reason,
    figures(d.canary),
    figures(d.stable),
  ]);
  return [
    machine(status.phase),
    h(
      "dl.facts#rollout-facts",
      {},
      h("dt", {}, "Phase"),
      h("dd#rollout-phase", { dataset: { phase: status.phase } }, phaseName(status.phase)),
      h("dt", {}, "Canary"),
      h("dd", {}, `version ${status.spec.version} at ${status.weight} % (${stepText})`),
      h("dt", {}, "Stable"),
      h("dd", {}, `version ${status.stable}`),
      h("dt", {}, "Criteria"),
      h("dd", {}, criteria(status.spec)),
      h("dt", {}, "Reason"),
      h("dd#rollout-reason", {}, status.reason || (status.phase === "stepping" || status.phase === "pending" ? "running" : "—")),
      h("dt", {}, "Started / updated"),
      h("dd", {}, `${when(status.started_at)} / ${when(status.updated_at)}`),
    ),
    history.length
      ? table(
          "Decisions, with the figures that decided each",
          ["At", "Step", "Canary weight", "Verdict", "Reason", "Canary figures", "Stable figures"],
          history,
          "history#rollout-history",
        )
      : h("p", {}, "No decision yet: the first one comes when the canary has answered enough requests."),
  ];
}
