/**
 * read-seq: sequential read of a log of 100 B records (1 GiB, 64 MiB with --quick).
 *
 * The log is built once with the batch API (its build time is reported separately), closed and
 * reopened, then read front to back R times with `read(next, { maxBytes: 1 MiB })`. The files were
 * just written, so reads come from the page cache: this measures the read path's CPU cost
 * (scan, CRC check, decode), not the disk.
 */
import { Log } from '../src/log/log.js';
import type { RecordInput } from '../src/log/record-batch.js';
import { encodedRecordBytes } from '../src/log/record-batch.js';
import { type ScenarioContext, TARGETS } from './lib/context.js';
import { CountingStorage, diffCounters } from './lib/counting-storage.js';
import { MB, MiB, type Metrics, type ScenarioReport, fmt, repeat, secondsSince, timed, withTempDir } from './lib/report.js';
import { makeRecords, pumpBatches } from './lib/workload.js';

export interface ReadParams {
  /** Approximate size of the log to build (records are added until their encoded bytes reach it). */
  logBytes: number;
  valueBytes: number;
  /** `maxBytes` of each read call. */
  maxBytes: number;
  buildBatchSize?: number;
  buildInFlight?: number;
  /** Segment size of the log (default: the log's default, 128 MiB). */
  segmentBytesMax?: number;
  dir?: string;
}

export const READ_SIZES = {
  full: { logBytes: 1024 * MiB },
  quick: { logBytes: 64 * MiB },
} as const;

/** Reads the whole log from its start; returns what one pass saw. */
export async function readAllOnce(log: Log, maxBytes: number): Promise<{ records: number; valueBytes: number; calls: number; seconds: number }> {
  let next = log.startOffset;
  let records = 0;
  let valueBytes = 0;
  let calls = 0;
  const t0 = process.hrtime.bigint();
  for (;;) {
    const recs = await log.read(next, { maxBytes });
    calls++;
    const n = recs.length;
    if (n === 0) break;
    for (let i = 0; i < n; i++) valueBytes += (recs[i] as { value: Buffer }).value.length;
    const last = recs[n - 1] as { offset: number };
    if (last.offset !== next + n - 1) throw new Error(`read returned offsets ${next}..${last.offset} for ${n} records`);
    records += n;
    next = last.offset + 1;
  }
  return { records, valueBytes, calls, seconds: secondsSince(t0) };
}

export async function benchRead(ctx: ScenarioContext, p: ReadParams): Promise<ScenarioReport> {
  const name = 'read-seq';
  const batchSize = p.buildBatchSize ?? 10_000;
  const inFlight = p.buildInFlight ?? 4;
  const pool = makeRecords(batchSize * 2, p.valueBytes);
  const perRecord = encodedRecordBytes(pool[0] as RecordInput);
  const total = Math.max(1, Math.floor(p.logBytes / perRecord));
  const batches = [pool.slice(0, batchSize), pool.slice(batchSize)];
  const logOptions = p.segmentBytesMax !== undefined ? { segmentBytesMax: p.segmentBytesMax } : {};

  return withTempDir('read', p.dir, async (dir) => {
    const storage = new CountingStorage();
    const logDir = `${dir}/log`;
    // Build.
    const { log: writer } = await Log.open(logDir, { ...logOptions, storage });
    const tb = process.hrtime.bigint();
    try {
      await pumpBatches(writer, batches, total, inFlight);
    } finally {
      await writer.close();
    }
    const buildSeconds = secondsSince(tb);
    const built = storage.snapshot();
    // Reopen (recovery from the checkpoint), then read R times.
    const to = process.hrtime.bigint();
    const { log } = await Log.open(logDir, { ...logOptions, storage });
    const openSeconds = secondsSince(to);
    const segments = log.stats().segments;
    try {
      if (log.endOffset !== total) throw new Error(`built ${total} records but the log ends at ${log.endOffset}`);
      const r = await repeat(ctx.repeats, name, async (): Promise<Metrics> => {
        const before = storage.snapshot();
        const c0 = process.cpuUsage();
        const pass = await timed('read-seq', () => readAllOnce(log, p.maxBytes));
        const cpu = process.cpuUsage(c0);
        const io = diffCounters(storage.snapshot(), before);
        if (pass.records !== total) throw new Error(`read ${pass.records} records of ${total}`);
        return {
          recordsPerSec: pass.records / pass.seconds,
          payloadMBps: pass.valueBytes / MB / pass.seconds,
          diskMBps: io.bytesRead / MB / pass.seconds,
          recordsPerCall: pass.records / pass.calls,
          cpuUsPerRecord: (cpu.user + cpu.system) / pass.records,
          seconds: pass.seconds,
        };
      });
      const m = r.median;
      const buildRecordsPerSec = total / buildSeconds;
      return {
        name,
        title: `sequential read of a ${fmt(built.bytesWritten / MiB)} MiB log of ${p.valueBytes} B records, read(next, { maxBytes: ${fmt(p.maxBytes / 1024)} KiB })`,
        params: { ...p, records: total, segments },
        repeats: r.repeats,
        median: { ...m, buildSeconds, buildRecordsPerSec, openSeconds },
        runs: { ...r.runs, buildSeconds: [buildSeconds], buildRecordsPerSec: [buildRecordsPerSec], openSeconds: [openSeconds] },
        labels: {
          recordsPerSec: 'records/s',
          payloadMBps: 'payload MB/s',
          diskMBps: 'file MB/s read (page cache)',
          recordsPerCall: 'records per read() call',
          cpuUsPerRecord: 'process CPU us per record (user+sys)',
          seconds: 'seconds per pass',
          buildSeconds: 'build seconds (once, not repeated)',
          buildRecordsPerSec: 'build records/s (once)',
          openSeconds: 'reopen seconds (once)',
        },
        ratios: [`build: ${fmt(total)} records, ${fmt(built.bytesWritten / MB)} MB written in ${fmt(buildSeconds)} s with ${fmt(built.syncs)} fsyncs (not part of the read figure)`],
        rows: [
          {
            scenario: name,
            metric: 'records/s',
            value: m.recordsPerSec as number,
            unit: 'rec/s',
            target: { kind: 'min', value: TARGETS.readRecordsPerSec, text: `>= ${fmt(TARGETS.readRecordsPerSec)}` },
            ratios: `${fmt(m.payloadMBps)} payload MB/s, warm page cache`,
          },
          { scenario: name, metric: 'build (batch API)', value: buildSeconds, unit: 's', ratios: `${fmt(buildRecordsPerSec)} rec/s, run once` },
        ],
      };
    } finally {
      await log.close();
    }
  });
}
