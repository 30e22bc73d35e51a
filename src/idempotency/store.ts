/**
 * IdempotencyStore: "has this key been done, and with what result?" for up to hundreds of millions
 * of keys on disk, in bounded memory. Usable alone (an HTTP double click) or by a consumer
 * (`idempotentHandler`, consumer.ts). Design and format: docs/idempotency.md.
 *
 * State of a key (at time `now`):
 *   absent ──claim──▶ leased ──complete──▶ done ──(expiresAt ≤ now)──▶ absent
 *                       │  ▲ release, or the lease's expiry
 *                       └──┘ (back to absent)
 *   complete() also works from absent (a completion without a claim).
 *
 * Transitions (input → precondition → outcome):
 * - claim(key, ttlMs): live lease → 'in-progress'. Done and unexpired → { status: 'done', result }.
 *   Otherwise a LEASE record (expiry now+ttlMs) is made durable, then 'acquired'.
 * - complete(key, result, windowMs): done and unexpired → 'already-done' (the first result stays).
 *   Otherwise a DONE record (expiry now+windowMs) is made durable, enters the index, the lease (if
 *   any) is dropped, then 'completed'.
 * - release(key): live lease → a RELEASE record is made durable, the lease dropped, 'released';
 *   otherwise 'not-held'.
 * Operations on one key run one at a time (a per-key queue); different keys run concurrently and
 * share fsyncs (writer.ts).
 *
 * Crash safety (docs/idempotency.md "Recovery"):
 * - A complete() that resolved has its DONE record fsynced; recovery replays or seals it, so the
 *   key is done until its expiry, whatever crashes in between.
 * - Leases are durable too: after a crash an unexpired lease still answers 'in-progress' until its
 *   expiry, and an expired one is simply gone, so a dead holder never blocks a key forever.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { DirLock } from '../broker/lock.js';
import { CorruptError, SpoolError, ioError } from '../errors.js';
import { type Clock, type Storage, nodeStorage, systemClock } from '../log/index.js';
import { BloomFilter, estimatedFalsePositiveRate } from './bloom.js';
import { CompactionStopped, mergeTables, sealJournal, type BuildParams } from './compaction.js';
import {
  type DecodedRecord,
  FILE_PATTERN,
  KEY_BYTES_MAX,
  RECORD_HEADER_BYTES,
  RecordType,
  TEMP_PATTERN,
  decodeRecord,
  decodeResult,
  encodeRecord,
  encodeResult,
  seqName,
} from './format.js';
import { type KeyHash, hashKey } from './hash.js';
import type { ReadCounters } from './io.js';
import { Journal } from './journal.js';
import { Table } from './table.js';
import { JournalWriter } from './writer.js';

const DAY_MS = 24 * 60 * 60 * 1000;
const MiB = 1024 * 1024;
/** The most one flush writes; a torn write can damage only this much of the journal's tail. */
const FLUSH_BYTES_MAX = 8 * MiB;

export interface IdempotencyStoreOptions {
  /** The store's own directory (created if missing). Not shared with anything else. */
  dir: string;
  clock?: Clock;
  /** How long a completed key stays done: the default and the longest `windowMs`. Default 7 days. */
  retentionMs?: number;
  /** Width of a retention bucket; tables never mix buckets, and a bucket is deleted whole. Default retentionMs / 8. */
  bucketMs?: number;
  /** Memory for all Bloom filters together; beyond it filters are folded (more false positives). Default 32 MiB. */
  filterBytesMax?: number;
  /** Filter bits per key while the budget allows. Default 16 (about 0.1% false positives per table). */
  filterBitsPerKey?: number;
  /** The journal rolls (and is sealed into a table) after this many completions. Default 262,144. */
  journalKeysMax?: number;
  /** ... or after this many bytes appended. Default 64 MiB. */
  journalBytesMax?: number;
  /** Most live leases at once; a claim beyond it fails with SPOOL_ERR_QUEUE_FULL. Default 100,000. */
  leasesMax?: number;
  /** Largest stored result. Default 1 MiB. */
  resultBytesMax?: number;
  /** Tables of one level merged at once inside the current bucket. Default 4. */
  mergeFanIn?: number;
  /** How often background maintenance (seal, merge, expire) runs; 0: only when `maintain()` is called. Default 1000. */
  maintenanceIntervalMs?: number;
  /** Take the directory's LOCK file. Default true with the node:fs storage, false with a custom one. */
  lock?: boolean;
  /** Background maintenance errors (the store keeps serving; maintenance retries next time). Default: none. */
  onError?: (err: Error) => void;
  /** @internal The I/O seam (tests pass a fault-injecting or counting one). */
  storage?: Storage;
}

