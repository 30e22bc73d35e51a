// Smoke test of bench/delay.ts: runs the 'delay' scenario TINY and in process through the same function `npm run bench` uses, so it cannot rot; asserts only well-formed figures, the registration in bench/run.ts and that temp data is removed — never a speed threshold.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DELAY_SIZES, benchDelay } from '../../bench/delay.js';
import { SCENARIOS, selectScenarios } from '../../bench/run.js';
import { verdict } from '../../bench/lib/report.js';

let base: string;

beforeAll(() => {
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true); // progress lines
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-delay-smoke-'));
});

afterAll(() => {
  vi.restoreAllMocks();
  fs.rmSync(base, { recursive: true, force: true });
});

describe('bench delay smoke', () => {
  it('runs tiny and reports finite figures for every labelled metric and summary row', async () => {
    // 2,000 scheduled (in process), 600 then 120 fires over 300 ms, 300 TTL expiries of each kind, 1,000-message drains; one repeat, no raw limits.
    const r = await benchDelay({ repeats: 1, raw: null }, { schedule: 2000, fireRate: 2000, fireSpreadMs: 300, ttl: 300, counts: 1000, dir: base, child: false });
    expect(r.name).toBe('delay');
    for (const key of Object.keys(r.labels)) {
      const v = r.median[key];
      expect(Number.isFinite(v), `${key} = ${v}`).toBe(true);
      expect(r.runs[key]?.length, `${key} runs`).toBeGreaterThan(0);
    }
    for (const key of ['scheduleMsgsPerSec', 'scheduleMaxRssMB', 'firesPerSec', 'queueTtlMsgsPerSec', 'messageTtlMsgsPerSec', 'plainMsgsPerSec', 'limitedMsgsPerSec']) {
      expect(r.median[key] as number, key).toBeGreaterThan(0);
    }
    expect(r.median.messages).toBe(600);
    expect(r.median.extra, 'fires beyond the scheduled ones').toBe(0);
    expect(r.median.lateMinMs as number, 'no message arrives before its deliverAt').toBeGreaterThanOrEqual(-2);
    expect(r.rows.length).toBe(7);
    expect([r.median.arrived, r.median.lowArrived]).toEqual([600, 120]);
    for (const row of r.rows) {
      expect(Number.isFinite(row.value), row.metric).toBe(true);
      expect(['PASS', 'MISS', '-']).toContain(verdict(row));
    }
    expect(r.rows.filter((row) => row.target !== undefined).map((row) => row.target!.value)).toEqual([250, 20]);
    expect(() => JSON.stringify(r)).not.toThrow();
    expect(fs.readdirSync(base), 'temp data removed').toEqual([]);
  });

  it("is registered in bench/run.ts as 'delay' with the quick sizes smaller than the full ones", () => {
    // The CLI lists it, --only delay selects it with the raw limits, and the quick run schedules 100k instead of 1M.
    expect(SCENARIOS.map((s) => s.name)).toContain('delay');
    expect(selectScenarios(['delay'])).toEqual({ names: ['delay'], raw: true });
    expect([DELAY_SIZES.full.schedule, DELAY_SIZES.quick.schedule]).toEqual([1_000_000, 100_000]);
    expect(DELAY_SIZES.full.fireRate).toBe(10_000);
  });
});
