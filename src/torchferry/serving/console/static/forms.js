// Labelled form fields, version pickers that keep the user's choice across refreshes, and
// the Load form (shared by the Models page and a model's page).

import { describeError, getJSON } from "./api.js";
import { runAction } from "./actions.js";
import { h } from "./dom.js";

let counter = 0;

/** A labelled field: <label for> + control (+ help text tied by aria-describedby). */
export function field(labelText, control, help) {
  if (!control.id) control.id = `f${++counter}`;
  let helpEl = null;
  if (help) {
    helpEl = h(`small.help#${control.id}-help`, {}, help);
    control.setAttribute("aria-describedby", helpEl.id);
  }
  return h("div.field", {}, h("label", { for: control.id }, labelText), control, helpEl);
}

export function input(attrs = {}) {
  return h("input", { type: "text", ...attrs });
}

/**
 * Set a <select>'s options to [value, text] pairs, keeping the chosen value when it still
 * exists; touches nothing when they are the same (so a focused select keeps its place).
 */
export function syncOptions(select, options) {
  const wanted = JSON.stringify(options);
  if (select.dataset.options === wanted) return;
  const chosen = select.value;
  select.replaceChildren(...options.map(([value, text]) => h("option", { value: String(value) }, text)));
  if (options.some(([value]) => String(value) === chosen)) select.value = chosen;
  select.dataset.options = wanted;
}

/** The Load action: a source from api/sources or typed (a path or an https URL). */
export function loadForm({ model, region, onDone, idPrefix = "load" }) {
  const name = input({ id: `${idPrefix}-name`, name: "model_name", required: true, autocomplete: "off" });
  if (model) {
    name.value = model;
    name.readOnly = true;
  }
  const found = h("select", { id: `${idPrefix}-found`, name: "found" });
  syncOptions(found, [["", "— choose a source —"]]);
  const typed = input({ id: `${idPrefix}-url`, name: "url", autocomplete: "off", placeholder: "/path/to/archive or https://…" });
  const sourcesNote = h("small.help", {}, "Looking for sources…");
  getJSON("api/sources")
    .then((sources) => {
      const options = sources.candidates.map((c) => [c.path, `${c.path} (${c.kind})`]);
      syncOptions(found, [["", options.length ? "— choose a source —" : "— none found —"], ...options]);
      const roots = sources.roots.length ? sources.roots.join(", ") : "none (--model-source-root not set)";
      sourcesNote.textContent = `Found under the model source roots: ${roots}${sources.truncated ? " (list cut short)" : ""}.`;
    })
    .catch((err) => {
      sourcesNote.textContent = `The sources cannot be listed (${describeError(err)}); type one.`;
    });
  const form = h(
    "form.action-form",
    {
      onsubmit: (event) => {
        event.preventDefault();
        const source = typed.value.trim() || found.value;
        const modelName = name.value.trim();
        if (!modelName || !source) {
          region.replaceChildren(h("p.notice.notice-bad", {}, "Load: give a model name and a source."));
          return;
        }
        const url = `../models?${new URLSearchParams({ url: source, model_name: modelName, synchronous: "true" })}`;
        runAction(
          {
            title: `Load a version of ${modelName}`,
            summary: [["Model", modelName], ["Source", source], ["Request", `POST ${url}`]],
            method: "POST",
            url,
            confirmLabel: "Load",
          },
          region,
          onDone,
        );
      },
    },
    h("h3", {}, "Load a version"),
    field("Model name", name),
    field("Source found on the server", found),
    sourcesNote,
    field("Or type a path or an https URL", typed, "A typed source wins over the one chosen above."),
    h("div.buttons", {}, h("button", { type: "submit", id: `${idPrefix}-submit` }, "Load…")),
  );
  return form;
}
