/**
 * micro: tinybench micro benchmarks of the log's CPU-bound pieces.
 *
 * - CRC-32: node:zlib crc32 (what src/log/format.ts uses) vs the crc-32 package (`CRC.buf(b) >>> 0`)
 *   on 128 B, 4 KiB, 64 KiB and 1 MiB buffers. src/log/format.ts claims zlib is ~2.5-3x faster on
 *   batch-sized buffers; the speedup rows check that claim on this machine.
 * - Batch encode of 1,000 records of 100 B (BatchEncoder begin/add/seal, sizes precomputed as
 *   `append` does before the flush).
 * - Batch decode of the same batch (checkBatch, which verifies the CRC, then decodeRecords).
 * - SegmentIndex.lookupOffset on an index of 32,768 entries (1,024 random lookups per sample).
 * - A queue's DedupeWindow (src/broker/dedupe-window.ts), 2-minute window, full at 1,000,000 stored
 *   entries: a sample claims 400 fresh client ids (generateIds, as a client makes them) and then
 *   marks each stored, in order, as a publish does; `claim` (probes the table) vs `claimNew` (the
 *   NEW_ID path: no lookup). The window stays full, so every claim also evicts the oldest entry.
 *
 * Figures are from tinybench's median (p50) sample latency.
 */
import { crc32 as zlibCrc32 } from 'node:zlib';
import CRC from 'crc-32';
import { Bench, type FnReturnedObject, type Task } from 'tinybench';
import { DedupeWindow } from '../src/broker/dedupe-window.js';
import { generateIds } from '../src/broker/message.js';
import { BATCH_BYTES_LIMIT } from '../src/log/scan.js';
import { BatchEncoder, type LogRecord, type RecordInput, checkBatch, decodeRecords, encodedRecordBytes } from '../src/log/record-batch.js';
import { BATCH_HEADER_BYTES } from '../src/log/format.js';
import { SegmentIndex } from '../src/log/segment-index.js';
import type { ScenarioContext } from './lib/context.js';
import { MB, type Metrics, type ScenarioReport, type SummaryRow, fmt, fmtRatio } from './lib/report.js';
import { makeRecords } from './lib/workload.js';

export interface MicroParams {
  /** tinybench time budget per task, ms. */
  timeMs: number;
  warmupMs: number;
  crcSizes: readonly number[];
  batchRecords: number;
  valueBytes: number;
  indexEntries: number;
  lookupsPerSample: number;
  /** The dedupe window's entriesMax, filled before timing (omitted: MICRO_DEFAULTS). */
  dedupeEntries?: number;
  /** Fresh keys claimed, then stored, per dedupe sample (omitted: MICRO_DEFAULTS). */
  dedupeKeysPerSample?: number;
}

export const MICRO_SIZES = {
  full: { timeMs: 1000, warmupMs: 200 },
  quick: { timeMs: 250, warmupMs: 50 },
} as const;

export const MICRO_DEFAULTS = {
  crcSizes: [128, 4096, 64 * 1024, 1024 * 1024],
  batchRecords: 1000,
  valueBytes: 100,
  indexEntries: 32 * 1024,
  lookupsPerSample: 1024,
  dedupeEntries: 1_000_000,
  dedupeKeysPerSample: 400,
} satisfies Required<Omit<MicroParams, 'timeMs' | 'warmupMs'>>;

/** A queue's dedupe window (src/broker/queue.ts uses 2 minutes); its record reader is never reached here. */
const DEDUPE_WINDOW_MS = 120_000;

type DedupeClaimMode = 'claim' | 'claimNew';

/**
 * A DedupeWindow filled to `entries` stored keys, claimed with `mode` and stored in order as a
 * publish does. The claimNew window is filled with claimNew, so it starts in the steady state of a
 * run of new keys (no entry in the table) instead of draining a full table in its first samples.
 */
