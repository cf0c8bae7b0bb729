// The Server page: build and package versions, uptime and restarts, the workers and their
// state, every listener with its TLS / mTLS / auth state, the store and signing policy.

import { describeError, getJSON } from "./api.js";
import { alertRegion, badge, facts, fill, h, table } from "./dom.js";
import { duration, when } from "./format.js";
import { poller } from "./poll.js";

const REFRESH_MS = 3000;

const yesNo = (value, on = "on", off = "off") => (value ? badge(on, "ok") : badge(off, "muted"));

function workerState(state) {
  const kind = { serving: "ok", starting: "info", restarting: "warn", stopping: "warn", dead: "bad", failed: "bad" }[state] || "muted";
  return badge(state, kind);
}

function view(server) {
  const workers = server.workers
    ? table(
        "Worker processes",
        ["Index", "PID", "State", "Restarts", "Started", "Serving since"],
        server.workers.map((w) => [String(w.index), String(w.pid ?? "—"), workerState(w.state), String(w.restarts), when(w.started_at), when(w.serving_since)]),
        "workers#workers-table",
      )
    : h("p", {}, "Workers are not this server's to show (it runs under Ray Serve).");
  const listeners = table(
    "Every listener and its security",
    ["Name", "Address", "Scheme", "TLS", "Client certificates (mTLS)", "Tokens (auth)"],
    server.listeners.map((l) => [l.name, h("code", {}, l.address), l.scheme, yesNo(l.tls), yesNo(l.mtls), yesNo(l.auth)]),
    "listeners#listeners-table",
  );
  const packages = table(
    "Versions of the packages that serve",
    ["Package", "Version"],
    Object.entries(server.packages || {}).map(([name, version]) => [name, version ?? "not installed"]),
    "packages",
  );
  return [
    h(
      "section.card",
      { "aria-labelledby": "srv-overview" },
      h("h2#srv-overview", {}, "Overview"),
      facts([
        ["torchferry", server.version],
        ["Python", server.python],
        ["Supervisor PID", String(server.pid ?? "—")],
        ["Started", when(server.started_at)],
        ["Uptime", duration(server.uptime_s)],
        ["Worker restarts", String(server.restarts ?? 0)],
        ["Store", h("code", {}, server.store || "—")],
        ["Signed archives", server.require_signed ? "required (--require-signed)" : "not required"],
        ["Trusted signing keys", String(server.trusted_keys ?? 0)],
        ["Model source roots", (server.model_source_roots || []).join(", ") || "none"],
        ["Allowed URLs", (server.allowed_urls || []).join(", ") || "none"],
      ]),
    ),
    h("section.card", { "aria-labelledby": "srv-workers" }, h("h2#srv-workers", {}, "Workers"), workers),
    h("section.card", { "aria-labelledby": "srv-listeners" }, h("h2#srv-listeners", {}, "Listeners"), listeners),
    h("section.card", { "aria-labelledby": "srv-packages" }, h("h2#srv-packages", {}, "Build"), packages),
  ];
}

export function render(main, ctx) {
  const problem = alertRegion("server-problem");
  const body = h("div#server-body", {}, h("p", {}, "Loading…"));
  fill(main, h("h1", {}, "Server"), problem.element, body);
  if (!ctx.who.can_read) {
    fill(body, h("p.notice.notice-warn", {}, "This token cannot read the server's description (it needs the manage or metadata scope)."));
    return () => {};
  }
  let last = null;
  const poll = poller(async (stopped) => {
    try {
      const server = await getJSON("api/server");
      if (stopped()) return true;
      problem.clear();
      // uptime changes every time; redraw only the rest when it changes
      const { uptime_s: _, ...rest } = server;
      const text = JSON.stringify(rest);
      if (text !== last) {
        last = text;
        fill(body, view(server));
      } else {
        const uptime = [...body.querySelectorAll("dt")].find((dt) => dt.textContent === "Uptime");
        if (uptime) uptime.nextElementSibling.textContent = duration(server.uptime_s);
      }
      return true;
    } catch (err) {
      if (stopped()) return true;
      // the last description read stays on the page, under the notice
      const shown = last === null ? "" : " (what follows is the last description read)";
      problem.show(`The server cannot be described: ${describeError(err)}${shown}`);
      if (last === null) fill(body, h("p.help", {}, "Not available: see the message above."));
      return false;
    }
  }, REFRESH_MS);
  return () => poll.stop();
}
