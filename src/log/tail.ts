/**
 * Reading a log from outside its owner: a read-only follower (`spool tail`) and a read-only
 * verifier (`spool verify`). Neither takes a lock nor writes a byte: every file is opened with
 * mode 'read' through a storage that refuses anything else, so both are safe while a broker
 * appends to the same directory.
 *
 * The follower trusts only complete, CRC-checked batches whose offsets continue where it stopped:
 * a batch still being written (short, zeroed or failing its CRC at the very end of the active
 * segment) is simply not there yet. The active segment may be preallocated (docs/format.md
 * "Preallocation"): its file size says nothing about where the data ends. A zeroed batch header
 * is the logical end; a batch whose bytes are only partly there (a write the reader overtook) is
 * waited for, never reported or skipped while nothing valid follows it. A roll is followed once the next segment exists (the old one
 * was synced and sealed before the new one was created, so reading it to its end is complete).
 */
import fs from 'node:fs';
import path from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import { SpoolError } from '../errors.js';
import { CHECKPOINT_FILE, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, SEGMENT_SUFFIX, parseSegmentFileName, readU64, segmentFileName } from './format.js';
import { type LogRecord, decodeRecords } from './record-batch.js';
import { findNextValidBatch } from './recovery.js';
import { dataEndBefore, readFully, scanBatches } from './scan.js';
import { Segment } from './segment.js';
import { type Storage, type StorageFile, nodeStorage } from './storage.js';
import { type VerifyReport, verifyLog } from './verify.js';

const CHUNK_BYTES = 1024 * 1024;

function refuse(what: string): never {
  throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `read-only access: refusing to ${what}`);
}

/** node:fs storage that only ever opens files for reading; every mutating call throws. */
export const readOnlyStorage: Storage = {
  open: async (p, mode) => (mode === 'read' ? nodeStorage.open(p, 'read') : refuse(`open ${p} for writing`)),
  readdir: (d) => nodeStorage.readdir(d),
  exists: (p) => nodeStorage.exists(p),
  mkdir: async (d) => refuse(`create ${d}`),
  rename: async (f) => refuse(`rename ${f}`),
  unlink: async (f) => refuse(`delete ${f}`),
  syncDir: () => Promise.resolve(),
};

/** Base offsets of the segment files in `dir`, ascending. [] when the directory does not exist. */
export async function listSegmentBases(dir: string): Promise<number[]> {
  let names: string[];
  try {
    names = await fs.promises.readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const bases: number[] = [];
  for (const n of names) {
    const b = parseSegmentFileName(n, SEGMENT_SUFFIX);
    if (b !== null) bases.push(b);
  }
  return bases.sort((a, b) => a - b);
}

/** True when `dir` looks like a log directory (a checkpoint or at least one segment file). */
export async function isLogDir(dir: string): Promise<boolean> {
  try {
    const names = await fs.promises.readdir(dir);
    return names.some((n) => n === CHECKPOINT_FILE || parseSegmentFileName(n, SEGMENT_SUFFIX) !== null);
  } catch {
    return false;
  }
}

/** Every log directory under `root` (depth first, sorted), without descending into logs. */
export async function findLogDirs(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    if (await isLogDir(dir)) {
      out.push(dir);
      return;
    }
    let entries: fs.Dirent[];
    try {
      entries = await fs.promises.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) if (e.isDirectory()) await walk(path.join(dir, e.name));
  };
  await walk(root);
  return out;
}

/** A stretch the follower could not read and skipped (corruption, or records retention deleted). */
export interface TailProblem {
  file: string;
  position: number;
  reason: string;
}

export type TailStart = 'earliest' | 'latest' | { offset: number } | { last: number };

/** The follower's position: the segment it reads, the byte it reads next, and the next offset expected there. */
interface Cursor {
  base: number;
  position: number;
  nextOffset: number;
}

/**
 * A read-only follower of one log directory.
 * @example
 *   const tail = await LogTail.open('./data/queues/orders/messages', { last: 10 });
 *   for (const r of await tail.poll()) console.log(r.offset, r.value.toString());
 *   const stop = tail.follow((records) => ..., (problem) => ...);
 */
export class LogTail {
  private cursor: Cursor;
  private file: { base: number; handle: StorageFile } | null = null;
  /** Records below this are skipped (the start may fall inside a batch). */
  private fromOffset: number;
  private stuck: { base: number; position: number; since: number } | null = null;
  private closed = false;
  /** How long a bad batch must stay at the tail before it is reported and skipped, in ms. */
  stuckLimitMs = 2000;

