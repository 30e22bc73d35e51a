// Smoke test of the broker benchmarks (bench/broker.ts), the chart (bench/chart.ts) and the peers
// runner (bench/peers/): every scenario runs TINY, in-process, through the functions that
// `npm run bench` and `npm run bench:peers` use, so they cannot rot. It asserts only that results
// are well-formed and temp data is cleaned up: never a speed threshold. No peer server is started
// here (RabbitMQ, NATS and Redis are not assumed installed); SQLite runs when better-sqlite3 loads.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  BROKER_TARGETS,
  DRAIN_CONFIGS,
  benchBrokerBacklog,
  benchBrokerDrain,
  benchBrokerPublish,
  rssShape,
  type RssSample,
} from '../../bench/broker.js';
import { renderChart, suiteChartData, writeChart } from '../../bench/chart.js';
import { SCENARIOS, parseArgs, selectScenarios } from '../../bench/run.js';
import type { ScenarioContext } from '../../bench/lib/context.js';
import { measureRawLimits, type RawLimits } from '../../bench/lib/raw-limits.js';
import { type ScenarioReport, verdict } from '../../bench/lib/report.js';
import { runSpool, runSpoolAndSqlite, runSqlite, spoolDelaySupported } from '../../bench/peers/adapters.js';
import { parsePeersArgs, peerTargets, peersChart } from '../../bench/peers/run.js';
import { freePort } from '../../bench/peers/servers.js';
import { DELAY_WARMUP, type PeerOutcome, delayWorkload, medianFigures, pumpWindow, randomDelays, textBodies } from '../../bench/peers/workloads.js';

let base: string;
let raw: RawLimits;
let ctx: ScenarioContext;

function positive(v: number | undefined, what: string): void {
  expect(typeof v, what).toBe('number');
  expect(Number.isFinite(v), `${what} = ${v} is finite`).toBe(true);
  expect(v as number, what).toBeGreaterThan(0);
}

function expectWellFormed(r: ScenarioReport): void {
  expect(r.name.length).toBeGreaterThan(0);
  for (const key of Object.keys(r.labels)) {
    positive(r.median[key], `${r.name} ${key}`);
    expect(r.runs[key]?.length, `${r.name} ${key} runs`).toBeGreaterThan(0);
  }
  expect(r.rows.length).toBeGreaterThan(0);
  for (const row of r.rows) {
    expect(Number.isFinite(row.value), `${r.name} ${row.metric}`).toBe(true);
    expect(['PASS', 'MISS', '-']).toContain(verdict(row));
  }
  expect(() => JSON.stringify(r)).not.toThrow();
  expect(fs.readdirSync(base), 'temp data removed').toEqual([]);
}

beforeAll(async () => {
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true); // progress lines
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-broker-bench-smoke-'));
  raw = await measureRawLimits({ repeats: 1, fsyncIterations: 20, seqWriteBytes: 2 * 1024 * 1024, dir: base });
  ctx = { repeats: 1, raw };
});

afterAll(() => {
  vi.restoreAllMocks();
  fs.rmSync(base, { recursive: true, force: true });
});

