// The dedupe window without stored keys: against a Map of exact keys on random operations, with
// forced hash collisions (a match is confirmed by reading the record), expiry, the entry bound,
// claims of appends in flight, and through a broker whose every id shares one hash.
import { afterEach, describe, expect, it } from 'vitest';
import { type Claim, DedupeWindow, hashKey, keyHashing } from '../../src/broker/dedupe-window.js';
import { BrokerHarness, fakeClock } from '../support/broker-helpers.js';
import { seededRandom } from '../support/faulty-storage.js';

const h = new BrokerHarness();
afterEach(async () => {
  keyHashing.hashKey = hashKey;
  await h.cleanup();
});

/** A fake log: offset → stored key; `gone` offsets were deleted by retention. */
class FakeLog {
  readonly keys: string[] = [];
  readonly gone = new Set<number>();
  reads = 0;
  append(key: string): number {
    this.keys.push(key);
    return this.keys.length - 1;
  }
  keyAt = async (offset: number): Promise<string | null> => {
    this.reads++;
    await Promise.resolve();
    return this.gone.has(offset) ? null : (this.keys[offset] ?? null);
  };
}

async function settle(c: Claim | Promise<Claim>): Promise<Claim> {
  return typeof c === 'string' ? c : await c;
}

describe('DedupeWindow', () => {
  // Each model test runs with new keys indexed lazily always (0) and eagerly after lookups (the default).
  it.each([0, 10_000])('agrees with a Map of exact keys over random claims, holds, stores, releases and time (collisions forced on half the keys; indexEagerlyMs %i)', async (eagerMs) => {
    // Proves exactness: a reference Map<key, until> and the window must give the same answer to every claim; keys 'c*' all share one hash.
    keyHashing.hashKey = (id, out) => (id.startsWith('c') ? Object.assign(out, { h1: 7, h2: 9 }) : hashKey(id, out));
    const log = new FakeLog();
    const w = new DedupeWindow(1000, 1_000_000, log.keyAt, eagerMs);
    const ref = new Map<string, number>();
    const rnd = seededRandom(42);
    let now = 1_000_000;
    for (let step = 0; step < 4000; step++) {
      now += Math.floor(rnd() * 5);
      const key = `${rnd() < 0.5 ? 'c' : 'k'}${Math.floor(rnd() * 300)}`;
      const until = ref.get(key);
      const expected: Claim = until !== undefined && until > now ? 'duplicate' : 'claimed';
      // `holds` answers what the claim will, without claiming.
      // (Not every step: a claim must index new keys by itself too.)
      if (rnd() < 0.5) expect(await w.holds(key, now), `step ${step}: holds ${key}`).toBe(expected === 'duplicate');
      // A key the reference says is new may come as a server's client-made id (claimNew: no lookup).
      const got = expected === 'claimed' && rnd() < 0.4 ? w.claimNew(key, now) : await settle(w.claim(key, now));
      expect(got, `step ${step}: ${key}`).toBe(expected);
      if (got === 'duplicate') continue;
      if (rnd() < 0.1) {
        w.release(key);
      } else {
        ref.set(key, now + 1000);
        w.stored(key, log.append(key));
      }
    }
    expect(log.reads).toBeGreaterThan(100);
  });

  it.each([0, 10_000])('agrees with a reference when appends resolve out of order, across growth of the ring and table (indexEagerlyMs %i)', async (eagerMs) => {
    // Proves the pending-claim bookkeeping: hundreds of claims in flight at once, stored or released in random order (not the claim order the fast path expects), keys repeated while in flight, thousands of keys so every array grows.
    const log = new FakeLog();
    const w = new DedupeWindow(1_000_000, 10_000_000, log.keyAt, eagerMs);
    const stored = new Set<string>();
    const pending: string[] = [];
    const rnd = seededRandom(11);
    for (let step = 0; step < 30_000; step++) {
      if (pending.length === 0 || rnd() < 0.55) {
        const key = `k${Math.floor(rnd() * 8000)}`;
        const expected: Claim = stored.has(key) || pending.includes(key) ? 'duplicate' : 'claimed';
        // A key claimed by an append in flight is held too.
        if (rnd() < 0.5) expect(await w.holds(key, step), `step ${step}: holds ${key}`).toBe(expected === 'duplicate');
        const got = expected === 'claimed' && rnd() < 0.4 ? w.claimNew(key, step) : await settle(w.claim(key, step));
        expect(got, `step ${step}: ${key}`).toBe(expected);
        if (expected === 'claimed') pending.push(key);
      } else {
        // The oldest most of the time (appends commit in order), any other otherwise.
        const i = rnd() < 0.7 ? 0 : Math.floor(rnd() * pending.length);
        const [key] = pending.splice(i, 1) as [string];
        if (rnd() < 0.1) w.release(key);
        else {
          w.stored(key, log.append(key));
          stored.add(key);
        }
      }
      if (step % 500 === 0) {
        expect(w.size).toBe(stored.size);
        expect(w.claimed).toBe(pending.length);
      }
    }
    expect(stored.size).toBeGreaterThan(4000);
  });

  it('a concurrent claim of a key in flight is a duplicate; a released claim frees the key', async () => {
    // Proves claims: two claims of one key before its append resolves give claimed then duplicate; release lets the next claim through.
    const log = new FakeLog();
    const w = new DedupeWindow(1000, 100, log.keyAt);
    expect(await settle(w.claim('a', 0))).toBe('claimed');
    expect(await settle(w.claim('a', 1))).toBe('duplicate');
    w.release('a');
    expect(await settle(w.claim('a', 2))).toBe('claimed');
    w.stored('a', log.append('a'));
    expect(await settle(w.claim('a', 999))).toBe('duplicate');
    expect(await settle(w.claim('a', 1002))).toBe('claimed');
    expect(w.claimed).toBe(1);
  });

  it('claimNew looks nothing up and leaves the table alone until a lookup, which then sees every new key', async () => {
    // Proves the unindexed path: new keys cost no table entry while only new keys come; the first lookup indexes them all (so a resend is a duplicate), and new keys that leave the window unindexed leave nothing behind.
    const log = new FakeLog();
    const w = new DedupeWindow(1000, 5000, log.keyAt);
    // Claimed in batches of 100, each stored in claim order once the next batch is claimed (as
    // group commits resolve), so the last batch is still in flight.
    for (let b = 0; b < 30; b++) {
      for (let i = b * 100; i < b * 100 + 100; i++) expect(w.claimNew(`n${i}`, 0)).toBe('claimed');
      if (b > 0) for (let i = (b - 1) * 100; i < b * 100; i++) w.stored(`n${i}`, log.append(`n${i}`));
    }
    expect(w.indexed).toBe(0);
    expect(w.size).toBe(2900);
    expect(w.claimed).toBe(100);
    // A resend of a stored one and of one still in flight: both duplicates, after indexing all 3,000.
    expect(await settle(w.claim('n10', 1))).toBe('duplicate');
    expect(w.indexed).toBe(3000);
    expect(await w.holds('n2950', 1)).toBe(true);
    for (let i = 2900; i < 3000; i++) w.stored(`n${i}`, log.append(`n${i}`));
    // Lookups came (at 1), so for the next 10 s a new key is indexed as it comes: no later lookup
    // meets a long unindexed run. Released, it leaves the table again.
    expect(w.claimNew('r', 2)).toBe('claimed');
    expect(w.indexed).toBe(3001);
    // Indexing, it also sees a key wrongly called new while a claim of it is in flight.
    expect(w.claimNew('r', 2)).toBe('duplicate');
    w.release('r');
    expect(w.indexed).toBe(3000);
    // 10 s without a lookup (everything before expired meanwhile): unindexed again.
    for (let i = 0; i < 100; i++) w.claimNew(`late${i}`, 20_000);
    expect(w.indexed).toBe(0);
    expect(await settle(w.claim('late5', 20_001))).toBe('duplicate'); // still in flight
    expect(w.indexed).toBe(100);
    // New keys that expire unindexed leave no table entries either.
    for (let i = 0; i < 100; i++) w.claimNew(`later${i}`, 40_000);
    expect(w.indexed).toBe(0);
    expect(await settle(w.claim('fresh', 50_000))).toBe('claimed'); // every late* and later* expired
    expect(w.indexed).toBe(1);
    expect(w.size).toBe(0);
    expect(w.claimed).toBe(1);
  });

  it('ids made in sequence share a table block: h1 differs only in its low 3 bits when the last character does', () => {
    // Proves the locality of hashKey's h1 (one cache miss for up to 8 consecutive ids); ids that differ elsewhere scatter.
    const h1 = (k: string) => hashKey(k, { h1: 0, h2: 0 }).h1;
    const block = (k: string) => h1(k) >>> 3;
    const ids = Array.from({ length: 8 }, (_, i) => `order-1${i}`); // last characters '0'..'7': 0x30..0x37
    expect(new Set(ids.map(block)).size).toBe(1);
    expect(new Set(ids.map(h1)).size).toBe(8);
    expect(new Set(ids.map((k) => hashKey(k, { h1: 0, h2: 0 }).h2)).size).toBe(8);
    const spread = Array.from({ length: 64 }, (_, i) => `order-${i}0`);
    expect(new Set(spread.map(block)).size).toBeGreaterThan(60);
  });

  it('forgets keys whose window ended and keeps at most entriesMax', async () => {
    // Proves eviction: entries leave at their expiry and beyond the bound, oldest first.
    const log = new FakeLog();
    const w = new DedupeWindow(100, 3, log.keyAt);
    for (const [i, k] of ['a', 'b', 'c', 'd'].entries()) {
      expect(await settle(w.claim(k, i))).toBe('claimed');
      w.stored(k, log.append(k));
    }
    expect(w.size).toBe(3);
    expect(await settle(w.claim('a', 10))).toBe('claimed'); // dropped by the bound
    w.release('a');
    expect(await settle(w.claim('d', 10))).toBe('duplicate');
    expect(await settle(w.claim('d', 103))).toBe('claimed'); // its window ended at 103
  });

  it('a hash match whose record is gone counts as a duplicate; one whose record holds another key does not', async () => {
    // Proves confirmation: with every key hashed alike, a readable record with a different key lets the claim through, a deleted one blocks it.
    keyHashing.hashKey = (_id, out) => Object.assign(out, { h1: 1, h2: 2 });
    const log = new FakeLog();
    const w = new DedupeWindow(1000, 100, log.keyAt);
    expect(await settle(w.claim('x', 0))).toBe('claimed');
    w.stored('x', log.append('x'));
    expect(await settle(w.claim('y', 1))).toBe('claimed');
    w.stored('y', log.append('y'));
    log.gone.add(0);
    expect(await settle(w.claim('z', 2))).toBe('duplicate');
  });
});

