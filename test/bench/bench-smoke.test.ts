// Smoke test of the benchmark suite (bench/): runs every scenario TINY, in-process, through the
// same functions `npm run bench` uses, so the suite cannot rot. It asserts only that the results
// are well-formed positive numbers and that temp data is cleaned up: never a speed threshold.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchAppend4k, benchAppendBatch, benchAppendLatency, benchAppendOne } from '../../bench/log-append.js';
import { benchRead } from '../../bench/log-read.js';
import { benchMicro } from '../../bench/micro.js';
import { SCENARIOS, parseArgs, selectScenarios } from '../../bench/run.js';
import type { ScenarioContext } from '../../bench/lib/context.js';
import { measureRawLimits, type RawLimits } from '../../bench/lib/raw-limits.js';
import { summarizeProfile } from '../../bench/lib/cpuprofile.js';
import {
  type ScenarioReport,
  median,
  percentile,
  printScenario,
  summaryTable,
  verdict,
  writeResults,
} from '../../bench/lib/report.js';

const KiB = 1024;
let base: string;
let raw: RawLimits;
let ctx: ScenarioContext;

function positive(v: number | undefined, what: string): void {
  expect(typeof v, what).toBe('number');
  expect(Number.isFinite(v), `${what} = ${v} is finite`).toBe(true);
  expect(v as number, what).toBeGreaterThan(0);
}

/** Every labelled metric and every summary figure is a finite positive number; the temp base is empty again. */
function expectWellFormed(r: ScenarioReport): void {
  expect(r.name.length).toBeGreaterThan(0);
  expect(Object.keys(r.labels).length).toBeGreaterThan(0);
  for (const key of Object.keys(r.labels)) {
    positive(r.median[key], `${r.name} ${key}`);
    expect(r.runs[key]?.length, `${r.name} ${key} runs`).toBeGreaterThan(0);
  }
  expect(r.rows.length).toBeGreaterThan(0);
  for (const row of r.rows) {
    positive(row.value, `${r.name} row ${row.metric}`);
    if (row.judged !== undefined) positive(row.judged, `${r.name} row ${row.metric} judged`);
    expect(['PASS', 'MISS', '-']).toContain(verdict(row));
  }
  expect(() => JSON.stringify(r)).not.toThrow();
  expect(fs.readdirSync(base), 'temp data removed').toEqual([]);
}

beforeAll(async () => {
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true); // progress lines
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-bench-smoke-'));
  raw = await measureRawLimits({ repeats: 1, fsyncIterations: 20, seqWriteBytes: 2 * 1024 * KiB, dir: base });
  ctx = { repeats: 2, raw };
});

afterAll(() => {
  vi.restoreAllMocks();
  fs.rmSync(base, { recursive: true, force: true });
});

