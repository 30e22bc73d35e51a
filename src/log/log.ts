/**
 * A segmented, checksummed, append-only log: the storage under every Spool queue.
 *
 * Invariants (asserted where cheap):
 * - Offsets are dense: the batch at a segment's durable end starts at `nextOffset`.
 * - At most two flushes are unsynced at once: one whose fdatasync runs while the next is written.
 *   Appends arriving meanwhile wait for the flush after, which is how concurrent appends share an
 *   fdatasync (group commit). Flushes commit strictly in order.
 * - An append resolves only after the fdatasync covering its bytes has resolved.
 * - Readers see only records below the high watermark, all of which are durable.
 * - Sealed segments were fully synced before the roll that sealed them and never change again.
 */
import assert from 'node:assert/strict';
import { CorruptError, SpoolError, ioError } from '../errors.js';
import { encodeCheckpoint, type Checkpoint } from './checkpoint.js';
import { BATCH_HEADER_BYTES, CHECKPOINT_FILE, SEGMENT_HEADER_BYTES, encodeSegmentHeader } from './format.js';
import {
  BatchEncoder,
  type LogRecord,
  type RecordInput,
  decodeRecords,
  encodedRecordBytes,
  recordBytesBound,
  validateHeaders,
} from './record-batch.js';
import { recoverLog, type RecoveryReport } from './recovery.js';
import { scanBatches } from './scan.js';
import { Segment } from './segment.js';
import { SettleQueue } from './settle-queue.js';
import { SegmentIndex } from './segment-index.js';
import { type Storage, type StorageFile, nodeStorage, writeFileAtomic } from './storage.js';
import { verifyLog, type VerifyReport } from './verify.js';
import path from 'node:path';

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

export interface LogOptions {
  /** The I/O seam; tests pass a fault-injecting one. Default: node:fs. */
  storage?: Storage;
  clock?: Clock;
  /** Roll to a new segment once the active one would grow past this. Default 128 MiB. */
  segmentBytesMax?: number;
  /** Bytes between sparse index entries. Default 4 KiB. */
  indexIntervalBytes?: number;
  /** Largest encoded record. Default 4 MiB. */
  recordBytesMax?: number;
  /** Largest encoded total of one `append` call. Default 16 MiB. */
  batchBytesMax?: number;
  /**
   * Pending bytes that start a write at once, while the appends of the same tick are still being
   * made, instead of at the end of the tick: the disk then works while the CPU does. Default 64 KiB.
   */
  earlyFlushBytes?: number;
  /**
   * Extend the active segment this far past the end of a write that needs more room (one
   * `ftruncate`, capped at `segmentBytesMax`), so that the flushes after it overwrite zeros and
   * their fdatasync need not commit a new file size. 0 turns preallocation off. Default 8 MiB
   * (docs/format.md "Preallocation").
   */
  preallocateBytes?: number;
  /**
   * A flush of at most this many bytes, with no other flush in flight, is written and fdatasynced
   * on the calling thread instead of the thread pool ("blocking commit", docs/architecture.md):
   * a lone append confirms about 40% sooner, for an event loop blocked as long as one fdatasync.
   * Paused for a second whenever they average over 1 ms (a slow disk). 0 (the default) turns it off.
   */
  blockingCommitBytes?: number;
  /** Create the directory when it does not exist. Default true. */
  create?: boolean;
  /**
   * Truncate an active segment at its first bad batch even when valid batches follow it (which
   * means corruption rather than a torn write). Default false: such a log refuses to open with
   * SPOOL_ERR_CORRUPT so that nothing is silently lost.
   */
  repair?: boolean;
}

export interface ResolvedLogOptions {
  storage: Storage;
  clock: Clock;
  segmentBytesMax: number;
  indexIntervalBytes: number;
  recordBytesMax: number;
  batchBytesMax: number;
  earlyFlushBytes: number;
  preallocateBytes: number;
  blockingCommitBytes: number;
  create: boolean;
  repair: boolean;
  /** The most one flush writes; a torn write can only damage this much of a segment's tail. */
  flushBytesMax: number;
}

export interface AppendResult {
  /** Offset of the first record appended. */
  baseOffset: number;
  /** Offset of the last record appended. */
  lastOffset: number;
  count: number;
}

export interface ReadOptions {
  /** Stop once this many bytes of batches were read (at least one record is always returned). Default 1 MiB. */
  maxBytes?: number;
  maxRecords?: number;
}

export interface LogStats {
  startOffset: number;
  endOffset: number;
  segments: number;
  activeSegmentBytes: number;
  flushes: number;
  /** Flushes started before the end of the tick because `earlyFlushBytes` were pending. */
  earlyFlushes: number;
  /** Of those, flushes written while the one before was still in its fdatasync (the loop was woken). */
  flushesDuringSync: number;
  /** Flushes written and fdatasynced on the calling thread (`blockingCommitBytes`). */
  blockingCommits: number;
  appendedRecords: number;
  indexesRebuilt: number;
}

/** Frozen header maps already validated (a WeakSet: they go when their owners do). */
const checkedHeaders = new WeakSet<object>();
/** The one checked last: an append's records mostly share one map, and a compare beats a lookup. */
let lastChecked: object | null = null;

/** Records a disk batch aims for; larger appends are cut into several batches. */
const DISK_BATCH_TARGET_BYTES = 1024 * 1024;
/** A flush takes pending appends until it holds this much (one append may exceed it alone). */
const FLUSH_TARGET_BYTES = 8 * 1024 * 1024;
/** Pending bytes that start a write at once rather than at the end of the tick (see `enqueue`). */
const EARLY_FLUSH_BYTES = 64 * 1024;
/**
 * docs/format.md "Preallocation": how far past a write the active segment is extended. One flush
 * target, so an extension is a size change per 8 MiB written (invisible in the median latency),
 * and a crash leaves at most about this much zero tail for recovery to read.
 */
const PREALLOCATE_BYTES = 8 * 1024 * 1024;

/** The segment sizes a log takes (`LogOptions.segmentBytesMax`), and its default. */
export const SEGMENT_BYTES = { min: 1024, max: 1024 * 1024 * 1024, default: 128 * 1024 * 1024 } as const;
const POSITION_HINTS_MAX = 64;
/** Sealed segments whose index a lookup loaded and that keep it (see `indexOf`). */
const LOADED_INDEXES_MAX = 8;
/**
 * Blocking commits averaging longer than this (a moving average, so that one slow fdatasync among
 * fast ones does not count) mean a slow disk: the event loop must not wait on it...
 */
