// Run a page's refresh every few seconds, one at a time: a refresh asked for while one is
// running (after an action) runs right after it, and nothing runs once the page is left.

export function poller(refresh, intervalMs) {
  let timer = null;
  let running = false;
  let again = false;
  let stopped = false;
  async function tick() {
    clearTimeout(timer);
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await refresh(() => stopped);
    } finally {
      running = false;
    }
    if (stopped) return;
    if (again) {
      again = false;
      tick();
    } else {
      timer = setTimeout(tick, intervalMs);
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
