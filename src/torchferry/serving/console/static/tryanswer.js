// Try it: reading an answer (JSON, or V2 binary tensors after a JSON header) and, for an
// image classifier, its top-k classes with their labels.

import { h, table } from "./dom.js";
import { fromBytes, jsonValues } from "./tensors.js";

/** The answer's body as JSON-like data (binary V2 outputs decoded into "data"). */
export function decodeAnswer(bytes, headers) {
  const headerLength = headers.get("Inference-Header-Content-Length");
  if (headerLength !== null && headerLength !== "") {
    const n = Number(headerLength);
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(0, n)));
    let offset = n;
    for (const output of header.outputs || []) {
      const size = output.parameters?.binary_data_size;
      if (size === undefined) continue;
      const typed = fromBytes(bytes.subarray(offset, offset + size), output.datatype);
      offset += size;
      output.data = typed ? jsonValues(typed, output.datatype) : `(${size} bytes of ${output.datatype})`;
    }
    return { json: header, binary: true };
  }
  const text = new TextDecoder().decode(bytes);
  try {
    return { json: JSON.parse(text), binary: false };
  } catch {
    return { json: null, text, binary: false };
  }
}

const isClass = (x) => x && typeof x === "object" && typeof x.score === "number" && "label" in x;

/**
 * The first row's top-k classes, [{label, score}], if the answer is an image classifier's:
 * /predict's result ([[{class, label, score}]]), TorchServe's {label: score} (or a list of
 * them), or V1's predictions of class lists. Null otherwise.
 */
export function topK(json) {
  if (!json) return null;
  const candidates = [json.result, json.predictions, json];
  for (let rows of candidates) {
    if (rows === undefined || rows === null) continue;
    if (Array.isArray(rows) && rows.length && Array.isArray(rows[0])) rows = rows[0];
    if (Array.isArray(rows) && rows.length && rows.every(isClass)) {
      return rows.map((c) => ({ label: c.label ?? String(c.class), score: c.score }));
    }
    if (Array.isArray(rows) && rows.length && typeof rows[0] === "object" && !Array.isArray(rows[0])) rows = rows[0];
    if (rows && typeof rows === "object" && !Array.isArray(rows)) {
      const entries = Object.entries(rows);
      if (entries.length && entries.length <= 1000 && entries.every(([, v]) => typeof v === "number")) {
        if (rows === json && ("model_name" in json || "outputs" in json)) continue;
        return entries.map(([label, score]) => ({ label, score })).sort((a, b) => b.score - a.score);
      }
    }
  }
  return null;
}

export function topKTable(classes) {
  const top = Math.max(...classes.map((c) => c.score), 1e-12);
  const rows = classes.map((c, i) => {
    const bar = h("span.bar-fill", { "aria-hidden": "true" });
    bar.style.width = `${Math.max(0, Math.min(100, (c.score / top) * 100)).toFixed(1)}%`;
    return [String(i + 1), h("span.label", {}, c.label ?? "—"), c.score.toFixed(4), h("span.bar", {}, bar)];
  });
  return table("Top classes (first row)", ["Rank", "Label", "Score", "Relative score"], rows, "topk#topk-table");
}
