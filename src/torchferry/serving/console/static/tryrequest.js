// Try it: the request each protocol takes for an image, pasted JSON or a .npy array.
// Answers {path, body, headers, note}; the path is under api/try/ (the console's forwarder).

import { flatten, jsonValues, nest, shapeOf, toBytes } from "./tensors.js";

export const PROTOCOLS = [
  ["v2", "KServe V2, JSON (/v2/models/M/infer)"],
  ["v2-binary", "KServe V2, binary tensors (/v2/models/M/infer)"],
  ["v2-grpc", "KServe V2 gRPC (ModelInfer, through the console)"],
  ["v1", "TF Serving / KServe V1 instances (/v1/models/M:predict)"],
  ["predict", "Plain /predict (the model's handler)"],
  ["torchserve", "TorchServe /predictions (the model's handler)"],
];

export class RequestError extends Error {}

const q = encodeURIComponent;

export function routeFor(protocol, model, version) {
  const m = q(model);
  const v = version ? q(version) : null;
  switch (protocol) {
    case "v2":
    case "v2-binary":
      return v ? `v2/models/${m}/versions/${v}/infer` : `v2/models/${m}/infer`;
    case "v1":
      return v ? `v1/models/${m}/versions/${v}:predict` : `v1/models/${m}:predict`;
    case "predict":
      return v ? `predict/${m}/versions/${v}` : `predict/${m}`;
    default:
      return v ? `predictions/${m}/${v}` : `predictions/${m}`;
  }
}

/** The one input a request names when it gives only data: from the signature, or typed. */
function singleInput(signature, typedName) {
  if (typedName) {
    const spec = signature?.inputs?.find((s) => s.name === typedName);
    return { name: typedName, datatype: spec?.datatype || null, shape: spec?.shape || null };
  }
  if (!signature || !signature.inputs) {
    throw new RequestError("the model's signature is not known to this token: paste a whole request body, or type the input's name");
  }
  if (signature.inputs.length !== 1) {
    throw new RequestError(`the model has ${signature.inputs.length} inputs: paste a whole request body`);
  }
  return signature.inputs[0];
}

/** Data for one input -> rows: a batch dimension added when the data is one row short of it. */
function asBatch(data, spec) {
  const shape = shapeOf(data);
  if (spec?.shape && shape.length === spec.shape.length - 1) return { data: [data], shape: [1, ...shape] };
  return { data, shape };
}

function v2Binary(body) {
  const parts = [];
  const inputs = body.inputs.map((input) => {
    if (input.data === undefined) return input;
    if (!input.datatype) throw new RequestError(`input ${input.name} has no datatype`);
    const bytes = toBytes(flatten(input.data), input.datatype);
    parts.push(bytes);
    const { data: _, ...rest } = input;
    return { ...rest, parameters: { ...(input.parameters || {}), binary_data_size: bytes.byteLength } };
  });
  return binaryBody({ ...body, inputs }, parts);
}

function binaryBody(header, parts) {
  const json = new TextEncoder().encode(JSON.stringify({ ...header, parameters: { ...(header.parameters || {}), binary_data_output: true } }));
  return {
    body: new Blob([json, ...parts]),
    headers: { "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": String(json.byteLength) },
  };
}

function jsonBody(value) {
  return { body: JSON.stringify(value), headers: { "Content-Type": "application/json" } };
}

/** An image upload: the handler routes take its bytes; the tensor protocols cannot. */
function imageRequest(protocol, file) {
  if (protocol === "predict" || protocol === "torchserve") {
    return { body: file, headers: { "Content-Type": file.type || "application/octet-stream" } };
  }
  throw new RequestError("an image goes through the model's handler: choose /predict or TorchServe /predictions (V2 and V1 take tensors: paste JSON or a .npy)");
}

function pastedRequest(protocol, value, signature, inputName) {
  const isObject = value && typeof value === "object" && !Array.isArray(value);
  if (protocol === "v2" || protocol === "v2-binary" || protocol === "v2-grpc") {
    let body = value;
    if (!(isObject && Array.isArray(value.inputs))) {
      const spec = singleInput(signature, inputName);
      const { data, shape } = asBatch(value, spec);
      body = { inputs: [{ name: spec.name, datatype: spec.datatype || "FP32", shape, data: flatten(data) }] };
    }
    return protocol === "v2-binary" ? v2Binary(body) : jsonBody(body);
  }
  if (protocol === "v1") {
    if (isObject && ("instances" in value || "inputs" in value)) return jsonBody(value);
    const spec = signature?.inputs?.length === 1 ? signature.inputs[0] : null;
    return jsonBody({ instances: asBatch(value, spec).data });
  }
  if (isObject) return jsonBody(value); // a whole /predict or TorchServe body
  const spec = signature?.inputs?.length === 1 ? signature.inputs[0] : null;
  return jsonBody({ data: asBatch(value, spec).data });
}

function npyRequest(protocol, array, signature, inputName) {
  if (array.datatype === "FP16" && protocol !== "v2-binary") {
    throw new RequestError("FP16 travels only as binary: choose KServe V2, binary tensors");
  }
  if (protocol === "v2-binary") {
    const spec = singleInput(signature, inputName);
    const header = { inputs: [{ name: spec.name, datatype: array.datatype, shape: array.shape, parameters: { binary_data_size: array.bytes.byteLength } }] };
    return binaryBody(header, [array.bytes]);
  }
  const values = jsonValues(array.data, array.datatype);
  if (protocol === "v2" || protocol === "v2-grpc") {
    const spec = singleInput(signature, inputName);
    return jsonBody({ inputs: [{ name: spec.name, datatype: array.datatype, shape: array.shape, data: values }] });
  }
  const nested = nest(values, array.shape);
  return jsonBody(protocol === "v1" ? { instances: nested } : { data: nested });
}

/** input: {kind: "image", file} | {kind: "json", value} | {kind: "npy", array}. */
export function buildRequest({ protocol, model, version, input, signature, inputName }) {
  if (!model) throw new RequestError("choose a model");
  let built;
  try {
    if (input.kind === "image") built = imageRequest(protocol, input.file);
    else if (input.kind === "npy") built = npyRequest(protocol, input.array, signature, inputName);
    else built = pastedRequest(protocol, input.value, signature, inputName);
  } catch (err) {
    if (err instanceof RequestError) throw err;
    throw new RequestError(err.message);
  }
  if (protocol === "v2-grpc") {
    // a browser cannot speak gRPC: the console makes the call from the V2 JSON body
    return { path: `api/try-grpc/${q(model)}${version ? `?version=${q(version)}` : ""}`, ...built };
  }
  return { path: `api/try/${routeFor(protocol, model, version)}`, ...built };
}
