// A segment sealed by a roll lets go of its in-memory index (it is on disk): the log's memory must
// not grow with its length. Lookups load an index again when they need it; sequential reads, time
// lookups in segments that cannot hold the time, and age retention do not.
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Log, type LogOptions } from '../../src/log/index.js';
import type { Segment } from '../../src/log/segment.js';

const roots: string[] = [];
function tmpDir(): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-index-release-'));
  roots.push(root);
  return path.join(root, 'q');
}
afterAll(() => {
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});

let now = 1_000_000;
const clock = { now: () => now };
const OPTS: LogOptions = { segmentBytesMax: 16 * 1024, indexIntervalBytes: 512, clock };

/** The log's segments (a test looks inside: which hold an index in memory). */
function segmentsOf(log: Log): Segment[] {
  return (log as unknown as { segments: Segment[] }).segments;
}
function sealedIndexes(log: Log): (object | null)[] {
  return segmentsOf(log)
    .slice(0, -1)
    .map((s) => s.index);
}

/** 2,000 records of ~100 B over ~14 segments, one millisecond apart in batches of 50. */
async function build(dir: string): Promise<Log> {
  const { log } = await Log.open(dir, OPTS);
  for (let i = 0; i < 2000; i += 50) {
    now += 50;
    await log.append(Array.from({ length: 50 }, (_, j) => ({ key: `k${i + j}`, value: Buffer.alloc(100, (i + j) % 251) })));
  }
  return log;
}

describe('sealed segments let go of their indexes', () => {
  it('after a roll, a sealed segment holds no index in memory, and reads at any offset still find their records', async () => {
    const log = await build(tmpDir());
    try {
      expect(segmentsOf(log).length).toBeGreaterThan(5);
      expect(sealedIndexes(log).every((i) => i === null)).toBe(true);
      for (const offset of [1, 37, 400, 777, 1234, 1999]) {
        const [r] = await log.read(offset, { maxRecords: 1 });
        expect(r?.offset).toBe(offset);
        expect(r?.key?.toString()).toBe(`k${offset}`);
        expect(r?.value.equals(Buffer.alloc(100, offset % 251))).toBe(true);
      }
      expect(log.stats().indexesRebuilt).toBe(0); // loaded from the index files, not rebuilt
    } finally {
      await log.close();
    }
  });

  it('a sequential read through every segment loads no sealed index', async () => {
    const log = await build(tmpDir());
    try {
      let offset = 0;
      let count = 0;
      for (;;) {
        const records = await log.read(offset, { maxBytes: 4096 });
        if (records.length === 0) break;
        for (const r of records) expect(r.offset).toBe(count++);
        offset = (records.at(-1)?.offset ?? 0) + 1;
      }
      expect(count).toBe(2000);
      expect(sealedIndexes(log).every((i) => i === null)).toBe(true);
    } finally {
      await log.close();
    }
  });

  it('time lookups and age retention use the timestamps kept, loading only the index a lookup needs', async () => {
    const log = await build(tmpDir());
    try {
      const segments = segmentsOf(log);
      const third = segments[3] as Segment;
      // The first record at or after a time inside the fourth segment.
      const target = await log.read(third.baseOffset + 5, { maxRecords: 1 });
      const ts = target[0]?.timestamp as number;
      const found = await log.offsetForTime(ts);
      const [first] = await log.read(found, { maxRecords: 1 });
      expect(first?.timestamp).toBe(ts);
      expect(found).toBeLessThanOrEqual(third.baseOffset + 5);
      // Segments before it cannot hold the time: their indexes stay on disk.
      expect(segments.slice(0, 3).every((s) => s.index === null)).toBe(true);

      // Nothing is this old: retention deletes nothing and loads nothing.
      expect(await log.deleteOlderThan(now)).toBe(0);
      expect(sealedIndexes(log).filter((i) => i !== null).length).toBeLessThanOrEqual(2);
      // Everything but the newest ~half is older than this: deleted by the timestamps kept at the roll.
      const cutoffAge = now - (ts as number);
      const deleted = await log.deleteOlderThan(cutoffAge);
      expect(deleted).toBeGreaterThan(0);
      expect(log.startOffset).toBeLessThanOrEqual(third.baseOffset + 5);
      const [still] = await log.read(third.baseOffset + 5, { maxRecords: 1 });
      expect(still?.timestamp).toBe(ts);
    } finally {
      await log.close();
    }
  });

  it('a reopened log reads its sealed segments as before', async () => {
    const dir = tmpDir();
    const log = await build(dir);
    await log.close();
    const { log: again } = await Log.open(dir, OPTS);
    try {
      const [r] = await again.read(1500, { maxRecords: 1 });
      expect(r?.key?.toString()).toBe('k1500');
      expect(again.stats().indexesRebuilt).toBe(0);
    } finally {
      await again.close();
    }
  });
});

describe('indexes loaded by lookups', () => {
  it('stay in memory for at most 8 sealed segments, and an index let go is loaded again when needed', async () => {
    const dir = tmpDir();
    const log = await build(dir);
    await log.close();
    const { log: again } = await Log.open(dir, OPTS);
    try {
      const sealed = segmentsOf(again).slice(0, -1);
      expect(sealed.length).toBeGreaterThan(9);
      // A lookup inside every sealed segment, twice over: each needs that segment's index.
      for (let round = 0; round < 2; round++) {
        for (const s of sealed) {
          const offset = s.baseOffset + 3;
          const [r] = await again.read(offset, { maxRecords: 1 });
          expect(r?.key?.toString()).toBe(`k${offset}`);
          expect(sealedIndexes(again).filter((i) => i !== null).length).toBeLessThanOrEqual(8);
        }
      }
      // Age retention learns every segment's newest timestamp and keeps it after letting go.
      expect(await again.deleteOlderThan(now)).toBe(0);
      expect(sealedIndexes(again).filter((i) => i !== null).length).toBeLessThanOrEqual(8);
      expect(segmentsOf(again).every((s) => s.timestampKnown)).toBe(true);
      expect(again.stats().indexesRebuilt).toBe(0);
      // Deleted segments give up their places (and their indexes) at once.
      for (const s of sealed.slice(0, 8)) await again.read(s.baseOffset + 3, { maxRecords: 1 });
      await again.deleteBefore((sealed[8] as Segment).baseOffset);
      const held = (again as unknown as { loadedIndexes: Segment[] }).loadedIndexes;
      expect(held.filter((s) => s.deleted)).toEqual([]);
    } finally {
      await again.close();
    }
  });
});
