// The store's building blocks: the foldable Bloom filter (no false negatives, measured false-positive rate near the estimate), the radix sort, and negative lookups that never read the disk.
import { afterEach, describe, expect, it } from 'vitest';
import { CountingStorage } from '../../bench/lib/counting-storage.js';
import { BloomFilter, estimatedFalsePositiveRate } from '../../src/idempotency/bloom.js';
import { hashKey } from '../../src/idempotency/hash.js';
import { sortByHash } from '../../src/idempotency/sort.js';
import { seededRandom } from '../support/faulty-storage.js';
import { StoreHarness, fakeClock } from './helpers.js';

const h = new StoreHarness();
afterEach(() => h.cleanup());

function hashes(n: number, prefix: string): { hi: number; lo: number }[] {
  return Array.from({ length: n }, (_, i) => hashKey(`${prefix}${i}`));
}

describe('BloomFilter', () => {
  it('has no false negatives, before and after folding, and a false-positive rate near the estimate', () => {
    // Proves the fold invariant (bit j = old 2j | old 2j+1 under exact fastrange) on 20,000 keys folded 5 times, and measures the FP rate at each size against the textbook estimate.
    const keys = hashes(20_000, 'in-');
    const probes = hashes(50_000, 'out-');
    const f = new BloomFilter(BloomFilter.sizeFor(keys.length, 16), 5);
    for (const k of keys) f.add(k.hi, k.lo);
    for (let fold = 0; fold <= 5; fold++) {
      for (const k of keys) expect(f.mayContain(k.hi, k.lo)).toBe(true);
      const fp = probes.filter((k) => f.mayContain(k.hi, k.lo)).length / probes.length;
      const est = estimatedFalsePositiveRate(f.bits / keys.length, f.hashes);
      expect(fp, `fold ${fold}: ${f.bits / keys.length} bits/key`).toBeLessThan(est * 1.5 + 0.002);
      if (fold < 5) f.fold();
    }
    expect(f.folds).toBe(5);
    expect(f.bits % 64).toBe(0);
  });

  it('folds down to 64 bits and no further', () => {
    // Proves the fold bound asserted by canFold.
    const f = new BloomFilter(BloomFilter.sizeFor(1, 16), 3);
    f.add(1, 2);
    while (f.canFold) f.fold();
    expect(f.bits).toBe(64);
    expect(f.mayContain(1, 2)).toBe(true);
    expect(() => f.fold()).toThrow();
  });
});

describe('sortByHash', () => {
  it('orders 64-bit hashes as unsigned (hi, lo) pairs, keeping duplicates', () => {
    // Proves the 4-pass radix sort against a BigInt reference sort, including top-bit-set words and equal hashes.
    const rnd = seededRandom(7);
    const n = 5000;
    const hi = new Uint32Array(n);
    const lo = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      hi[i] = i % 10 === 0 ? 0xffffffff : Math.floor(rnd() * 2 ** 32);
      lo[i] = i % 7 === 0 ? 0 : Math.floor(rnd() * 2 ** 32);
    }
    hi[1] = hi[2] as number;
    lo[1] = lo[2] as number;
    const order = sortByHash(hi, lo, n);
    const big = (i: number) => (BigInt(hi[i] as number) << 32n) | BigInt(lo[i] as number);
    const ref = Array.from({ length: n }, (_, i) => i).sort((a, b) => (big(a) < big(b) ? -1 : big(a) > big(b) ? 1 : 0));
    expect(Array.from(order).map(big)).toEqual(ref.map(big));
  });
});

describe('negative lookups', () => {
  it('do not read the disk: filters answer them (reads counted by a wrapping Storage and by the store)', async () => {
    // Proves the capacity claim's premise: with 30,000 keys sealed into tables, 20,000 lookups of absent keys make (almost) no reads — at most the filters' expected false positives — while positive lookups do read.
    const clock = fakeClock();
    const storage = new CountingStorage();
    const s = await h.openStore({ clock, storage, journalKeysMax: 4000 });
    for (let i = 0; i < 30_000; i += 1000) await Promise.all(Array.from({ length: 1000 }, (_, j) => s.complete(`present-${i + j}`, i + j)));
    await s.maintain();
    await s.maintain();
    const st = s.stats();
    expect(st.tables).toBeGreaterThanOrEqual(1);
    expect(st.keys).toBe(30_000);
    const readsBefore = storage.snapshot().reads;
    const lookupsBefore = s.stats();
    for (let i = 0; i < 20_000; i++) expect(await s.lookup(`absent-${i}`)).toBe('absent');
    const diskReads = storage.snapshot().reads - readsBefore;
    const after = s.stats();
    const expected = 20_000 * after.expectedReadsPerNegativeLookup;
    // Every read a negative lookup makes is a filter false positive (one directory-slot read).
    expect(after.negativeLookupReads - lookupsBefore.negativeLookupReads).toBe(diskReads);
    expect(diskReads).toBeLessThanOrEqual(Math.max(20, expected * 3));
    expect(after.filterFalsePositives - lookupsBefore.filterFalsePositives).toBe(diskReads);
    // Positive lookups read: the entries of one slot, then the record.
    const posBefore = storage.snapshot().reads;
    for (let i = 0; i < 100; i++) expect(await s.lookup(`present-${i * 299}`)).toEqual({ status: 'done', result: i * 299 });
    expect(storage.snapshot().reads - posBefore).toBeGreaterThanOrEqual(100);
  });

  it('under a tight filter budget filters fold, lookups stay correct, and the budget holds', async () => {
    // Proves memory bounding: with filterBytesMax 8 KiB for 20,000 keys, filters are folded to fit; every present key is still found (no false negatives), absent keys stay absent.
    const clock = fakeClock();
    const s = await h.openStore({ clock, journalKeysMax: 2000, filterBytesMax: 8192 });
    for (let i = 0; i < 20_000; i += 500) await Promise.all(Array.from({ length: 500 }, (_, j) => s.complete(`k${i + j}`, i + j)));
    await s.maintain();
    await s.maintain();
    const st = s.stats();
    expect(st.filterBytes).toBeLessThanOrEqual(8192);
    expect(st.filterBitsPerKey).toBeLessThan(4);
    for (let i = 0; i < 20_000; i += 37) expect(await s.lookup(`k${i}`)).toEqual({ status: 'done', result: i });
    for (let i = 0; i < 500; i++) expect(await s.lookup(`nope${i}`)).toBe('absent');
    expect(s.stats().negativeLookupReads).toBeGreaterThan(0);
  });
});