export interface DoneResult {
  status: 'done';
  result: unknown;
}
export type ClaimResult = 'acquired' | 'in-progress' | DoneResult;
export type LookupResult = 'absent' | 'in-progress' | DoneResult;
export type CompleteStatus = 'completed' | 'already-done';
export type ReleaseStatus = 'released' | 'not-held';

export interface IdempotencyRecoveryReport {
  /** Journals read back (the newest one is replayed; older ones were sealed). */
  journalsReplayed: number;
  journalsSealed: number;
  /** Torn bytes cut from the newest journal's tail (never acknowledged writes). */
  truncatedBytes: number;
  tablesOpened: number;
  /** Files removed: temp files, merge inputs whose merged table exists, journals whose table exists. */
  removedFiles: string[];
  /** Unexpired leases restored from the newest journal. */
  leasesRestored: number;
  ms: number;
}

export interface MaintenanceReport {
  rolled: boolean;
  sealed: number;
  merged: number;
  expiredTables: number;
  reclaimedBytes: number;
  leasesSwept: number;
}

export interface IdempotencyStats {
  /** Completion records on disk (tables and journals), including expired ones not yet reclaimed. */
  keys: number;
  tables: number;
  journals: number;
  leases: number;
  diskBytes: number;
  /** Memory of all Bloom filters, the table directories and the journal indexes. */
  filterBytes: number;
  directoryBytes: number;
  journalIndexBytes: number;
  filterBitsPerKey: number;
  /** Expected disk reads of a negative lookup: the sum of the tables' estimated false-positive rates. */
  expectedReadsPerNegativeLookup: number;
  lookups: number;
  negativeLookups: number;
  /** Reads made by lookups that found nothing: filter false positives and hash collisions. */
  negativeLookupReads: number;
  lookupReads: number;
  lookupBytesRead: number;
  filterProbes: number;
  filterFalsePositives: number;
  flushes: number;
  syncs: number;
  recordsWritten: number;
  rolls: number;
  seals: number;
  merges: number;
  expiredTables: number;
  reclaimedBytes: number;
  maintenanceErrors: number;
}

interface Lease {
  expiresAt: number;
  claimedAt: number;
  hi: number;
  lo: number;
  keyBytes: Buffer;
}

interface Resolved {
  dir: string;
  clock: Clock;
  storage: Storage;
  retentionMs: number;
  bucketMs: number;
  filterBytesMax: number;
  filterBitsPerKey: number;
  filterHashes: number;
  journalKeysMax: number;
  journalBytesMax: number;
  leasesMax: number;
  resultBytesMax: number;
  recordBytesMax: number;
  mergeFanIn: number;
  maintenanceIntervalMs: number;
  lock: boolean;
  onError: ((err: Error) => void) | null;
}

