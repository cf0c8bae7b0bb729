// The console's shell: sign-in when the server wants a token, the header's token state
// and Sign out, and a hash router (#/models, #/models/NAME, #/try, #/server) that shows
// one page at a time in <main> and stops the last page's polling (and aborts its requests)
// when it leaves. A route change names the page in the title and moves focus to its <h1>.

import { newPage, whenUnauthorized } from "./api.js";
import { showSignIn, whoami } from "./auth.js";
import { alertRegion, h, fill } from "./dom.js";
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
let retryTimer = null;
let startProblem = null;

/** A hash part as the user meant it; a malformed escape (#/models/%E0) is taken as typed. */
function decodePart(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

function route() {
  const hash = location.hash || "#/models";
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodePart);
  if (parts[0] === "models" && parts[1]) return { page: "model", title: `Model ${parts[1]}`, render: modelPage.render, params: { name: parts[1] } };
  if (parts[0] === "try") return { page: "try", title: "Try it", render: tryPage.render, params: {} };
  if (parts[0] === "server") return { page: "server", title: "Server", render: serverPage.render, params: {} };
  return { page: "models", title: "Models", render: modelsPage.render, params: {} };
}

function leavePage() {
  leave();
  leave = () => {};
  newPage();
}

/** Show the page the hash names; moveFocus on a route change (not on the first load, where Tab must start at the skip link). */
function show(moveFocus = false) {
  if (!who) return;
  leavePage();
  const { page, title, render, params } = route();
  document.title = `${title} · torchferry console`;
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
  const heading = main.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    if (moveFocus) heading.focus();
  }
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
  leavePage();
  document.title = "Sign in · torchferry console";
  nav.hidden = true;
  signOut.hidden = true;
  tokenState.textContent = "Not signed in";
  main.dataset.page = "sign-in";
  showSignIn(main, message, start);
}

/** whoami failed: say why, offer Retry, and retry by itself after 2, 4, … 30 s. */
function cannotStart(err, attempt) {
  const wait = Math.min(30, 2 ** (attempt + 1));
  if (main.dataset.page !== "unreachable") {
    main.dataset.page = "unreachable";
    startProblem = alertRegion("start-problem");
    fill(
      main,
      h("h1", { tabindex: "-1" }, "The console cannot start"),
      startProblem.element,
      h("p", {}, h("span#start-wait", {}), " ", h("button#start-retry", { type: "button", onclick: () => start(0) }, "Retry now")),
    );
  }
  startProblem.show(`The server cannot be reached: ${err.message}`);
  document.getElementById("start-wait").textContent = `It is asked again in ${wait} s.`;
  retryTimer = setTimeout(() => start(attempt + 1), wait * 1000);
}

async function start(attempt = 0) {
  clearTimeout(retryTimer);
  let answer;
  try {
    answer = await whoami();
  } catch (err) {
    cannotStart(err, attempt);
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
  if (location.hash.startsWith("#/") || location.hash === "") show(true);
});
document.getElementById("skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
signOut.addEventListener("click", () => {
  forgetToken();
  tryPage.forget();
  signIn(null);
});
start();
