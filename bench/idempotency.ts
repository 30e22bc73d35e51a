/**
 * idempotency: the IdempotencyStore (src/idempotency) at scale.
 *
 *   node dist/bench/idempotency.js [--keys 10000000] [--quick] [--dir tmpdir] [--filter-mib 32]
 *   node --expose-gc dist/bench/idempotency.js --keys 100000000      # the optional 100M-key run
 *   node dist/bench/run.js --only idempotency [--quick]               # the same, from the suite
 *
 * Phases, each on the real node:fs storage in a fresh temp dir:
 * 1. throughput: claim + complete of fresh keys, `inFlight` pairs outstanding (each pair is two
 *    durable writes: the lease, then the completion; concurrent ones share fsyncs).
 * 2. build: `complete()` of `keys` keys through the public API, 4,096 in flight (the "bulk" load is
 *    just deep group commit, 1,000 in flight); its time is reported apart. Then maintenance runs until every
 *    journal is sealed and the tables are merged.
 * 3. in a fresh child process (`--measure`): reopen (recovery time), then one lookup at a time:
 *    negative lookups of absent keys and positive lookups of random present keys; p50/p99
 *    latency, and the disk reads negative lookups made (filter false positives, counted by a
 *    wrapping Storage).
 * 4. memory, in that child: RSS, heap and buffers after the reopen and a forced GC, minus the
 *    child's own figures before it opened the store; and disk bytes per key.
 * Lookups read files the build just wrote, so mostly from the page cache: latency is the store's
 * CPU and the syscalls, not the disk.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IdempotencyStore } from '../src/idempotency/index.js';
import type { ScenarioContext } from './lib/context.js';
import { CountingStorage } from './lib/counting-storage.js';
import { MiB, type ScenarioReport, fmt, out, percentile, printScenario, progress, secondsSince, withTempDir } from './lib/report.js';

export interface IdempotencyParams {
  /** Keys completed for the lookup phases. */
  keys: number;
  /** claim+complete pairs of the throughput phase. */
  throughputPairs: number;
  /** Pairs outstanding in the throughput phase. */
  inFlight: number;
  negativeSamples: number;
  positiveSamples: number;
  /** Filter memory budget (the store's filterBytesMax). Default: the store's (32 MiB). */
  filterBytesMax?: number;
  dir?: string;
}

export const IDEMPOTENCY_SIZES = {
  full: { keys: 10_000_000, throughputPairs: 500_000, inFlight: 1000, negativeSamples: 200_000, positiveSamples: 50_000 },
  quick: { keys: 1_000_000, throughputPairs: 100_000, inFlight: 1000, negativeSamples: 50_000, positiveSamples: 10_000 },
} as const;

/** Completions in flight while building: deeper queues only add GC work (measured: 1,000 beats 4,096). */
const BUILD_IN_FLIGHT = 1000;

function gc(): boolean {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g === undefined) return false;
  g();
  g();
  return true;
}

function dirBytes(dir: string): number {
  return fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
}

/** Runs `total` calls of `op(i)`, `inFlight` at a time. */
async function pump(total: number, inFlight: number, op: (i: number) => Promise<unknown>, onProgress?: (done: number) => void): Promise<void> {
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < total) {
      const i = next++;
      await op(i);
      done++;
      if (onProgress !== undefined && done % 1_000_000 === 0) onProgress(done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, total) }, worker));
}

