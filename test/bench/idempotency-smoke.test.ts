// Smoke test of the 'idempotency' benchmark scenario (bench/idempotency.ts): runs it tiny, in-process, through the same function `npm run bench` uses, so it cannot rot. It asserts that the report is well-formed and the temp data is gone — never a speed.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { benchIdempotency } from '../../bench/idempotency.js';
import { SCENARIOS, selectScenarios } from '../../bench/run.js';
import { verdict } from '../../bench/lib/report.js';

let base: string;

beforeAll(() => {
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true); // progress lines
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-bench-idem-'));
});

afterAll(() => {
  vi.restoreAllMocks();
  fs.rmSync(base, { recursive: true, force: true });
});

describe('idempotency benchmark smoke', () => {
  it('is registered with the suite', () => {
    expect(SCENARIOS.map((s) => s.name)).toContain('idempotency');
    expect(selectScenarios(['idempotency'])).toEqual({ names: ['idempotency'], raw: false });
  });

  it('runs tiny and reports well-formed figures', async () => {
    const r = await benchIdempotency({ repeats: 1, raw: null }, { keys: 20_000, throughputPairs: 2000, inFlight: 100, negativeSamples: 2000, positiveSamples: 500, dir: base });
    expect(r.name).toBe('idempotency');
    for (const key of Object.keys(r.labels)) {
      const v = r.median[key];
      expect(typeof v, key).toBe('number');
      expect(Number.isFinite(v), `${key} = ${v}`).toBe(true);
    }
    for (const k of ['pairsPerSec', 'buildKeysPerSec', 'negativeP50Us', 'negativeP99Us', 'positiveP50Us', 'positiveP99Us', 'diskBytesPerKey']) {
      expect(r.median[k] as number, k).toBeGreaterThan(0);
    }
    expect(r.median.negativeReadsPerLookup as number).toBeLessThan(0.5);
    expect(r.median.diskBytesPerKey as number).toBeGreaterThan(16);
    expect(r.rows.length).toBeGreaterThan(0);
    for (const row of r.rows) {
      expect(row.value, row.metric).toBeGreaterThan(0);
      expect(['PASS', 'MISS', '-']).toContain(verdict(row));
    }
    expect(() => JSON.stringify(r)).not.toThrow();
    expect(fs.readdirSync(base), 'temp data removed').toEqual([]);
  });
});
