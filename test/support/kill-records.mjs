// Records for the SIGKILL crash test (test/log/sigkill.test.ts): everything a record holds is
// derived from its id, so the parent can check any record it finds against its key alone.
// Shared by the child (test/support/kill-appender.mjs) and the test; types in kill-records.d.mts.

/** FNV-1a over the id's UTF-16 code units. */
function hashId(id) {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** mulberry32: a small seeded PRNG returning uint32s. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** Mostly small values, some under 1 KiB, a few of several KiB and rare ones up to 64 KiB. */
function valueLength(next) {
  const r = next() % 1000;
  if (r < 750) return next() % 129;
  if (r < 980) return 128 + (next() % 897);
  if (r < 998) return 1024 + (next() % 15361);
  return 16384 + (next() % 49153);
}

/**
 * The record appended under `id`; the key is the id itself. Some records carry an explicit
 * timestamp in [tsBase, tsBase + 1e6 ms), a few one from 2001 (decades from the clock, so the
 * log must cut its disk batches there: one batch holds timestamps at most ~24 days apart).
 */
export function recordFor(id, tsBase) {
  const h = hashId(id);
  const next = prng(h);
  const len = valueLength(next);
  const value = Buffer.allocUnsafe(len);
  let i = 0;
  for (; i + 4 <= len; i += 4) value.writeUInt32LE(next(), i);
  if (i < len) {
    const last = next();
    for (let j = 0; i < len; i++, j++) value[i] = (last >>> (8 * j)) & 0xff;
  }
  const record = { key: id, value };
  if (h % 5 === 0) record.headers = { id, bin: value.subarray(0, Math.min(len, 16)) };
  if (h % 7 === 0) record.timestamp = tsBase + (h % 1_000_000);
  else if (h % 31 === 0) record.timestamp = 1_000_000_000_000 + (h % 1_000_000_000);
  return record;
}

/**
 * Ids: `${tag}:${seq}` for appendOne, `${tag}:${seq}/${index}/${count}` for the index-th record of
 * an `append` of `count` records. `tag` names the child process (cycle and spawn).
 */
export function parseId(id) {
  const m = /^([^:]+):(\d+)(?:\/(\d+)\/(\d+))?$/.exec(id);
  if (m === null) return null;
  return {
    tag: m[1],
    seq: Number(m[2]),
    batchIndex: m[3] === undefined ? -1 : Number(m[3]),
    batchCount: m[4] === undefined ? 1 : Number(m[4]),
  };
}