  private constructor(
    readonly dir: string,
    start: number,
    base: number,
  ) {
    this.fromOffset = start;
    this.cursor = { base, position: SEGMENT_HEADER_BYTES, nextOffset: base };
  }

  /** Positions a follower at `start` (default: the last 10 records). Throws SPOOL_ERR_NOT_FOUND when `dir` holds no log. */
  static async open(dir: string, start: TailStart = { last: 10 }): Promise<LogTail> {
    const bases = await listSegmentBases(dir);
    if (bases.length === 0) throw new SpoolError('SPOOL_ERR_NOT_FOUND', `no log in ${dir}`);
    const first = bases[0] as number;
    let offset: number;
    if (start === 'earliest') offset = first;
    else if (start === 'latest') offset = await endOffsetOf(dir, bases);
    else if ('offset' in start) offset = Math.max(first, start.offset);
    else offset = Math.max(first, (await endOffsetOf(dir, bases)) - Math.max(0, start.last));
    let base = first;
    for (const b of bases) if (b <= offset) base = b;
    return new LogTail(dir, offset, base);
  }

  /** The offset of the next record this follower will return. */
  get nextOffset(): number {
    return Math.max(this.cursor.nextOffset, this.fromOffset);
  }

  /**
   * Reads every complete, valid record that has landed since the last call (at most `maxRecords`;
   * call again while it returns a full list). Never throws for a torn tail; bad stretches are
   * reported through `onProblem` and skipped.
   */
  async poll(maxRecords = 10_000, onProblem: (p: TailProblem) => void = () => {}): Promise<LogRecord[]> {
    const out: LogRecord[] = [];
    for (let guard = 0; guard < 10_000 && !this.closed; guard++) {
      // Listing before sizing: a segment that exists now was sealed before this size is read.
      const bases = await listSegmentBases(this.dir);
      if (bases.length === 0) return out;
      if (!bases.includes(this.cursor.base)) {
        // Retention deleted the segment under us (or it never was): continue at the oldest that covers us.
        const candidates = bases.filter((b) => b <= this.cursor.nextOffset);
        const base = candidates.length > 0 ? (candidates[candidates.length - 1] as number) : (bases[0] as number);
        if (base > this.cursor.nextOffset) {
          onProblem({ file: this.segmentPath(base), position: 0, reason: `offsets ${this.cursor.nextOffset}..${base - 1} were deleted by retention before they were read` });
        }
        await this.moveTo(base, Math.max(base, this.cursor.nextOffset));
        continue;
      }
      const later = bases.find((b) => b > this.cursor.base);
      const file = await this.handle();
      if (file === null) continue; // deleted between listing and opening: list again
      const size = await file.size();
      if (this.cursor.position === SEGMENT_HEADER_BYTES && !(await this.headerOk(file, size))) {
        if (later === undefined) return out; // header not written yet
        onProblem({ file: file.path, position: 0, reason: 'bad segment header' });
        await this.moveTo(later, later);
        continue;
      }
      let discontinuity: string | null = null;
      let full = false;
      const result = await scanBatches(file, this.cursor.position, size, CHUNK_BYTES, (buf, pos, header, filePosition) => {
        if (header.baseOffset !== this.cursor.nextOffset) {
          discontinuity = `batch starts at offset ${header.baseOffset}, expected ${this.cursor.nextOffset}`;
          return false;
        }
        const before = out.length;
        const fault = decodeRecords(buf, pos, header, this.fromOffset, out, Number.MAX_SAFE_INTEGER);
        if (fault !== null) {
          discontinuity = fault;
          return false;
        }
        this.cursor.position = filePosition + header.length;
        this.cursor.nextOffset = header.baseOffset + header.recordCount;
        if (out.length - before > 0 && out.length >= maxRecords) {
          full = true;
          return false;
        }
        return true;
      });
      if (full) return out;
      const problem: string | null = discontinuity ?? (result.problem === null ? null : `invalid batch: ${result.problem.kind}`);
      if (problem === null) {
        // Read to the size seen. A later segment existed before that size was read: this one is done.
        if (later !== undefined && this.cursor.position >= size) {
          if (later !== this.cursor.nextOffset) {
            onProblem({ file: file.path, position: this.cursor.position, reason: `segment ends at offset ${this.cursor.nextOffset}, next segment starts at ${later}` });
          }
          await this.moveTo(later, Math.max(later, this.cursor.nextOffset));
          continue;
        }
        this.stuck = null;
        return out;
      }
      // Bad bytes where the next batch should be.
      if (later === undefined && discontinuity === null && result.problem?.kind === 'zeroed') {
        // A zeroed header in the active segment: the logical end (preallocated space, or the next
        // batch not written yet). Nothing to wait out: the next poll reads whatever lands here.
        this.stuck = null;
        return out;
      }
      if (later === undefined) {
        // The active segment: most likely a batch still being written. Wait, unless it stays bad.
        const now = Date.now();
        if (this.stuck === null || this.stuck.base !== this.cursor.base || this.stuck.position !== this.cursor.position) {
          this.stuck = { base: this.cursor.base, position: this.cursor.position, since: now };
          return out;
        }
        if (now - this.stuck.since < this.stuckLimitMs) return out;
        const next = await findNextValidBatch(file, this.cursor.position + 1, size, this.cursor.nextOffset);
        if (next === null) return out; // nothing valid after it (yet): still a torn tail
        onProblem({ file: file.path, position: this.cursor.position, reason: `${problem}; skipped to byte ${next.position}` });
        this.cursor.position = next.position;
        this.cursor.nextOffset = await baseOffsetAt(file, next.position);
        this.stuck = null;
        continue;
      }
      onProblem({ file: file.path, position: this.cursor.position, reason: `${problem}; skipped the rest of the segment` });
      await this.moveTo(later, later);
    }
    return out;
  }

