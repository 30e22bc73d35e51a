/**
 * This machine's raw I/O limits, measured in the same run as the scenarios and with the same
 * node:fs callback APIs the log uses (src/log/storage.ts), so that every log figure can be read as
 * a fraction of what the disk and node could do at that moment.
 *
 * - fdatasync rate: { fs.write 100 B at the end of a file; fs.fdatasync }, one at a time.
 * - sequential write: 1 MiB fs.write calls back to back, then one fs.fdatasync, all timed.
 * - the same with an fdatasync every 8 MiB (the log's flush size), as a reference point.
 */
import fs from 'node:fs';
import path from 'node:path';
import { MB, MiB, type Metrics, median, percentile, repeat, secondsSince, withTempDir } from './report.js';

function write(fd: number, buf: Buffer, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.write(fd, buf, 0, buf.length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.fdatasync(fd, (err) => (err ? reject(err) : resolve()));
  });
}

function open(file: string): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.open(file, 'wx+', 0o644, (err, fd) => (err ? reject(err) : resolve(fd)));
  });
}

function close(fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.close(fd, (err) => (err ? reject(err) : resolve()));
  });
}

/** Writes all of `buf` at `position`, finishing short writes as NodeFile.writev does. */
async function writeAll(fd: number, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) done += await write(fd, done === 0 ? buf : buf.subarray(done), position + done);
}

/** One file that is appended to with write(N bytes) + fdatasync, the raw counterpart of a lone appendOne. */
export class RawSyncWriter {
  private position = 0;

  private constructor(
    private readonly fd: number,
    private readonly buf: Buffer,
  ) {}

  /** Creates `file` (which must not exist). */
  static async create(file: string, recordBytes = 100): Promise<RawSyncWriter> {
    return new RawSyncWriter(await open(file), Buffer.alloc(recordBytes, 0x5a));
  }

  /** Writes the record at the end of the file and fdatasyncs; returns the latency in microseconds. */
  async append(): Promise<number> {
    const s = process.hrtime.bigint();
    await writeAll(this.fd, this.buf, this.position);
    this.position += this.buf.length;
    await fdatasync(this.fd);
    return Number(process.hrtime.bigint() - s) / 1e3;
  }

  close(): Promise<void> {
    return close(this.fd);
  }
}

export interface FsyncRate {
  iterations: number;
  /** (write + fdatasync) pairs per second, awaited one at a time. */
  callsPerSec: number;
  /** Median latency of one write + fdatasync, in microseconds. */
  medianUs: number;
  p99Us: number;
}

/**
 * `iterations` times: write 100 B at the end of a fresh file, then fdatasync it, awaiting each.
 * The first few pairs (file creation, first block allocation) are excluded as a warm-up.
 */
export async function measureFsyncRate(opts: { iterations: number; dir?: string; recordBytes?: number }): Promise<FsyncRate> {
  const warmup = Math.min(20, Math.ceil(opts.iterations / 10));
  return withTempDir('fsync', opts.dir, async (dir) => {
    const w = await RawSyncWriter.create(path.join(dir, 'fsync.dat'), opts.recordBytes ?? 100);
    try {
      for (let i = 0; i < warmup; i++) await w.append();
      const latencies = new Array<number>(opts.iterations);
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < opts.iterations; i++) latencies[i] = await w.append();
      const secs = secondsSince(t0);
      return { iterations: opts.iterations, callsPerSec: opts.iterations / secs, medianUs: median(latencies), p99Us: percentile(latencies, 99) };
    } finally {
      await w.close();
    }
  });
}

export interface SeqWrite {
  totalBytes: number;
  /** Bytes per second / 10^6, including the final fdatasync. */
  mbPerSec: number;
  seconds: number;
  /** Of `seconds`, the time spent in the final fdatasync. */
  fsyncSeconds: number;
}

/**
 * Writes `totalBytes` to a fresh file in `chunkBytes` writes, one at a time, then one fdatasync; all
 * of it timed. With `syncEveryBytes`, also fdatasyncs after every that many bytes (as a log that
 * syncs each flush must).
 */
