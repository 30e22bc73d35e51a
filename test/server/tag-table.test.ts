// Proves the TagTable (src/server/tag-table.ts) against a Map: sequential tags settled mostly in order, with stragglers that stay while the window moves past their slot, growth, and listing every entry.
import { describe, expect, it } from 'vitest';
import { TagTable } from '../../src/server/tag-table.js';
import { seededRandom } from '../support/faulty-storage.js';

describe('TagTable', () => {
  it('agrees with a Map over random adds and takes, with stragglers held across many wraps', () => {
    // Proves exactness: every get, has, take and size matches a reference Map; some tags stay for thousands of later tags (they move aside) and are still found.
    const t = new TagTable<string>();
    const ref = new Map<number, string>();
    const rnd = seededRandom(7);
    let next = 1;
    const live: number[] = [];
    for (let step = 0; step < 60_000; step++) {
      if (rnd() < 0.52 || live.length === 0) {
        const tag = next++;
        t.set(tag, `v${tag}`);
        ref.set(tag, `v${tag}`);
        live.push(tag);
      } else {
        // Mostly the oldest (in order), sometimes a random one; a few are never taken (stragglers).
        const i = rnd() < 0.8 ? 0 : Math.floor(rnd() * live.length);
        const tag = live[i] as number;
        if (tag % 997 === 0) continue;
        live.splice(i, 1);
        expect(t.take(tag)).toBe(ref.get(tag));
        ref.delete(tag);
      }
      if (step % 1000 === 0) {
        expect(t.size).toBe(ref.size);
        const probe = Math.floor(rnd() * next) + 1;
        expect(t.get(probe)).toBe(ref.get(probe));
        expect(t.has(probe)).toBe(ref.has(probe));
      }
    }
    expect(t.take(next + 5)).toBeUndefined();
    const listed = new Map<number, string>();
    t.forEach((v, tag) => listed.set(tag, v));
    expect(listed).toEqual(ref);
    for (const tag of ref.keys()) if (tag % 997 === 0) expect(t.get(tag)).toBe(`v${tag}`);
  });

  it('refuses a tag that is already there, and tag 0', () => {
    // Proves the invariants: a tag is unique among live ones, and 0 is never a tag (it marks an empty slot).
    const t = new TagTable<number>();
    t.set(5, 1);
    expect(() => t.set(5, 2)).toThrow();
    expect(() => t.set(0, 1)).toThrow();
    expect(t.take(5)).toBe(1);
    expect(t.size).toBe(0);
  });

  it('handles tags near 2^32 (the wire limit) and a wrap back to 1', () => {
    // Proves the slot arithmetic for large tags: tag & mask of a number above 2^31 still lands in the table.
    const t = new TagTable<number>();
    for (let tag = 0xffff_fff0; tag <= 0xffff_fffe; tag++) t.set(tag, tag);
    for (let tag = 1; tag <= 20; tag++) t.set(tag, tag);
    for (let tag = 0xffff_fff0; tag <= 0xffff_fffe; tag++) expect(t.take(tag)).toBe(tag);
    for (let tag = 1; tag <= 20; tag++) expect(t.get(tag)).toBe(tag);
    expect(t.size).toBe(20);
  });
});
