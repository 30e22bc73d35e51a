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
 *
 * Figures are from tinybench's median (p50) sample latency.
 */
import { crc32 as zlibCrc32 } from 'node:zlib';
import CRC from 'crc-32';
import { Bench, type Task } from 'tinybench';
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
}

export const MICRO_SIZES = {
  full: { timeMs: 1000, warmupMs: 200 },
  quick: { timeMs: 250, warmupMs: 50 },
} as const;

export const MICRO_DEFAULTS: Omit<MicroParams, 'timeMs' | 'warmupMs'> = {
  crcSizes: [128, 4096, 64 * 1024, 1024 * 1024],
  batchRecords: 1000,
  valueBytes: 100,
  indexEntries: 32 * 1024,
  lookupsPerSample: 1024,
};

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
    params: { ...p, crcSizes: p.crcSizes.map(sizeName).join('/') },
    repeats: 1, // tinybench samples each task many times; its median sample is reported
    median,
    runs,
    labels,
    ratios,
    rows,
  };
}