/** Per-call latencies in microseconds of `n` sequential calls. */
async function latencies(n: number, op: (i: number) => Promise<unknown>): Promise<number[]> {
  const us: number[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await op(i);
    us[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  return us;
}

export async function benchIdempotency(ctx: ScenarioContext, p: IdempotencyParams): Promise<ScenarioReport> {
  const name = 'idempotency';
  const storeOptions = { maintenanceIntervalMs: 200, ...(p.filterBytesMax !== undefined ? { filterBytesMax: p.filterBytesMax } : {}) };
  return withTempDir(name, p.dir, async (dir) => {
    // 1. claim + complete throughput.
    const tDir = path.join(dir, 'throughput');
    const t = await IdempotencyStore.open({ dir: tDir, ...storeOptions });
    let pairsPerSec: number;
    let recordsPerSync: number;
    try {
      const t0 = process.hrtime.bigint();
      await pump(p.throughputPairs, p.inFlight, async (i) => {
        const key = `order-${i}`;
        if ((await t.claim(key, { ttlMs: 30_000 })) !== 'acquired') throw new Error(`${key} was not acquired`);
        await t.complete(key, { ok: true, i });
      });
      pairsPerSec = p.throughputPairs / secondsSince(t0);
      const st = t.stats();
      recordsPerSync = st.recordsWritten / Math.max(1, st.syncs);
    } finally {
      await t.close();
    }
    fs.rmSync(tDir, { recursive: true, force: true });
    progress(`${name}: ${fmt(pairsPerSec)} claim+complete pairs/s`);

    // 2. build.
    const sDir = path.join(dir, 'store');
    let s = await IdempotencyStore.open({ dir: sDir, ...storeOptions });
    const tb = process.hrtime.bigint();
    await pump(p.keys, BUILD_IN_FLIGHT, (i) => s.complete(`key-${i}`, i), (done) => progress(`${name}: built ${fmt(done)} keys in ${fmt(secondsSince(tb))} s`));
    const buildSeconds = secondsSince(tb);
    const tm = process.hrtime.bigint();
    for (let i = 0; i < 1000; i++) {
      const r = await s.maintain();
      if (r.sealed === 0 && r.merged === 0 && !r.rolled) break;
    }
    const settleSeconds = secondsSince(tm);
    const built = s.stats();
    await s.close();
    progress(`${name}: built ${fmt(p.keys)} keys in ${fmt(buildSeconds)} s, settled in ${fmt(settleSeconds)} s (${built.tables} tables, ${built.merges} merges)`);

    // 3 and 4 in a fresh process, so its memory is the store's and not the build's leftovers.
    const r = await measureInChild(sDir, p);
    const diskBytes = dirBytes(sDir);
    {
      const m = {
        pairsPerSec,
        recordsPerSync,
        buildKeysPerSec: p.keys / buildSeconds,
        buildSeconds,
        settleSeconds,
        openSeconds: r.openSeconds,
        negativeP50Us: r.negativeP50Us,
        negativeP99Us: r.negativeP99Us,
        negativeReadsPerLookup: r.negativeReads / p.negativeSamples,
        positiveP50Us: r.positiveP50Us,
        positiveP99Us: r.positiveP99Us,
        rssMiB: r.rssMiB,
        heapMiB: r.heapMiB,
        externalMiB: r.externalMiB,
        filterMiB: r.filterMiB,
        filterBitsPerKey: r.filterBitsPerKey,
        diskBytesPerKey: diskBytes / p.keys,
        tables: built.tables,
      };
      const runs = Object.fromEntries(Object.entries(m).map(([k, v]) => [k, [v]]));
      return {
        name,
        title: `IdempotencyStore: claim+complete throughput, then ${fmt(p.keys)} keys built through complete(), reopened and looked up one at a time`,
        params: { ...p, buildInFlight: BUILD_IN_FLIGHT, node: process.version },
        repeats: 1,
        median: m,
        runs,
        labels: {
          pairsPerSec: `claim+complete pairs/s (${p.inFlight} in flight, fresh store)`,
          recordsPerSync: 'records per fsync (group commit)',
          buildKeysPerSec: `build: complete() keys/s (${BUILD_IN_FLIGHT} in flight)`,
          buildSeconds: 'build seconds',
          settleSeconds: 'seconds to seal and merge after the build',
          openSeconds: 'reopen (recovery) seconds',
          negativeP50Us: 'negative lookup p50 us',
          negativeP99Us: 'negative lookup p99 us',
          negativeReadsPerLookup: 'disk reads per negative lookup',
          positiveP50Us: 'positive lookup p50 us',
          positiveP99Us: 'positive lookup p99 us',
          rssMiB: 'RSS of the store after reopen, MiB (process delta)',
          heapMiB: 'JS heap of the store, MiB (delta)',
          externalMiB: 'buffers of the store, MiB (delta)',
          filterMiB: 'Bloom filters, MiB',
          filterBitsPerKey: 'filter bits per key',
          diskBytesPerKey: 'disk bytes per key',
          tables: 'tables after the build',
        },
        ratios: [
          `build: ${fmt(p.keys)} keys in ${fmt(buildSeconds)} s (${fmt(p.keys / buildSeconds)} keys/s), then ${fmt(settleSeconds)} s of sealing/merging; ${built.tables} tables, ${fmt(diskBytes / 1e6)} MB on disk`,
          `negative lookups: ${fmt(r.negativeReads)} disk reads in ${fmt(p.negativeSamples)} lookups; the filters predicted ${fmt(r.expectedReads)}`,
          `memory (a fresh process that only opened the store, after a forced GC): RSS ${fmt(r.rssTotalMiB)} MiB, of which ${fmt(r.rssBaseMiB)} MiB before the store was opened`,
          'one run (not repeated): the build dominates; lookups read a page-cache-warm store',
        ],
        rows: [
          { scenario: name, metric: 'claim+complete', value: pairsPerSec, unit: 'pairs/s', ratios: `${fmt(recordsPerSync)} records per fsync` },
          { scenario: name, metric: `negative lookup p50 (${fmt(p.keys)} keys)`, value: m.negativeP50Us, unit: 'us', ratios: `p99 ${fmt(m.negativeP99Us)} us, ${fmt(m.negativeReadsPerLookup, 4)} reads/lookup` },
          { scenario: name, metric: `positive lookup p50 (${fmt(p.keys)} keys)`, value: m.positiveP50Us, unit: 'us', ratios: `p99 ${fmt(m.positiveP99Us)} us` },
          { scenario: name, metric: 'store RSS after reopen', value: Math.max(m.rssMiB, 0.001), unit: 'MiB', ratios: `filters ${fmt(m.filterMiB)} MiB at ${fmt(m.filterBitsPerKey)} bits/key` },
          { scenario: name, metric: 'disk per key', value: m.diskBytesPerKey, unit: 'bytes', ratios: `build ${fmt(m.buildKeysPerSec)} keys/s` },
        ],
      };
    }
  });
}

interface Measured {
  openSeconds: number;
  negativeP50Us: number;
  negativeP99Us: number;
  negativeReads: number;
  expectedReads: number;
  positiveP50Us: number;
  positiveP99Us: number;
  rssMiB: number;
  rssTotalMiB: number;
  rssBaseMiB: number;
  heapMiB: number;
  externalMiB: number;
  filterMiB: number;
  filterBitsPerKey: number;
}

/** The compiled copy of this file (the child runs it; from vitest this module is the .ts source). */
function compiledSelf(): string {
  const self = fileURLToPath(import.meta.url);
  return self.endsWith('.js') ? self : path.resolve(path.dirname(self), '..', 'dist', 'bench', 'idempotency.js');
}

async function measureInChild(storeDir: string, p: IdempotencyParams): Promise<Measured> {
  const script = compiledSelf();
  if (!fs.existsSync(script)) throw new Error(`${script} is missing: the lookup phase runs the compiled bench in a child; run npx tsc -p tsconfig.json`);
  const args = ['--expose-gc', script, '--measure', storeDir, '--keys', String(p.keys), '--neg', String(p.negativeSamples), '--pos', String(p.positiveSamples)];
  if (p.filterBytesMax !== undefined) args.push('--filter-bytes', String(p.filterBytesMax));
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const { stdout, code, stderr } = await new Promise<{ stdout: string; stderr: string; code: number | null }>((resolve) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let o = '';
    let e = '';
    child.stdout.on('data', (d) => (o += String(d)));
    child.stderr.on('data', (d) => (e += String(d)));
    child.on('close', (c) => resolve({ stdout: o, stderr: e, code: c }));
  });
  if (code !== 0) throw new Error(`lookup child failed (code ${code}): ${stderr}`);
  return JSON.parse(stdout.trim().split('\n').pop() as string) as Measured;
}

/** The child side: open the built store, measure memory, then time lookups. Prints one JSON line. */
async function measure(storeDir: string, keys: number, negativeSamples: number, positiveSamples: number, filterBytesMax: number | undefined): Promise<void> {
  gc();
  const base = process.memoryUsage();
  const storage = new CountingStorage();
  const to = process.hrtime.bigint();
  const s = await IdempotencyStore.open({ dir: storeDir, maintenanceIntervalMs: 0, storage, lock: true, ...(filterBytesMax !== undefined ? { filterBytesMax } : {}) });
  const openSeconds = secondsSince(to);
  try {
    gc();
    const mem = process.memoryUsage();
    const reads0 = storage.snapshot().reads;
    const neg = await latencies(negativeSamples, async (i) => {
      if ((await s.lookup(`absent-${i}`)) !== 'absent') throw new Error(`absent-${i} was found`);
    });
    const negativeReads = storage.snapshot().reads - reads0;
    let x = 0x2545f491;
    const pos = await latencies(positiveSamples, async () => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      const i = (x >>> 0) % keys;
      const r = await s.lookup(`key-${i}`);
      if (typeof r !== 'object' || r.result !== i) throw new Error(`key-${i} reads back ${JSON.stringify(r)}`);
    });
    const st = s.stats();
    const m: Measured = {
      openSeconds,
      negativeP50Us: percentile(neg, 50),
      negativeP99Us: percentile(neg, 99),
      negativeReads,
      expectedReads: st.expectedReadsPerNegativeLookup * negativeSamples,
      positiveP50Us: percentile(pos, 50),
      positiveP99Us: percentile(pos, 99),
      rssMiB: (mem.rss - base.rss) / MiB,
      rssTotalMiB: mem.rss / MiB,
      rssBaseMiB: base.rss / MiB,
      heapMiB: (mem.heapUsed - base.heapUsed) / MiB,
      externalMiB: (mem.external + mem.arrayBuffers - base.external - base.arrayBuffers) / MiB,
      filterMiB: st.filterBytes / MiB,
      filterBitsPerKey: st.filterBitsPerKey,
    };
    out(JSON.stringify(m));
  } finally {
    await s.close();
  }
}

