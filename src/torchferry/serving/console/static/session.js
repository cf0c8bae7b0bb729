// The bearer token, kept in this tab's sessionStorage only (never a cookie, never a URL):
// it is gone when the tab closes, and no other tab or site sees it.

const KEY = "torchferry.console.token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function saveToken(value) {
  sessionStorage.setItem(KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}
