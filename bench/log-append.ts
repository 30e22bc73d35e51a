/**
 * Durable append scenarios of the log (every figure counts only records whose append promise
 * resolved, i.e. after the fdatasync covering them):
 *
 *   append-batch      100 B records through `append(batch)`, several batches in flight
 *   append-batch-10k  the same with 10,000-record batches (the other end of the 1k-10k range)
 *   append-one        100 B records through `appendOne`, a window of 1,000 promises kept in flight
 *   append-4k         4 KiB records through `append(batch)`, compared with raw sequential write MB/s
 *   append-latency    one `appendOne` awaited alone, compared with one raw write + fdatasync
 *
 * Each run opens a fresh log in a fresh temp directory (removed afterwards) with a counting
 * wrapper around nodeStorage as its `storage`, warms up untimed, then times the rest.
 */
import { Log, type LogOptions } from '../src/log/log.js';
import type { RecordInput } from '../src/log/record-batch.js';
import { CountingStorage, type IoCounters, diffCounters } from './lib/counting-storage.js';
import { makeRecords, pumpBatches, pumpSingles } from './lib/workload.js';
import { type ScenarioContext, TARGETS } from './lib/context.js';
import { type RawLimits, RawSyncWriter, measureSeqWrite } from './lib/raw-limits.js';
import {
  MB,
  MiB,
  type Metrics,
  type ScenarioReport,
  type SummaryRow,
  fmt,
  fmtPct,
  fmtRatio,
  median,
  percentile,
  repeat,
  secondsSince,
  timed,
  withTempDir,
} from './lib/report.js';

export interface CommonParams {
  /** Parent of the temp directories (default os.tmpdir()). */
  dir?: string;
  /** Extra options for Log.open (the storage is always the counting wrapper). */
  logOptions?: Omit<LogOptions, 'storage'>;
}

export interface AppendBatchParams extends CommonParams {
  /** Timed records per run. */
  records: number;
  batchSize: number;
  /** Batch promises kept in flight. */
  inFlight: number;
  valueBytes: number;
  /** Untimed records appended first (default 5% of `records`, at least one batch). */
  warmupRecords?: number;
}

export interface AppendOneParams extends CommonParams {
  records: number;
  /** appendOne promises kept in flight. */
  window: number;
  valueBytes: number;
  warmupRecords?: number;
}

export interface AppendLatencyParams extends CommonParams {
  iterations: number;
  valueBytes: number;
  warmupIterations?: number;
}

/** Opens a fresh log with a counting storage in a temp dir, runs `fn`, closes the log and removes the dir. */
async function withLog<T>(p: CommonParams, prefix: string, fn: (log: Log, storage: CountingStorage) => Promise<T>): Promise<T> {
  return withTempDir(prefix, p.dir, async (dir) => {
    const storage = new CountingStorage();
    const { log } = await Log.open(`${dir}/log`, { ...p.logOptions, storage });
    try {
      return await fn(log, storage);
    } finally {
      await log.close();
    }
  });
}

/** Throughput metrics of a timed window. */
function throughput(records: number, payloadBytes: number, seconds: number, io: IoCounters, cpu: NodeJS.CpuUsage): Metrics {
  return {
    cpuUsPerRecord: (cpu.user + cpu.system) / records,
    cpuUtilization: (cpu.user + cpu.system) / 1e6 / seconds,
    writevShare: io.writeNs / 1e9 / seconds,
    fsyncShare: io.syncNs / 1e9 / seconds,
    fsyncMeanUs: io.syncs > 0 ? io.syncNs / 1e3 / io.syncs : Number.NaN,
    writevMeanUs: io.writes > 0 ? io.writeNs / 1e3 / io.writes : Number.NaN,
    bytesPerFlush: io.writes > 0 ? io.bytesWritten / io.writes : Number.NaN,
    recordsPerSec: records / seconds,
    payloadMBps: payloadBytes / MB / seconds,
    diskMBps: io.bytesWritten / MB / seconds,
    fsyncsPerSec: io.syncs / seconds,
    recordsPerFsync: io.syncs > 0 ? records / io.syncs : Number.NaN,
    seconds,
    records,
    fsyncs: io.syncs,
  };
}

/** One run of a batch-API scenario. */
export async function appendBatchOnce(p: AppendBatchParams): Promise<Metrics> {
  const poolBatches = Math.max(2, Math.min(p.inFlight * 2, Math.ceil(p.records / p.batchSize)));
  const all = makeRecords(poolBatches * p.batchSize, p.valueBytes);
  const batches: RecordInput[][] = [];
  for (let i = 0; i < poolBatches; i++) batches.push(all.slice(i * p.batchSize, (i + 1) * p.batchSize));
  const warmup = p.warmupRecords ?? Math.max(p.batchSize, Math.round(p.records * 0.05));
  return withLog(p, 'append', async (log, storage) => {
    if (warmup > 0) await pumpBatches(log, batches, warmup, p.inFlight);
    const before = storage.snapshot();
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    await timed('append-batch', () => pumpBatches(log, batches, p.records, p.inFlight));
    const seconds = secondsSince(t0);
    return throughput(p.records, p.records * p.valueBytes, seconds, diffCounters(storage.snapshot(), before), process.cpuUsage(c0));
  });
}

