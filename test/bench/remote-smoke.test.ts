// Smoke test of the remote benchmark (bench/remote.ts): runs it TINY through the same function `npm run bench` uses, with the server in this process, and checks only that the figures are well-formed and the temp data is gone: never a speed threshold.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REMOTE_TARGETS, benchRemote } from '../../bench/remote.js';
import { verdict } from '../../bench/lib/report.js';

let base: string;

beforeAll(() => {
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true); // progress lines
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-remote-smoke-'));
});

afterAll(() => {
  vi.restoreAllMocks();
  fs.rmSync(base, { recursive: true, force: true });
});

describe('remote bench smoke', () => {
  it('measures publish, consume and confirm latency over the socket and embedded, with their ratios', async () => {
    const r = await benchRemote({ repeats: 1, raw: null }, { messages: 2000, latencyIterations: 20, window: 100, bodyBytes: 100, server: 'in-process', dir: base });
    expect(r.name).toBe('remote');
    for (const key of Object.keys(r.labels)) {
      const v = r.median[key];
      expect(Number.isFinite(v) && (v as number) > 0, `${key} = ${v}`).toBe(true);
      expect(r.runs[key]?.length, key).toBe(1);
    }
    expect(r.median.publishRatio).toBeCloseTo((r.median.remotePublishMsgsPerSec as number) / (r.median.embeddedPublishMsgsPerSec as number));
    const judged = r.rows.filter((row) => row.target !== undefined);
    expect(judged.map((row) => row.target?.value)).toEqual([REMOTE_TARGETS.publishRatioMin, REMOTE_TARGETS.consumeRatioMin]);
    for (const row of r.rows) expect(['PASS', 'MISS', '-']).toContain(verdict(row));
    expect(() => JSON.stringify(r)).not.toThrow();
    expect(fs.readdirSync(base), 'temp data removed').toEqual([]);
  });
});