function fullDedupeWindow(entries: number, mode: DedupeClaimMode, now: number): DedupeWindow {
  const w = new DedupeWindow(DEDUPE_WINDOW_MS, entries, async () => null);
  let offset = 0;
  for (let done = 0; done < entries; ) {
    const keys = generateIds(Math.min(4096, entries - done), now);
    for (const key of keys) if ((mode === 'claim' ? w.claim(key, now) : w.claimNew(key, now)) !== 'claimed') throw new Error(`dedupe fill: ${key} not claimed`);
    for (const key of keys) w.stored(key, offset++);
    done += keys.length;
  }
  if (w.size !== entries) throw new Error(`dedupe fill: ${w.size} stored, want ${entries}`);
  return w;
}

/**
 * Adds a task that claims (with `mode`), then stores, `keysPerSample` fresh keys in a full window.
 * The keys are made in `beforeEach`, which tinybench runs before each sample, outside its timing:
 * a sample's cost (returned as its iteration cost) is only the claims and `stored` calls, so the
 * task runs past its time budget by the id generation (~45 ns a key, about 1.4x the budget).
 */
function addDedupeTask(bench: Bench, name: string, w: DedupeWindow, mode: DedupeClaimMode, keysPerSample: number, entries: number): void {
  let keys: string[] = [];
  let now = 0;
  let sampleStart = 0;
  let offset = entries;
  const fail = (key: string): never => {
    throw new Error(`${name}: fresh key ${key} not claimed`);
  };
  bench.add(
    name,
    (): FnReturnedObject => {
      if (mode === 'claim') {
        for (let i = 0; i < keys.length; i++) if (w.claim(keys[i] as string, now) !== 'claimed') fail(keys[i] as string);
      } else {
        for (let i = 0; i < keys.length; i++) w.claimNew(keys[i] as string, now);
      }
      for (let i = 0; i < keys.length; i++) w.stored(keys[i] as string, offset++);
      return { overriddenIterationCost: performance.now() - sampleStart };
    },
    {
      beforeEach: () => {
        now = Date.now();
        keys = generateIds(keysPerSample, now);
        sampleStart = performance.now();
      },
      afterAll: () => {
        if (w.size !== entries) throw new Error(`${name}: window holds ${w.size} stored entries, want ${entries} (full)`);
      },
    },
  );
}

function sizeName(n: number): string {
  if (n >= 1024 * 1024 && n % (1024 * 1024) === 0) return `${n / (1024 * 1024)}MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024}KiB`;
  return `${n}B`;
}

/** Median seconds per call of a finished task. */
function medianSeconds(task: Task): number {
  const r = task.result;
  if (r.state !== 'completed' && r.state !== 'aborted-with-statistics') {
    throw new Error(`tinybench task ${task.name} did not complete: ${r.state === 'errored' ? String(r.error) : r.state}`);
  }
  return r.latency.p50 / 1000;
}

