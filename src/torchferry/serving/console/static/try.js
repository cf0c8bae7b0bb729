// The Try it page: choose a model, a version and a protocol; give an image, JSON or a .npy
// file; send it through the console's forwarder (api/try/...) and see the status, the
// answer, the latency (in the page and the server's) and the request's id and version.

import { call, describeError, getJSON, errorMessage } from "./api.js";
import { statusRegion } from "./actions.js";
import { statusText } from "./http.js";
import { facts, fill, h } from "./dom.js";
import { ms, prettyJSON } from "./format.js";
import { field, input, syncOptions } from "./forms.js";
import { NpyError, parseNpy } from "./npy.js";
import { decodeAnswer, topK, topKTable } from "./tryanswer.js";
import { PROTOCOLS, RequestError, buildRequest } from "./tryrequest.js";

/** Remembered across visits to the page (not the token: that lives in session.js). */
const FRESH = { model: "", version: "", protocol: "predict", kind: "image", json: "" };
const remembered = { ...FRESH };

/** Sign out: the next person at this tab does not see what was tried. */
export function forget() {
  Object.assign(remembered, FRESH);
}

function radio(name, value, text, checked) {
  const id = `${name}-${value}`;
  return h(
    "div.radio",
    {},
    h("input", { type: "radio", name, id, value, checked }),
    h("label", { for: id }, text),
  );
}

