// Rates and quantiles from two readings of cumulative counters (GET api/metrics), the way
// Prometheus' rate() and histogram_quantile() compute them.

/**
 * Cumulative bucket counts of `now` minus those of `before`; null when there is no
 * earlier reading or a count went down (a worker restarted: that interval is skipped).
 */
function bucketDelta(now, before) {
  if (!now) return null;
  if (!before || before.counts.length !== now.counts.length) return null;
  const counts = now.counts.map((c, i) => c - before.counts[i]);
  if (counts.some((c) => c < 0)) return null;
  return { bounds: now.bounds, counts, sum: now.sum - before.sum };
}

/**
 * The q-quantile of a histogram given as cumulative counts per upper bound ("+Inf" last),
 * interpolated linearly within the bucket it falls in, as histogram_quantile does: the
 * first bucket's lower edge is 0, and a quantile in +Inf answers the last finite bound.
 */
export function histogramQuantile(q, histogram) {
  if (!histogram) return null;
  const { bounds, counts } = histogram;
  const total = counts[counts.length - 1];
  if (!total || total <= 0) return null;
  const rank = q * total;
  let index = counts.findIndex((c) => c >= rank);
  if (index < 0) index = counts.length - 1;
  const upper = bounds[index];
  if (upper === "+Inf" || upper === Infinity) {
    return index > 0 ? Number(bounds[index - 1]) : null;
  }
  const lower = index === 0 ? 0 : Number(bounds[index - 1]);
  const below = index === 0 ? 0 : counts[index - 1];
  const inBucket = counts[index] - below;
  if (inBucket <= 0) return Number(upper);
  return lower + (Number(upper) - lower) * ((rank - below) / inBucket);
}

/**
 * One version's figures over the interval between two readings: requests/s, error rate,
 * latency and queue time p50/p99 (ms), mean batch size. Null fields where there was
 * nothing to measure.
 */
export function intervalFigures(now, before, seconds) {
  const figures = {
    rps: null, errorRate: null, p50: null, p99: null, queueP50: null, queueP99: null, batch: null,
  };
  if (!now || !before || !(seconds > 0)) return figures;
  const success = now.success - before.success;
  const failure = now.failure - before.failure;
  if (success < 0 || failure < 0) return figures; // a worker restarted: skip one interval
  const requests = success + failure;
  figures.rps = requests / seconds;
  figures.errorRate = requests > 0 ? failure / requests : null;
  const latency = bucketDelta(now.latency, before.latency);
  const queue = bucketDelta(now.queue, before.queue);
  const toMs = (x) => (x === null ? null : x * 1000);
  figures.p50 = toMs(histogramQuantile(0.5, latency));
  figures.p99 = toMs(histogramQuantile(0.99, latency));
  figures.queueP50 = toMs(histogramQuantile(0.5, queue));
  figures.queueP99 = toMs(histogramQuantile(0.99, queue));
  const batch = bucketDelta(now.batch, before.batch);
  const executions = batch ? batch.counts[batch.counts.length - 1] : 0;
  figures.batch = executions > 0 ? batch.sum / executions : null;
  return figures;
}