describe('broker bench smoke', () => {
  it('broker-publish: 3 body sizes, windowed, batched and lone publishes, with ratios to the raw limits', async () => {
    const r = await benchBrokerPublish(ctx, { messages: { 100: 2000, 1024: 1000, 4096: 500 }, latencyIterations: 10, window: 100, sizes: [100, 1024, 4096] });
    expectWellFormed(r);
    expect(r.rows.filter((x) => x.unit === 'msgs/s')).toHaveLength(6);
    for (const k of ['100B', '1KiB', '4KiB']) positive(r.median[`b${k}MsgsPerSec`], `publishBatch ${k}`);
    expect(r.rows.find((x) => x.metric.startsWith('100 B publishBatch'))?.ratios).toContain('single publishes');
    expect(r.rows.find((x) => x.metric.startsWith('100 B publish'))?.target?.value).toBe(BROKER_TARGETS.publishMsgsPerSec);
    expect(r.rows.find((x) => x.metric === '100 B confirm p50, 1 outstanding')?.judged).toBeGreaterThan(0);
    expect(r.ratios.join('\n')).toContain('of raw rate');
  });

  it('broker-drain: build, then 1 and 4 consumers, ack auto and manual, each its own group', async () => {
    const r = await benchBrokerDrain(ctx, { messages: { 100: 3000 }, sizes: [100], prefetch: 200, dir: base });
    expectWellFormed(r);
    for (const c of DRAIN_CONFIGS) positive(r.median[`${c.ack}${c.consumers}100BMsgsPerSec`], `${c.ack}${c.consumers}`);
    expect(r.rows.find((x) => x.target !== undefined)?.metric).toContain('1 consumer, ack auto');
  });

  it('broker-backlog: RSS sampled through build and drain (in process)', async () => {
    const r = await benchBrokerBacklog(ctx, { messages: 5000, bodyBytes: 100, sampleMs: 10, child: false, dir: base });
    expectWellFormed(r);
    expect(r.median.samples).toBeGreaterThanOrEqual(3);
    expect(r.series?.[0]?.points.length).toBe(r.median.samples);
    expect(r.rows.find((x) => x.unit === 'MB')?.target?.value).toBe(BROKER_TARGETS.backlogRssMaxMB);
  });

  it('broker-backlog in a child process (the compiled module), as the CLI runs it', async () => {
    if (!fs.existsSync(path.resolve('dist/bench/broker.js'))) return; // npm test builds first
    const r = await benchBrokerBacklog(ctx, { messages: 2000, bodyBytes: 100, sampleMs: 10, dir: base });
    expectWellFormed(r);
    expect(r.params.child).toBe(true);
  });

  it('judges RSS flatness from the samples', () => {
    const mk = (rss: number[]): RssSample[] => rss.map((v, i) => ({ t: i, rssMB: v, heapMB: 1, buffersMB: 1, phase: i < rss.length / 2 ? 'build' : 'drain', n: i * 1000 }));
    expect(rssShape(mk([50, 60, 62, 63, 62, 64, 63, 62])).flat).toBe(true);
    expect(rssShape(mk([50, 60, 80, 100, 120, 140, 160, 180])).flat).toBe(false);
    expect(rssShape(mk([50, 60, 80, 100, 120, 140, 160, 180])).maxMB).toBe(180);
  });

  it('the CLI knows the broker scenarios and --big', () => {
    for (const n of ['broker-publish', 'broker-drain', 'broker-backlog']) expect(SCENARIOS.map((s) => s.name)).toContain(n);
    expect(selectScenarios(['broker']).names).toEqual(['broker-publish', 'broker-drain', 'broker-backlog']);
    expect(selectScenarios(['broker-drain']).raw).toBe(true);
    expect(parseArgs(['--big']).big).toBe(true);
    expect(parseArgs([]).big).toBe(false);
  });

  it('draws a self-contained SVG chart and writes it', () => {
    const rows = [
      { scenario: 'broker-publish', metric: '100 B publish', value: 300_000, unit: 'msgs/s', target: { kind: 'min' as const, value: 500_000, text: '>= 500,000' } },
      { scenario: 'broker-publish', metric: 'confirm p50 <&>', value: 400, unit: 'us' },
    ];
    const svg = renderChart(suiteChartData('t', 's', rows, [{ name: 'RSS', xUnit: 's', yUnit: 'MB', points: [[0, 50], [1, 60], [2, 61]], marks: [{ x: 1, label: 'drain' }] }], 250));
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('&lt;&amp;&gt;');
    expect(svg).not.toMatch(/<script|href=/);
    const files = writeChart(path.join(base, 'charts'), svg, new Date(0), 'x-', path.join(base, 'docs', 'c.svg'));
    expect(files).toHaveLength(3);
    for (const f of files) expect(fs.readFileSync(f, 'utf8')).toBe(svg);
    fs.rmSync(path.join(base, 'charts'), { recursive: true });
    fs.rmSync(path.join(base, 'docs'), { recursive: true });
  });
});