describe('the broker with every id hashed alike', () => {
  it('stores distinct ids and drops repeated ones, also after a restart', async () => {
    // Proves the queue's use: 200 distinct ids all collide; each stores once, a repeat of each is a duplicate before and after reopening, and new ids still store.
    keyHashing.hashKey = (_id, out) => Object.assign(out, { h1: 5, h2: 5 });
    const clock = fakeClock();
    let b = await h.openBroker({ clock });
    await b.assertQueue('q');
    const ids = Array.from({ length: 200 }, (_, i) => `id-${i}`);
    const first = await Promise.all(ids.map((id) => b.sendToQueue('q', id, { id })));
    expect(first.every((r) => r.status === 'confirmed')).toBe(true);
    const again = await b.publishBatch('', ids.map((id) => ({ routingKey: 'q', body: 'again', id })));
    expect(again.every((r) => r.status === 'duplicate')).toBe(true);
    // New ids after the first are stored: each matches 200 stored hashes and must still be stored.
    for (let i = 0; i < 10; i++) expect((await b.sendToQueue('q', 'new', { id: `new-${i}` })).status).toBe('confirmed');
    b = await h.restart(b, { clock });
    const third = await Promise.all(ids.slice(0, 20).map((id) => b.sendToQueue('q', 'third', { id })));
    expect(third.every((r) => r.status === 'duplicate')).toBe(true);
    expect((await b.sendToQueue('q', 'new after restart', { id: 'new-after' })).status).toBe('confirmed');
    expect(b.queueStats('q').endOffset).toBe(211);
  });
});