// ---- run directly: the optional 100M-key run and other sizes --------------------------------

async function main(argv: string[]): Promise<void> {
  let quick = false;
  let keys: number | undefined;
  let dir: string | undefined;
  let filterMiB: number | undefined;
  if (argv[0] === '--measure') {
    const num = (flag: string) => Number(argv[argv.indexOf(flag) + 1]);
    const fb = argv.includes('--filter-bytes') ? num('--filter-bytes') : undefined;
    await measure(argv[1] as string, num('--keys'), num('--neg'), num('--pos'), fb);
    return;
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${a} needs a value`);
      return x;
    };
    if (a === '--quick') quick = true;
    else if (a === '--keys') keys = Number(v());
    else if (a === '--dir') dir = path.resolve(v());
    else if (a === '--filter-mib') filterMiB = Number(v());
    else throw new Error(`unknown argument ${a}\nusage: node [--expose-gc] dist/bench/idempotency.js [--quick] [--keys n] [--dir tmpdir] [--filter-mib n]`);
  }
  const sizes = IDEMPOTENCY_SIZES[quick ? 'quick' : 'full'];
  const p: IdempotencyParams = { ...sizes, ...(keys !== undefined ? { keys } : {}), ...(dir !== undefined ? { dir } : {}), ...(filterMiB !== undefined ? { filterBytesMax: filterMiB * MiB } : {}) };
  if (!Number.isSafeInteger(p.keys) || p.keys < 1000) throw new Error('--keys must be an integer >= 1000');
  const report = await benchIdempotency({ repeats: 1, raw: null }, p);
  printScenario(report);
  out(JSON.stringify({ name: report.name, params: report.params, results: report.median }));
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  });
}
