// OffsetTable (src/broker/offset-table.ts) must behave exactly like the Map it replaces in a
// consumer group: checked against a Map on random operations shaped like deliveries in flight
// (a sliding window of offsets, stragglers far behind it, re-sets of live offsets).
import { describe, expect, it } from 'vitest';
import { OffsetTable } from '../../src/broker/offset-table.js';
import { seededRandom } from '../support/faulty-storage.js';

function check(table: OffsetTable<{ o: number }>, ref: Map<number, { o: number }>, probe: number[]): void {
  expect(table.size).toBe(ref.size);
  for (const o of probe) {
    expect(table.get(o)).toBe(ref.get(o));
    expect(table.has(o)).toBe(ref.has(o));
  }
  expect([...table.values()].map((v) => v.o).sort((a, b) => a - b)).toEqual([...ref.values()].map((v) => v.o).sort((a, b) => a - b));
}

describe('OffsetTable', () => {
  it('matches a Map on a sliding window of deliveries with stragglers', () => {
    for (let seed = 1; seed <= 4; seed++) {
      const rng = seededRandom(seed);
      const table = new OffsetTable<{ o: number }>();
      const ref = new Map<number, { o: number }>();
      let next = seed * 1_000_000_007; // large offsets too (past 2^31)
      const base = next;
      for (let step = 0; step < 25_000; step++) {
        const r = rng();
        if (r < 0.45) {
          const v = { o: next };
          table.set(next, v);
          ref.set(next, v);
          next++;
        } else if (r < 0.85 && ref.size > 0) {
          // Settle one of the oldest few (acks mostly in order) or, sometimes, any.
          const keys = [...ref.keys()];
          const k = rng() < 0.8 ? (keys[Math.floor(rng() * Math.min(8, keys.length))] as number) : (keys[Math.floor(rng() * keys.length)] as number);
          expect(table.delete(k)).toBe(true);
          ref.delete(k);
        } else if (r < 0.9 && ref.size > 0) {
          // Re-set a live offset (a redelivery takes a new entry object).
          const keys = [...ref.keys()];
          const k = keys[Math.floor(rng() * keys.length)] as number;
          const v = { o: k };
          table.set(k, v);
          ref.set(k, v);
        } else {
          // Absent offsets: far behind, ahead, or one slot-distance away from a live one.
          const k = rng() < 0.5 ? next + Math.floor(rng() * 10_000) : base + Math.floor(rng() * (next - base));
          expect(table.delete(k)).toBe(ref.delete(k));
        }
        if (step % 5000 === 0) check(table, ref, [...ref.keys()].slice(0, 50).concat([next, next + 4096, base]));
      }
      check(table, ref, [...ref.keys()]);
    }
  });

  it('keeps stragglers whose slot a later offset wants (overflow) and grows past many of them', () => {
    const table = new OffsetTable<{ o: number }>(4096);
    const ref = new Map<number, { o: number }>();
    // 600 stragglers never settled, then 40,000 offsets pass through, each wrapping onto them.
    for (let o = 0; o < 600; o++) {
      const v = { o };
      table.set(o, v);
      ref.set(o, v);
    }
    for (let o = 600; o < 40_600; o++) {
      const v = { o };
      table.set(o, v);
      ref.set(o, v);
      if (o - 600 >= 100) {
        table.delete(o - 100);
        ref.delete(o - 100);
      }
    }
    check(table, ref, [...ref.keys(), 4096, 8192, 600 + 4096]);
  });

  it('skips entries deleted during a walk, as a Map does', () => {
    const table = new OffsetTable<{ o: number }>();
    for (let o = 0; o < 100; o++) table.set(o, { o });
    const seen: number[] = [];
    for (const v of table.values()) {
      seen.push(v.o);
      if (v.o % 2 === 0) table.delete(v.o + 1);
    }
    expect(seen).toEqual(Array.from({ length: 50 }, (_, i) => 2 * i));
    expect(table.size).toBe(50);
  });
});
