// fetch with the bearer token and one decoding of every error shape the server answers:
// TorchServe's {"code","type","message"} (management), Triton's and the console's {"error"}.

import { token } from "./session.js";

export class ApiError extends Error {
  constructor(status, message, answer) {
    super(message);
    this.status = status;
    this.answer = answer;
  }
}

let onUnauthorized = () => {};

/** Called with the server's message whenever an answer is 401 (the token is gone or bad). */
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
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

/**
 * Send a request; answers {status, ok, headers, text, json}. With throwOnError (the
 * default), a non-2xx answer throws ApiError(status, message). A 401 also tells the
 * sign-in form, unless quiet401.
 */
export async function call(method, url, { json, body, headers, throwOnError = true, quiet401 = false } = {}) {
  const init = { method, headers: authHeaders(headers), cache: "no-store", credentials: "omit" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, `the server cannot be reached (${err.message})`, null);
  }
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  const answer = { status: response.status, ok: response.ok, headers: response.headers, text, json: parsed };
  if (!response.ok) {
    const message = errorMessage(response.status, text);
    if (response.status === 401 && !quiet401) onUnauthorized(message);
    if (throwOnError) throw new ApiError(response.status, message, answer);
  }
  return answer;
}

export async function getJSON(url) {
  return (await call("GET", url)).json;
}
