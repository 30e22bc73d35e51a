// Smoke: append single and batched records, read them back across a reopen and a segment roll.
import { describe, it, expect } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Log } from '../../src/log/index.js';

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'spool-smoke-'));
}

describe('log smoke', () => {
  it('appends, reads, rolls and reopens', async () => {
    const dir = path.join(tmpDir(), 'q');
    const { log, recovery } = await Log.open(dir, { segmentBytesMax: 64 * 1024 });
    expect(recovery.created).toBe(true);
    const offs = await Promise.all(Array.from({ length: 500 }, (_, i) => log.appendOne({ value: `v${i}`, key: i % 2 ? 'k' : null, headers: i % 3 ? { h: 'x' } : undefined })));
    expect(offs).toEqual(Array.from({ length: 500 }, (_, i) => i));
    const r = await log.append(Array.from({ length: 3000 }, (_, i) => ({ value: Buffer.alloc(50, i % 256) })));
    expect(r).toEqual({ baseOffset: 500, lastOffset: 3499, count: 3000 });
    expect(log.stats().segments).toBeGreaterThan(1);
    let next = 0;
    const seen: number[] = [];
    for (let recs = await log.read(next, { maxBytes: 4096 }); recs.length > 0; recs = await log.read(next, { maxBytes: 4096 })) {
      for (const rec of recs) seen.push(rec.offset);
      next = recs[recs.length - 1]!.offset + 1;
    }
    expect(seen.length).toBe(3500);
    expect(seen.every((o, i) => o === i)).toBe(true);
    const one = await log.read(7, { maxRecords: 1 });
    expect(one[0]!.value.toString()).toBe('v7');
    expect(one[0]!.key!.toString()).toBe('k');
    expect(one[0]!.headers.h!.toString()).toBe('x');
    await log.close();
    const again = await Log.open(dir, { segmentBytesMax: 64 * 1024 });
    expect(again.recovery.checkpointUsed).toBe(true);
    expect(again.recovery.scannedBytes).toBe(0);
    expect(again.log.endOffset).toBe(3500);
    const v = await again.log.verify();
    expect(v.ok).toBe(true);
    expect(v.records).toBe(3500);
    const mid = await again.log.read(2000, { maxRecords: 2 });
    expect(mid.map((x) => x.offset)).toEqual([2000, 2001]);
    expect(mid[0]!.value).toEqual(Buffer.alloc(50, 1500 % 256));
    await again.log.close();
  });
});