export async function benchMicro(_ctx: ScenarioContext, p: MicroParams): Promise<ScenarioReport> {
  const bench = new Bench({ time: p.timeMs, warmupTime: p.warmupMs, throws: true });
  let sink = 0;

  // CRC-32.
  for (const size of p.crcSizes) {
    const buf = Buffer.allocUnsafe(size);
    for (let i = 0; i < size; i++) buf[i] = (i * 31 + 7) & 0xff;
    if ((zlibCrc32(buf) >>> 0) !== (CRC.buf(buf) >>> 0)) throw new Error('zlib crc32 and crc-32 disagree');
    bench.add(`crc32 zlib ${sizeName(size)}`, () => {
      sink ^= zlibCrc32(buf);
    });
    bench.add(`crc32 crc-32 ${sizeName(size)}`, () => {
      sink ^= CRC.buf(buf) >>> 0;
    });
  }

  // Batch encode / decode.
  const records: RecordInput[] = makeRecords(p.batchRecords, p.valueBytes);
  const sizes = records.map((r) => encodedRecordBytes(r));
  const batchBytes = BATCH_HEADER_BYTES + sizes.reduce((a, b) => a + b, 0);
  const encodeBuf = Buffer.allocUnsafe(batchBytes);
  const enc = new BatchEncoder();
  const ts = Date.now();
  const encodeOnce = (): Buffer => {
    enc.begin(encodeBuf, 0, 1_000_000);
    for (let i = 0; i < records.length; i++) enc.add(records[i] as RecordInput, ts, sizes[i] as number);
    return enc.seal();
  };
  const batch = Buffer.from(encodeOnce());
  const decoded: LogRecord[] = [];
  const decodeOnce = (): number => {
    const check = checkBatch(batch, 0, batch.length, BATCH_BYTES_LIMIT);
    if (!check.ok) throw new Error(`batch check failed: ${check.problem}`);
    decoded.length = 0;
    const problem = decodeRecords(batch, 0, check.header, 0, decoded, Number.MAX_SAFE_INTEGER);
    if (problem !== null) throw new Error(problem);
    return decoded.length;
  };
  if (decodeOnce() !== p.batchRecords) throw new Error('decode returned the wrong record count');
  const encodeName = `encode ${p.batchRecords}x${p.valueBytes}B`;
  const decodeName = `decode ${p.batchRecords}x${p.valueBytes}B`;
  bench.add(encodeName, () => {
    sink ^= encodeOnce().length;
  });
  bench.add(decodeName, () => {
    sink ^= decodeOnce();
  });

  // SegmentIndex.lookupOffset.
  const index = new SegmentIndex();
  const step = 37; // records per index entry
  for (let i = 0; i < p.indexEntries; i++) index.add(i * step, 16 + i * 4096, ts);
  const targets = new Array<number>(p.lookupsPerSample);
  let seed = 12345;
  for (let i = 0; i < targets.length; i++) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    targets[i] = seed % (p.indexEntries * step);
  }
  const lookupName = `lookupOffset ${sizeName(p.indexEntries).replace('KiB', 'k')} entries`;
  bench.add(lookupName, () => {
    for (let i = 0; i < targets.length; i++) sink ^= index.lookupOffset(targets[i] as number)?.position ?? 0;
  });

  // DedupeWindow claim vs claimNew, full window (one window per task, each filled once here).
  const dedupeEntries = p.dedupeEntries ?? MICRO_DEFAULTS.dedupeEntries;
  const dedupeKeys = p.dedupeKeysPerSample ?? MICRO_DEFAULTS.dedupeKeysPerSample;
  const claimName = 'dedupe claim (lookup)';
  const claimNewName = 'dedupe claimNew (no lookup)';
  const fillStart = performance.now();
  addDedupeTask(bench, claimName, fullDedupeWindow(dedupeEntries, 'claim', Date.now()), 'claim', dedupeKeys, dedupeEntries);
  addDedupeTask(bench, claimNewName, fullDedupeWindow(dedupeEntries, 'claimNew', Date.now()), 'claimNew', dedupeKeys, dedupeEntries);
  const dedupeFillMs = performance.now() - fillStart;

  await bench.run();
  if (sink === 0.5) console.error('unreachable'); // keep `sink` observable

  const byName = new Map(bench.tasks.map((t) => [t.name, t]));
  const sec = (name: string): number => {
    const t = byName.get(name);
    if (t === undefined) throw new Error(`missing task ${name}`);
    return medianSeconds(t);
  };

  const median: Metrics = {};
  const labels: Record<string, string> = {};
  const rows: SummaryRow[] = [];
  const ratios: string[] = [];
  for (const size of p.crcSizes) {
    const s = sizeName(size);
    const z = sec(`crc32 zlib ${s}`);
    const c = sec(`crc32 crc-32 ${s}`);
    median[`crcZlib${s}MBps`] = size / MB / z;
    median[`crcPkg${s}MBps`] = size / MB / c;
    median[`crcSpeedup${s}`] = c / z;
    labels[`crcZlib${s}MBps`] = `crc32 zlib ${s} MB/s`;
    labels[`crcPkg${s}MBps`] = `crc32 crc-32 ${s} MB/s`;
    labels[`crcSpeedup${s}`] = `zlib speedup over crc-32, ${s} (x)`;
    rows.push({ scenario: 'micro', metric: `crc32 zlib ${s}`, value: size / MB / z, unit: 'MB/s', ratios: `${fmtRatio(c / z)} crc-32 (${fmt(size / MB / c)} MB/s)` });
  }
  const encSec = sec(encodeName);
  const decSec = sec(decodeName);
  median.encodeRecordsPerSec = p.batchRecords / encSec;
  median.encodeMBps = batchBytes / MB / encSec;
  median.decodeRecordsPerSec = p.batchRecords / decSec;
  median.decodeMBps = batchBytes / MB / decSec;
  const lookupNs = (sec(lookupName) / p.lookupsPerSample) * 1e9;
  median.lookupNs = lookupNs;
  labels.encodeRecordsPerSec = `${encodeName} records/s`;
  labels.encodeMBps = `${encodeName} MB/s`;
  labels.decodeRecordsPerSec = `${decodeName} records/s (incl. CRC check)`;
  labels.decodeMBps = `${decodeName} MB/s`;
  labels.lookupNs = `${lookupName} ns/lookup`;
  rows.push(
    { scenario: 'micro', metric: encodeName, value: median.encodeRecordsPerSec, unit: 'rec/s', ratios: `${fmt(median.encodeMBps)} MB/s` },
    { scenario: 'micro', metric: `${decodeName} (+CRC)`, value: median.decodeRecordsPerSec, unit: 'rec/s', ratios: `${fmt(median.decodeMBps)} MB/s` },
    { scenario: 'micro', metric: lookupName, value: lookupNs, unit: 'ns/lookup' },
  );
  const claimNs = (sec(claimName) / dedupeKeys) * 1e9;
  const claimNewNs = (sec(claimNewName) / dedupeKeys) * 1e9;
  median.dedupeClaimNs = claimNs;
  median.dedupeClaimNewNs = claimNewNs;
  median.dedupeClaimOverClaimNew = claimNs / claimNewNs;
  const windowDesc = `full window of ${fmt(dedupeEntries, 0)}`;
  labels.dedupeClaimNs = `${claimName}, ${windowDesc}: claim + stored ns/key`;
  labels.dedupeClaimNewNs = `${claimNewName}, ${windowDesc}: claimNew + stored ns/key`;
  labels.dedupeClaimOverClaimNew = 'dedupe claim / claimNew (x)';
  rows.push({
    scenario: 'micro',
    metric: `dedupe window claim, full (${fmt(dedupeEntries, 0)})`,
    value: claimNs,
    unit: 'ns/key',
    ratios: `claimNew ${fmt(claimNewNs)} ns/key (${fmtRatio(claimNs / claimNewNs)} cheaper)`,
  });
  const largest = p.crcSizes.filter((s) => s >= 4096);
  if (largest.length > 0) {
    ratios.push(
      `src/log/format.ts claims zlib crc32 is ~2.5-3x faster than crc-32 on batch-sized buffers; measured: ${largest
        .map((s) => `${sizeName(s)} ${fmtRatio(median[`crcSpeedup${sizeName(s)}`])}`)
        .join(', ')}`,
    );
  }
  const runs: Record<string, number[]> = {};
  for (const [k, v] of Object.entries(median)) runs[k] = [v];
  return {
    name: 'micro',
    title: 'tinybench micro benchmarks (median sample)',
    params: { ...p, crcSizes: p.crcSizes.map(sizeName).join('/'), dedupeEntries, dedupeKeysPerSample: dedupeKeys, dedupeFillMs: Math.round(dedupeFillMs) },
    repeats: 1, // tinybench samples each task many times; its median sample is reported
    median,
    runs,
    labels,
    ratios,
    rows,
  };
}