function resolveOptions(o: IdempotencyStoreOptions): Resolved {
  if (o === null || typeof o !== 'object') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'IdempotencyStore.open needs an options object');
  if (typeof o.dir !== 'string' || o.dir.length === 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'dir must be a non-empty path');
  const int = (v: number | undefined, d: number, what: string, min: number, max = Number.MAX_SAFE_INTEGER) => {
    const x = v ?? d;
    if (!Number.isSafeInteger(x) || x < min || x > max) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${what} must be an integer in ${min}..${max}`);
    return x;
  };
  const retentionMs = int(o.retentionMs, 7 * DAY_MS, 'retentionMs', 1);
  const resultBytesMax = int(o.resultBytesMax, MiB, 'resultBytesMax', 0, 64 * MiB);
  const storage = o.storage ?? nodeStorage;
  return {
    dir: path.resolve(o.dir),
    clock: o.clock ?? systemClock,
    storage,
    retentionMs,
    bucketMs: int(o.bucketMs, Math.max(1, Math.floor(retentionMs / 8)), 'bucketMs', 1),
    filterBytesMax: int(o.filterBytesMax, 32 * MiB, 'filterBytesMax', 4096),
    filterBitsPerKey: int(o.filterBitsPerKey, 16, 'filterBitsPerKey', 1, 64),
    filterHashes: 5,
    journalKeysMax: int(o.journalKeysMax, 262_144, 'journalKeysMax', 1, 16_777_216),
    journalBytesMax: int(o.journalBytesMax, 64 * MiB, 'journalBytesMax', 4096, 1024 * MiB),
    leasesMax: int(o.leasesMax, 100_000, 'leasesMax', 1, 10_000_000),
    resultBytesMax,
    recordBytesMax: RECORD_HEADER_BYTES + KEY_BYTES_MAX + resultBytesMax,
    mergeFanIn: int(o.mergeFanIn, 4, 'mergeFanIn', 2, 64),
    maintenanceIntervalMs: int(o.maintenanceIntervalMs, 1000, 'maintenanceIntervalMs', 0),
    lock: o.lock ?? storage === nodeStorage,
    onError: o.onError ?? null,
  };
}

/** Records written per flush at most, so that a journal's index can exceed journalKeysMax by at most this. */
const FLUSH_RECORDS_SLACK = Math.ceil(FLUSH_BYTES_MAX / (RECORD_HEADER_BYTES + 1));

export class IdempotencyStore {
  readonly dir: string;
  readonly recovery: IdempotencyRecoveryReport;
  private readonly o: Resolved;
  private readonly storage: Storage;
  private readonly clock: Clock;
  private writer!: JournalWriter;
  /** Rolled journals not yet sealed into tables, oldest first; still searched. */
  private sealing: Journal[] = [];
  /** Sealed tables; searched in full (the newest matching completion wins). */
  private tables: Table[] = [];
  private readonly leases = new Map<string, Lease>();
  /** Per-key operation queues: the tail promise of the last operation on each key. */
  private readonly keyTails = new Map<string, Promise<void>>();
  private nextSeq = 0;
  private lock: DirLock | null = null;
  private timer: NodeJS.Timeout | null = null;
  private maintenanceChain: Promise<unknown> = Promise.resolve();
  private maintenanceQueued = false;
  private closing = false;
  private closed = false;
  private readonly reads: ReadCounters = { lookupReads: 0, lookupBytesRead: 0 };
  private readonly counters = {
    lookups: 0,
    negativeLookups: 0,
    negativeLookupReads: 0,
    filterProbes: 0,
    filterFalsePositives: 0,
    seals: 0,
    merges: 0,
    expiredTables: 0,
    reclaimedBytes: 0,
    maintenanceErrors: 0,
  };

  private constructor(o: Resolved, recovery: IdempotencyRecoveryReport) {
    this.o = o;
    this.dir = o.dir;
    this.storage = o.storage;
    this.clock = o.clock;
    this.recovery = recovery;
  }

  /**
   * Opens (or creates) the store in `dir`, recovering from any crash first.
   * @example
   *   const store = await IdempotencyStore.open({ dir: './data/idempotency' });
   *   const c = await store.claim(`checkout:${requestId}`, { ttlMs: 30_000 });
   *   if (c === 'acquired') { const receipt = await charge(); await store.complete(`checkout:${requestId}`, receipt); }
   *   else if (c !== 'in-progress') return c.result; // the first request's receipt
   */
  static async open(options: IdempotencyStoreOptions): Promise<IdempotencyStore> {
    const o = resolveOptions(options);
    const started = Date.now();
    try {
      await o.storage.mkdir(o.dir);
    } catch (err) {
      throw ioError(err, `creating ${o.dir}`);
    }
    const lock = o.lock ? DirLock.acquire(o.dir) : null;
    const report: IdempotencyRecoveryReport = { journalsReplayed: 0, journalsSealed: 0, truncatedBytes: 0, tablesOpened: 0, removedFiles: [], leasesRestored: 0, ms: 0 };
    const store = new IdempotencyStore(o, report);
    store.lock = lock;
    try {
      await store.recover(report);
    } catch (err) {
      await store.closeFiles();
      lock?.release();
      throw err;
    }
    report.ms = Date.now() - started;
    if (o.maintenanceIntervalMs > 0) {
      store.timer = setInterval(() => store.scheduleMaintenance(), o.maintenanceIntervalMs);
      store.timer.unref();
    }
    return store;
  }

  // ---- recovery (docs/idempotency.md "Recovery") ----------------------------------------------

  private async recover(report: IdempotencyRecoveryReport): Promise<void> {
    const { storage, dir } = this.o;
    let names: string[];
    try {
      names = await storage.readdir(dir);
    } catch (err) {
      throw ioError(err, `listing ${dir}`);
    }
    const journals: number[] = [];
    const tableSeqs: number[] = [];
    const foreign: string[] = [];
    for (const n of names) {
      const m = FILE_PATTERN.exec(n);
      if (m !== null) (m[2] === 'jnl' ? journals : tableSeqs).push(Number(m[1]));
      else if (TEMP_PATTERN.test(n)) await this.remove(n, report);
      else if (!n.startsWith('LOCK')) foreign.push(n);
    }
    if (foreign.length > 0) throw new SpoolError('SPOOL_ERR_NOT_A_LOG', `${dir} holds files that are not an idempotency store's: ${foreign.slice(0, 3).join(', ')}`);
    journals.sort((a, b) => a - b);
    tableSeqs.sort((a, b) => a - b);

    // Tables first: a merged table lists its inputs, which a crash may have left behind.
    const opened: Table[] = [];
    for (const seq of tableSeqs) opened.push(await Table.open(storage, path.join(dir, seqName(seq, 'tbl'))));
    const merged = new Set<number>();
    for (const t of opened) for (const s of t.sources) merged.add(s);
    let maxSeq = -1;
    for (const t of opened) {
      maxSeq = Math.max(maxSeq, t.seq, ...t.sources);
      if (merged.has(t.seq)) {
        await t.retire();
        await this.remove(seqName(t.seq, 'tbl'), report);
      } else {
        this.tables.push(t);
      }
    }
    report.tablesOpened = this.tables.length;
    // A journal whose table exists was sealed; only its deletion was lost.
    const tableSet = new Set(tableSeqs);
    const live: number[] = [];
    for (const seq of journals) {
      maxSeq = Math.max(maxSeq, seq);
      if (tableSet.has(seq) || merged.has(seq)) await this.remove(seqName(seq, 'jnl'), report);
      else live.push(seq);
    }
    this.nextSeq = maxSeq + 1;
    if (this.tables.length > 0 || live.length > 0) await this.syncDir();

    // Older journals stopped taking writes before the crash and were fully synced: seal them.
    const now = this.clock.now();
    for (const seq of live.slice(0, -1)) {
      const { journal } = await Journal.open(storage, dir, seq, { keysMax: 2 ** 31, recordBytesMax: this.o.recordBytesMax, tornTailBytesMax: null }, (rec, pos) => {
        if (rec.type === RecordType.DONE) journal_noteDone(rec, pos);
      });
      // (closure helper defined below so the callback can reach the journal being opened)
      report.journalsReplayed++;
      this.sealing.push(journal);
      var journal_noteDone: (rec: DecodedRecord, pos: number) => void;
    }
    void now;
    throw new Error('unreachable');
  }

  private async remove(name: string, report: IdempotencyRecoveryReport | null): Promise<void> {
    try {
      await this.storage.unlink(path.join(this.o.dir, name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(err, `removing ${name}`);
    }
    report?.removedFiles.push(name);
  }

  private async syncDir(): Promise<void> {
    try {
      await this.storage.syncDir(this.o.dir);
    } catch (err) {
      throw ioError(err, `syncing ${this.o.dir}`);
    }
  }

  private async closeFiles(): Promise<void> {
    const all: Promise<void>[] = [];
    for (const t of this.tables) all.push(t.retire());
    for (const j of this.sealing) all.push(j.retire());
    if (this.writer !== undefined) all.push(this.writer.journal.retire());
    await Promise.all(all);
  }
}
