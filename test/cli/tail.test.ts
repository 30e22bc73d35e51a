// Proves the read-only follower (src/log/tail.ts): it never writes, skips incomplete batches until they are whole, follows segment rolls, and verifies without a lock.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Log } from '../../src/log/index.js';
import { LogTail, findLogDirs, readOnlyStorage, verifyLogDirReadOnly } from '../../src/log/tail.js';
import { tempDir, waitFor } from './helpers.js';

let dir: string;
beforeEach(() => {
  dir = tempDir('spool-tail-');
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const values = (rs: { value: Buffer }[]) => rs.map((r) => r.value.toString());

function snapshot(d: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of fs.readdirSync(d).sort()) {
    const st = fs.statSync(path.join(d, n));
    out[n] = `${st.size}:${st.mtimeMs}`;
  }
  return out;
}

describe('LogTail', () => {
  it('reads the last records, then only what lands later, across segment rolls', async () => {
    const logDir = path.join(dir, 'log');
    const { log } = await Log.open(logDir, { segmentBytesMax: 1024 });
    try {
      for (let i = 0; i < 5; i++) await log.append([{ value: `v${i}` }]);
      const tail = await LogTail.open(logDir, { last: 2 });
      expect(values(await tail.poll())).toEqual(['v3', 'v4']);
      expect(await tail.poll()).toEqual([]);
      const before = fs.readdirSync(logDir).filter((n) => n.endsWith('.log')).length;
      for (let i = 5; i < 40; i++) await log.append([{ value: `v${i}-${'x'.repeat(100)}` }]);
      expect(fs.readdirSync(logDir).filter((n) => n.endsWith('.log')).length).toBeGreaterThan(before);
      const got = values(await tail.poll());
      expect(got).toEqual(Array.from({ length: 35 }, (_, i) => `v${i + 5}-${'x'.repeat(100)}`));
      expect(tail.nextOffset).toBe(40);
      await tail.close();
      const all = await LogTail.open(logDir, 'earliest');
      expect(values(await all.poll())).toHaveLength(40);
      await all.close();
    } finally {
      await log.close();
    }
  });

  it('holds back a batch until it is complete, and follows with chokidar', async () => {
    const logDir = path.join(dir, 'log');
    const { log } = await Log.open(logDir);
    await log.append([{ value: 'whole' }]);
    await log.close();
    const seg = path.join(logDir, fs.readdirSync(logDir).find((n) => n.endsWith('.log')) as string);
    // Build the next batch in a scratch log, then write it into the segment in two halves.
    const scratchDir = path.join(dir, 'scratch');
    const { log: scratch } = await Log.open(scratchDir);
    await scratch.append([{ value: 'zero' }]);
    await scratch.append([{ value: 'late' }]);
    await scratch.close();
    const scratchSeg = fs.readFileSync(path.join(scratchDir, fs.readdirSync(scratchDir).find((n) => n.endsWith('.log')) as string));
    const firstLen = scratchSeg.readUInt32LE(16);
    const batch = scratchSeg.subarray(16 + firstLen);
    const tail = await LogTail.open(logDir, 'earliest');
    const seen: string[] = [];
    const stop = tail.follow((rs) => void seen.push(...values(rs)), () => {}, { pollMs: 50 });
    try {
      await waitFor('the first record', () => seen.length === 1);
      fs.appendFileSync(seg, batch.subarray(0, 20));
      await new Promise((r) => setTimeout(r, 300));
      expect(seen).toEqual(['whole']);
      fs.appendFileSync(seg, batch.subarray(20));
      await waitFor('the completed batch', () => seen.length === 2);
      expect(seen).toEqual(['whole', 'late']);
    } finally {
      await stop();
    }
  });

  it('changes nothing on disk, and its storage refuses writes', async () => {
    const logDir = path.join(dir, 'log');
    const { log } = await Log.open(logDir, { segmentBytesMax: 1024 });
    for (let i = 0; i < 10; i++) await log.append([{ value: `r${i}-${'y'.repeat(200)}` }]);
    await log.close();
    fs.appendFileSync(path.join(logDir, fs.readdirSync(logDir).filter((n) => n.endsWith('.log')).sort().at(-1) as string), Buffer.from([9, 9, 9]));
    const before = snapshot(logDir);
    expect(fs.readdirSync(logDir).filter((n) => n.endsWith('.log')).length).toBeGreaterThan(1);
    const tail = await LogTail.open(logDir, 'earliest');
    expect(values(await tail.poll())).toHaveLength(10);
    await tail.close();
    const report = await verifyLogDirReadOnly(logDir);
    expect(report).toMatchObject({ ok: true, records: 10, tornTail: { bytes: 3 } });
    expect(snapshot(logDir)).toEqual(before);
    await expect(readOnlyStorage.open(path.join(logDir, 'x'), 'create')).rejects.toThrow(/read-only/);
    await expect(readOnlyStorage.unlink(path.join(logDir, 'checkpoint'))).rejects.toThrow(/read-only/);
    expect(await findLogDirs(dir)).toEqual([logDir]);
  });
});