  /**
   * Calls `onRecords` with new records as they land, watching the directory with chokidar (and
   * polling every `pollMs` as a fallback; a failed watch is reported to `onWatchError` and polling
   * goes on). Read errors go to `onError` and stop nothing by themselves. Returns a function that stops following.
   */
  follow(
    onRecords: (records: LogRecord[]) => void | Promise<void>,
    onProblem: (p: TailProblem) => void = () => {},
    options: { pollMs?: number; onError?: (err: Error) => void; onWatchError?: (err: Error) => void } = {},
  ): () => Promise<void> {
    let running = false;
    let again = false;
    let stopped = false;
    const drain = async () => {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        do {
          again = false;
          for (;;) {
            if (stopped) return;
            const records = await this.poll(10_000, onProblem);
            if (records.length > 0) await onRecords(records);
            if (records.length < 10_000) break;
          }
        } while (again && !stopped);
      } catch (err) {
        options.onError?.(err as Error);
      } finally {
        running = false;
      }
    };
    // Watching is an accelerator: when the OS refuses a watch (inotify limits), polling still finds everything.
    let watcher: FSWatcher | null = null;
    const watchFailed = (err: unknown) => {
      options.onWatchError?.(err as Error);
      const w = watcher;
      watcher = null;
      void w?.close().catch(() => {});
    };
    try {
      watcher = watch(this.dir, { ignoreInitial: true, depth: 0, persistent: true });
      watcher.on('all', () => void drain());
      watcher.on('error', watchFailed);
    } catch (err) {
      watchFailed(err);
    }
    const timer = setInterval(() => void drain(), options.pollMs ?? 500);
    void drain();
    return async () => {
      stopped = true;
      clearInterval(timer);
      await watcher?.close().catch(() => {});
      await this.close();
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    const f = this.file;
    this.file = null;
    if (f !== null) await f.handle.close().catch(() => {});
  }

  private segmentPath(base: number): string {
    return path.join(this.dir, segmentFileName(base, SEGMENT_SUFFIX));
  }

  private async moveTo(base: number, nextOffset: number): Promise<void> {
    if (this.file !== null && this.file.base !== base) {
      await this.file.handle.close().catch(() => {});
      this.file = null;
    }
    this.cursor = { base, position: SEGMENT_HEADER_BYTES, nextOffset: base };
    if (nextOffset > this.fromOffset) this.fromOffset = nextOffset;
    this.stuck = null;
  }

