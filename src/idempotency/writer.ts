/**
 * Group commit for the journal. Writes queue up while one flush (writev + fdatasync) is in flight;
 * the next flush takes all of them, so N concurrent `complete()` calls share one fsync.
 *
 * Invariants:
 * - At most one flush or roll runs at a time (the loop below is the only caller of both).
 * - A write resolves only after the fdatasync covering its bytes resolved, and only then does its
 *   DONE record enter the journal's in-memory index: readers never see a completion that a crash
 *   could take back.
 * - A failed write or fsync is never retried and then reported as success (fail-stop). The batch
 *   is rejected with SPOOL_ERR_IO/SPOOL_ERR_DISK_FULL; every later write with SPOOL_ERR_READ_ONLY
 *   until the store is reopened (recovery then decides what survived).
 */
import assert from 'node:assert/strict';
import { SpoolError, ioError } from '../errors.js';
import { RecordType, type RecordTypeCode } from './format.js';
import type { Journal } from './journal.js';

export interface PendingWrite {
  record: Buffer;
  type: RecordTypeCode;
  hi: number;
  lo: number;
  completedAt: number;
  expiresAt: number;
  /**
   * Runs synchronously once the record is durable, before any other flush or roll: state that must
   * change together with the record (dropping a lease on DONE or RELEASE) changes here, so a roll
   * right after this flush cannot copy a lease that this record ended.
   */
  onDurable: (() => void) | null;
  resolve: (position: number) => void;
  reject: (err: Error) => void;
}

export interface WriterHooks {
  /** Whether the journal should roll before the next flush. */
  shouldRoll(journal: Journal): boolean;
  /** Rolls: returns the new journal (called with no flush in flight). */
  roll(old: Journal): Promise<Journal>;
  /** Called once the new journal takes writes (the old one never will again). */
  rolled(): void;
  bucketOf(completedAt: number): number;
  /** Called once when the writer fails. */
  failed(err: SpoolError): void;
}

export class JournalWriter {
  private pending: PendingWrite[] = [];
  private pendingHead = 0;
  private running = false;
  private rollRequested = false;
  private idleWaiters: (() => void)[] = [];
  failure: SpoolError | null = null;
  readonly counters = { flushes: 0, syncs: 0, recordsWritten: 0, bytesWritten: 0, rolls: 0 };

  constructor(
    public journal: Journal,
    private readonly flushBytesMax: number,
    private readonly hooks: WriterHooks,
  ) {}

  get pendingCount(): number {
    return this.pending.length - this.pendingHead;
  }

  /** Queues a record; resolves with its position once durable. */
  append(w: Omit<PendingWrite, 'resolve' | 'reject'>): Promise<number> {
    if (this.failure !== null) return Promise.reject(this.readOnlyError());
    return new Promise<number>((resolve, reject) => {
      this.pending.push({ record: w.record, type: w.type, hi: w.hi, lo: w.lo, completedAt: w.completedAt, expiresAt: w.expiresAt, onDurable: w.onDurable, resolve, reject });
      this.kick();
    });
  }

  /** Asks for a roll at the next opportunity and waits until the loop is idle again. */
  async requestRoll(): Promise<void> {
    this.rollRequested = true;
    this.kick();
    await this.idle();
  }

  /** Resolves when nothing is queued or running. */
  idle(): Promise<void> {
    if (!this.running && this.pendingCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private kick(): void {
    if (!this.running) void this.loop();
  }

  private async loop(): Promise<void> {
    this.running = true;
    try {
      while (this.failure === null) {
        if (this.rollRequested || this.hooks.shouldRoll(this.journal)) {
          this.journal = await this.hooks.roll(this.journal);
          // Requests made while rolling are satisfied by this roll.
          this.rollRequested = false;
          this.hooks.rolled();
          this.counters.rolls++;
          continue;
        }
        if (this.pendingCount === 0) break;
        await this.flushOnce();
      }
    } catch (err) {
      this.fail(err instanceof SpoolError ? err : ioError(err, 'rolling the idempotency journal'));
    } finally {
      this.running = false;
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private async flushOnce(): Promise<void> {
    // Take writes up to the flush bound (a single record may exceed it alone).
    const batch: PendingWrite[] = [];
    let bytes = 0;
    while (this.pendingHead < this.pending.length) {
      const w = this.pending[this.pendingHead] as PendingWrite;
      if (batch.length > 0 && bytes + w.record.length > this.flushBytesMax) break;
      batch.push(w);
      bytes += w.record.length;
      this.pendingHead++;
    }
    if (this.pendingHead === this.pending.length) {
      this.pending = [];
      this.pendingHead = 0;
    } else if (this.pendingHead > 4096) {
      this.pending = this.pending.slice(this.pendingHead);
      this.pendingHead = 0;
    }
    assert(batch.length > 0);
    const journal = this.journal;
    const start = journal.size;
    try {
      // One contiguous buffer: a writev of hundreds of tiny iovecs costs milliseconds.
      await journal.file.writev([batch.length === 1 ? (batch[0] as PendingWrite).record : Buffer.concat(batch.map((w) => w.record), bytes)], start);
      await journal.file.sync();
    } catch (err) {
      const e = ioError(err, `writing ${journal.path}`);
      for (const w of batch) w.reject(e);
      this.fail(e);
      return;
    }
    assert.equal(journal.size, start, 'nothing else moves the journal end during a flush');
    journal.size = start + bytes;
    this.counters.flushes++;
    this.counters.syncs++;
    this.counters.recordsWritten += batch.length;
    this.counters.bytesWritten += bytes;
    // Durable: index the completions, then tell the callers (in that order, see the header).
    let position = start;
    for (const w of batch) {
      if (w.type === RecordType.DONE) journal.noteDone(w.hi, w.lo, position, w.completedAt, w.expiresAt, this.hooks.bucketOf(w.completedAt));
      w.onDurable?.();
      w.resolve(position);
      position += w.record.length;
    }
  }

  private readOnlyError(): SpoolError {
    return new SpoolError('SPOOL_ERR_READ_ONLY', `the idempotency store failed earlier (${this.failure?.message ?? 'unknown'}) and refuses writes until reopened`, { cause: this.failure });
  }

  private fail(err: SpoolError): void {
    if (this.failure !== null) return;
    this.failure = err;
    const rest = this.pending.slice(this.pendingHead);
    this.pending = [];
    this.pendingHead = 0;
    const ro = this.readOnlyError();
    for (const w of rest) w.reject(ro);
    this.hooks.failed(err);
  }
}