const BLOCKING_COMMIT_SLOW_MS = 1;
/** ...so flushes go through the thread pool for this long before a blocking one is tried again. */
const BLOCKING_COMMIT_PAUSE_MS = 1000;
const MiB = 1024 * 1024;

interface WrittenFlush {
  batch: PendingAppend[];
  encoded: { bytes: Buffer; indexEntries: { relOffset: number; position: number; maxTsBefore: number }[]; bytesSinceIndex: number; nextOffset: number; maxTimestamp: number };
  startPosition: number;
  startOffset: number;
  /** Settles with null when the fdatasync succeeded, else its error (it never rejects). */
  sync: Promise<unknown>;
  error: SpoolError | null;
  /** Written and fdatasynced on this thread, successfully (a blocking commit): nothing to wait for. */
  syncedHere: boolean;
}

interface PendingAppend {
  /** A single record (from appendOne) or a list. */
  records: RecordInput | RecordInput[];
  single: boolean;
  /** Each record's `recordBytesBound`, at least its encoded size (a number for a single record). */
  sizes: number | number[];
  /** Their sum: what the flush reserves; the encoder finds the exact size as it writes. */
  bytes: number;
  resolve: (value: AppendResult & number) => void;
  reject: (err: Error) => void;
  /** Set when its flush commits (its first record's offset) or fails; settled by `settles`. */
  offset: number;
  error: Error | null;
}

/**
 * A commit settles at most this many appends in one event-loop turn (see SettleQueue). Measured on
 * the delay workload (10,000 delays of 0-5 s, 1,000 publishes outstanding), firing lateness p99:
 * 15-32 ms settling whole commits, 8-10 ms at 100, 5-6 ms at 32 (but more fires late past the
 * publish burst), 18-20 ms at 256. Group commit and publish throughput did not change measurably.
 */
const SETTLES_PER_TURN = 128;

function settleAppend(p: PendingAppend): void {
  if (p.error !== null) p.reject(p.error);
  else if (p.single) (p.resolve as (v: number) => void)(p.offset);
  else {
    const count = (p.records as RecordInput[]).length;
    (p.resolve as (v: AppendResult) => void)({ baseOffset: p.offset, lastOffset: p.offset + count - 1, count });
  }
}

export class Log {
  readonly dir: string;
  readonly options: ResolvedLogOptions;
  private readonly storage: Storage;
  /** Sealed segments in offset order, then the active one last. */
  private segments: Segment[];
  private active: Segment;
  private pending: PendingAppend[] = [];
  private pendingHead = 0;
  private flushing = false;
  /** The flush loop has started (`flushing` is set as soon as it is scheduled). */
  private loopRunning = false;
  /** Bytes of pending appends not yet taken into a flush. */
  private pendingBytes = 0;
  /** Set while the loop waits on an fdatasync with nothing to write: call it to write new appends alongside. */
  private wake: (() => void) | null = null;
  private closed = false;
  /** Set after a failure that left the disk state uncertain: the log is read-only until reopened. */
  private failure: SpoolError | null = null;
  private bytesSinceIndex: number;
  /** Where the next flush goes: past the durable end while a flush is written but not yet synced. */
  private written: { size: number; nextOffset: number; bytesSinceIndex: number; maxTimestamp: number };
  private flushBuffer: Buffer = Buffer.allocUnsafe(MiB);
  private readonly encoder = new BatchEncoder();
  private readonly positionHints = new Map<number, { segment: Segment; position: number }>();
  private readonly appendListeners = new Set<(endOffset: number) => void>();
  private idleWaiters: (() => void)[] = [];
  /** Appends whose flush is done, settled in order a chunk per event-loop turn. */
  private readonly settles = new SettleQueue<PendingAppend>(SETTLES_PER_TURN, settleAppend);
  /** Sealed segments holding an index a lookup loaded, oldest first (see `indexOf`). */
  private loadedIndexes: Segment[] = [];
  private counters = { flushes: 0, earlyFlushes: 0, flushesDuringSync: 0, blockingCommits: 0, appendedRecords: 0, indexesRebuilt: 0 };
  /** performance.now() before which no blocking commit is made (they were slow). */
  private blockingPausedUntil = 0;
  /** Moving average of blocking commit durations, ms. */
  private blockingAverageMs = 0;

  private constructor(dir: string, options: ResolvedLogOptions, segments: Segment[], bytesSinceIndex: number) {
    this.dir = dir;
    this.options = options;
    this.storage = options.storage;
    this.segments = segments;
    const active = segments[segments.length - 1];
    assert(active !== undefined, 'a log always has an active segment');
    this.active = active;
    this.bytesSinceIndex = bytesSinceIndex;
    this.written = { size: active.size, nextOffset: active.nextOffset, bytesSinceIndex, maxTimestamp: active.maxTimestamp };
  }

  /**
   * Opens (or creates) the log in `dir`, recovering from any crash first.
   * @example
   *   const { log, recovery } = await Log.open('./data/orders');
   *   const { baseOffset } = await log.append([{ value: 'hello' }]);
   *   const records = await log.read(baseOffset);
   */
  static async open(dir: string, options: LogOptions = {}): Promise<{ log: Log; recovery: RecoveryReport }> {
    const resolved = resolveOptions(options);
    const { segments, report, bytesSinceIndex } = await recoverLog(dir, resolved);
    const log = new Log(dir, resolved, segments, bytesSinceIndex);
    log.counters.indexesRebuilt = report.rebuiltIndexes.length;
    return { log, recovery: report };
  }