describe('bench suite smoke', () => {
  it('measures raw limits', () => {
    positive(raw.fsyncCallsPerSec, 'fsync calls/s');
    positive(raw.fsyncMedianUs, 'fsync median us');
    positive(raw.fsyncP99Us, 'fsync p99 us');
    positive(raw.seqWriteMBps, 'seq write MB/s');
    positive(raw.seqWriteSyncedMBps, 'seq write with periodic fsync MB/s');
    expect(raw.seqWriteFsyncSeconds).toBeGreaterThanOrEqual(0);
    expect(fs.readdirSync(base)).toEqual([]);
  });

  it('append-batch and append-batch-10k', async () => {
    expectWellFormed(await benchAppendBatch(ctx, { records: 3000, batchSize: 500, inFlight: 4, valueBytes: 100, dir: base }));
    const r = await benchAppendBatch(ctx, { records: 2500, batchSize: 1000, inFlight: 2, valueBytes: 100, dir: base }, 'append-batch-10k');
    expectWellFormed(r);
    expect(r.median.records).toBe(2500);
  });

  it('append-one', async () => {
    const r = await benchAppendOne(ctx, { records: 3000, window: 100, valueBytes: 100, dir: base });
    expectWellFormed(r);
    expect(r.median.records).toBe(3000);
  });

  it('append-4k', async () => {
    expectWellFormed(await benchAppend4k(ctx, { records: 256, batchSize: 32, inFlight: 4, valueBytes: 4096, dir: base }));
  });

  it('append-latency', async () => {
    const r = await benchAppendLatency(ctx, { iterations: 20, valueBytes: 100, dir: base });
    expectWellFormed(r);
    expect(r.median.fsyncsPerAppend).toBeGreaterThanOrEqual(1);
  });

  it('read-seq across segment rolls', async () => {
    const r = await benchRead(ctx, { logBytes: 512 * KiB, valueBytes: 100, maxBytes: 64 * KiB, segmentBytesMax: 128 * KiB, buildBatchSize: 500, dir: base });
    expectWellFormed(r);
    expect(r.params.segments as number).toBeGreaterThan(1);
  });

  it('micro', async () => {
    const r = await benchMicro(ctx, { timeMs: 20, warmupMs: 5, crcSizes: [128, 4096], batchRecords: 100, valueBytes: 100, indexEntries: 1024, lookupsPerSample: 64 });
    expectWellFormed(r);
  });

  it('works without raw limits (paired targets are still judged, start-of-run ratios left out)', async () => {
    const noRaw: ScenarioContext = { repeats: 1, raw: null };
    const lat = await benchAppendLatency(noRaw, { iterations: 5, valueBytes: 100, dir: base });
    expectWellFormed(lat);
    expect(lat.rows[0]?.target).toBeDefined();
    const b = await benchAppendBatch(noRaw, { records: 1000, batchSize: 100, inFlight: 2, valueBytes: 100, dir: base });
    expectWellFormed(b);
    expect(b.ratios.join(' ')).toContain('not measured');
  });

  it('every scenario the CLI knows is smoke-tested (here or in a sibling smoke file), and the CLI parses its flags', () => {
    const names = SCENARIOS.map((s) => s.name);
    const logScenarios = ['append-batch', 'append-batch-10k', 'append-one', 'append-4k', 'append-latency', 'read-seq', 'micro'];
    for (const n of logScenarios) expect(names).toContain(n);
    // The others each have a smoke file of their own under test/bench/ that names them.
    const here = path.dirname(fileURLToPath(import.meta.url));
    const smokeText = fs.readdirSync(here).filter((f) => f.endsWith('.test.ts')).map((f) => fs.readFileSync(path.join(here, f), 'utf8')).join('\n');
    for (const n of names.filter((x) => !logScenarios.includes(x))) {
      const family = n.split('-')[0] as string;
      expect(smokeText.includes(`'${n}'`) || smokeText.includes(`${family}`), `scenario ${n} has no smoke test`).toBe(true);
    }
    const o = parseArgs(['--quick', '--only', 'append-one,micro', '--out', base, '--repeats=2']);
    expect(o).toMatchObject({ quick: true, only: ['append-one', 'micro'], outDir: base, repeats: 2 });
    expect(parseArgs([]).repeats).toBe(5);
    expect(parseArgs(['--quick']).repeats).toBe(3);
    expect(selectScenarios(['micro'])).toEqual({ names: ['micro'], raw: false });
    expect(selectScenarios(['append-one'])).toEqual({ names: ['append-one'], raw: true });
    expect(selectScenarios(['raw'])).toEqual({ names: [], raw: true });
    expect(selectScenarios(null).names.length).toBe(SCENARIOS.length);
    expect(() => parseArgs(['--bogus'])).toThrow(/unknown argument/);
    expect(parseArgs(['--backlog', '30_000_000']).backlog).toBe(30_000_000);
    expect(parseArgs([]).backlog).toBeUndefined();
    expect(() => parseArgs(['--backlog', '12.5'])).toThrow(/--backlog/);
    expect(() => selectScenarios(['nope'])).toThrow(/unknown scenario/);
  });

  it('statistics, tables and the results file', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(percentile([1, 2, 3, 4, 5], 100)).toBe(5);
    expect(Number.isNaN(median([]))).toBe(true);
    const rows = [
      { scenario: 's', metric: 'm', value: 10, unit: 'x', target: { kind: 'min' as const, value: 5, text: '>= 5' } },
      { scenario: 's', metric: 'n', value: 10, unit: 'x', target: { kind: 'max' as const, value: 5, text: '<= 5' } },
    ];
    expect(rows.map(verdict)).toEqual(['PASS', 'MISS']);
    expect(summaryTable(rows)).toMatch(/PASS[\s\S]*MISS/);
    const written: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
      written.push(String(s));
      return true;
    });
    try {
      printScenario({ name: 'x', title: 't', params: { a: 1 }, repeats: 1, median: { k: 1 }, runs: { k: [1] }, labels: { k: 'k' }, ratios: ['r'], rows });
    } finally {
      spy.mockRestore();
    }
    expect(written.join('')).toContain('== x: t');
    const outDir = path.join(base, 'results');
    const file = writeResults(outDir, { hello: 1 }, new Date(0));
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ hello: 1 });
    expect(JSON.parse(fs.readFileSync(path.join(outDir, 'latest.json'), 'utf8'))).toEqual({ hello: 1 });
    fs.rmSync(outDir, { recursive: true });
  });

  it('summarizes a CPU profile by self and inclusive time, optionally cut to timed windows', () => {
    const frame = (functionName: string) => ({ functionName, url: '', lineNumber: -1, columnNumber: -1 });
    const prof = {
      nodes: [
        { id: 1, callFrame: frame('(root)'), children: [2] },
        { id: 2, callFrame: frame('outer'), children: [3] },
        { id: 3, callFrame: frame('inner') },
      ],
      startTime: 1000,
      endTime: 1400,
      samples: [2, 3, 3, 3],
      timeDeltas: [100, 100, 100, 100],
    };
    const file = path.join(base, 'x.cpuprofile');
    fs.writeFileSync(file, JSON.stringify(prof));
    const all = summarizeProfile(file, base);
    expect(all.totalMs).toBeCloseTo(0.4);
    expect(all.functions[0]).toMatchObject({ name: 'inner', selfMs: 0.3 });
    expect(all.functions.find((f) => f.name === 'outer')).toMatchObject({ selfMs: 0.1, totalMs: 0.4 });
    const cut = summarizeProfile(file, base, [{ startUs: 1150, endUs: 1300 }]);
    expect(cut.totalMs).toBeCloseTo(0.2); // the samples at 1200 and 1300 us
    fs.rmSync(file);
  });
});