export function render(main, ctx) {
  let overview = null;
  const model = input({ id: "try-model", list: "try-models", autocomplete: "off", required: true, value: remembered.model });
  const models = h("datalist#try-models");
  const version = input({ id: "try-version", list: "try-versions", autocomplete: "off", inputmode: "numeric", value: remembered.version });
  const versions = h("datalist#try-versions");
  const protocol = h("select#try-protocol", { name: "protocol" });
  syncOptions(protocol, PROTOCOLS);
  protocol.value = remembered.protocol;
  const image = h("input#try-image", { type: "file", accept: "image/*" });
  const json = h("textarea#try-json", { rows: 6, spellcheck: "false", placeholder: '[[1.0, 2.0, 3.0, 4.0]]  or a whole body: {"inputs": [...]}' });
  json.value = remembered.json;
  const npy = h("input#try-npy", { type: "file", accept: ".npy,application/octet-stream" });
  const inputName = input({ id: "try-input-name", autocomplete: "off" });
  const signatureNote = h("p.help#try-signature", {}, "");
  const kinds = h(
    "fieldset.kinds",
    {},
    h("legend", {}, "Input"),
    radio("try-kind", "image", "An image file", remembered.kind === "image"),
    radio("try-kind", "json", "Pasted JSON", remembered.kind === "json"),
    radio("try-kind", "npy", "A .npy file", remembered.kind === "npy"),
  );
  const panels = {
    image: h("div.kind-panel", { dataset: { kind: "image" } }, field("Image", image, "Sent as the raw body; the model's handler decodes it.")),
    json: h(
      "div.kind-panel",
      { dataset: { kind: "json" } },
      field("JSON", json, "A whole request body for the chosen protocol, or just the data of a single-input model (the request is built from its signature)."),
    ),
    npy: h("div.kind-panel", { dataset: { kind: "npy" } }, field(".npy file", npy, "Little-endian, C order; sent as binary (V2 binary) or as JSON data.")),
  };
  const showKind = () => {
    const kind = kinds.querySelector("input:checked")?.value || "image";
    remembered.kind = kind;
    for (const [name, panel] of Object.entries(panels)) panel.hidden = name !== kind;
  };
  kinds.addEventListener("change", showKind);
  // aria-disabled, not disabled, while a request runs: a disabled button drops the focus
  const send = h("button#try-send", { type: "submit" }, "Send");
  const status = statusRegion("try-status");
  const result = h("div#try-result");

  const signatureOf = () => {
    const m = overview?.models.find((x) => x.name === model.value.trim());
    if (!m) return null;
    const wanted = version.value.trim();
    const v = m.versions.find((x) => (wanted ? String(x.version) === wanted : x.is_default)) || m.versions.find((x) => x.inputs);
    return v && v.inputs ? { inputs: v.inputs, outputs: v.outputs, version: v.version } : null;
  };
  const describeModel = () => {
    const m = overview?.models.find((x) => x.name === model.value.trim());
    versions.replaceChildren(...(m ? m.versions.map((v) => h("option", { value: String(v.version) })) : []));
    const signature = signatureOf();
    signatureNote.textContent = signature
      ? `Version ${signature.version} takes ${signature.inputs.map((s) => `${s.name} (${s.datatype} [${s.shape.join(", ")}])`).join(", ")}.`
      : overview
        ? ""
        : "This token cannot read the models' signatures: paste whole request bodies, or type the input's name.";
    if (signature && signature.inputs.length === 1 && !inputName.value) inputName.placeholder = signature.inputs[0].name;
  };
  model.addEventListener("input", describeModel);
  version.addEventListener("input", describeModel);

  const form = h(
    "form.card.try-form",
    { onsubmit: (event) => (event.preventDefault(), submit()) },
    h(
      "div.grid-fields",
      {},
      field("Model", model),
      models,
      field("Version (empty: the default)", version),
      versions,
      h("div.wide", {}, field("Protocol", protocol)),
      field("Input name (optional)", inputName, "For data without a name; the model's single input by default."),
    ),
    signatureNote,
    kinds,
    Object.values(panels),
    h("div.buttons", {}, send),
  );
  fill(main, h("h1", {}, "Try it"), form, h("section.card", { "aria-labelledby": "try-answer-heading" }, h("h2#try-answer-heading", {}, "Answer"), status, result));
  showKind();
  describeModel();

  (ctx.who.can_read ? getJSON("api/overview") : Promise.reject(new Error("this token cannot read")))
    .then((answer) => {
      overview = answer;
      models.replaceChildren(...answer.models.map((m) => h("option", { value: m.name })));
      if (!model.value && answer.models.length) model.value = answer.models[0].name;
      describeModel();
    })
    .catch(() => {
      overview = null;
      describeModel();
    });

  async function readInput(kind) {
    if (kind === "image") {
      if (!image.files.length) throw new RequestError("choose an image file");
      return { kind, file: image.files[0] };
    }
    if (kind === "npy") {
      if (!npy.files.length) throw new RequestError("choose a .npy file");
      try {
        return { kind, array: parseNpy(await npy.files[0].arrayBuffer()) };
      } catch (err) {
        if (err instanceof NpyError) throw new RequestError(`the .npy file: ${err.message}`);
        throw err;
      }
    }
    try {
      return { kind, value: JSON.parse(json.value) };
    } catch (err) {
      throw new RequestError(`the JSON does not parse: ${err.message}`);
    }
  }

  async function submit() {
    if (send.getAttribute("aria-disabled") === "true") return; // one request at a time
    remembered.model = model.value.trim();
    remembered.version = version.value.trim();
    remembered.protocol = protocol.value;
    remembered.json = json.value;
    let request;
    try {
      request = buildRequest({
        protocol: protocol.value,
        model: model.value.trim(),
        version: version.value.trim(),
        input: await readInput(remembered.kind),
        signature: signatureOf(),
        inputName: inputName.value.trim(),
      });
    } catch (err) {
      fill(status, h("p.notice.notice-bad", {}, `Not sent: ${err.message}.`));
      result.replaceChildren();
      return;
    }
    send.setAttribute("aria-disabled", "true");
    fill(status, h("p.notice.notice-info", {}, "Sending…"));
    const began = performance.now();
    let response;
    try {
      response = await call("POST", request.path, { body: request.body, headers: request.headers, raw: true, throwOnError: false, timeoutMs: 60000 });
    } catch (err) {
      fill(status, h("p.notice.notice-bad", {}, `No answer: ${describeError(err)}`));
      return;
    } finally {
      send.removeAttribute("aria-disabled");
    }
    show(response, response.bytes, performance.now() - began);
  }

  function show(response, bytes, roundTrip) {
    const headers = response.headers;
    let decoded;
    try {
      decoded = decodeAnswer(bytes, headers);
    } catch (err) {
      decoded = { json: null, text: `(the binary answer cannot be read: ${err.message})` };
    }
    const serverMs = headers.get("X-Torchferry-Latency-Ms");
    const grpcStatus = headers.get("X-Torchferry-Grpc-Status");
    const ok = response.ok;
    const message = ok ? null : errorMessage(response.status, decoded.json ? JSON.stringify(decoded.json) : decoded.text || "");
    fill(
      status,
      h(
        `div.notice.notice-${ok ? "ok" : "bad"}#try-outcome`,
        { dataset: { status: String(response.status) } },
        h("p", {}, h("strong", {}, ok ? "Answered " : "Refused "), `(${statusText(response.status)})`, message ? `: ${message}` : ""),
      ),
    );
    const classes = ok ? topK(decoded.json) : null;
    fill(
      result,
      facts(
        [
          ["Status", h("span#try-http-status", {}, statusText(response.status))],
          ["Round trip (in the page)", h("span#try-latency", {}, ms(roundTrip))],
          ["Inference (the server's)", h("span#try-server-latency", {}, serverMs ? ms(Number(serverMs)) : "—")],
          ["Request id", h("code#try-request-id", {}, headers.get("X-Request-ID") || "—")],
          ["Model version", h("span#try-model-version", {}, headers.get("X-Model-Version") || "—")],
          ...(grpcStatus ? [["gRPC status", h("code#try-grpc-status", {}, grpcStatus)]] : []),
        ],
        "facts.try-facts",
      ),
      classes ? topKTable(classes) : null,
      h(
        "div.answer",
        {},
        h("h3", {}, decoded.binary ? "The answer (binary outputs decoded)" : "The answer"),
        h("pre#try-answer", { tabindex: "0" }, decoded.json ? prettyJSON(decoded.json) : decoded.text || "(empty)"),
      ),
    );
  }
  return () => {};
}
