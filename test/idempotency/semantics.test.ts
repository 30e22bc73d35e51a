// Semantics of IdempotencyStore claim/complete/release/lookup/expiry on a fake clock: the state machine of src/idempotency/store.ts, checked call by call.
import { afterEach, describe, expect, it } from 'vitest';
import { SpoolError, type SpoolErrorCode } from '../../src/errors.js';
import { DAY, HOUR, StoreHarness, T0, fakeClock } from './helpers.js';

const h = new StoreHarness();
afterEach(() => h.cleanup());

async function expectCode(action: () => unknown, code: SpoolErrorCode): Promise<void> {
  let err: unknown = null;
  try {
    await action();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(SpoolError);
  expect((err as SpoolError).code, (err as Error).message).toBe(code);
}

describe('claim, complete, release', () => {
  it('a first claim acquires; a second sees in-progress; complete makes it done with the result', async () => {
    // Proves the main path: acquired → in-progress while leased → done with the stored result, for claim and lookup alike.
    const clock = fakeClock();
    const s = await h.openStore({ clock });
    expect(await s.lookup('order-1')).toBe('absent');
    expect(await s.claim('order-1', { ttlMs: 1000 })).toBe('acquired');
    expect(await s.claim('order-1', { ttlMs: 1000 })).toBe('in-progress');
    expect(await s.lookup('order-1')).toBe('in-progress');
    expect(await s.complete('order-1', { receipt: 42 })).toBe('completed');
    expect(await s.claim('order-1', { ttlMs: 1000 })).toEqual({ status: 'done', result: { receipt: 42 } });
    expect(await s.lookup('order-1')).toEqual({ status: 'done', result: { receipt: 42 } });
    expect(await s.release('order-1')).toBe('not-held');
  });

  it('results round-trip as bytes, strings, JSON and nothing', async () => {
    // Proves the result encodings: Buffer/Uint8Array come back as Buffer, a string as a string, other values as JSON, undefined as undefined.
    const s = await h.openStore({ clock: fakeClock() });
    const cases: [string, unknown, unknown][] = [
      ['bytes', Buffer.from([0, 1, 255]), Buffer.from([0, 1, 255])],
      ['u8', new Uint8Array([7, 8]), Buffer.from([7, 8])],
      ['str', 'héllo', 'héllo'],
      ['empty-str', '', ''],
      ['json', { a: [1, null, 'x'] }, { a: [1, null, 'x'] }],
      ['num', 0, 0],
      ['null', null, null],
      ['none', undefined, undefined],
    ];
    for (const [key, result, back] of cases) {
      expect(await s.complete(key, result)).toBe('completed');
      expect(await s.lookup(key), key).toEqual({ status: 'done', result: back });
    }
  });

  it('complete keeps the first result: a second complete is already-done', async () => {
    // Proves first-writer-wins for a done key, with or without a claim in between.
    const s = await h.openStore({ clock: fakeClock() });
    expect(await s.complete('k', 'first')).toBe('completed');
    expect(await s.complete('k', 'second')).toBe('already-done');
    expect(await s.claim('k', { ttlMs: 10 })).toEqual({ status: 'done', result: 'first' });
  });

  it('release gives the lease back: the next claim acquires at once', async () => {
    // Proves release: 'released' for a live lease, then the key is claimable; releasing again is 'not-held'.
    const s = await h.openStore({ clock: fakeClock() });
    expect(await s.claim('k', { ttlMs: 60_000 })).toBe('acquired');
    expect(await s.release('k')).toBe('released');
    expect(await s.release('k')).toBe('not-held');
    expect(await s.lookup('k')).toBe('absent');
    expect(await s.claim('k', { ttlMs: 60_000 })).toBe('acquired');
  });

  it('a lease expires after ttlMs: a dead holder does not block the key', async () => {
    // Proves lease expiry on the clock: in-progress until exactly ttlMs has passed, then acquirable; an expired lease cannot be released.
    const clock = fakeClock();
    const s = await h.openStore({ clock });
    expect(await s.claim('k', { ttlMs: 5000 })).toBe('acquired');
    clock.advance(4999);
    expect(await s.claim('k', { ttlMs: 5000 })).toBe('in-progress');
    clock.advance(1);
    expect(await s.release('k')).toBe('not-held');
    expect(await s.claim('k', { ttlMs: 5000 })).toBe('acquired');
  });

  it('concurrent claims of one key: exactly one acquires', async () => {
    // Proves the per-key queue: 50 simultaneous claims of the same key yield one 'acquired' and 49 'in-progress'; different keys all acquire.
    const s = await h.openStore({ clock: fakeClock() });
    const same = await Promise.all(Array.from({ length: 50 }, () => s.claim('hot', { ttlMs: 1000 })));
    expect(same.filter((r) => r === 'acquired')).toHaveLength(1);
    expect(same.filter((r) => r === 'in-progress')).toHaveLength(49);
    const many = await Promise.all(Array.from({ length: 200 }, (_, i) => s.claim(`k${i}`, { ttlMs: 1000 })));
    expect(many.every((r) => r === 'acquired')).toBe(true);
  });

  it('concurrent completes share fsyncs (group commit) and all become durable', async () => {
    // Proves group commit: 2,000 concurrent completes take far fewer flushes than records, and every one is done after a reopen.
    const clock = fakeClock();
    let s = await h.openStore({ clock });
    const before = s.stats().syncs;
    const r = await Promise.all(Array.from({ length: 2000 }, (_, i) => s.complete(`k${i}`, i)));
    expect(r.every((x) => x === 'completed')).toBe(true);
    const syncs = s.stats().syncs - before;
    expect(syncs).toBeGreaterThan(0);
    expect(syncs).toBeLessThan(200);
    s = await h.reopen(s, { clock });
    for (let i = 0; i < 2000; i += 97) expect(await s.lookup(`k${i}`)).toEqual({ status: 'done', result: i });
  });
});

describe('expiry', () => {
  it('a done key expires after retentionMs (default 7 days) and can be claimed again', async () => {
    // Proves the retention window: done at T0 stays done until T0 + 7 days - 1 ms, absent at T0 + 7 days, then a new cycle works.
    const clock = fakeClock();
    const s = await h.openStore({ clock });
    await s.complete('k', 'v1');
    clock.advance(7 * DAY - 1);
    expect(await s.lookup('k')).toEqual({ status: 'done', result: 'v1' });
    clock.advance(1);
    expect(await s.lookup('k')).toBe('absent');
    expect(await s.claim('k', { ttlMs: 10 })).toBe('acquired');
    expect(await s.complete('k', 'v2')).toBe('completed');
    expect(await s.lookup('k')).toEqual({ status: 'done', result: 'v2' });
  });

  it('windowMs shortens one key\'s window; the newest completion wins after a re-complete', async () => {
    // Proves per-key windows: a 1-minute key expires while a default one stays; completing it again (same journal) serves the new result.
    const clock = fakeClock();
    const s = await h.openStore({ clock, retentionMs: DAY });
    await s.complete('short', 'a', { windowMs: 60_000 });
    await s.complete('long', 'b');
    clock.advance(60_000);
    expect(await s.lookup('short')).toBe('absent');
    expect(await s.lookup('long')).toEqual({ status: 'done', result: 'b' });
    expect(await s.complete('short', 'a2', { windowMs: 60_000 })).toBe('completed');
    expect(await s.lookup('short')).toEqual({ status: 'done', result: 'a2' });
    await s.maintain();
    clock.advance(HOUR);
    expect(await s.lookup('short')).toBe('absent');
    await expectCode(() => s.complete('x', 1, { windowMs: DAY + 1 }), 'SPOOL_ERR_INVALID_ARGUMENT');
  });

  it('expiry holds across rolls, seals, merges and a reopen', async () => {
    // Proves that sealed and merged tables answer like the journal: keys done across several journals are found until their window ends, not after.
    const clock = fakeClock();
    let s = await h.openStore({ clock, retentionMs: 10 * HOUR, journalKeysMax: 50, mergeFanIn: 2 });
    for (let i = 0; i < 400; i++) {
      await s.complete(`k${i}`, i);
      if (i % 50 === 49) await s.maintain();
      clock.advance(1000);
    }
    await s.maintain();
    const st = s.stats();
    expect(st.seals).toBeGreaterThan(3);
    expect(st.merges).toBeGreaterThan(0);
    s = await h.reopen(s, { clock, retentionMs: 10 * HOUR, journalKeysMax: 50, mergeFanIn: 2 });
    for (let i = 0; i < 400; i += 7) expect(await s.lookup(`k${i}`), `k${i}`).toEqual({ status: 'done', result: i });
    // k0 was done at T0; k399 at T0 + 399 s.
    clock.t = T0 + 10 * HOUR + 199_500;
    expect(await s.lookup('k0')).toBe('absent');
    expect(await s.lookup('k199')).toBe('absent');
    expect(await s.lookup('k200')).toEqual({ status: 'done', result: 200 });
    expect(await s.claim('k100', { ttlMs: 10 })).toBe('acquired');
    expect(await s.claim('k300', { ttlMs: 10 })).toEqual({ status: 'done', result: 300 });
  });
});

describe('bounds and bad input', () => {
  it('rejects bad keys, ttls and results with typed errors, and refuses calls after close', async () => {
    // Proves argument checking (INVALID_ARGUMENT, RECORD_TOO_LARGE) happens before anything is written, and CLOSED after close().
    const s = await h.openStore({ clock: fakeClock(), resultBytesMax: 100 });
    await expectCode(() => s.claim('', { ttlMs: 1 }), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(() => s.claim('x'.repeat(1025), { ttlMs: 1 }), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(() => s.claim(42 as unknown as string, { ttlMs: 1 }), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(() => s.claim('k', { ttlMs: 0 }), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(() => s.claim('k', { ttlMs: 1.5 }), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(() => s.claim('k', undefined as unknown as { ttlMs: number }), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(() => s.complete('k', 'x'.repeat(101)), 'SPOOL_ERR_RECORD_TOO_LARGE');
    await expectCode(() => s.complete('k', { big: 1n }), 'SPOOL_ERR_INVALID_ARGUMENT');
    expect(s.stats().recordsWritten).toBe(0);
    expect(await s.claim('x'.repeat(1024), { ttlMs: 1 })).toBe('acquired');
    await h.close(s);
    await expectCode(() => s.claim('k', { ttlMs: 1 }), 'SPOOL_ERR_CLOSED');
    await expectCode(() => s.lookup('k'), 'SPOOL_ERR_CLOSED');
  });

  it('live leases are bounded by leasesMax (expired ones are swept to make room)', async () => {
    // Proves the lease bound: the (max+1)-th live lease fails TOO_MANY_LEASES (retriable); once leases expire, claims succeed again.
    const clock = fakeClock();
    const s = await h.openStore({ clock, leasesMax: 3 });
    for (const k of ['a', 'b', 'c']) expect(await s.claim(k, { ttlMs: 100 })).toBe('acquired');
    let err: unknown = null;
    try {
      await s.claim('d', { ttlMs: 100 });
    } catch (e) {
      err = e;
    }
    expect((err as SpoolError).code).toBe('SPOOL_ERR_TOO_MANY_LEASES');
    expect((err as SpoolError).retriable).toBe(true);
    expect(await s.complete('a')).toBe('completed');
    expect(await s.claim('d', { ttlMs: 100 })).toBe('acquired');
    clock.advance(100);
    expect(await s.claim('e', { ttlMs: 100 })).toBe('acquired');
    expect(s.stats().leases).toBe(1);
  });

  it('open refuses a directory holding foreign files', async () => {
    // Proves the store never adopts a directory it does not recognise (NOT_A_LOG), and takes the LOCK (LOCKED for a second open in-process).
    const dir = h.dir();
    const fs = await import('node:fs');
    fs.writeFileSync(`${dir}/notes.txt`, 'mine');
    await expectCode(() => h.openStore({ dir }), 'SPOOL_ERR_NOT_A_LOG');
    const dir2 = h.dir();
    await h.openStore({ dir: dir2 });
    await expectCode(() => h.openStore({ dir: dir2 }), 'SPOOL_ERR_LOCKED');
  });
});

describe('restart', () => {
  it('leases survive a restart until their expiry; completions and releases too', async () => {
    // Proves durable leases: after a clean reopen an unexpired lease is still in-progress (then expires on time), a released one is gone, a completed one is done.
    const clock = fakeClock();
    let s = await h.openStore({ clock });
    expect(await s.claim('held', { ttlMs: 10_000 })).toBe('acquired');
    expect(await s.claim('released', { ttlMs: 10_000 })).toBe('acquired');
    expect(await s.release('released')).toBe('released');
    expect(await s.claim('done', { ttlMs: 10_000 })).toBe('acquired');
    await s.complete('done', 'ok');
    expect(await s.claim('short', { ttlMs: 10 })).toBe('acquired');
    clock.advance(5000);
    s = await h.reopen(s, { clock });
    expect(s.recovery.leasesRestored).toBe(1);
    expect(await s.claim('held', { ttlMs: 1 })).toBe('in-progress');
    expect(await s.claim('released', { ttlMs: 1 })).toBe('acquired');
    expect(await s.claim('done', { ttlMs: 1 })).toEqual({ status: 'done', result: 'ok' });
    expect(await s.claim('short', { ttlMs: 1 })).toBe('acquired');
    clock.advance(5000);
    expect(await s.claim('held', { ttlMs: 1 })).toBe('acquired');
  });

  it('leases are carried across journal rolls, so a restart after a roll still knows them', async () => {
    // Proves the carry-forward: a lease taken in journal 0, then enough completions to roll and seal twice, then a reopen: the lease is still in-progress.
    const clock = fakeClock();
    let s = await h.openStore({ clock, journalKeysMax: 10 });
    expect(await s.claim('lease', { ttlMs: 60_000 })).toBe('acquired');
    for (let i = 0; i < 35; i++) await s.complete(`k${i}`);
    await s.maintain();
    expect(s.stats().rolls).toBeGreaterThanOrEqual(3);
    s = await h.reopen(s, { clock, journalKeysMax: 10 });
    expect(await s.claim('lease', { ttlMs: 1 })).toBe('in-progress');
    expect(await s.complete('lease', 'finally')).toBe('completed');
    s = await h.reopen(s, { clock, journalKeysMax: 10 });
    expect(await s.claim('lease', { ttlMs: 1 })).toEqual({ status: 'done', result: 'finally' });
  });
});
