// fetch with the bearer token, a time limit, the page's abort signal, and one decoding of
// every error shape the server answers: TorchServe's {"code","type","message"}
// (management), Triton's and the console's {"error"}.

import { token } from "./session.js";

/** How long a request may take before the page says the server does not answer. */
export const TIMEOUT_MS = 10000;

export class ApiError extends Error {
  constructor(status, message, answer) {
    super(message);
    this.status = status;
    this.answer = answer;
  }
}

/** "403 the token has no manage scope", or the message alone when nothing answered. */
export function describeError(err) {
  return `${err.status ? err.status + " " : ""}${err.message}`;
}

let onUnauthorized = () => {};

/** Called with the server's message whenever an answer is 401 (the token is gone or bad). */
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

// aborted when the page that asked is left, so its requests stop with it
let pageController = new AbortController();

/** A new page begins: every request the last one still had running is aborted. */
export function newPage() {
  pageController.abort();
  pageController = new AbortController();
}

export function authHeaders(headers = {}) {
  const value = token();
  return value ? { ...headers, Authorization: `Bearer ${value}` } : { ...headers };
}

/** The message a failed answer carries, as the server wrote it. */
export function errorMessage(status, text) {
  try {
    const body = JSON.parse(text);
    if (body && typeof body === "object") {
      if (typeof body.message === "string") return body.message;
      if (typeof body.error === "string") return body.error;
      if (typeof body.detail === "string") return body.detail;
    }
  } catch {
    // not JSON: the text itself
  }
  return text.trim() || `HTTP ${status}`;
}

function failure(err, timeoutMs) {
  if (err.name === "TimeoutError") return `the server did not answer within ${Math.round(timeoutMs / 1000)} s`;
  if (err.name === "AbortError") return "the request was cancelled (the page was left)";
  return `the server cannot be reached (${err.message})`;
}

/**
 * Send a request; answers {status, ok, headers, text, json} (with `raw`: {status, ok,
 * headers, bytes}, the body as a Uint8Array). With throwOnError (the default), a non-2xx
 * answer throws ApiError(status, message). A 401 also tells the sign-in form, unless
 * quiet401. No answer within timeoutMs, or the page left, throws ApiError(0, why).
 */
export async function call(
  method,
  url,
  { json, body, headers, throwOnError = true, quiet401 = false, raw = false, timeoutMs = TIMEOUT_MS } = {},
) {
  const signal = AbortSignal.any([AbortSignal.timeout(timeoutMs), pageController.signal]);
  const init = { method, headers: authHeaders(headers), cache: "no-store", credentials: "omit", signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  let bytes;
  try {
    response = await fetch(url, init);
    bytes = new Uint8Array(await response.arrayBuffer());
  } catch (err) {
    throw new ApiError(0, failure(err, timeoutMs), null);
  }
  const text = raw && response.ok ? null : new TextDecoder().decode(bytes);
  const message = response.ok ? null : errorMessage(response.status, text);
  if (response.status === 401 && !quiet401) onUnauthorized(message);
  if (!response.ok && throwOnError) {
    throw new ApiError(response.status, message, { status: response.status, ok: false, headers: response.headers, text, json: parse(text) });
  }
  if (raw) return { status: response.status, ok: response.ok, headers: response.headers, bytes };
  return { status: response.status, ok: response.ok, headers: response.headers, text, json: parse(text) };
}

function parse(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

export async function getJSON(url) {
  return (await call("GET", url)).json;
}
