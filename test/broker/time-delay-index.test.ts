// Proves the compact index of pending delayed ids: it agrees with a Map reference under random adds, removes and forced hash collisions across growth and shrinkage, stays small, and the delay store confirms every hash match by the stored id (cancel, duplicates, fire claims, restart) so colliding ids never act on each other; also that concurrent publishes of one caller id store it once and that a bucket loading in the background does not hold up fires that are due.
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DelayIndex, type IdHash, hashBytes, hashId, idHashing } from '../../src/broker/delay-index.js';
import type { StorageFile } from '../../src/log/index.js';
import { BrokerHarness, Inbox, fakeClock, sleep } from '../support/broker-helpers.js';
import { seededRandom } from '../support/faulty-storage.js';
import { at, nodeStorageWith, openFake } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(async () => {
  idHashing.hashId = hashId;
  idHashing.hashBytes = hashBytes;
  await h.cleanup();
});

const T0 = 1_700_000_000_000;

describe('DelayIndex', () => {
  it('agrees with a Map reference under random adds, removes and hash collisions, through growth and shrinkage', () => {
    // Hashes drawn from a small pool so many entries share h1, or both halves; locations are unique. After every step: size, and find/has for a sample.
    for (let seed = 1; seed <= 6; seed++) {
      const rng = seededRandom(seed);
      const index = new DelayIndex();
      const ref = new Map<string, { hash: IdHash; bucket: number; offset: number }>();
      const live: string[] = []; // ref's keys, for picking one at random
      const pool: IdHash[] = Array.from({ length: 50 + Math.floor(rng() * 5000) }, () => ({ h1: Math.floor(rng() * 2 ** 32), h2: Math.floor(rng() * 2 ** 32) }));
      for (let i = 0; i < 40; i++) pool.push({ h1: pool[0]!.h1, h2: Math.floor(rng() * 2 ** 32) }); // same h1, other h2
      let nextOffset = 0;
      for (let step = 0; step < 20_000; step++) {
        const grow = step < 12_000 ? 0.7 : 0.2; // fill up, then drain (the table halves)
        if (rng() < grow || ref.size === 0) {
          const hash = pool[Math.floor(rng() * pool.length)]!;
          const bucket = Math.floor(rng() * 3) * 28_333_333;
          const offset = nextOffset++;
          index.add(hash, bucket, offset);
          ref.set(`${bucket}/${offset}`, { hash, bucket, offset });
          live.push(`${bucket}/${offset}`);
        } else {
          const at = Math.floor(rng() * live.length);
          const e = ref.get(live[at]!)!;
          live[at] = live[live.length - 1]!;
          live.pop();
          expect(index.remove(e.hash, e.bucket, e.offset)).toBe(true);
          expect(index.remove(e.hash, e.bucket, e.offset), 'removed twice').toBe(false);
          ref.delete(`${e.bucket}/${e.offset}`);
        }
        if (step % 97 === 0) {
          expect(index.size, `seed ${seed} step ${step}`).toBe(ref.size);
          for (let k = 0; k < 5; k++) {
            const hash = pool[Math.floor(rng() * pool.length)]!;
            const expected = [...ref.values()].filter((e) => e.hash.h1 === hash.h1 && e.hash.h2 === hash.h2).map((e) => `${e.bucket}/${e.offset}`);
            expect(index.find(hash).map((l) => `${l.bucket}/${l.offset}`).sort(), `seed ${seed} step ${step}`).toEqual(expected.sort());
          }
          for (const e of [...ref.values()].slice(0, 20)) expect(index.has(e.hash, e.bucket, e.offset)).toBe(true);
        }
      }
    }
  });

  it('holds 100,000 pending ids in 4 MiB of typed array and gives it back when they are gone', () => {
    // 16 bytes a slot, at most 3/4 full: 2^18 slots for 100k. A JS Map of the same ids would be ~10 MB of heap.
    const index = new DelayIndex();
    const hashes = Array.from({ length: 100_000 }, (_, i) => hashId(`id-${i}`));
    hashes.forEach((hash, i) => index.add(hash, 28_333_333, i));
    expect(index.size).toBe(100_000);
    expect(index.bytes).toBeLessThanOrEqual(4 * 1024 * 1024);
    let removed = 0;
    hashes.forEach((hash, i) => void (index.remove(hash, 28_333_333, i) && removed++));
    expect({ removed, size: index.size }).toEqual({ removed: 100_000, size: 0 });
    expect(index.bytes).toBeLessThanOrEqual(64 * 1024);
  });

  it("hashes an id as its stored UTF-8 key: the string and the bytes agree, ASCII or not", () => {
    for (const id of ['a', '01jd8k2m3n4p5q6r7s8t9v0w1x', 'ordre-é', '注文-42', '🙂x', '']) {
      expect(hashId(id), id).toEqual(hashBytes(Buffer.from(id, 'utf8')));
    }
    expect(hashId('a')).not.toEqual(hashId('b'));
  });
});

