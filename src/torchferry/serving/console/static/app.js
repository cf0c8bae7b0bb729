// The console's shell: sign-in when the server wants a token, the header's token state
// and Sign out, and a hash router (#/models, #/models/NAME, #/try, #/server) that shows
// one page at a time in <main> and stops the last page's polling when it leaves.

import { whenUnauthorized } from "./api.js";
import { showSignIn, whoami } from "./auth.js";
import { h, fill } from "./dom.js";
import * as modelPage from "./model.js";
import * as modelsPage from "./models.js";
import * as serverPage from "./server.js";
import { forgetToken } from "./session.js";
import * as tryPage from "./try.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const tokenState = document.getElementById("token-state");
const signOut = document.getElementById("sign-out");

let who = null;
let leave = () => {};

function route() {
  const hash = location.hash || "#/models";
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "models" && parts[1]) return { page: "model", render: modelPage.render, params: { name: parts[1] } };
  if (parts[0] === "try") return { page: "try", render: tryPage.render, params: {} };
  if (parts[0] === "server") return { page: "server", render: serverPage.render, params: {} };
  return { page: "models", render: modelsPage.render, params: {} };
}

function show() {
  if (!who) return;
  leave();
  leave = () => {};
  const { page, render, params } = route();
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.page === page || (page === "model" && link.dataset.page === "models")) {
      link.setAttribute("aria-current", "page");
    } else {
      link.removeAttribute("aria-current");
    }
  }
  fill(main);
  main.dataset.page = page;
  leave = render(main, { who, params }) || (() => {});
}

function showWho() {
  nav.hidden = false;
  if (!who.auth) {
    fill(tokenState, "No authentication (", h("code", {}, "--auth"), " is off)");
    signOut.hidden = true;
    return;
  }
  const scopes = who.scopes.length ? who.scopes.join(", ") : "none";
  fill(tokenState, "Token ", h("code", {}, who.token), " · scopes: ", scopes);
  signOut.hidden = false;
}

function signIn(message) {
  who = null;
  leave();
  leave = () => {};
  nav.hidden = true;
  signOut.hidden = true;
  tokenState.textContent = "Not signed in";
  main.dataset.page = "sign-in";
  showSignIn(main, message, start);
}

async function start() {
  let answer;
  try {
    answer = await whoami();
  } catch (err) {
    fill(main, h("p.notice.notice-bad", { role: "alert" }, `The console cannot reach the server: ${err.message}`));
    return;
  }
  if (!answer.who) {
    signIn(answer.message);
    return;
  }
  who = answer.who;
  showWho();
  show();
}

whenUnauthorized((message) => {
  if (who) signIn(message);
});
window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#/") || location.hash === "") show();
});
document.getElementById("skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
signOut.addEventListener("click", () => {
  forgetToken();
  signIn(null);
});
start();