/** One run of the appendOne-window scenario. */
export async function appendOneOnce(p: AppendOneParams): Promise<Metrics> {
  const records = makeRecords(Math.min(p.records, Math.max(4096, p.window * 4)), p.valueBytes);
  const warmup = p.warmupRecords ?? Math.max(p.window, Math.round(p.records * 0.05));
  return withLog(p, 'append-one', async (log, storage) => {
    if (warmup > 0) await pumpSingles(log, records, warmup, p.window);
    const before = storage.snapshot();
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    await timed('append-one', () => pumpSingles(log, records, p.records, p.window));
    const seconds = secondsSince(t0);
    return throughput(p.records, p.records * p.valueBytes, seconds, diffCounters(storage.snapshot(), before), process.cpuUsage(c0));
  });
}

/**
 * One run of the lone-appendOne latency scenario: each append awaited before the next starts.
 * Interleaved with it, in the same directory, a raw write(100 B) + fdatasync on a file of its own
 * (alternating which goes first), so that the ratio compares the two under the same conditions
 * even when the machine's load drifts.
 */
export async function appendLatencyOnce(p: AppendLatencyParams): Promise<Metrics> {
  const records = makeRecords(256, p.valueBytes);
  const warmup = p.warmupIterations ?? Math.min(20, Math.ceil(p.iterations / 10));
  return withTempDir('append-lat', p.dir, async (dir) => {
    const storage = new CountingStorage();
    const { log } = await Log.open(`${dir}/log`, { ...p.logOptions, storage });
    const raw = await RawSyncWriter.create(`${dir}/raw.dat`, p.valueBytes);
    try {
      const logOnce = async (i: number): Promise<number> => {
        const s = process.hrtime.bigint();
        await log.appendOne(records[i % records.length] as RecordInput);
        return Number(process.hrtime.bigint() - s) / 1e3;
      };
      for (let i = 0; i < warmup; i++) {
        await logOnce(i);
        await raw.append();
      }
      const before = storage.snapshot();
      const lat = new Array<number>(p.iterations);
      const rawLat = new Array<number>(p.iterations);
      await timed('append-latency', async () => {
        for (let i = 0; i < p.iterations; i++) {
          if (i % 2 === 0) {
            lat[i] = await logOnce(i);
            rawLat[i] = await raw.append();
          } else {
            rawLat[i] = await raw.append();
            lat[i] = await logOnce(i);
          }
        }
      });
      const io = diffCounters(storage.snapshot(), before);
      const logSeconds = lat.reduce((a, b) => a + b, 0) / 1e6;
      const medianUs = median(lat);
      const rawMedianUs = median(rawLat);
      return {
        medianUs,
        p99Us: percentile(lat, 99),
        rawMedianUs,
        rawP99Us: percentile(rawLat, 99),
        ratioToRaw: medianUs / rawMedianUs,
        appendsPerSec: p.iterations / logSeconds,
        fsyncsPerAppend: io.syncs / p.iterations,
      };
    } finally {
      await raw.close();
      await log.close();
    }
  });
}

// --- scenarios: repeat, take medians, compare with the raw limits, state targets ---

const THROUGHPUT_LABELS: Record<string, string> = {
  recordsPerSec: 'records/s',
  payloadMBps: 'payload MB/s',
  diskMBps: 'disk MB/s (log bytes written)',
  fsyncsPerSec: 'fsyncs/s',
  recordsPerFsync: 'records per fsync',
  cpuUsPerRecord: 'process CPU us per record (user+sys)',
  cpuUtilization: 'process CPU utilization (1.0 = one core)',
  writevShare: 'share of wall time awaiting writev',
  fsyncShare: 'share of wall time awaiting fdatasync',
  fsyncMeanUs: 'mean us per fdatasync',
  writevMeanUs: 'mean us per writev',
  bytesPerFlush: 'bytes per writev (flush)',
  seconds: 'timed seconds',
};

function throughputRatios(m: Metrics, raw: RawLimits | null): string[] {
  if (raw === null) return ['(raw limits not measured in this run)'];
  return [
    `fsyncs/s vs raw fdatasync rate (${fmt(raw.fsyncCallsPerSec)}/s): ${fmtPct((m.fsyncsPerSec as number) / raw.fsyncCallsPerSec)}`,
    `disk MB/s vs raw sequential write (${fmt(raw.seqWriteMBps)} MB/s): ${fmtPct((m.diskMBps as number) / raw.seqWriteMBps)}` +
      `; payload MB/s: ${fmtPct((m.payloadMBps as number) / raw.seqWriteMBps)}`,
  ];
}

