// Running a management action: confirm it, send it, and show the server's answer (a
// refusal included, with its status and message as the server wrote it) in a live region.

import { call, describeError, errorMessage } from "./api.js";
import { statusText } from "./http.js";
import { confirmAction } from "./dialog.js";
import { h, fill } from "./dom.js";
import { prettyJSON } from "./format.js";

/** The status region actions report into (role=status, polite). */
export function statusRegion(id = "action-status") {
  return h(`div.action-status#${id}`, { role: "status", "aria-live": "polite", "aria-atomic": "true" });
}

/** What a successful answer says, in a line. */
function successLine(json) {
  if (json && typeof json === "object") {
    if (typeof json.status === "string") return json.status;
    if (typeof json.phase === "string") return `rollout ${json.phase.replace("_", " ")}`;
    if (json.weights && typeof json.weights === "object") {
      const weights = Object.entries(json.weights).map(([v, w]) => `v${v}: ${w} %`);
      return weights.length ? `traffic weights ${weights.join(", ")}` : `no weights: every request goes to the default version (${json.default ?? "the highest"})`;
    }
    if (typeof json.message === "string") return json.message;
  }
  return "done";
}

/**
 * Confirm, then send. action: {title, summary: [[term, value]], method, url, json,
 * confirmLabel, danger}; region: the status element. Answers the response (or null when
 * cancelled).
 */
export async function runAction(action, region, afterwards = () => {}) {
  const yes = await confirmAction(action.title, action.summary, {
    confirmLabel: action.confirmLabel || "Confirm",
    danger: action.danger,
  });
  if (!yes) {
    fill(region, h("p.notice.notice-info", {}, `${action.title}: cancelled.`));
    return null;
  }
  fill(region, h("p.notice.notice-info", {}, `${action.title}: sending…`));
  region.setAttribute("aria-busy", "true");
  let answer;
  try {
    // a synchronous load may take a while: more time than a poll gets
    answer = await call(action.method, action.url, { json: action.json, throwOnError: false, timeoutMs: 120000 });
  } catch (err) {
    answer = { status: err.status || 0, ok: false, text: "", message: describeError(err) };
  }
  region.removeAttribute("aria-busy");
  const kind = answer.ok ? "ok" : "bad";
  const message = answer.ok
    ? successLine(answer.json)
    : answer.message || errorMessage(answer.status, answer.text);
  fill(
    region,
    h(
      `div.notice.notice-${kind}.action-answer`,
      { dataset: { status: String(answer.status) } },
      h("p", {}, h("strong", {}, `${action.title}: `), answer.ok ? "done" : "refused", ` (${statusText(answer.status)})`),
      h("p.answer-message", {}, message),
      answer.text
        ? h("details", {}, h("summary", {}, "The server's answer"), h("pre", { tabindex: "0" }, pretty(answer.text)))
        : null,
    ),
  );
  // the answer may be far from the button that asked: bring it into view
  region.scrollIntoView({ block: "nearest", behavior: "smooth" });
  afterwards(answer);
  return answer;
}

export function pretty(text) {
  try {
    return prettyJSON(JSON.parse(text));
  } catch {
    return text;
  }
}
