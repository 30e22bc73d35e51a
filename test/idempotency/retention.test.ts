// Retention reclaims space: keys completed across several retention buckets become one table per closed bucket, and whole tables are deleted once every key in them expired.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR, StoreHarness, T0, fakeClock, listStore } from './helpers.js';

const h = new StoreHarness();
afterEach(() => h.cleanup());

function dirBytes(dir: string): number {
  return fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
}

describe('retention', () => {
  it('merges each closed bucket into one table and deletes tables whose keys all expired', async () => {
    // Proves space reclamation on a fake clock: 8 h retention in 1 h buckets; 600 keys per hour for 6 hours; after the windows pass, maintain() deletes the files and the keys are absent, while younger keys stay.
    const clock = fakeClock(T0 - (T0 % HOUR));
    const opts = { clock, retentionMs: 8 * HOUR, bucketMs: HOUR, journalKeysMax: 200, mergeFanIn: 3 };
    const s = await h.openStore(opts);
    for (let hour = 0; hour < 6; hour++) {
      for (let i = 0; i < 600; i += 100) {
        await Promise.all(Array.from({ length: 100 }, (_, j) => s.complete(`h${hour}-${i + j}`, 'x'.repeat(50))));
        clock.advance(HOUR / 6);
        await s.maintain();
      }
    }
    await s.maintain();
    const st = s.stats();
    expect(st.keys).toBe(3600);
    // Closed buckets 0..4 hold one table each after their final merge; bucket 5 (current) a few.
    expect(st.tables).toBeLessThanOrEqual(5 + 4);
    expect(st.merges).toBeGreaterThan(0);
    const bytesFull = dirBytes(s.dir);
    expect(bytesFull).toBeGreaterThan(3600 * 100);

    // Hour 0's keys were done in [T0, T0+1h): all expired at T0+9h.
    clock.t = T0 - (T0 % HOUR) + 9 * HOUR;
    const r = await s.maintain();
    expect(r.expiredTables).toBeGreaterThanOrEqual(1);
    expect(r.reclaimedBytes).toBeGreaterThan(0);
    expect(await s.lookup('h0-5')).toBe('absent');
    expect(await s.lookup('h3-5')).toEqual({ status: 'done', result: 'x'.repeat(50) });
    // Everything expires by T0 + 6h + 8h + a bucket.
    clock.t = T0 - (T0 % HOUR) + 15 * HOUR;
    await s.maintain();
    const after = s.stats();
    expect(after.tables).toBe(0);
    expect(after.reclaimedBytes).toBeGreaterThan(bytesFull * 0.9);
    expect(listStore(s.dir).tables).toEqual([]);
    expect(dirBytes(s.dir)).toBeLessThan(4096);
    expect(await s.lookup('h5-599')).toBe('absent');
  });

  it('an idle store still rolls at the bucket boundary, so old keys do not sit in the journal forever', async () => {
    // Proves time-based rolling: one completion, then only the clock moves; maintain() rolls, seals, and finally deletes the table.
    const clock = fakeClock();
    const s = await h.openStore({ clock, retentionMs: 4 * HOUR, bucketMs: HOUR });
    await s.complete('lonely', 1);
    clock.advance(HOUR);
    const r = await s.maintain();
    expect(r.rolled).toBe(true);
    expect(r.sealed).toBe(1);
    expect(listStore(s.dir).tables).toHaveLength(1);
    clock.advance(4 * HOUR);
    await s.maintain();
    expect(listStore(s.dir).tables).toHaveLength(0);
    expect(listStore(s.dir).journals).toHaveLength(1);
  });
});