  /**
   * Deletes a closed log's directory: its segments, indexes and checkpoint, then the directory.
   * Refuses a directory holding anything that is not part of a log.
   */
  static async destroy(dir: string, options: Pick<LogOptions, 'storage'> = {}): Promise<void> {
    const storage = options.storage ?? nodeStorage;
    let names: string[];
    try {
      names = await storage.readdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    const ours = /^(\d{20}\.(log|index|timeindex)|checkpoint|.*\.tmp)$/;
    const foreign = names.filter((n) => !ours.test(n));
    if (foreign.length > 0) throw new SpoolError('SPOOL_ERR_NOT_A_LOG', `${dir} holds files that are not a log's: ${foreign.slice(0, 3).join(', ')}`);
    // The checkpoint first: without it (and once segments go) the directory is no longer a log.
    for (const n of [...names].sort((a, b) => (a === CHECKPOINT_FILE ? -1 : b === CHECKPOINT_FILE ? 1 : a.localeCompare(b)))) {
      await storage.unlink(path.join(dir, n));
    }
    if (storage.rmdir) await storage.rmdir(dir);
    await storage.syncDir(path.dirname(dir));
  }

  /** The first offset still retained. */
  get startOffset(): number {
    return (this.segments[0] as Segment).baseOffset;
  }

  /** The high watermark: the offset after the last durable record. Reads never go past it. */
  get endOffset(): number {
    return this.active.nextOffset;
  }

  /** Calls `listener(endOffset)` after each flush that made new records durable. Returns an unsubscribe function. */
  onAppend(listener: (endOffset: number) => void): () => void {
    this.appendListeners.add(listener);
    return () => this.appendListeners.delete(listener);
  }

  /**
   * Appends records as one unit of group commit; resolves after they are fsynced.
   * @example
   *   const { baseOffset, count } = await log.append([{ value: 'a' }, { value: 'b', key: 'k' }]);
   */
  append(records: readonly RecordInput[]): Promise<AppendResult> {
    if (!Array.isArray(records) || records.length === 0) {
      return Promise.reject(new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'append takes a non-empty array of records'));
    }
    const sizes = new Array<number>(records.length);
    let bytes = 0;
    for (let i = 0; i < records.length; i++) {
      const size = this.validate(records[i] as RecordInput);
      if (typeof size !== 'number') return Promise.reject(size);
      sizes[i] = size;
      bytes += size;
    }
    if (bytes + BATCH_HEADER_BYTES > this.options.batchBytesMax) {
      // `bytes` is a bound: only the exact size refuses an append.
      let exact = 0;
      for (const r of records) exact += encodedRecordBytes(r);
      if (exact + BATCH_HEADER_BYTES > this.options.batchBytesMax) {
        return Promise.reject(new SpoolError('SPOOL_ERR_BATCH_TOO_LARGE', `append of ${exact} bytes exceeds batchBytesMax ${this.options.batchBytesMax}`));
      }
    }
    return this.enqueue(records.slice(), false, sizes, bytes) as Promise<AppendResult>;
  }

  /**
   * Appends one record; resolves with its offset after it is fsynced. Many concurrent calls share one fsync.
   * @example
   *   const offset = await log.appendOne({ value: Buffer.from('hello') });
   */
  appendOne(record: RecordInput): Promise<number> {
    const size = this.validate(record);
    if (typeof size !== 'number') return Promise.reject(size);
    return this.enqueue(record, true, size, size) as Promise<number>;
  }

