// The timing wheel agrees with a sorted reference under random schedules, cancels and time jumps on a fake clock.
import { describe, it, expect } from 'vitest';
import { TimingWheel } from '../../src/broker/timing-wheel.js';
import { seededRandom } from '../support/faulty-storage.js';

describe('TimingWheel', () => {
  it('fires every key exactly once, never early, at most one tick late (vs a reference)', () => {
    // Due means due: a key is returned by the first advance at or after its due time, never before.
    for (let seed = 1; seed <= 40; seed++) {
      const rng = seededRandom(seed);
      const tickMs = 1 + Math.floor(rng() * 8);
      let now = Math.floor(rng() * 1e9);
      const wheel = new TimingWheel<number>({ tickMs, slots: 8, levels: 4 + Math.floor(rng() * 3), startMs: now });
      const reference = new Map<number, number>();
      let nextKey = 0;
      const fired = new Set<number>();
      for (let step = 0; step < 400; step++) {
        const r = rng();
        if (r < 0.5) {
          const scale = [10, 1_000, 100_000, 30 * 86_400_000][Math.floor(rng() * 4)]!;
          const dueAt = now + Math.floor(rng() * scale) - (rng() < 0.05 ? 50 : 0);
          const key = rng() < 0.1 && nextKey > 0 ? Math.floor(rng() * nextKey) : nextKey++;
          if (fired.has(key)) continue;
          wheel.schedule(key, dueAt);
          reference.set(key, dueAt);
        } else if (r < 0.6 && reference.size > 0) {
          const key = [...reference.keys()][Math.floor(rng() * reference.size)]!;
          expect(wheel.cancel(key)).toBe(true);
          reference.delete(key);
        } else {
          const jump = [1, tickMs * 3, 5_000, 3_600_000, 40 * 86_400_000][Math.floor(rng() * 5)]!;
          now += Math.floor(rng() * jump);
          const due = wheel.advance(now);
          const expected = [...reference].filter(([, d]) => d <= now).map(([k]) => k);
          expect(new Set(due), `seed ${seed} step ${step}`).toEqual(new Set(expected));
          for (const k of due) {
            reference.delete(k);
            fired.add(k);
          }
          expect(wheel.size, `seed ${seed}`).toBe(reference.size);
        }
      }
    }
  });

  it('nextWakeAt: nothing is due before it, and waking exactly then fires every key on its due ms, with few idle wakes', () => {
    // A timer armed for nextWakeAt() must never make a key late (it is a lower bound of every due
    // time) and must not spin (each wake fires something or moves nextWakeAt forward).
    for (let seed = 1; seed <= 40; seed++) {
      const rng = seededRandom(1000 + seed);
      const tickMs = 1 + Math.floor(rng() * 8);
      let now = Math.floor(rng() * 1e9);
      const levels = 3 + Math.floor(rng() * 3);
      const wheel = new TimingWheel<number>({ tickMs, slots: 8, levels, startMs: now });
      const reference = new Map<number, number>();
      let keys = 60;
      for (let key = 0; key < 60; key++) {
        const scale = [5, 100, 10_000, 5_000_000][Math.floor(rng() * 4)]!;
        const dueAt = now + Math.floor(rng() * scale);
        wheel.schedule(key, dueAt);
        reference.set(key, dueAt);
      }
      let wakes = 0;
      let advanced = Number.NEGATIVE_INFINITY;
      while (reference.size > 0) {
        const wake = wheel.nextWakeAt();
        const earliest = Math.min(...reference.values());
        expect(wake, `seed ${seed}`).toBeLessThanOrEqual(earliest);
        expect(wake, `seed ${seed}: everything due by the last advance was returned`).toBeGreaterThan(advanced);
        now = wake;
        advanced = now;
        wakes++;
        for (const key of wheel.advance(now)) {
          expect(reference.get(key), `seed ${seed} key ${key} fired at its due ms`).toBe(now);
          reference.delete(key);
        }
        if (rng() < 0.1) {
          // Something scheduled meanwhile, possibly due before the wake computed above.
          const key = 1000 + wakes;
          const dueAt = now + 1 + Math.floor(rng() * 50);
          wheel.schedule(key, dueAt);
          reference.set(key, dueAt);
          keys++;
        }
      }
      expect(wheel.nextWakeAt()).toBe(Number.POSITIVE_INFINITY);
      // Per key: its own wake plus at most one cascade per level it falls through.
      expect(wakes, `seed ${seed}`).toBeLessThanOrEqual(keys * levels);
    }
  });

  it('nextWakeAt is -Infinity while an overdue key waits, and the exact due time of the next level-0 key', () => {
    const wheel = new TimingWheel<string>({ tickMs: 4, startMs: 1000 });
    expect(wheel.nextWakeAt()).toBe(Number.POSITIVE_INFINITY);
    wheel.schedule('soon', 1013);
    wheel.schedule('later', 1100);
    expect(wheel.nextWakeAt()).toBe(1013);
    expect(wheel.advance(1012)).toEqual([]);
    expect(wheel.nextWakeAt()).toBe(1013);
    wheel.schedule('past', 1005);
    expect(wheel.nextWakeAt()).toBe(Number.NEGATIVE_INFINITY);
    expect(wheel.advance(1013)).toEqual(['past', 'soon']);
    expect(wheel.nextWakeAt()).toBe(1100);
    wheel.cancel('later');
    expect(wheel.nextWakeAt()).toBe(Number.POSITIVE_INFINITY);
  });

  it('returns due keys in due-time order within one advance', () => {
    const wheel = new TimingWheel<string>({ tickMs: 4, startMs: 0 });
    wheel.schedule('c', 30);
    wheel.schedule('a', 10);
    wheel.schedule('b', 20);
    expect(wheel.advance(100)).toEqual(['a', 'b', 'c']);
  });

  it('covers at least 30 days with the default levels', () => {
    const wheel = new TimingWheel<string>({ startMs: 0 });
    expect(wheel.spanMs).toBeGreaterThanOrEqual(30 * 86_400_000);
    wheel.schedule('late', 30 * 86_400_000);
    expect(wheel.advance(30 * 86_400_000 - 10)).toEqual([]);
    expect(wheel.advance(30 * 86_400_000 + 4)).toEqual(['late']);
  });
});
