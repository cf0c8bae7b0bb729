// A model's Actions: load a version, set the default, set or clear weights, start /
// promote / abort a rollout, unload. Each asks for confirmation and reports the server's
// answer; the server decides what a token may do, so nothing here is hidden from a token
// without the manage scope (it is only told that the server will refuse).

import { runAction, statusRegion } from "./actions.js";
import { h } from "./dom.js";
import { field, input, loadForm } from "./forms.js";

const m = encodeURIComponent;

function form(title, onsubmit, ...children) {
  return h(
    "form.action-form",
    {
      onsubmit: (event) => {
        event.preventDefault();
        onsubmit(event.submitter);
      },
    },
    h("h3", {}, title),
    ...children,
  );
}

function numberOrNull(el) {
  const text = el.value.trim();
  return text === "" ? null : Number(text);
}

/** Build the panel for model `name`; answers {element, update(model)}. */
export function actionPanel(name, who, refresh) {
  const region = statusRegion();
  const run = (action) => runAction(action, region, () => refresh());
  // versions are typed (with the loaded ones offered): a token that cannot read the
  // models may still try an action, and the server answers
  const versionInputs = [];
  const versionSelect = (id, pick) => {
    const list = h(`datalist#${id}-list`);
    const el = input({ id, list: list.id, required: true, autocomplete: "off", inputmode: "numeric", pattern: "[0-9]+" });
    versionInputs.push({ el, list, pick });
    return el;
  };
  const fieldWithList = (text, el) => [field(text, el), versionInputs.find((v) => v.el === el).list];

  const defaultVersion = versionSelect("default-version", (model) => model.versions.find((v) => v.is_default));
  const setDefault = form(
    "Set the default version",
    () =>
      run({
        title: `Set the default of ${name}`,
        summary: [["Model", name], ["New default", `version ${defaultVersion.value}`]],
        method: "PUT",
        url: `../models/${m(name)}/${m(defaultVersion.value)}/set-default`,
        confirmLabel: "Set default",
      }),
    fieldWithList("Version", defaultVersion),
    h("div.buttons", {}, h("button#default-submit", { type: "submit" }, "Set default…")),
  );

  const weightFields = h("div.weights");
  const weightInputs = new Map();
  const weights = form(
    "Traffic weights",
    (submitter) => {
      if (submitter && submitter.value === "clear") {
        run({
          title: `Clear the weights of ${name}`,
          summary: [["Model", name], ["Then", "every request without a version goes to the default version"]],
          method: "DELETE",
          url: `../models/${m(name)}/traffic`,
          confirmLabel: "Clear weights",
        });
        return;
      }
      const body = {};
      for (const [version, el] of weightInputs) if (el.value.trim() !== "") body[version] = Number(el.value);
      run({
        title: `Set the weights of ${name}`,
        summary: [["Model", name], ...Object.entries(body).map(([v, w]) => [`Version ${v}`, `${w} %`])],
        method: "PUT",
        url: `../models/${m(name)}/traffic`,
        json: body,
        confirmLabel: "Set weights",
      });
    },
    h("p.help", {}, "Percentages over the loaded versions, summing to 100."),
    weightFields,
    h(
      "div.buttons",
      {},
      h("button#weights-submit", { type: "submit", value: "set" }, "Set weights…"),
      h("button.secondary#weights-clear", { type: "submit", value: "clear", formnovalidate: true }, "Clear weights…"),
    ),
  );

  const canary = versionSelect("rollout-version", (model) => model.versions[model.versions.length - 1]);
  const spec = {
    steps: input({ id: "rollout-steps", value: "10, 50, 100" }),
    interval_s: input({ id: "rollout-interval", type: "number", step: "any", min: "0", value: "30" }),
    max_error_rate: input({ id: "rollout-max-error-rate", type: "number", step: "any", min: "0", max: "1", value: "0.01" }),
    max_p99_ms: input({ id: "rollout-max-p99-ms", type: "number", step: "any", min: "0" }),
    max_p99_ratio: input({ id: "rollout-max-p99-ratio", type: "number", step: "any", min: "0" }),
    min_requests: input({ id: "rollout-min-requests", type: "number", step: "1", min: "1", value: "100" }),
    min_agreement: input({ id: "rollout-min-agreement", type: "number", step: "any", min: "0", max: "1" }),
    shadow_share: input({ id: "rollout-shadow-share", type: "number", step: "any", min: "0", max: "1", value: "1" }),
  };
  const rollout = form(
    "Start a rollout",
    () => {
      const body = {
        version: Number(canary.value),
        steps: spec.steps.value.split(/[\s,]+/).filter(Boolean).map(Number),
        interval_s: numberOrNull(spec.interval_s),
        max_error_rate: numberOrNull(spec.max_error_rate),
        max_p99_ms: numberOrNull(spec.max_p99_ms),
        max_p99_ratio: numberOrNull(spec.max_p99_ratio),
        min_requests: numberOrNull(spec.min_requests),
        min_agreement: numberOrNull(spec.min_agreement),
        shadow_share: numberOrNull(spec.shadow_share),
      };
      for (const key of Object.keys(body)) if (body[key] === null && !key.startsWith("max_p99") && key !== "min_agreement") delete body[key];
      run({
        title: `Start a rollout of ${name}`,
        summary: [["Model", name], ...Object.entries(body).map(([key, value]) => [key, Array.isArray(value) ? value.join(", ") : String(value)])],
        method: "POST",
        url: `../models/${m(name)}/rollouts`,
        json: body,
        confirmLabel: "Start rollout",
      });
    },
    fieldWithList("Canary version", canary),
    h(
      "div.grid-fields",
      {},
      field("Steps (percent, ending at 100)", spec.steps),
      field("Interval (s)", spec.interval_s),
      field("Max error rate (0–1)", spec.max_error_rate),
      field("Max p99 (ms, optional)", spec.max_p99_ms),
      field("Max p99 ratio to stable (optional)", spec.max_p99_ratio),
      field("Min requests per step", spec.min_requests),
      field("Min shadow agreement (0–1, optional)", spec.min_agreement),
      field("Shadow share (0–1)", spec.shadow_share),
    ),
    h("div.buttons", {}, h("button#rollout-submit", { type: "submit" }, "Start rollout…")),
  );
  const steer = h(
    "div.action-form",
    {},
    h("h3", {}, "The running rollout"),
    h(
      "div.buttons",
      {},
      h(
        "button#rollout-promote",
        {
          type: "button",
          onclick: () =>
            run({
              title: `Promote the rollout of ${name}`,
              summary: [["Model", name], ["Then", "the canary becomes the default at once"]],
              method: "POST",
              url: `../models/${m(name)}/rollout/promote`,
              confirmLabel: "Promote",
            }),
        },
        "Promote…",
      ),
      h(
        "button.danger#rollout-abort",
        {
          type: "button",
          onclick: () =>
            run({
              title: `Abort the rollout of ${name}`,
              summary: [["Model", name], ["Then", "traffic goes back to the stable version"]],
              method: "POST",
              url: `../models/${m(name)}/rollout/abort`,
              confirmLabel: "Abort rollout",
              danger: true,
            }),
        },
        "Abort…",
      ),
    ),
  );

  // nothing picked for the user: an unload is typed on purpose
  const unloadVersion = versionSelect("unload-version", () => null);
  const unload = form(
    "Unload a version",
    () =>
      run({
        title: `Unload ${name} version ${unloadVersion.value}`,
        summary: [["Model", name], ["Version", unloadVersion.value], ["Then", "it drains its queue and stops serving"]],
        method: "DELETE",
        url: `../models/${m(name)}/${m(unloadVersion.value)}`,
        confirmLabel: "Unload",
        danger: true,
      }),
    fieldWithList("Version", unloadVersion),
    h("div.buttons", {}, h("button.danger#unload-submit", { type: "submit" }, "Unload…")),
  );

  const element = h(
    "section.card#actions",
    { "aria-labelledby": "actions-heading" },
    h("h2#actions-heading", {}, "Actions"),
    who.can_manage
      ? null
      : h("p.notice.notice-warn#manage-notice", {}, "This token has no manage scope: the server will refuse these actions. You may still try."),
    region,
    h(
      "div.action-grid",
      {},
      loadForm({ model: name, region, onDone: () => refresh(), idPrefix: "load" }),
      setDefault,
      weights,
      rollout,
      steer,
      unload,
    ),
  );

  function update(model) {
    for (const { el, list, pick } of versionInputs) {
      list.replaceChildren(...model.versions.map((v) => h("option", { value: String(v.version) }, `${v.version} (${v.state === "unloading" ? "draining" : v.state})`)));
      const picked = pick(model);
      if (!el.value && picked && document.activeElement !== el) el.value = String(picked.version);
    }
    const wanted = model.versions.map((v) => String(v.version)).join(",");
    if (weightFields.dataset.versions !== wanted) {
      weightInputs.clear();
      weightFields.replaceChildren(
        ...model.versions.map((v) => {
          const el = input({ id: `weight-${v.version}`, type: "number", min: "0", max: "100", step: "1" });
          if (v.weight !== null && v.weight !== undefined) el.value = String(v.weight);
          weightInputs.set(String(v.version), el);
          return field(`Version ${v.version} (%)`, el);
        }),
      );
      weightFields.dataset.versions = wanted;
    }
  }
  return { element, update };
}