describe('peers bench smoke (no servers)', () => {
  const tiny = { messages: 300, bodyBytes: 100, window: 50, latencyIterations: 5, maxSeconds: 20, warmup: 50, repeats: 1, turns: 1, delays: false, delayMessages: 0, delayMaxMs: 0 };

  it('parses its flags', () => {
    const o = parsePeersArgs(['--only', 'spool,sqlite', '--messages', '1000', '--no-delays', '--repeats=2']);
    expect(o).toMatchObject({ only: ['spool', 'sqlite'], messages: 1000, delays: false, repeats: 2, turns: 5, window: 1000, bodyBytes: 100 });
    expect(() => parsePeersArgs(['--only', 'kafka'])).toThrow(/unknown peer/);
  });

  it('workload helpers: a window of promises, deterministic bodies and delays, free ports', async () => {
    let max = 0;
    let live = 0;
    const r = await pumpWindow(200, 10, 10, async () => {
      live++;
      max = Math.max(max, live);
      await new Promise((res) => setImmediate(res));
      live--;
    });
    expect(r.count).toBe(200);
    expect(max).toBe(10);
    expect(textBodies(3, 100).every((b) => b.length === 100)).toBe(true);
    const d = randomDelays(1000, 5000);
    expect(Math.min(...d)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...d)).toBeLessThanOrEqual(5000);
    expect(randomDelays(5, 100)).toEqual(randomDelays(5, 100));
    positive(await freePort(), 'free port');
  });

  it('Spool (embedded) runs the peer workloads', async () => {
    const o = await runSpool({ ...tiny, tempBase: base });
    expect(o.error).toBeUndefined();
    positive(o.figures?.publishPerSec, 'publish');
    positive(o.figures?.drainPerSec, 'drain');
    positive(o.figures?.confirmP50Us, 'p50');
    positive(o.figures?.batchPublishPerSec, 'batch API');
    expect(o.figures?.drained).toBe(300);
    expect(fs.readdirSync(base)).toEqual([]);
  });

  it('the delay workload warms up untimed, then counts only its timed messages', async () => {
    const lateness: number[] = [];
    const scheduled: number[] = [];
    const figures = await delayWorkload({ window: 100, maxSeconds: 20, delayMessages: 50, delayMaxMs: 30 }, lateness, async (d) => {
      scheduled.push(d);
      const due = Date.now() + d;
      setTimeout(() => lateness.push(Date.now() - due), d);
    });
    expect(scheduled.length).toBe(DELAY_WARMUP.messages + 50);
    expect(Math.max(...scheduled.slice(0, DELAY_WARMUP.messages))).toBeLessThanOrEqual(DELAY_WARMUP.maxDelayMs);
    expect(figures.messages).toBe(50);
    expect(figures.received).toBe(50);
    expect(lateness.length).toBe(50);
    expect(figures.p99Ms).toBeGreaterThanOrEqual(0);
  });

  it('checks at run time whether publish(..., { delay }) exists', async () => {
    const r = await spoolDelaySupported(base);
    expect(typeof r.supported).toBe('boolean');
    expect(r.how.length).toBeGreaterThan(0);
    expect(fs.readdirSync(base)).toEqual([]);
  });

  it('SQLite batched and single, or a plain reason why not', async () => {
    for (const batch of [100, 1]) {
      const o = await runSqlite({ ...tiny, tempBase: base }, batch);
      if (o.error !== undefined) {
        expect(o.error).toMatch(/better-sqlite3/);
        continue;
      }
      positive(o.figures?.publishPerSec, 'sqlite publish');
      if (batch > 1) positive(o.figures?.batchPublishPerSec, 'sqlite batch API');
      else expect(o.figures?.batchPublishPerSec).toBeUndefined();
      expect(o.figures?.drained).toBe(300);
      expect(o.durableAtAck).toBe(true);
    }
    expect(fs.readdirSync(base)).toEqual([]);
  });

  it('Spool and SQLite take turns run by run, marked so that their ratios are judged per run', async () => {
    const outcomes = await runSpoolAndSqlite({ ...tiny, turns: 2, tempBase: base });
    expect(outcomes.map((o) => o.key)).toEqual(['spool', 'sqlite-batch', 'sqlite-single']);
    const [spool, batched] = outcomes as [PeerOutcome, PeerOutcome];
    expect(spool.error).toBeUndefined();
    expect(spool.runs).toHaveLength(2);
    if (batched.error === undefined) {
      expect(batched.runs).toHaveLength(2);
      expect(spool.interleavedWith).toEqual(['sqlite-batch']);
      expect(batched.interleavedWith).toEqual(['spool']);
      positive(batched.figures?.batchPublishPerSec, 'sqlite batch API');
    } else {
      expect(batched.error).toMatch(/better-sqlite3/);
    }
    expect(fs.readdirSync(base)).toEqual([]);
  });

  it('judges ratios against a peer that took turns with Spool run by run: the median of the per-run ratios', () => {
    const f = (batch: number, drain: number, p50: number) => ({ publishPerSec: 1, published: 1, publishSeconds: 1, publishCapped: false, drainPerSec: drain, drained: 1, drainSeconds: 1, drainCapped: false, confirmP50Us: p50, confirmP99Us: p50, latencyIterations: 1, batchPublishPerSec: batch });
    const spoolRuns = [f(900_000, 1_200_000, 150), f(1_500_000, 1_500_000, 200), f(1_000_000, 1_000_000, 120)];
    const sqliteRuns = [f(600_000, 400_000, 100), f(500_000, 500_000, 210), f(450_000, 300_000, 125)];
    const outcome = (key: string, runs: ReturnType<typeof f>[], interleavedWith?: string[]): PeerOutcome => ({ key, name: key, version: '', ackMeans: '', durableAtAck: true, notes: [], runs, figures: medianFigures(runs), ...(interleavedWith ? { interleavedWith } : {}) });
    const get = (rows: ReturnType<typeof peerTargets>, m: string) => rows.find((r) => r.metric === m)?.value;
    const paired = peerTargets([outcome('spool', spoolRuns, ['sqlite-batch']), outcome('sqlite-batch', sqliteRuns, ['spool'])], raw);
    // Per run: 1.5, 3.0, 2.22 (median 2.22); the ratio of the medians would be 1.0M / 500k = 2.0.
    expect(get(paired, 'confirmed publish, batch API, vs SQLite batched')).toBeCloseTo(1_000_000 / 450_000);
    // Per run: 3.0, 3.0, 3.33 (median 3.0); of the medians 1.2M / 400k = 3.0 as well, so also check p50.
    expect(get(paired, 'drain with acks vs SQLite batched')).toBeCloseTo(3);
    // SQLite / Spool per run: 0.667, 1.05, 1.04 (median 1.04); of the medians 125 / 150 = 0.833.
    expect(get(paired, 'confirm p50: SQLite / Spool (>= 1 = no worse)')).toBeCloseTo(125 / 120);
    const apart = peerTargets([outcome('spool', spoolRuns), outcome('sqlite-batch', sqliteRuns)], raw);
    expect(get(apart, 'confirmed publish, batch API, vs SQLite batched')).toBeCloseTo(2);
    expect(get(apart, 'confirm p50: SQLite / Spool (>= 1 = no worse)')).toBeCloseTo(125 / 150);
  });

  it('judges the targets of issue 6 from outcomes, leaving out what was not measured', () => {
    const f = (publish: number, drain: number, p50: number, batch?: number) => ({ publishPerSec: publish, published: 1, publishSeconds: 1, publishCapped: false, drainPerSec: drain, drained: 1, drainSeconds: 1, drainCapped: false, confirmP50Us: p50, confirmP99Us: p50, latencyIterations: 1, ...(batch === undefined ? {} : { batchPublishPerSec: batch }) });
    const outcomes: PeerOutcome[] = [
      { key: 'spool', name: 'Spool', version: '', ackMeans: '', durableAtAck: true, notes: [], figures: f(500_000, 1_000_000, 300, 900_000) },
      { key: 'rabbitmq-quorum', name: 'q', version: '', ackMeans: '', durableAtAck: true, notes: [], figures: f(40_000, 80_000, 600) },
      { key: 'sqlite-batch', name: 'b', version: '', ackMeans: '', durableAtAck: true, notes: [], figures: f(300_000, 300_000, 150, 400_000) },
      { key: 'nats', name: 'n', version: '', ackMeans: '', durableAtAck: false, notes: [], figures: f(20_000, 50_000, 250) },
      { key: 'bullmq', name: 'bq', version: '', ackMeans: '', durableAtAck: true, notes: [], error: 'not installed' },
    ];
    const rows = peerTargets(outcomes, raw);
    const get = (m: string) => rows.find((r) => r.metric === m);
    expect(verdict(get('confirmed publish vs RabbitMQ quorum')!)).toBe('PASS');
    expect(get('confirmed publish vs RabbitMQ quorum')?.value).toBeCloseTo(12.5);
    expect(verdict(get('drain with acks vs SQLite batched')!)).toBe('PASS');
    expect(get('confirmed publish, batch API, vs SQLite batched')?.value).toBeCloseTo(2.25);
    expect(verdict(get('confirmed publish, batch API, vs SQLite batched')!)).toBe('PASS');
    expect(verdict(get('confirm p50: SQLite / Spool (>= 1 = no worse)')!)).toBe('MISS');
    expect(verdict(get('confirmed publish (1,000 outstanding) vs SQLite single')!)).toBe('-');
    expect(verdict(get('delay lateness p99')!)).toBe('-');
    const svg = peersChart(parsePeersArgs([]), outcomes, new Date(0), 'sub');
    expect(svg).toContain('NOT durable at ack');
    expect(svg.startsWith('<svg')).toBe(true);
  });
});