describe('delay store: every hash match is confirmed by the stored id', () => {
  it('with every id hashing alike, cancel, duplicates and fires act on the right message only, before and after a restart', async () => {
    // A degenerate hash puts all ids in one probe run; 'a', 'b', 'c' are pending: cancel('b') cancels b alone, 'a' is a duplicate and 'd' is not, and after a reopen the same holds; a and c (and d) fire.
    idHashing.hashId = () => ({ h1: 7, h2: 7 });
    idHashing.hashBytes = () => ({ h1: 7, h2: 7 });
    const clock = fakeClock(T0);
    let { b } = await openFake(h, clock);
    await b.assertExchange('ex', 'topic');
    await b.assertQueue('q');
    await b.bindQueue('q', 'ex', '#');
    for (const id of ['a', 'b', 'c']) expect((await b.publish('ex', 'k', id.toUpperCase(), { id, delay: 200_000 })).status).toBe('confirmed');
    expect(await b.cancel('zzz'), 'an unknown id with the same hash').toBe(false);
    expect(await b.cancel('b')).toBe(true);
    expect(await b.cancel('b')).toBe(false);
    expect((await b.publish('ex', 'k', 'again', { id: 'a', delay: 1000 })).status).toBe('duplicate');
    await h.close(b);
    ({ b } = await openFake(h, clock, { dataDir: b.dataDir }));
    expect((await b.publish('ex', 'k', 'again', { id: 'c', delay: 1000 })).status).toBe('duplicate');
    expect((await b.publish('ex', 'k', 'D', { id: 'd', delay: 1000 })).status).toBe('confirmed');
    expect(await b.cancel('b')).toBe(false);
    await at(b, clock, T0 + 200_000);
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'g' });
    await inbox.waitForCount(3);
    await inbox.expectStays(3, 50);
    expect(inbox.bodies().sort()).toEqual(['A', 'C', 'D']);
    expect(await b.cancel('a'), 'fired').toBe(false);
  });
});

describe('delay store: concurrency', () => {
  it('concurrent publishes of one caller id store it once: one confirmed, the rest duplicates', async () => {
    // Five publishes of id 'x' issued in the same tick (none yet confirmed when the others check): exactly one is stored and routed.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await b.assertExchange('ex', 'topic');
    await b.assertQueue('q');
    await b.bindQueue('q', 'ex', '#');
    const results = await Promise.all(Array.from({ length: 5 }, (_, i) => b.publish('ex', 'k', `v${i}`, { id: 'x', delay: 1000 })));
    expect(results.map((r) => r.status).sort()).toEqual(['confirmed', 'duplicate', 'duplicate', 'duplicate', 'duplicate']);
    expect(b.stats().scheduled).toBe(1);
    await at(b, clock, T0 + 1000);
    expect(b.queueStats('q').endOffset).toBe(1);
  });

  it('a message due now fires while a bucket coming into the lookahead is still loading', async () => {
    // Reads of a far bucket's log are held (storage seam) when the clock reaches a near message's due time, which is also when the far bucket enters the two-minute lookahead: the near message must still be routed, by the broker's own ticker.
    const heldDir = { value: '' };
    const gate = { closed: false, waiting: 0 };
    const wrap = (f: StorageFile): StorageFile => ({
      get path() {
        return f.path;
      },
      read: async (...a) => {
        if (gate.closed && heldDir.value !== '' && f.path.includes(heldDir.value)) {
          gate.waiting++;
          while (gate.closed) await sleep(2);
          gate.waiting--;
        }
        return f.read(...a);
      },
      writev: (...a) => f.writev(...a),
      truncate: (n) => f.truncate(n),
      size: () => f.size(),
      close: () => f.close(),
      sync: () => f.sync(),
    });
    const storage = nodeStorageWith(wrap);
    const clock = fakeClock(T0);
    const { b } = await openFake(h, clock, { storage, tickIntervalMs: 2 });
    await b.assertExchange('ex', 'topic');
    await b.assertQueue('q');
    await b.bindQueue('q', 'ex', '#');
    const minute = 60_000;
    const nearDue = (Math.floor(T0 / minute) + 1) * minute + 10_000; // its bucket is within the lookahead from the start
    const farBucket = Math.floor((nearDue + 2 * minute) / minute) * minute; // enters the lookahead just before nearDue
    expect(farBucket - 2 * minute).toBeLessThan(nearDue);
    expect(farBucket - 2 * minute).toBeGreaterThan(T0);
    await b.publish('ex', 'k', 'near', { deliverAt: nearDue });
    await b.publish('ex', 'k', 'far', { deliverAt: farBucket + 5 });
    heldDir.value = `${path.sep}${String(farBucket).padStart(15, '0')}${path.sep}messages`;
    gate.closed = true;
    clock.t = nearDue;
    const deadline = Date.now() + 3000;
    while ((gate.waiting === 0 || b.queueStats('q').endOffset === 0) && Date.now() < deadline) await sleep(5);
    const state = { farLoadHeld: gate.waiting > 0, nearRouted: b.queueStats('q').endOffset };
    gate.closed = false;
    expect(state).toEqual({ farLoadHeld: true, nearRouted: 1 });
    await at(b, clock, farBucket + 5);
    expect(b.queueStats('q').endOffset).toBe(2);
  });
});