export async function measureSeqWrite(opts: { totalBytes: number; chunkBytes?: number; syncEveryBytes?: number; dir?: string }): Promise<SeqWrite> {
  const chunkBytes = opts.chunkBytes ?? MiB;
  const syncEvery = opts.syncEveryBytes ?? Number.POSITIVE_INFINITY;
  return withTempDir('seq', opts.dir, async (dir) => {
    const fd = await open(path.join(dir, 'seq.dat'));
    try {
      const buf = Buffer.alloc(chunkBytes);
      for (let i = 0; i < buf.length; i += 4) buf.writeUInt32LE((i * 2654435761) >>> 0, i);
      const t0 = process.hrtime.bigint();
      let position = 0;
      let unsynced = 0;
      while (position < opts.totalBytes) {
        const n = Math.min(chunkBytes, opts.totalBytes - position);
        await writeAll(fd, n === chunkBytes ? buf : buf.subarray(0, n), position);
        position += n;
        unsynced += n;
        if (unsynced >= syncEvery && position < opts.totalBytes) {
          await fdatasync(fd);
          unsynced = 0;
        }
      }
      const s = process.hrtime.bigint();
      await fdatasync(fd);
      const fsyncSeconds = secondsSince(s);
      const seconds = secondsSince(t0);
      return { totalBytes: position, mbPerSec: position / MB / seconds, seconds, fsyncSeconds };
    } finally {
      await close(fd);
    }
  });
}

export interface RawLimitsOptions {
  repeats: number;
  /** write+fdatasync pairs per repeat. */
  fsyncIterations: number;
  /** Bytes per sequential-write repeat. */
  seqWriteBytes: number;
  dir?: string;
}

/** Median over the repeats of each raw figure. */
export interface RawLimits {
  fsyncCallsPerSec: number;
  fsyncMedianUs: number;
  fsyncP99Us: number;
  seqWriteMBps: number;
  seqWriteFsyncSeconds: number;
  /**
   * Sequential write MB/s with an fdatasync after every SYNC_EVERY_BYTES (8 MiB, the log's flush
   * target): the ceiling of a writer that syncs each flush and does not overlap flushes.
   */
  seqWriteSyncedMBps: number;
  options: RawLimitsOptions;
  runs: Record<string, number[]>;
}

/** The log's FLUSH_TARGET_BYTES (src/log/log.ts). */
export const SYNC_EVERY_BYTES = 8 * MiB;

export const RAW_DEFAULTS = {
  full: { fsyncIterations: 2000, seqWriteBytes: 512 * MiB },
  quick: { fsyncIterations: 500, seqWriteBytes: 128 * MiB },
} as const;

export async function measureRawLimits(opts: RawLimitsOptions): Promise<RawLimits> {
  const fsync = await repeat(opts.repeats, 'raw fdatasync', async (): Promise<Metrics> => {
    const r = await measureFsyncRate({ iterations: opts.fsyncIterations, dir: opts.dir });
    return { callsPerSec: r.callsPerSec, medianUs: r.medianUs, p99Us: r.p99Us };
  });
  // One untimed pass first: on VMs the first writes of a process into the page cache run several
  // times slower than later ones (measured: ~300 vs ~1,600 MB/s), which would flatter every ratio.
  await measureSeqWrite({ totalBytes: Math.min(opts.seqWriteBytes, 128 * MiB), dir: opts.dir });
  const seq = await repeat(opts.repeats, 'raw seq write', async (): Promise<Metrics> => {
    const r = await measureSeqWrite({ totalBytes: opts.seqWriteBytes, dir: opts.dir });
    const synced = await measureSeqWrite({ totalBytes: opts.seqWriteBytes, syncEveryBytes: SYNC_EVERY_BYTES, dir: opts.dir });
    return { mbPerSec: r.mbPerSec, fsyncSeconds: r.fsyncSeconds, syncedMBps: synced.mbPerSec };
  });
  return {
    fsyncCallsPerSec: fsync.median.callsPerSec as number,
    fsyncMedianUs: fsync.median.medianUs as number,
    fsyncP99Us: fsync.median.p99Us as number,
    seqWriteMBps: seq.median.mbPerSec as number,
    seqWriteFsyncSeconds: seq.median.fsyncSeconds as number,
    seqWriteSyncedMBps: seq.median.syncedMBps as number,
    options: opts,
    runs: {
      fsyncCallsPerSec: fsync.runs.callsPerSec ?? [],
      fsyncMedianUs: fsync.runs.medianUs ?? [],
      seqWriteMBps: seq.runs.mbPerSec ?? [],
      seqWriteSyncedMBps: seq.runs.syncedMBps ?? [],
    },
  };
}
