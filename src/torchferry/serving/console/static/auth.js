// The sign-in form (with --auth) and who the current token is (GET api/whoami).

import { call, errorMessage } from "./api.js";
import { h, fill } from "./dom.js";
import { forgetToken, saveToken, token } from "./session.js";

/**
 * Who the stored token is: whoami's answer, or null when the server wants a token and
 * this one is missing or refused (then `message` says why, as the server wrote it).
 */
export async function whoami() {
  const answer = await call("GET", "api/whoami", { throwOnError: false, quiet401: true });
  if (answer.status === 401) {
    return { who: null, message: token() ? errorMessage(401, answer.text) : null };
  }
  if (!answer.ok) {
    throw new Error(`api/whoami answered ${answer.status}: ${answer.text}`);
  }
  return { who: answer.json, message: null };
}

/** Show the token form in `main`; calls signedIn() once a token is stored. */
export function showSignIn(main, message, signedIn) {
  forgetToken();
  const input = h("input#token-input", {
    type: "password",
    name: "token",
    // not "off": Chrome still offers to save a password field then; a token is not one
    autocomplete: "one-time-code",
    required: true,
    spellcheck: "false",
    "aria-describedby": "token-help",
  });
  const form = h(
    "form.card.sign-in",
    {
      onsubmit: (event) => {
        event.preventDefault();
        const value = input.value.trim();
        if (!value) return;
        saveToken(value);
        signedIn();
      },
    },
    h("h1", {}, "Sign in"),
    h(
      "p#token-help",
      {},
      "This server runs with --auth. Paste an access token (made with ",
      h("code", {}, "torchferry token create"),
      "). It is kept in this tab's session storage only and sent as a bearer header.",
    ),
    message ? h("p.notice.notice-bad#sign-in-error", { role: "alert" }, message) : null,
    h("div.field", {}, h("label", { for: "token-input" }, "Access token"), input),
    h("div.buttons", {}, h("button", { type: "submit" }, "Sign in")),
  );
  fill(main, form);
  input.focus();
}