  private validate(record: RecordInput): number | SpoolError {
    if (record === null || typeof record !== 'object') {
      return new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'a record must be an object with a value');
    }
    const v = record.value;
    if (typeof v !== 'string' && !(v instanceof Uint8Array)) {
      return new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'record value must be a Buffer, Uint8Array or string');
    }
    const k = record.key;
    if (k != null && typeof k !== 'string' && !(k instanceof Uint8Array)) {
      return new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'record key must be a Buffer, Uint8Array, string or null');
    }
    if (record.timestamp !== undefined && !Number.isSafeInteger(record.timestamp)) {
      return new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'record timestamp must be an integer (ms since the epoch)');
    }
    const headers = record.headers;
    if (headers !== undefined && headers !== lastChecked) {
      if (!(Object.isFrozen(headers) && checkedHeaders.has(headers))) {
        const headerProblem = validateHeaders(headers);
        if (headerProblem !== null) return new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', headerProblem);
        // A frozen map cannot change, so checking it once is enough (the broker reuses them).
        if (Object.isFrozen(headers)) checkedHeaders.add(headers);
      }
      if (Object.isFrozen(headers)) lastChecked = headers;
    }
    // A bound (short strings are not measured); the exact size only when the bound is over the limit.
    const size = recordBytesBound(record);
    if (size > this.options.recordBytesMax) {
      const exact = encodedRecordBytes(record);
      if (exact > this.options.recordBytesMax) {
        return new SpoolError('SPOOL_ERR_RECORD_TOO_LARGE', `record of ${exact} bytes exceeds recordBytesMax ${this.options.recordBytesMax}`);
      }
    }
    return size;
  }

  private enqueue(records: RecordInput | RecordInput[], single: boolean, sizes: number | number[], bytes: number): Promise<AppendResult | number> {
    if (this.closed) return Promise.reject(new SpoolError('SPOOL_ERR_CLOSED', 'the log is closed'));
    if (this.failure !== null) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.pending.push({ records, single, sizes, bytes, resolve: resolve as PendingAppend['resolve'], reject, offset: -1, error: null });
      this.pendingBytes += bytes;
      if (!this.flushing) {
        this.flushing = true;
        // A microtask, so that appends made in the same tick join this flush.
        queueMicrotask(() => {
          if (this.flushing) this.startLoop();
        });
      } else if (this.pendingBytes >= this.options.earlyFlushBytes) {
        // Enough to be worth a write now: start it, so the disk works while the rest of this tick's
        // appends are still being made (CPU and I/O overlap instead of taking turns).
        if (!this.loopRunning) {
          this.counters.earlyFlushes++;
          this.startLoop();
        } else if (this.wake !== null) {
          this.counters.earlyFlushes++;
          const wake = this.wake;
          this.wake = null;
          wake();
        }
      }
    });
  }

  /**
   * The flush pipeline: while flush N's fdatasync runs, flush N+1 is encoded and written; then
   * N is committed (or rolled back), and N+1's fdatasync starts. So the disk always has work and
   * the encoding of one flush overlaps the sync of the other. Nothing is resolved before the
   * fdatasync that covers it, and a flush is committed only after every flush before it.
   */
  private startLoop(): void {
    if (this.loopRunning) return;
    this.loopRunning = true;
    void this.flushLoop();
  }

  private async flushLoop(): Promise<void> {
    let syncing: WrittenFlush | null = null;
    try {
      for (;;) {
        while (this.pendingHead < this.pending.length) {
          const batch = this.takeFlush();
          try {
            syncing = await this.writeFlush(batch, syncing);
          } catch (err) {
            // A bug, not an I/O failure (those are handled inside): fail loudly but settle every promise.
            const error = err instanceof SpoolError ? err : new SpoolError('SPOOL_ERR_READ_ONLY', `log ${this.dir} failed: ${(err as Error).message}`, { cause: err });
            this.failure = error;
            for (const p of batch) this.failAppend(p, error);
            if (syncing !== null) for (const p of syncing.batch) this.failAppend(p, error);
            syncing = null;
          }
        }
        if (syncing === null) break;
        const last: WrittenFlush = syncing;
        syncing = null;
        if (last.syncedHere) {
          // A blocking commit's fdatasync is done: commit now, not after a wait on its settled promise.
          this.commit(last);
          continue;
        }
        // Wait for its fdatasync, unless enough new appends arrive first: then write them alongside.
        const woken = await new Promise<boolean>((resolve) => {
          this.wake = () => resolve(true);
          void last.sync.then(() => resolve(false));
        });
        this.wake = null;
        if (woken) {
          this.counters.flushesDuringSync++;
          syncing = last;
          continue;
        }
        try {
          await this.finishSync(last);
        } catch (err) {
          for (const p of last.batch) this.failAppend(p, err as Error);
          throw err;
        }
        // Appends that arrived during that fdatasync are still pending: go round again.
      }
    } catch (err) {
      this.failure ??= new SpoolError('SPOOL_ERR_READ_ONLY', `log ${this.dir} failed`, { cause: err });
      if (syncing !== null) for (const p of syncing.batch) this.failAppend(p, this.failure);
    } finally {
      if (this.failure !== null) for (let i = this.pendingHead; i < this.pending.length; i++) this.failAppend(this.pending[i] as PendingAppend, this.failure);
      else assert.equal(this.pendingHead, this.pending.length, 'the flush loop ends only with nothing pending');
      this.pending.length = 0;
      this.pendingHead = 0;
      this.pendingBytes = 0;
      this.wake = null;
      this.loopRunning = false;
      this.flushing = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Takes pending appends up to FLUSH_TARGET_BYTES (always at least one). */
  private takeFlush(): PendingAppend[] {
    const out: PendingAppend[] = [];
    let bytes = 0;
    while (this.pendingHead < this.pending.length) {
      const p = this.pending[this.pendingHead] as PendingAppend;
      if (out.length > 0 && bytes + p.bytes > FLUSH_TARGET_BYTES) break;
      out.push(p);
      bytes += p.bytes;
      this.pendingBytes -= p.bytes;
      this.pending[this.pendingHead] = undefined as unknown as PendingAppend;
      this.pendingHead++;
    }
    if (this.pendingHead === this.pending.length) {
      this.pending.length = 0;
      this.pendingHead = 0;
    }
    return out;
  }

  /**
   * Encodes and writes `batch` while `syncing` (the previous flush) is being fsynced, then settles
   * `syncing`. Returns the flush whose fsync is now running, or null.
   */
  private async writeFlush(batch: PendingAppend[], syncing: WrittenFlush | null): Promise<WrittenFlush | null> {
    if (this.failure !== null || this.closedHard) {
      if (syncing !== null) await this.finishSync(syncing);
      const err = this.failure ?? new SpoolError('SPOOL_ERR_CLOSED', 'the log is closed');
      for (const p of batch) this.failAppend(p, err);
      return null;
    }
    let recordBytes = 0;
    for (const p of batch) recordBytes += p.bytes + BATCH_HEADER_BYTES;
    // Roll before writing when this flush would push a non-empty segment past its limit.
    if (this.written.size > SEGMENT_HEADER_BYTES && this.written.size + recordBytes > this.options.segmentBytesMax) {
      if (syncing !== null) {
        await this.finishSync(syncing);
        syncing = null;
        if (this.failure !== null) return this.writeFlush(batch, null);
      }
      try {
        await this.roll();
      } catch (err) {
        const error = err instanceof SpoolError ? err : ioError(err, 'rolling to a new segment');
        for (const p of batch) this.failAppend(p, error);
        return null;
      }
    }
    const file = this.active.file;
    assert(file !== null, 'the active segment has an open handle');
    const w = this.written;
    const encoded = this.encodeFlush(batch, w.size, w.nextOffset, w.bytesSinceIndex, w.maxTimestamp);
    // The write is issued first; the flush before is committed as soon as its fdatasync is done,
    // even while this write is still running, so its appenders can get going again.
    const writeEnd = w.size + encoded.bytes.length;
    const active = this.active;
    if (syncing === null && writeEnd <= active.fileBytes && encoded.bytes.length <= this.options.blockingCommitBytes && performance.now() >= this.blockingPausedUntil) {
      const { writevBlocking, syncBlocking } = file;
      if (writevBlocking !== undefined && syncBlocking !== undefined) return this.writeFlushBlocking(file, batch, encoded);
    }
    let write: Promise<void>;
    if (writeEnd <= active.fileBytes) {
      write = file.writev([encoded.bytes], w.size);
    } else {
      // Preallocate: extend the file before writing, so the flushes after this one write into
      // zeros and their fdatasync commits no size change. This flush's fdatasync commits it.
      const extendTo = Math.min(writeEnd + this.options.preallocateBytes, Math.max(this.options.segmentBytesMax, writeEnd));
      write =
        extendTo > writeEnd
          ? file.truncate(extendTo).then(() => {
              active.fileBytes = extendTo;
              return file.writev([encoded.bytes], w.size);
            })
          : file.writev([encoded.bytes], w.size).then(() => {
              active.fileBytes = writeEnd;
            });
    }
    const writing = write.then(
      () => null,
      (err: unknown) => err,
    );
    if (syncing !== null && !(await this.finishSync(syncing, writing))) {
      // The flush before failed and was cut back, taking these bytes with it.
      for (const p of batch) this.failAppend(p, this.failure ?? syncing.error ?? ioError(new Error('earlier flush failed'), 'appending'));
      return null;
    }
    const writeError = await writing;
    if (writeError !== null) {
      await this.rollBackFlush(writeError, batch, w.size);
      return null;
    }
    const flush: WrittenFlush = { batch, encoded, startPosition: w.size, startOffset: w.nextOffset, sync: null as unknown as Promise<unknown>, error: null, syncedHere: false };
    this.written = { size: w.size + encoded.bytes.length, nextOffset: encoded.nextOffset, bytesSinceIndex: encoded.bytesSinceIndex, maxTimestamp: encoded.maxTimestamp };
    flush.sync = file.sync().then(
      () => null,
      (err: unknown) => err,
    );
    return flush;
  }

  /**
   * `writeFlush` for a short flush with nothing else in flight: the write and its fdatasync run on
   * this thread, which skips the two thread-pool round trips (each a thread wake-up) of the
   * promise forms. Nothing can be appended meanwhile, so nothing is lost by not overlapping.
   * Returns the flush with its sync already settled; the loop commits or rolls it back as usual.
   */
  private async writeFlushBlocking(file: StorageFile, batch: PendingAppend[], encoded: WrittenFlush['encoded']): Promise<WrittenFlush | null> {
    const w = this.written;
    const started = performance.now();
    try {
      (file.writevBlocking as NonNullable<StorageFile['writevBlocking']>)([encoded.bytes], w.size);
    } catch (err) {
      await this.rollBackFlush(err, batch, w.size);
      return null;
    }
    let syncError: unknown = null;
    try {
      (file.syncBlocking as NonNullable<StorageFile['syncBlocking']>)();
    } catch (err) {
      syncError = err;
    }
    const finished = performance.now();
    this.blockingAverageMs += (finished - started - this.blockingAverageMs) / 8;
    if (this.blockingAverageMs > BLOCKING_COMMIT_SLOW_MS) {
      this.blockingPausedUntil = finished + BLOCKING_COMMIT_PAUSE_MS;
      // Halfway: after the pause, one more slow commit pauses again.
      this.blockingAverageMs = BLOCKING_COMMIT_SLOW_MS / 2;
    }
    this.counters.blockingCommits++;
    const flush: WrittenFlush = { batch, encoded, startPosition: w.size, startOffset: w.nextOffset, sync: Promise.resolve(syncError), error: null, syncedHere: syncError === null };
    this.written = { size: w.size + encoded.bytes.length, nextOffset: encoded.nextOffset, bytesSinceIndex: encoded.bytesSinceIndex, maxTimestamp: encoded.maxTimestamp };
    return flush;
  }

  /** Waits for a written flush's fdatasync: commits it and returns true, or rolls it back and returns false. */
  private async finishSync(flush: WrittenFlush, laterWrite: Promise<unknown> | null = null): Promise<boolean> {
    const err = await flush.sync;
    if (err !== null) {
      flush.error = ioError(err, `appending to ${this.active.logPath}`);
      // A later write still landing must not land after the cut.
      if (laterWrite !== null) await laterWrite;
      await this.rollBackFlush(err, flush.batch, flush.startPosition);
      return false;
    }
    this.commit(flush);
    return true;
  }

  /** The flush is durable: publish the new end to readers, then resolve its appends. */
  private commit(flush: WrittenFlush): void {
    const { encoded, startPosition, startOffset, batch } = flush;
    const active = this.active;
    assert.equal(startPosition, active.size, 'flushes commit in order');
    for (const e of encoded.indexEntries) active.index?.add(e.relOffset, e.position, e.maxTsBefore);
    this.bytesSinceIndex = encoded.bytesSinceIndex;
    active.size = startPosition + encoded.bytes.length;
    active.nextOffset = encoded.nextOffset;
    if (encoded.maxTimestamp > active.maxTimestamp) active.maxTimestamp = encoded.maxTimestamp;
    this.counters.flushes++;
    this.counters.appendedRecords += encoded.nextOffset - startOffset;
    let offset = startOffset;
    for (const p of batch) {
      assert.equal(p.error, null, 'a failed append is never committed');
      p.offset = offset;
      offset += p.single ? 1 : (p.records as RecordInput[]).length;
      this.settles.push(p);
    }
    assert.equal(offset, active.nextOffset, 'every appended record got exactly one offset');
    this.settles.flush();
    for (const l of this.appendListeners) {
      try {
        l(active.nextOffset);
      } catch {
        // A listener's failure is its own; the append is durable and already resolved.
      }
    }
  }

  /** Encodes a flush into one buffer of back-to-back batches of about DISK_BATCH_TARGET_BYTES. */
  private encodeFlush(batch: PendingAppend[], startPosition: number, startOffset: number, bytesSinceIndex: number, maxTimestamp: number) {
    // Worst case: every record in its own batch.
    let upperBound = 0;
    let recordCount = 0;
    for (const p of batch) {
      const n = p.single ? 1 : (p.records as RecordInput[]).length;
      upperBound += p.bytes;
      recordCount += n;
    }
    const batchesMax = recordCount; // worst case: timestamps far apart put every record in its own batch
    upperBound += batchesMax * BATCH_HEADER_BYTES;
    if (this.flushBuffer.length < upperBound) this.flushBuffer = Buffer.allocUnsafe(Math.max(upperBound, this.flushBuffer.length * 2));
    const buf = this.flushBuffer;
    const enc = this.encoder;
    // Records without their own timestamp get the flush's: one clock read per flush, not per append.
    const flushTimestamp = this.options.clock.now();
    const indexEntries: { relOffset: number; position: number; maxTsBefore: number }[] = [];
    const interval = this.options.indexIntervalBytes;
    const segmentBase = this.active.baseOffset;
    let segmentMaxTs = maxTimestamp;
    let sinceIndex = bytesSinceIndex;
    let pos = 0;
    let batchBytes = 0;
    let offset = startOffset;
    let batchStart = 0;
    const sealBatch = () => {
      const sealed = enc.seal();
      if (sinceIndex >= interval) {
        indexEntries.push({ relOffset: offset - enc.recordCount - segmentBase, position: startPosition + batchStart, maxTsBefore: segmentMaxTs });
        sinceIndex = 0;
      }
      sinceIndex += sealed.length;
      if (enc.maxTimestampValue > segmentMaxTs) segmentMaxTs = enc.maxTimestampValue;
      pos = batchStart + sealed.length;
    };
    const addRecord = (record: RecordInput, size: number, defaultTimestamp: number) => {
      const timestamp = record.timestamp ?? defaultTimestamp;
      if (batchBytes > 0 && (batchBytes + size > DISK_BATCH_TARGET_BYTES || !enc.accepts(timestamp))) {
        sealBatch();
        batchBytes = 0;
      }
      if (batchBytes === 0) {
        batchStart = pos;
        enc.begin(buf, batchStart, offset);
        batchBytes = BATCH_HEADER_BYTES;
      }
      batchBytes += enc.add(record, timestamp, size);
      offset++;
    };
    for (const p of batch) {
      if (p.single) {
        addRecord(p.records as RecordInput, p.sizes as number, flushTimestamp);
      } else {
        const records = p.records as RecordInput[];
        const sizes = p.sizes as number[];
        for (let i = 0; i < records.length; i++) addRecord(records[i] as RecordInput, sizes[i] as number, flushTimestamp);
      }
    }
    sealBatch();
    assert(pos <= buf.length, 'flush buffer overrun');
    return { bytes: buf.subarray(0, pos), indexEntries, bytesSinceIndex: sinceIndex, nextOffset: offset, maxTimestamp: segmentMaxTs };
  }

  /**
   * A write or fsync failed: reject every append of the flush and cut the file back to its
   * durable end. The failed fsync is never retried; if the cut itself fails, the log goes read-only.
   */
  private async rollBackFlush(err: unknown, batch: PendingAppend[], durableSize: number): Promise<void> {
    const error = ioError(err, `appending to ${this.active.logPath}`);
    const a = this.active;
    assert.equal(durableSize, a.size, 'a failed flush is cut back to the durable end');
    this.written = { size: a.size, nextOffset: a.nextOffset, bytesSinceIndex: this.bytesSinceIndex, maxTimestamp: a.maxTimestamp };
    try {
      const file = a.file as NonNullable<Segment['file']>;
      await file.truncate(durableSize);
      a.fileBytes = durableSize;
      await file.sync();
    } catch (cutErr) {
      this.failure = new SpoolError(
        'SPOOL_ERR_READ_ONLY',
        `log ${this.dir} is read-only: a failed write could not be rolled back, so whether its records are on disk is unknown; reopen the log`,
        { cause: cutErr },
      );
    }
    for (const p of batch) this.failAppend(p, this.failure ?? error);
  }

  /** Seals the active segment and starts a new one at the current end offset. */
  private async roll(): Promise<void> {
    const sealed = this.active;
    const sealedFile = sealed.file as NonNullable<Segment['file']>;
    // A sealed segment ends at its last batch: cut the preallocated zeros. The fdatasync below
    // makes the new size durable before the next segment exists, so no crash can leave a sealed
    // segment with a zero tail.
    if (sealed.fileBytes !== sealed.size) {
      await sealedFile.truncate(sealed.size);
      sealed.fileBytes = sealed.size;
    }
    // Every flush was synced already; this guards the invariant that sealed segments are durable.
    await sealedFile.sync();
    await sealed.writeIndexFiles();
    const next = new Segment(this.dir, sealed.nextOffset, this.storage);
    const file = await this.storage.open(next.logPath, 'create');
    try {
      await file.writev([encodeSegmentHeader(next.baseOffset)], 0);
      await file.sync();
      await this.storage.syncDir(this.dir);
    } catch (err) {
      await file.close().catch(() => {});
      try {
        await this.storage.unlink(next.logPath);
        await this.storage.syncDir(this.dir);
      } catch (cleanupErr) {
        // A half-made segment might survive a crash and overlap the active one: stop writing.
        this.failure = new SpoolError('SPOOL_ERR_READ_ONLY', `log ${this.dir} is read-only: a failed roll left ${next.logPath} behind; reopen the log`, {
          cause: cleanupErr,
        });
      }
      throw ioError(err, `creating segment ${next.logPath}`);
    }
    next.file = file;
    next.size = SEGMENT_HEADER_BYTES;
    next.fileBytes = SEGMENT_HEADER_BYTES;
    next.index = new SegmentIndex();
    // The sealed segment keeps its handle, now only for reads.
    this.segments = [...this.segments, next];
    this.active = next;
    // Only now: a failed roll leaves `sealed` active, writing on with its index.
    sealed.releaseIndex();
    this.bytesSinceIndex = 0;
    this.written = { size: next.size, nextOffset: next.nextOffset, bytesSinceIndex: 0, maxTimestamp: next.maxTimestamp };
    await this.writeCheckpoint().catch(() => {
      // The checkpoint only shortens recovery; a stale one is still correct.
    });
  }

  private writeCheckpoint(): Promise<void> {
    const a = this.active;
    const cp: Checkpoint = { segmentBase: a.baseOffset, position: a.size, nextOffset: a.nextOffset, maxTimestamp: a.maxTimestamp };
    return writeFileAtomic(this.storage, path.join(this.dir, CHECKPOINT_FILE), encodeCheckpoint(cp));
  }

  /** Resolves once no flush is in flight or pending, and every append is settled. */
  private async whenIdle(): Promise<void> {
    if (this.flushing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    await this.settles.whenIdle();
  }

  /**
   * Fails an append in its turn, after every append committed before it is resolved. An append
   * already committed or failed keeps that outcome (a settled promise ignored a second settle).
   */
  private failAppend(p: PendingAppend, err: Error): void {
    if (p.offset >= 0 || p.error !== null) return;
    p.error = err;
    this.settles.push(p);
    this.settles.flush();
  }

  /**
   * Reads records starting at `fromOffset`. Returns [] at the end of the log.
   * Throws SPOOL_ERR_OFFSET_OUT_OF_RANGE below the start, and CorruptError (SPOOL_ERR_CORRUPT)
   * naming the file and position when a batch fails its checks: it never returns bad data.
   * @example
   *   let next = log.startOffset;
   *   for (let recs = await log.read(next); recs.length > 0; recs = await log.read(next)) {
   *     for (const r of recs) console.log(r.offset, r.value.toString());
   *     next = recs[recs.length - 1].offset + 1;
   *   }
   */
  async read(fromOffset: number, options: ReadOptions = {}): Promise<LogRecord[]> {
    if (!Number.isSafeInteger(fromOffset) || fromOffset < 0) {
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `offset must be a non-negative integer, got ${fromOffset}`);
    }
    this.checkReadable();
    const maxBytes = options.maxBytes ?? MiB;
    const maxRecords = options.maxRecords ?? Number.MAX_SAFE_INTEGER;
    if (!(maxBytes > 0) || !(maxRecords > 0)) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'maxBytes and maxRecords must be positive');
    if (fromOffset < this.startOffset) {
      throw new SpoolError('SPOOL_ERR_OFFSET_OUT_OF_RANGE', `offset ${fromOffset} is below the log start ${this.startOffset}`);
    }
    const out: LogRecord[] = [];
    let offset = fromOffset;
    while (out.length === 0 && offset < this.endOffset) {
      const segment = this.segmentFor(offset);
      const end = await this.readSegment(segment, offset, maxBytes, maxRecords, out);
      if (out.length === 0) {
        // Nothing at or after `offset` in this segment: continue in the next one.
        if (end <= offset) offset = segment.nextOffset;
        else offset = end;
      }
    }
    return out;
  }

  private checkReadable(): void {
    if (this.closed) throw new SpoolError('SPOOL_ERR_CLOSED', 'the log is closed');
  }

  /** The segment whose range holds `offset`; binary search over base offsets. */
  private segmentFor(offset: number): Segment {
    const segs = this.segments;
    let lo = 0;
    let hi = segs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if ((segs[mid] as Segment).baseOffset <= offset) lo = mid;
      else hi = mid - 1;
    }
    return segs[lo] as Segment;
  }

  /** Reads from one segment into `out`; returns the offset after the last batch looked at. */
  private async readSegment(segment: Segment, fromOffset: number, maxBytes: number, maxRecords: number, out: LogRecord[]): Promise<number> {
    segment.readers++;
    try {
      const file = segment === this.active ? segment.file : await segment.openForRead();
      if (file === null) throw new SpoolError('SPOOL_ERR_CLOSED', 'the log is closed');
      const end = segment.size;
      const limitOffset = segment.nextOffset;
      if (end < SEGMENT_HEADER_BYTES) throw new CorruptError(segment.logPath, 0, `segment is ${end} bytes, shorter than its header`);
      let position = SEGMENT_HEADER_BYTES;
      let expected = segment.baseOffset;
      const hint = this.positionHints.get(fromOffset);
      if (hint !== undefined && hint.segment === segment) {
        position = hint.position;
        expected = fromOffset;
      } else if (fromOffset > segment.baseOffset) {
        // Only a lookup needs the index: a sequential reader moves on by hints, and enters the next segment at its start.
        const entry = (await this.indexOf(segment)).lookupOffset(fromOffset - segment.baseOffset);
        if (entry !== null) {
          position = entry.position;
          expected = segment.baseOffset + entry.relOffset;
        }
      }
      let bytesRead = 0;
      let full = false;
      let fault: CorruptError | null = null;
      const result = await scanBatches(file, position, end, Math.min(Math.max(maxBytes, 64 * 1024), end - position || 1), (buf, pos, header, filePosition) => {
        if (header.baseOffset !== expected) {
          fault = new CorruptError(segment.logPath, filePosition, `batch starts at offset ${header.baseOffset}, expected ${expected}`);
          return false;
        }
        expected = header.baseOffset + header.recordCount;
        if (expected <= fromOffset) return true;
        const problem = decodeRecords(buf, pos, header, fromOffset, out, maxRecords - out.length);
        if (problem !== null) {
          fault = new CorruptError(segment.logPath, filePosition, problem);
          return false;
        }
        bytesRead += header.length;
        full = out.length >= maxRecords || bytesRead >= maxBytes;
        return !full;
      });
      if (fault !== null) throw fault;
      if (result.problem !== null) {
        throw new CorruptError(segment.logPath, result.problem.position, `invalid batch: ${result.problem.kind}`);
      }
      if (out.length > 0) {
        const last = (out[out.length - 1] as LogRecord).offset;
        if (last + 1 === expected && expected < limitOffset) this.rememberPosition(expected, segment, result.end);
      }
      if (expected > limitOffset) throw new CorruptError(segment.logPath, result.end, 'segment holds offsets past its end');
      if (!full && result.end >= end && expected < limitOffset) {
        // The scan ran off the end of the file before reaching the segment's last offset.
        throw new CorruptError(segment.logPath, end, `segment ends at offset ${expected}, expected ${limitOffset}`);
      }
      return expected;
    } finally {
      segment.readers--;
      if (segment.deleted && segment.readers === 0) await segment.closeHandle().catch(() => {});
    }
  }

  private rememberPosition(offset: number, segment: Segment, position: number): void {
    if (this.positionHints.size >= POSITION_HINTS_MAX) {
      const oldest = this.positionHints.keys().next().value as number;
      this.positionHints.delete(oldest);
    }
    this.positionHints.set(offset, { segment, position });
  }

  /**
   * A segment's index, loaded from its files when it is not in memory. At most
   * LOADED_INDEXES_MAX sealed segments keep a loaded index; the one loaded longest ago lets go of
   * it (its timestamps stay known), so lookups across a long log do not pile indexes up. The
   * caller gets the index itself, which stays valid if it is let go meanwhile.
   */
  private async indexOf(segment: Segment): Promise<SegmentIndex> {
    const present = segment.index;
    if (present !== null) return present;
    if (await segment.loadIndex(this.options.indexIntervalBytes)) this.counters.indexesRebuilt++;
    const index = segment.index as SegmentIndex | null;
    assert(index !== null, 'loadIndex leaves the index in memory');
    if (segment !== this.active && !this.loadedIndexes.includes(segment)) {
      this.loadedIndexes.push(segment);
      if (this.loadedIndexes.length > LOADED_INDEXES_MAX) {
        const oldest = this.loadedIndexes.shift() as Segment;
        if (oldest.index !== null && oldest !== this.active) oldest.releaseIndex();
      }
    }
    return index;
  }

  /**
   * The first offset whose record has a timestamp >= `timestamp`, or `endOffset` when none has.
   * @example
   *   const from = await log.offsetForTime(Date.now() - 60_000); // a minute ago
   */
  async offsetForTime(timestamp: number): Promise<number> {
    this.checkReadable();
    for (const segment of this.segments) {
      if (!segment.timestampKnown) await this.indexOf(segment);
      if (segment.maxTimestamp < timestamp) continue;
      const entry = (await this.indexOf(segment)).lookupTime(timestamp);
      let offset = entry === null ? segment.baseOffset : segment.baseOffset + entry.relOffset;
      while (offset < segment.nextOffset) {
        const records = await this.read(offset, { maxBytes: 256 * 1024 });
        for (const r of records) if (r.timestamp >= timestamp) return r.offset;
        if (records.length === 0) break;
        offset = (records[records.length - 1] as LogRecord).offset + 1;
      }
    }
    return this.endOffset;
  }

  /**
   * Retention: deletes whole sealed segments whose records all lie below `offset`.
   * Returns the number of segments deleted. The active segment is never deleted.
   */
  async deleteBefore(offset: number): Promise<number> {
    return this.deleteWhile((s) => s.nextOffset <= offset);
  }

  /** Retention by age: deletes sealed segments whose newest record is older than `ageMs`. */
  async deleteOlderThan(ageMs: number): Promise<number> {
    const cutoff = this.options.clock.now() - ageMs;
    for (const s of this.segments) {
      if (!s.timestampKnown) await this.indexOf(s);
    }
    return this.deleteWhile((s) => s.maxTimestamp < cutoff);
  }

  /** Retention by size: deletes the oldest sealed segments until the log holds at most `bytes`. */
  async deleteToSize(bytes: number): Promise<number> {
    let total = 0;
    for (const s of this.segments) {
      if (s !== this.active) await s.openForRead();
      total += s.size;
    }
    return this.deleteWhile((s) => {
      if (total <= bytes) return false;
      total -= s.size;
      return true;
    });
  }

  /** Deletes sealed segments from the oldest while `predicate` holds: records file first, then its indexes, then fsyncs the directory. */
  private async deleteWhile(predicate: (s: Segment) => boolean): Promise<number> {
    this.checkReadable();
    let deleted = 0;
    while (this.segments.length > 1) {
      const s = this.segments[0] as Segment;
      if (!predicate(s)) break;
      this.segments = this.segments.slice(1);
      s.deleted = true;
      for (const [k, h] of this.positionHints) if (h.segment === s) this.positionHints.delete(k);
      // A deleted segment must not hold one of the few places for loaded indexes.
      this.loadedIndexes = this.loadedIndexes.filter((x) => x !== s);
      await this.storage.unlink(s.logPath);
      for (const p of [s.indexPath, s.timeIndexPath]) {
        await this.storage.unlink(p).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
        });
      }
      if (s.readers === 0) await s.closeHandle();
      deleted++;
    }
    if (deleted > 0) await this.storage.syncDir(this.dir);
    return deleted;
  }

  /** Walks the whole log, checking every batch, record and index; reports every bad range. */
  async verify(): Promise<VerifyReport> {
    this.checkReadable();
    await this.whenIdle();
    return verifyLog(this.segments, this.active);
  }

  stats(): LogStats {
    return {
      startOffset: this.startOffset,
      endOffset: this.endOffset,
      segments: this.segments.length,
      activeSegmentBytes: this.active.size,
      ...this.counters,
    };
  }

  private closedHard = false;

  /** Truncates the active segment's preallocated zeros and fdatasyncs the new size (clean close). */
  private async cutZeroTail(): Promise<void> {
    const a = this.active;
    if (a.file === null || a.fileBytes === a.size) return;
    await a.file.truncate(a.size);
    a.fileBytes = a.size;
    await a.file.sync();
  }

  /** Waits for in-flight appends, writes the indexes and the checkpoint, and closes every file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.whenIdle();
    this.closedHard = true;
    try {
      if (this.failure === null) {
        await this.cutZeroTail();
        await this.active.writeIndexFiles();
        await this.writeCheckpoint();
      }
    } finally {
      for (const s of this.segments) await s.closeHandle().catch(() => {});
      this.appendListeners.clear();
    }
  }
}

function resolveOptions(o: LogOptions): ResolvedLogOptions {
  const segmentBytesMax = o.segmentBytesMax ?? SEGMENT_BYTES.default;
  const indexIntervalBytes = o.indexIntervalBytes ?? 4096;
  const recordBytesMax = o.recordBytesMax ?? 4 * MiB;
  const batchBytesMax = o.batchBytesMax ?? 16 * MiB;
  const earlyFlushBytes = o.earlyFlushBytes ?? EARLY_FLUSH_BYTES;
  const preallocateBytes = o.preallocateBytes ?? PREALLOCATE_BYTES;
  const blockingCommitBytes = o.blockingCommitBytes ?? 0;
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', what);
  };
  check(Number.isSafeInteger(segmentBytesMax) && segmentBytesMax >= SEGMENT_BYTES.min && segmentBytesMax <= SEGMENT_BYTES.max, 'segmentBytesMax must be 1 KiB..1 GiB');
  check(Number.isSafeInteger(indexIntervalBytes) && indexIntervalBytes > 0, 'indexIntervalBytes must be positive');
  check(Number.isSafeInteger(recordBytesMax) && recordBytesMax > 0 && recordBytesMax <= 64 * MiB, 'recordBytesMax must be 1 B..64 MiB');
  check(Number.isSafeInteger(batchBytesMax) && batchBytesMax >= recordBytesMax + BATCH_HEADER_BYTES, 'batchBytesMax must be at least recordBytesMax plus a batch header');
  check(batchBytesMax <= 64 * MiB, 'batchBytesMax must be at most 64 MiB');
  check(Number.isSafeInteger(earlyFlushBytes) && earlyFlushBytes > 0, 'earlyFlushBytes must be a positive integer');
  check(Number.isSafeInteger(preallocateBytes) && preallocateBytes >= 0 && preallocateBytes <= 1024 * MiB, 'preallocateBytes must be 0..1 GiB');
  check(Number.isSafeInteger(blockingCommitBytes) && blockingCommitBytes >= 0 && blockingCommitBytes <= MiB, 'blockingCommitBytes must be 0..1 MiB');
  return {
    storage: o.storage ?? nodeStorage,
    clock: o.clock ?? systemClock,
    segmentBytesMax,
    indexIntervalBytes,
    recordBytesMax,
    batchBytesMax,
    earlyFlushBytes,
    preallocateBytes,
    blockingCommitBytes,
    create: o.create ?? true,
    repair: o.repair ?? false,
    // Two flushes can be unsynced at a crash (the pipeline), so a torn tail can span both.
    flushBytesMax: 2 * (Math.max(FLUSH_TARGET_BYTES, batchBytesMax) + 2 * DISK_BATCH_TARGET_BYTES),
  };
}
