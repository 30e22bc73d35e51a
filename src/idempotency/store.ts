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
 * - claim(key, ttlMs): done and unexpired → { status: 'done', result } (done wins over any lease).
 *   Live lease → 'in-progress'. Otherwise a LEASE record (expiry now+ttlMs) is made durable, then
 *   'acquired'.
 * - complete(key, result, windowMs): done and unexpired → 'already-done' (the first result stays).
 *   Otherwise a DONE record (expiry now+windowMs) is made durable; in the same step (before any
 *   roll can copy leases) it enters the index and the lease, if any, is dropped; then 'completed'.
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
  RECORD_TYPE_SAFE_TO_IGNORE,
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
  /** Most live leases at once; a claim beyond it fails with SPOOL_ERR_TOO_MANY_LEASES. Default 100,000. */
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
  /** Per-key operation queues: a key is present while an operation on it runs; the array holds the waiting ones. */
  private readonly keyQueues = new Map<string, (() => void)[]>();
  private nextSeq = 0;
  private lock: DirLock | null = null;
  private timer: NodeJS.Timeout | null = null;
  private maintenanceChain: Promise<unknown> = Promise.resolve();
  private maintenanceQueued = false;
  /** The merge run in progress, if any (merges have their own queue, see `maintain`). */
  private mergeRun: Promise<number> | null = null;
  private mergeAgain = false;
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
    // Opened tables go straight into this.tables, so a failure below still closes them.
    for (const seq of tableSeqs) this.tables.push(await Table.open(storage, path.join(dir, seqName(seq, 'tbl'))));
    const opened = this.tables;
    const merged = new Set<number>();
    for (const t of opened) for (const s of t.sources) merged.add(s);
    this.tables = opened.filter((t) => !merged.has(t.seq));
    let maxSeq = -1;
    for (const t of opened) maxSeq = Math.max(maxSeq, t.seq, ...t.sources);
    for (const t of opened) {
      if (!merged.has(t.seq)) continue;
      await t.retire();
      await this.remove(seqName(t.seq, 'tbl'), report);
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
    for (const seq of live.slice(0, -1)) {
      const { journal } = await Journal.open(storage, dir, seq, { keysMax: 2 ** 31, recordBytesMax: this.o.recordBytesMax, tornTailBytesMax: null }, (j) => (rec, pos) => {
        if (rec.type === RecordType.DONE) j.noteDone(rec.hashHi, rec.hashLo, pos, rec.time1, rec.time2, this.bucketOf(rec.time1));
      });
      report.journalsReplayed++;
      this.sealing.push(journal);
    }
    // The newest journal: its index, its leases, and a torn tail cut off.
    const now = this.clock.now();
    let current: Journal;
    const newest = live[live.length - 1];
    if (newest === undefined) {
      current = await Journal.create(storage, dir, this.nextSeq++, [], this.journalKeysBound);
    } else {
      const opened = await Journal.open(storage, dir, newest, { keysMax: 2 ** 31, recordBytesMax: this.o.recordBytesMax, tornTailBytesMax: FLUSH_BYTES_MAX }, (j) => (rec, pos) => this.replay(j, rec, pos, now));
      current = opened.journal;
      report.truncatedBytes = opened.truncatedBytes;
      report.journalsReplayed++;
    }
    report.leasesRestored = this.leases.size;
    this.writer = new JournalWriter(current, FLUSH_BYTES_MAX, {
      shouldRoll: (j) => this.shouldRoll(j),
      roll: (old) => this.roll(old),
      // Seal the old journal soon, now that it is no longer the one taking writes.
      rolled: () => this.scheduleMaintenance(),
      bucketOf: (t) => this.bucketOf(t),
      failed: (err) => this.reportError(err),
    });
    this.enforceFilterBudget();
    // Seal what the crash left unsealed before serving, so the store starts in its steady shape.
    report.journalsSealed = await this.sealAll();
  }

  /** Applies one record of the newest journal during recovery. */
  private replay(j: Journal, rec: DecodedRecord, pos: number, now: number): void {
    const key = rec.key.toString('utf8');
    switch (rec.type) {
      case RecordType.LEASE:
        if (rec.time1 > now) this.leases.set(key, { expiresAt: rec.time1, claimedAt: rec.time2, hi: rec.hashHi, lo: rec.hashLo, keyBytes: Buffer.from(rec.key) });
        else this.leases.delete(key);
        return;
      case RecordType.DONE:
        j.noteDone(rec.hashHi, rec.hashLo, pos, rec.time1, rec.time2, this.bucketOf(rec.time1));
        this.leases.delete(key);
        return;
      case RecordType.RELEASE:
        this.leases.delete(key);
        return;
      default:
        // A newer writer's record kind. Safe-to-ignore kinds are skipped; others mean this build cannot read the store.
        if ((rec.type & RECORD_TYPE_SAFE_TO_IGNORE) === 0) throw new CorruptError(j.path, pos, `unknown record type ${rec.type}`);
    }
  }

  // ---- the public operations ---------------------------------------------------------------

  /** The longest (and default) window a completed key stays done. */
  get retentionMs(): number {
    return this.o.retentionMs;
  }

  /**
   * Claims `key` for `ttlMs`: 'acquired' (you hold a durable lease until now+ttlMs: do the work,
   * then `complete` or `release`), 'in-progress' (someone holds a live lease), or
   * `{ status: 'done', result }` (completed within its window; `result` as stored).
   */
  async claim(key: string, options: { ttlMs: number }): Promise<ClaimResult> {
    const kh = hashKey(key);
    const ttlMs = options?.ttlMs;
    if (!Number.isSafeInteger(ttlMs) || (ttlMs as number) < 1) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'claim ttlMs must be a positive integer (milliseconds)');
    this.checkOpen();
    return this.withKey(key, async () => {
      this.checkOpen();
      const now = this.clock.now();
      // Done wins over a lease: a completion is the stronger fact (and usually costs no read here).
      const done = await this.findDone(kh, now);
      if (done !== null) return done;
      const held = this.leases.get(key);
      if (held !== undefined && held.expiresAt > now) return 'in-progress';
      if (held !== undefined) this.leases.delete(key);
      if (this.leases.size >= this.o.leasesMax) this.sweepLeases(now);
      if (this.leases.size >= this.o.leasesMax) {
        throw new SpoolError('SPOOL_ERR_TOO_MANY_LEASES', `the idempotency store holds ${this.leases.size} live leases (leasesMax ${this.o.leasesMax}); complete or release some first`);
      }
      const lease: Lease = { expiresAt: now + (ttlMs as number), claimedAt: now, hi: kh.hi, lo: kh.lo, keyBytes: kh.bytes };
      this.leases.set(key, lease);
      try {
        await this.writer.append({ record: encodeRecord(RecordType.LEASE, kh.hi, kh.lo, lease.expiresAt, now, kh.bytes, null), type: RecordType.LEASE, hi: kh.hi, lo: kh.lo, completedAt: 0, expiresAt: 0, onDurable: null });
      } catch (err) {
        if (this.leases.get(key) === lease) this.leases.delete(key);
        throw err;
      }
      return 'acquired';
    });
  }

  /**
   * Records `key` as done with `result` (bytes, a string, or any JSON value), durably: the record
   * is fsynced when this resolves. The key stays done for `windowMs` (default and at most
   * `retentionMs`). 'already-done' when it was done and unexpired (the first result is kept).
   */
  async complete(key: string, result?: unknown, options: { windowMs?: number } = {}): Promise<CompleteStatus> {
    const kh = hashKey(key);
    const windowMs = options?.windowMs ?? this.o.retentionMs;
    if (!Number.isSafeInteger(windowMs) || windowMs < 1 || windowMs > this.o.retentionMs) {
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `windowMs must be an integer in 1..retentionMs (${this.o.retentionMs})`);
    }
    const encoded = encodeResult(result);
    if (encoded !== null && encoded.bytes.length > this.o.resultBytesMax) {
      throw new SpoolError('SPOOL_ERR_RECORD_TOO_LARGE', `result is ${encoded.bytes.length} bytes, over resultBytesMax (${this.o.resultBytesMax})`);
    }
    this.checkOpen();
    return this.withKey(key, async () => {
      this.checkOpen();
      const now = this.clock.now();
      if ((await this.findDone(kh, now)) !== null) return 'already-done';
      const expiresAt = now + windowMs;
      const dropLease = () => this.leases.delete(key);
      await this.writer.append({ record: encodeRecord(RecordType.DONE, kh.hi, kh.lo, now, expiresAt, kh.bytes, encoded), type: RecordType.DONE, hi: kh.hi, lo: kh.lo, completedAt: now, expiresAt, onDurable: dropLease });
      return 'completed';
    });
  }

  /** Gives a live lease back (the work failed and may be retried at once): 'released', or 'not-held'. */
  async release(key: string): Promise<ReleaseStatus> {
    const kh = hashKey(key);
    this.checkOpen();
    return this.withKey(key, async () => {
      this.checkOpen();
      const now = this.clock.now();
      const held = this.leases.get(key);
      if (held === undefined || held.expiresAt <= now) {
        if (held !== undefined) this.leases.delete(key);
        return 'not-held';
      }
      const dropLease = () => {
        if (this.leases.get(key) === held) this.leases.delete(key);
      };
      await this.writer.append({ record: encodeRecord(RecordType.RELEASE, kh.hi, kh.lo, now, 0, kh.bytes, null), type: RecordType.RELEASE, hi: kh.hi, lo: kh.lo, completedAt: 0, expiresAt: 0, onDurable: dropLease });
      return 'released';
    });
  }

  /** The key's state without changing it: 'absent', 'in-progress' or { status: 'done', result }. */
  async lookup(key: string): Promise<LookupResult> {
    const kh = hashKey(key);
    this.checkOpen();
    const now = this.clock.now();
    const done = await this.findDone(kh, now);
    if (done !== null) return done;
    const held = this.leases.get(key);
    return held !== undefined && held.expiresAt > now ? 'in-progress' : 'absent';
  }

  // ---- lookups ---------------------------------------------------------------------------------

  /**
   * The newest unexpired completion of `kh`, or null. Searches the journals' in-memory indexes and
   * every table whose filter may hold the key; every candidate is read, CRC-checked and its full
   * key compared. A key done twice (its earlier window expired) has its newest record win.
   */
  private async findDone(kh: KeyHash, now: number): Promise<DoneResult | null> {
    this.counters.lookups++;
    // This lookup's own reads (lookups interleave, so the store-wide counters cannot tell them apart).
    const reads: ReadCounters = { lookupReads: 0, lookupBytesRead: 0 };
    // Take references synchronously, so nothing searched can be closed under this lookup.
    const journals: Journal[] = [];
    const tables: Table[] = [];
    const writing = this.writer.journal;
    if (writing.shared.ref()) journals.push(writing);
    for (const j of this.sealing) if (j !== writing && j.shared.ref()) journals.push(j);
    for (const t of this.tables) if (t.header.maxExpiresAt > now && t.shared.ref()) tables.push(t);
    let best: DecodedRecord | null = null;
    const consider = (raw: Buffer): boolean => {
      const rec = decodeRecord(raw, 0);
      if (rec.type !== RecordType.DONE || !rec.key.equals(kh.bytes)) return false;
      if (best === null || rec.time1 > best.time1) best = rec;
      return true;
    };
    try {
      for (const j of journals) {
        for (const pos of j.map.positions(kh.hi, kh.lo)) consider(await j.readRecord(pos, this.o.recordBytesMax, reads));
      }
      for (const t of tables) {
        this.counters.filterProbes++;
        if (!t.filter.mayContain(kh.hi, kh.lo)) continue;
        let matched = false;
        for (const ref of await t.find(kh.hi, kh.lo, reads)) {
          if (consider(await t.readRecord(ref, this.o.recordBytesMax, reads))) matched = true;
        }
        if (!matched) this.counters.filterFalsePositives++;
      }
    } finally {
      for (const j of journals) j.shared.unref();
      for (const t of tables) t.shared.unref();
      this.reads.lookupReads += reads.lookupReads;
      this.reads.lookupBytesRead += reads.lookupBytesRead;
    }
    const found = best as DecodedRecord | null;
    if (found === null || found.time2 <= now) {
      this.counters.negativeLookups++;
      this.counters.negativeLookupReads += reads.lookupReads;
      return null;
    }
    const where = () => new CorruptError(this.o.dir, 0, `a stored result of key ${JSON.stringify(kh.bytes.toString('utf8'))} cannot be decoded (encoding ${found.encoding})`);
    return { status: 'done', result: decodeResult(found.encoding, found.resultBytes, where) };
  }

  /**
   * Runs `f` after every earlier operation on `key` has finished. The queue of a key is an array of
   * waiters (none in the common, uncontended case), so no promise is made per operation.
   */
  private async withKey<T>(key: string, f: () => Promise<T>): Promise<T> {
    const queue = this.keyQueues.get(key);
    if (queue === undefined) this.keyQueues.set(key, []);
    else await new Promise<void>((resolve) => queue.push(resolve));
    try {
      return await f();
    } finally {
      const q = this.keyQueues.get(key) as (() => void)[];
      const next = q.shift();
      if (next !== undefined) next();
      else this.keyQueues.delete(key);
    }
  }

  /** Resolves once no operation on any key is queued or running. */
  private async keysIdle(): Promise<void> {
    while (this.keyQueues.size > 0) {
      const [key] = this.keyQueues.keys();
      await this.withKey(key as string, async () => {});
    }
  }

  private checkOpen(): void {
    if (this.closing || this.closed) throw new SpoolError('SPOOL_ERR_CLOSED', 'the idempotency store is closed');
  }

  // ---- rolling, sealing, merging, expiring -------------------------------------------------

  private bucketOf(t: number): number {
    return Math.floor(t / this.o.bucketMs);
  }

  /** The in-memory index bound of a journal: journalKeysMax, plus what one flush can add past it. */
  private get journalKeysBound(): number {
    return this.o.journalKeysMax + FLUSH_RECORDS_SLACK;
  }

  private shouldRoll(j: Journal): boolean {
    if (this.closing) return false;
    if (j.doneCount >= this.o.journalKeysMax) return true;
    if (j.size - j.baseSize >= this.o.journalBytesMax) return true;
    return j.bucket !== null && this.bucketOf(this.clock.now()) > j.bucket;
  }

  /** Called by the writer with no flush in flight: starts the next journal with every live lease. */
  private async roll(old: Journal): Promise<Journal> {
    const now = this.clock.now();
    const carried: Buffer[] = [];
    for (const l of this.leases.values()) {
      if (l.expiresAt > now) carried.push(encodeRecord(RecordType.LEASE, l.hi, l.lo, l.expiresAt, l.claimedAt, l.keyBytes, null));
    }
    const next = await Journal.create(this.storage, this.o.dir, this.nextSeq++, carried, this.journalKeysBound);
    assert(!this.sealing.includes(old), 'a journal rolls once');
    this.sealing.push(old);
    return next;
  }

  /** Runs a maintenance pass in the background unless one is already queued. */
  private scheduleMaintenance(): void {
    if (this.maintenanceQueued || this.closing) return;
    this.maintenanceQueued = true;
    const run = this.maintenanceChain.then(() => {
      this.maintenanceQueued = false;
      return this.maintainOnce();
    });
    this.maintenanceChain = run.catch(() => {});
    run.then(
      () => this.runMerges().catch((err: Error) => this.reportError(err)),
      (err: Error) => this.reportError(err),
    );
  }

  /**
   * One maintenance pass, run in the background every `maintenanceIntervalMs` and after each roll
   * (tests with a fake clock call it directly): roll the journal if its bucket ended, drop expired
   * tables and leases, seal rolled journals, then merge tables. Passes never overlap. Merges run
   * on their own queue, so a long merge never holds up the sealing of the journals that roll
   * meanwhile (each waiting journal keeps its in-memory index); this call waits for both.
   */
  async maintain(): Promise<MaintenanceReport> {
    const run = this.maintenanceChain.then(() => {
      this.maintenanceQueued = false;
      return this.maintainOnce();
    });
    this.maintenanceChain = run.catch(() => {});
    const report = await run;
    report.merged = await this.runMerges();
    return report;
  }

  private async maintainOnce(): Promise<MaintenanceReport> {
    const report: MaintenanceReport = { rolled: false, sealed: 0, merged: 0, expiredTables: 0, reclaimedBytes: 0, leasesSwept: 0 };
    if (this.closing || this.closed || this.writer.failure !== null) return report;
    try {
      const journal = this.writer.journal;
      if (this.shouldRoll(journal)) {
        await this.writer.requestRoll();
        report.rolled = this.writer.journal !== journal;
      }
      const now = this.clock.now();
      await this.expireTables(now, report);
      report.leasesSwept = this.sweepLeases(now);
      report.sealed = await this.sealAll();
    } catch (err) {
      this.counters.maintenanceErrors++;
      throw err;
    }
    return report;
  }

  /**
   * Merges until nothing is left to merge. One run at a time: a call while a run is going marks
   * it to look again and shares its result. Returns the merges done.
   */
  private runMerges(): Promise<number> {
    if (this.mergeRun !== null) {
      this.mergeAgain = true;
      return this.mergeRun;
    }
    const run = (async () => {
      let merged = 0;
      // Yield first, so `this.mergeRun` is set before this body can finish and clear it.
      await null;
      try {
        do {
          this.mergeAgain = false;
          for (;;) {
            if (this.closing || this.closed || this.writer.failure !== null) return merged;
            const plan = this.pickMerge(this.clock.now());
            if (plan === null) break;
            await this.merge(plan.inputs, plan.level);
            merged++;
          }
        } while (this.mergeAgain);
        return merged;
      } catch (err) {
        if (err instanceof CompactionStopped) return merged;
        this.counters.maintenanceErrors++;
        throw err;
      } finally {
        this.mergeRun = null;
      }
    })();
    this.mergeRun = run;
    return run;
  }

  /** Deletes tables every key of which has expired; returns nothing but fills `report`. */
  private async expireTables(now: number, report: MaintenanceReport): Promise<void> {
    const expired = this.tables.filter((t) => t.header.maxExpiresAt <= now && !t.merging);
    if (expired.length === 0) return;
    this.tables = this.tables.filter((t) => !expired.includes(t));
    for (const t of expired) {
      await t.retire();
      await this.remove(path.basename(t.path), null);
      report.expiredTables++;
      report.reclaimedBytes += t.fileBytes;
    }
    await this.syncDir();
    this.counters.expiredTables += report.expiredTables;
    this.counters.reclaimedBytes += report.reclaimedBytes;
  }

  private sweepLeases(now: number): number {
    let swept = 0;
    for (const [key, l] of this.leases) {
      if (l.expiresAt <= now && !this.keyQueues.has(key)) {
        this.leases.delete(key);
        swept++;
      }
    }
    return swept;
  }

  private buildParams(removedKeys: number): BuildParams {
    return {
      recordBytesMax: this.o.recordBytesMax,
      filterHashes: this.o.filterHashes,
      filterBitsFor: (entries) => {
        // Size the new filter for the budget as it will stand once this table replaces its inputs.
        const keys = this.tableKeys() - removedKeys + entries;
        const budgetBitsPerKey = (this.o.filterBytesMax * 8) / Math.max(1, keys);
        return BloomFilter.sizeFor(entries, Math.max(1, Math.min(this.o.filterBitsPerKey, budgetBitsPerKey)));
      },
      shouldStop: () => this.closing,
    };
  }

  private tableKeys(): number {
    let n = 0;
    for (const t of this.tables) n += t.entryCount;
    return n;
  }

  /** Seals every rolled journal, oldest first. Returns how many tables were made. */
  private async sealAll(): Promise<number> {
    let sealed = 0;
    while (this.sealing.length > 0 && !this.closed) {
      const j = this.sealing[0] as Journal;
      assert(j !== this.writer.journal, 'the journal taking writes is never sealed');
      const table = await sealJournal(this.storage, this.o.dir, j, this.buildParams(0));
      // Swap synchronously: lookups see either the journal or the table, never neither.
      this.sealing.shift();
      if (table !== null) {
        this.tables.push(table);
        this.enforceFilterBudget();
        sealed++;
        this.counters.seals++;
      }
      await j.retire();
      await this.remove(path.basename(j.path), null);
      await this.syncDir();
    }
    return sealed;
  }

  /**
   * Which tables to merge next: all tables of a bucket that has ended (one table per closed
   * bucket), else `mergeFanIn` tables of one level in the current bucket (size-tiered). Keeps the
   * number of tables, and so the filters a negative lookup probes, small.
   */
  private pickMerge(now: number): { inputs: Table[]; level: number } | null {
    const current = this.bucketOf(now);
    const byBucket = new Map<number, Table[]>();
    for (const t of this.tables) {
      if (t.merging || t.header.maxExpiresAt <= now) continue;
      const b = this.bucketOf(t.header.minCompletedAt);
      let list = byBucket.get(b);
      if (list === undefined) byBucket.set(b, (list = []));
      list.push(t);
    }
    for (const b of [...byBucket.keys()].sort((x, y) => x - y)) {
      const list = byBucket.get(b) as Table[];
      if (b < current && list.length >= 2 && list.reduce((n, t) => n + t.entryCount, 0) <= 0xffff_ffff) {
        return { inputs: list, level: Math.max(...list.map((t) => t.header.level)) + 1 };
      }
      if (b >= current) {
        const byLevel = new Map<number, Table[]>();
        for (const t of list) {
          let l = byLevel.get(t.header.level);
          if (l === undefined) byLevel.set(t.header.level, (l = []));
          l.push(t);
        }
        for (const [level, tables] of [...byLevel.entries()].sort((x, y) => x[0] - y[0])) {
          if (tables.length >= this.o.mergeFanIn) {
            const inputs = tables.sort((x, y) => x.seq - y.seq).slice(0, this.o.mergeFanIn);
            return { inputs, level: level + 1 };
          }
        }
      }
    }
    return null;
  }

  private async merge(inputs: Table[], level: number): Promise<void> {
    for (const t of inputs) t.merging = true;
    try {
      const seq = this.nextSeq++;
      const removedKeys = inputs.reduce((n, t) => n + t.entryCount, 0);
      const table = await mergeTables(this.storage, this.o.dir, inputs, seq, level, this.buildParams(removedKeys));
      this.tables = [...this.tables.filter((t) => !inputs.includes(t)), table];
      this.enforceFilterBudget();
      this.counters.merges++;
      for (const t of inputs) {
        await t.retire();
        await this.remove(path.basename(t.path), null);
      }
      await this.syncDir();
    } finally {
      for (const t of inputs) t.merging = false;
    }
  }

  /** Folds the filters with the most bits per key until all of them fit `filterBytesMax`. */
  private enforceFilterBudget(): void {
    let total = 0;
    for (const t of this.tables) total += t.filter.bytes;
    while (total > this.o.filterBytesMax) {
      let worst: Table | null = null;
      for (const t of this.tables) {
        if (!t.filter.canFold) continue;
        if (worst === null || t.filter.bits / t.entryCount > worst.filter.bits / worst.entryCount) worst = t;
      }
      if (worst === null) return;
      total -= worst.filter.bytes / 2;
      worst.filter.fold();
    }
  }

  private reportError(err: Error): void {
    if (this.o.onError !== null) this.o.onError(err);
  }

  // ---- introspection and shutdown --------------------------------------------------------------

  stats(): IdempotencyStats {
    let keys = 0;
    let diskBytes = 0;
    let filterBytes = 0;
    let filterBits = 0;
    let directoryBytes = 0;
    let expectedReads = 0;
    let tableKeys = 0;
    for (const t of this.tables) {
      keys += t.entryCount;
      tableKeys += t.entryCount;
      diskBytes += t.fileBytes;
      filterBytes += t.filter.bytes;
      filterBits += t.filter.bits;
      directoryBytes += t.directoryBytes;
      expectedReads += estimatedFalsePositiveRate(t.filter.bits / t.entryCount, t.filter.hashes);
    }
    let journalIndexBytes = 0;
    for (const j of [this.writer.journal, ...this.sealing]) {
      keys += j.doneCount;
      diskBytes += j.size;
      journalIndexBytes += j.map.bytes;
    }
    const w = this.writer.counters;
    return {
      keys,
      tables: this.tables.length,
      journals: 1 + this.sealing.length,
      leases: this.leases.size,
      diskBytes,
      filterBytes,
      directoryBytes,
      journalIndexBytes,
      filterBitsPerKey: tableKeys === 0 ? 0 : filterBits / tableKeys,
      expectedReadsPerNegativeLookup: expectedReads,
      lookups: this.counters.lookups,
      negativeLookups: this.counters.negativeLookups,
      negativeLookupReads: this.counters.negativeLookupReads,
      lookupReads: this.reads.lookupReads,
      lookupBytesRead: this.reads.lookupBytesRead,
      filterProbes: this.counters.filterProbes,
      filterFalsePositives: this.counters.filterFalsePositives,
      flushes: w.flushes,
      syncs: w.syncs,
      recordsWritten: w.recordsWritten,
      rolls: w.rolls,
      seals: this.counters.seals,
      merges: this.counters.merges,
      expiredTables: this.counters.expiredTables,
      reclaimedBytes: this.counters.reclaimedBytes,
      maintenanceErrors: this.counters.maintenanceErrors,
    };
  }

  /**
   * Closes the store: operations already started finish (their writes are made durable), a merge
   * in progress is abandoned (it is redone later), files are closed and the lock released.
   */
  async close(): Promise<void> {
    if (this.closing || this.closed) return;
    this.closing = true;
    if (this.timer !== null) clearInterval(this.timer);
    await this.keysIdle();
    await this.writer.idle();
    await this.maintenanceChain;
    await this.mergeRun?.catch(() => {});
    this.closed = true;
    await this.closeFiles();
    this.lock?.release();
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