function ratioText(m: Metrics, raw: RawLimits | null): string {
  if (raw === null) return '';
  return `fsync ${fmtPct((m.fsyncsPerSec as number) / raw.fsyncCallsPerSec)} of raw rate, disk ${fmtPct((m.diskMBps as number) / raw.seqWriteMBps)} of raw MB/s`;
}

function fsyncRow(name: string, m: Metrics): SummaryRow {
  return {
    scenario: name,
    metric: 'fsyncs/s',
    value: m.fsyncsPerSec as number,
    unit: '/s',
    ratios: `${fmt(m.recordsPerFsync)} rec/fsync; wall time: ${fmtPct(m.fsyncShare)} fdatasync, ${fmtPct(m.writevShare)} writev; CPU ${fmt(m.cpuUsPerRecord, 3)} us/rec`,
  };
}

function throughputRows(name: string, m: Metrics, raw: RawLimits | null, recordsTarget: number | null): SummaryRow[] {
  return [
    {
      scenario: name,
      metric: 'records/s',
      value: m.recordsPerSec as number,
      unit: 'rec/s',
      ...(recordsTarget !== null ? { target: { kind: 'min' as const, value: recordsTarget, text: `>= ${fmt(recordsTarget)}` } } : {}),
      ratios: ratioText(m, raw),
    },
    { scenario: name, metric: 'payload MB/s', value: m.payloadMBps as number, unit: 'MB/s' },
    fsyncRow(name, m),
  ];
}

export const APPEND_SIZES = {
  full: { batchRecords: 4_000_000, batch10kRecords: 4_000_000, oneRecords: 2_000_000, fourKBytes: 512 * MiB, latencyIterations: 2000 },
  quick: { batchRecords: 1_000_000, batch10kRecords: 1_000_000, oneRecords: 500_000, fourKBytes: 128 * MiB, latencyIterations: 500 },
} as const;

/** (a) 100 B records, batch API, several batches in flight. */
export async function benchAppendBatch(ctx: ScenarioContext, p: AppendBatchParams, name = 'append-batch'): Promise<ScenarioReport> {
  const r = await repeat(ctx.repeats, name, () => appendBatchOnce(p));
  return {
    name,
    title: `durable append of ${p.valueBytes} B records, batches of ${fmt(p.batchSize)}, ${p.inFlight} batches in flight`,
    params: { ...p },
    repeats: r.repeats,
    median: r.median,
    runs: r.runs,
    labels: THROUGHPUT_LABELS,
    ratios: throughputRatios(r.median, ctx.raw),
    rows: throughputRows(name, r.median, ctx.raw, TARGETS.appendBatchRecordsPerSec),
  };
}

/** (b) 100 B records, a window of appendOne promises. */
export async function benchAppendOne(ctx: ScenarioContext, p: AppendOneParams): Promise<ScenarioReport> {
  const name = 'append-one';
  const r = await repeat(ctx.repeats, name, () => appendOneOnce(p));
  return {
    name,
    title: `durable appendOne of ${p.valueBytes} B records, ${fmt(p.window)} promises kept in flight`,
    params: { ...p },
    repeats: r.repeats,
    median: r.median,
    runs: r.runs,
    labels: THROUGHPUT_LABELS,
    ratios: throughputRatios(r.median, ctx.raw),
    rows: throughputRows(name, r.median, ctx.raw, TARGETS.appendOneRecordsPerSec),
  };
}

/**
 * (c) 4 KiB records, batch API; target: payload MB/s >= 70% of raw sequential write MB/s. Each run
 * is paired with a raw sequential write of the same byte count in the same directory (alternating
 * which goes first) and the target is judged on the median of the paired fractions; the fraction
 * of the raw limits measured at the start of the run is shown too.
 */