  private async handle(): Promise<StorageFile | null> {
    if (this.file !== null && this.file.base === this.cursor.base) return this.file.handle;
    try {
      const handle = await readOnlyStorage.open(this.segmentPath(this.cursor.base), 'read');
      this.file = { base: this.cursor.base, handle };
      return handle;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  private async headerOk(file: StorageFile, size: number): Promise<boolean> {
    if (size < SEGMENT_HEADER_BYTES) return false;
    const b = Buffer.alloc(SEGMENT_HEADER_BYTES);
    await readFully(file, b, SEGMENT_HEADER_BYTES, 0);
    return b.readUInt32LE(0) === SEGMENT_MAGIC && readU64(b, 8) === this.cursor.base;
  }
}

async function baseOffsetAt(file: StorageFile, position: number): Promise<number> {
  const b = Buffer.alloc(8);
  await readFully(file, b, 8, position + 16);
  return readU64(b, 0);
}

/** The offset after the last complete, valid record of the newest segment (walking back over empty ones). */
async function endOffsetOf(dir: string, bases: number[]): Promise<number> {
  const last = bases[bases.length - 1] as number;
  const file = await readOnlyStorage.open(path.join(dir, segmentFileName(last, SEGMENT_SUFFIX)), 'read');
  try {
    const size = await file.size();
    let next = last;
    await scanBatches(file, SEGMENT_HEADER_BYTES, size, CHUNK_BYTES, (_buf, _pos, header) => {
      if (header.baseOffset !== next) return false;
      next = header.baseOffset + header.recordCount;
      return true;
    });
    return next;
  } finally {
    await file.close();
  }
}

export interface ReadOnlyVerifyReport extends VerifyReport {
  dir: string;
  /**
   * Bytes at the end of the active segment that are not (yet) a complete batch and have nothing
   * valid after them: a write in flight, or a torn write that opening the log truncates. Not an error.
   */
  tornTail: { file: string; position: number; bytes: number; reason: string } | null;
}

/**
 * Verifies one log directory without opening it as a Log: no lock, no recovery, no writes.
 * Checks every batch's CRC and structure, offset density across segments, and sealed segments'
 * indexes (verify.ts does the checking, over read-only handles).
 */
export async function verifyLogDirReadOnly(dir: string): Promise<ReadOnlyVerifyReport> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await verifyOnce(dir);
    } catch (err) {
      // Retention may delete a segment while we walk: look again.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && attempt < 3) continue;
      throw err;
    }
  }
}

async function verifyOnce(dir: string): Promise<ReadOnlyVerifyReport> {
  const bases = await listSegmentBases(dir);
  if (bases.length === 0) {
    return { dir, ok: true, segments: 0, batches: 0, records: 0, bytes: 0, badRanges: [], badIndexes: [], tornTail: null };
  }
  const segments = bases.map((b) => new Segment(dir, b, readOnlyStorage));
  for (let i = 0; i + 1 < segments.length; i++) (segments[i] as Segment).nextOffset = (segments[i + 1] as Segment).baseOffset;
  const active = segments[segments.length - 1] as Segment;
  const file = await readOnlyStorage.open(active.logPath, 'read');
  active.file = file;
  let tornTail: ReadOnlyVerifyReport['tornTail'] = null;
  try {
    const fileSize = await file.size();
    let size = fileSize;
    if (fileSize >= SEGMENT_HEADER_BYTES) {
      let next = active.baseOffset;
      const scan = await scanBatches(file, SEGMENT_HEADER_BYTES, fileSize, CHUNK_BYTES, (_buf, _pos, header) => {
        if (header.baseOffset !== next) return false;
        next = header.baseOffset + header.recordCount;
        return true;
      });
      active.nextOffset = next;
      const stopAt = scan.problem?.position ?? null;
      if (stopAt !== null && (await dataEndBefore(file, stopAt, fileSize)) === stopAt) {
        // Only zeros after the last valid batch: preallocated space, the end of the log.
        size = stopAt;
      } else if (stopAt !== null) {
        // Bad bytes at the end with nothing valid after them are a torn (or in-flight) write.
        const after = await findNextValidBatch(file, stopAt + 1, fileSize, next);
        if (after === null) {
          size = stopAt;
          tornTail = { file: active.logPath, position: stopAt, bytes: fileSize - stopAt, reason: scan.problem?.kind ?? 'invalid batch' };
        }
      }
    }
    active.size = size;
    const report = await verifyLog(segments, active);
    return { dir, ...report, tornTail };
  } finally {
    for (const s of segments) await s.closeHandle().catch(() => {});
  }
}
