// Run a page's refresh every few seconds, one at a time: a refresh asked for while one is
// running (after an action) runs right after it, and nothing runs once the page is left.
// A refresh answers false (or throws) when it failed: the next one then waits longer
// (doubling up to 30 s), so a server that is down is not asked every 2 s.

const MOST_MS = 30000;

export function poller(refresh, intervalMs) {
  let timer = null;
  let running = false;
  let again = false;
  let stopped = false;
  let failures = 0;
  async function tick() {
    clearTimeout(timer);
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    let ok = false;
    try {
      ok = (await refresh(() => stopped)) !== false;
    } catch (err) {
      console.warn("a refresh failed", err); // the page's own notice says what a user needs
    } finally {
      running = false;
    }
    failures = ok ? 0 : failures + 1;
    if (stopped) return;
    if (again) {
      again = false;
      tick();
    } else {
      timer = setTimeout(tick, Math.min(MOST_MS, intervalMs * 2 ** failures));
    }
  }
  tick();
  return {
    now: tick,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