export async function benchAppend4k(ctx: ScenarioContext, p: AppendBatchParams): Promise<ScenarioReport> {
  const name = 'append-4k';
  const r = await repeat(ctx.repeats, name, async (run): Promise<Metrics> => {
    const rawRun = () => measureSeqWrite({ totalBytes: p.records * p.valueBytes, dir: p.dir });
    let rawMBps: number;
    let m: Metrics;
    if (run % 2 === 0) {
      rawMBps = (await rawRun()).mbPerSec;
      m = await appendBatchOnce(p);
    } else {
      m = await appendBatchOnce(p);
      rawMBps = (await rawRun()).mbPerSec;
    }
    return { ...m, pairedRawMBps: rawMBps, pairedFraction: (m.payloadMBps as number) / rawMBps };
  });
  const m = r.median;
  const raw = ctx.raw;
  const paired = m.pairedFraction as number;
  const rows: SummaryRow[] = [
    {
      scenario: name,
      metric: 'payload MB/s',
      value: m.payloadMBps as number,
      unit: 'MB/s',
      target: { kind: 'min', value: TARGETS.append4kFractionOfRawMBps, text: `>= ${fmtPct(TARGETS.append4kFractionOfRawMBps)} raw` },
      judged: paired,
      ratios:
        `${fmtPct(paired)} of paired raw seq write ${fmt(m.pairedRawMBps)} MB/s` +
        (raw === null ? '' : `; ${fmtPct((m.payloadMBps as number) / raw.seqWriteMBps)} of start-of-run raw ${fmt(raw.seqWriteMBps)}, ${fmtPct((m.payloadMBps as number) / raw.seqWriteSyncedMBps)} of raw with fsync per 8 MiB`),
    },
    { scenario: name, metric: 'records/s', value: m.recordsPerSec as number, unit: 'rec/s' },
    fsyncRow(name, m),
  ];
  return {
    name,
    title: `durable append of ${fmt(p.valueBytes, 0)} B records, batches of ${p.batchSize} (${fmt((p.batchSize * p.valueBytes) / MiB)} MiB), ${p.inFlight} in flight, each run paired with a raw sequential write`,
    params: { ...p },
    repeats: r.repeats,
    median: m,
    runs: r.runs,
    labels: { ...THROUGHPUT_LABELS, pairedRawMBps: 'paired raw sequential write MB/s', pairedFraction: 'payload MB/s / paired raw MB/s' },
    ratios: [
      `payload MB/s vs paired raw sequential write (same bytes, same dir, same run): ${fmtPct(paired)}`,
      ...throughputRatios(m, raw),
      ...(raw === null ? [] : [`payload MB/s vs raw sequential write with an fdatasync every 8 MiB (${fmt(raw.seqWriteSyncedMBps)} MB/s): ${fmtPct((m.payloadMBps as number) / raw.seqWriteSyncedMBps)}`]),
    ],
    rows,
  };
}

/**
 * (d) one appendOne awaited alone; target: median latency <= 1.3x one raw write + fdatasync. The
 * target is judged on the paired ratio (raw measured interleaved with the log in each run); the
 * ratio to the raw limits measured at the start of the run is shown too.
 */
export async function benchAppendLatency(ctx: ScenarioContext, p: AppendLatencyParams): Promise<ScenarioReport> {
  const name = 'append-latency';
  const r = await repeat(ctx.repeats, name, () => appendLatencyOnce(p));
  const m = r.median;
  const raw = ctx.raw;
  const paired = m.ratioToRaw as number;
  return {
    name,
    title: `a single appendOne of ${p.valueBytes} B awaited alone, ${fmt(p.iterations, 0)} in sequence, interleaved with raw write+fdatasync`,
    params: { ...p },
    repeats: r.repeats,
    median: m,
    runs: r.runs,
    labels: {
      medianUs: 'median latency (us)',
      p99Us: 'p99 latency (us)',
      rawMedianUs: 'paired raw write+fdatasync median (us)',
      rawP99Us: 'paired raw p99 (us)',
      ratioToRaw: 'median latency / paired raw median (x)',
      appendsPerSec: 'appends/s (while awaited)',
      fsyncsPerAppend: 'fsyncs per append',
    },
    ratios: [
      `median latency vs paired raw write+fdatasync (interleaved, same dir): ${fmtRatio(paired)}`,
      ...(raw === null
        ? []
        : [
            `median latency vs raw limits measured at the start (${fmt(raw.fsyncMedianUs)} us): ${fmtRatio((m.medianUs as number) / raw.fsyncMedianUs)}`,
            `p99 vs paired raw p99: ${fmtRatio((m.p99Us as number) / (m.rawP99Us as number))}`,
          ]),
    ],
    rows: [
      {
        scenario: name,
        metric: 'median latency',
        value: m.medianUs as number,
        unit: 'us',
        target: { kind: 'max', value: TARGETS.appendLatencyRatioMax, text: `<= ${TARGETS.appendLatencyRatioMax}x raw` },
        judged: paired,
        ratios:
          `${fmtRatio(paired)} paired raw ${fmt(m.rawMedianUs)} us` +
          (raw === null ? '' : `; ${fmtRatio((m.medianUs as number) / raw.fsyncMedianUs)} start-of-run raw ${fmt(raw.fsyncMedianUs)} us`),
      },
      { scenario: name, metric: 'p99 latency', value: m.p99Us as number, unit: 'us', ratios: `${fmtRatio((m.p99Us as number) / (m.rawP99Us as number))} paired raw p99 ${fmt(m.rawP99Us)} us` },
    ],
  };
}
