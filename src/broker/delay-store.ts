/**
 * Delayed messages: stored durably at publish, routed through their exchange when due.
 *
 * On disk (docs/format.md "Delayed messages") messages are bucketed by due time: one bucket per
 * minute, each a message log plus a "done" set (fired or cancelled offsets, kept like a group's
 * acks). Only buckets due within the lookahead are loaded into the timing wheel; the far future
 * waits on disk, so memory holds the near future plus one compact index entry per pending id
 * (for cancel and duplicate ids; `delay-index.ts`: 16-byte slots, no ids on the JS heap). A bucket
 * whose every message is done is deleted. RocketMQ's timer log and
 * Pulsar's bucketed delayed-delivery index are the models.
 *
 * Exactly once per queue: firing publishes with a dedupe key derived from the id and due time,
 * then marks the message done. A crash between the two fires it again at startup, and the
 * target queue's dedupe window drops the copy (so a restart must come within that window).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { SpoolError } from '../errors.js';
import { Log, type Clock, type LogOptions, type LogRecord } from '../log/index.js';
import { AckStore, ackInto } from './ack-store.js';
import { DelayIndex, type IdHash, idHashing } from './delay-index.js';
import { TimingWheel } from './timing-wheel.js';

export const BUCKET_MS = 60_000;
/** Buckets starting within this of now are loaded into the wheel. */
const LOOKAHEAD_MS = 2 * BUCKET_MS;
/** Far buckets kept open for appends at once; the least recently used is closed past this. */
const OPEN_FAR_BUCKETS_MAX = 32;
const OFFSET_BITS = 2 ** 28;
/** Fires in flight at once, at most (a bound on memory and on concurrent appends). */
const FIRE_IN_FLIGHT_MAX = 4096;
const DIGITS = 15;
/**
 * Bytes per read when scanning a bucket (index rebuild, loading into the wheel). Small enough that
 * decoding one chunk holds the event loop only a few ms and little garbage is live at once.
 */
const SCAN_CHUNK_BYTES = 1024 * 1024;
/**
 * Fired messages are marked done in batches, every DONE_FLUSH_MS or once DONE_BATCH_MAX wait, not
 * one group commit per fire: tens of fsyncs a second instead of hundreds, so the target queues'
 * fsyncs (which a fire waits for) share the disk with fewer. A crash before a mark is written
 * fires that message again at startup, into the target queues' dedupe window (which covers any
 * crash between routing and marking done anyway).
 */
const DONE_FLUSH_MS = 50;
const DONE_BATCH_MAX = 4096;
/**
 * The wake timer waits at most this long: setTimeout cannot wait 2^31 ms, and a clock that jumps
 * (or a fake one) gets looked at again. The broker's ticker advances the store anyway.
 */
const WAKE_MAX_MS = 60_000;

interface Bucket {
  start: number;
  log: Log | null;
  done: AckStore | null;
  /** Messages neither fired nor cancelled. */
  pending: number;
  loaded: boolean;
  lastUsed: number;
  opening: Promise<void> | null;
  /** Operations using the bucket's files right now: it is not closed while any runs. */
  users: number;
  /** Offsets fired and done in memory, not yet written to `done` (see `flushDone`). */
  doneQueue: number[];
}

/** Where a pending message is: bucket number (start / BUCKET_MS) and offset, packed in one number. */
function pack(bucketStart: number, offset: number): number {
  assert(offset < OFFSET_BITS, 'a delay bucket holds at most 2^28 messages');
  return (bucketStart / BUCKET_MS) * OFFSET_BITS + offset;
}

function unpack(key: number): { bucketStart: number; offset: number } {
  const offset = key % OFFSET_BITS;
  return { bucketStart: ((key - offset) / OFFSET_BITS) * BUCKET_MS, offset };
}

/** What firing needs of a delayed message: a stored record, or the same fields held in memory. */
export interface DelayedRecord {
  readonly value: Buffer;
  keyText(): string;
  headerText(name: string): string | undefined;
}

/** A just-scheduled near-future message, kept as given (no read back, no large read buffer kept alive). */
class HeldRecord implements DelayedRecord {
  constructor(
    private readonly id: string,
    /** A string body stays a string until the fire: one object less per pending message. */
    private readonly body: Buffer | string,
    private readonly headers: Readonly<Record<string, string>>,
  ) {}
  get value(): Buffer {
    return typeof this.body === 'string' ? Buffer.from(this.body) : this.body;
  }
  keyText(): string {
    return this.id;
  }
  headerText(name: string): string | undefined {
    return this.headers[name];
  }
}

/** What `schedule` stores: the body and the broker's headers (route, due time, ...). */
export interface ScheduledRecord {
  value: Buffer | Uint8Array | string;
  headers: Record<string, string>;
}

/** Fires a due message: publishes it to its exchange. Resolves once it is confirmed there. */
export type FireFn = (record: DelayedRecord) => Promise<void>;

/** Whether a due message was routed already (a queue it routes to holds its fire's dedupe key). */
export type FiredFn = (record: DelayedRecord) => Promise<boolean>;

export class DelayStore {
  private readonly buckets = new Map<number, Bucket>();
  private readonly index = new DelayIndex();
  /** Caller ids being scheduled right now: a second publish of one waits for the first (see `schedule`). */
  private readonly callerIdsInFlight = new Map<string, Promise<unknown>>();
  /** The records of loaded (near-future) buckets, so firing reads nothing from disk. */
  private readonly near = new Map<number, DelayedRecord>();
  private readonly wheel: TimingWheel<number>;
  private firing = false;
  private firesInFlight = 0;
  /** Due keys waiting for one of the FIRE_IN_FLIGHT_MAX fire slots, oldest first from `backlogHead`. */
  private backlog: number[] = [];
  private backlogHead = 0;
  /**
   * Nothing in the wheel is due before this (see `TimingWheel.nextWakeAt`): checked on every
   * schedule, so a due message fires in the turn that notices it, and armed as `wakeTimer`.
   */
  private nextWakeAt = Number.POSITIVE_INFINITY;
  private wakeTimer: NodeJS.Timeout | null = null;
  /** The time `wakeTimer` was armed for. */
  private wakeTimerAt = Number.POSITIVE_INFINITY;
  private closed = false;
  /** Buckets being loaded into the wheel (in the background; see `advance`). */
  private readonly loads = new Map<Bucket, Promise<void>>();
  /** A load finished after the last `advance` looked at the wheel: what it placed may be due. */
  private loadedSinceAdvance = false;
  /** Done marks queued in all buckets, the done writes in flight, and when the last batch went. */
  private doneQueued = 0;
  private doneFlushes = 0;
  private doneFlushedAt = 0;
  private doneFlushFailed = false;
  onError: (err: Error) => void = () => {};

  private constructor(
    private readonly dir: string,
    private readonly clock: Clock,
    private readonly logOptions: LogOptions,
    private readonly fire: FireFn,
    private readonly fired: FiredFn,
  ) {
    this.wheel = new TimingWheel<number>({ tickMs: 2, startMs: clock.now() });
  }

  static async open(dir: string, clock: Clock, logOptions: LogOptions, fire: FireFn, fired: FiredFn = async () => false): Promise<DelayStore> {
    await fs.promises.mkdir(dir, { recursive: true });
    const store = new DelayStore(dir, clock, logOptions, fire, fired);
    const names = (await fs.promises.readdir(dir)).filter((n) => /^\d{15}$/.test(n)).sort();
    for (const name of names) await store.loadIndex(Number(name));
    return store;
  }

  /** Messages scheduled and neither fired nor cancelled. */
  get pendingCount(): number {
    return this.index.size;
  }

  private bucketDir(start: number): string {
    return path.join(this.dir, String(start).padStart(DIGITS, '0'));
  }

  private async openBucket(start: number): Promise<Bucket> {
    const b = this.buckets.get(start) ?? this.addBucket(start, false);
    b.lastUsed = this.clock.now();
    if (b.log === null) {
      // One opener at a time: concurrent schedules into a new bucket share this open.
      b.opening ??= (async () => {
        const dir = this.bucketDir(start);
        const { log } = await Log.open(path.join(dir, 'messages'), { ...this.logOptions, clock: this.clock });
        const done = await AckStore.open(path.join(dir, 'done'), 0, 0, this.logOptions);
        b.log = log;
        b.done = done;
      })().finally(() => {
        b.opening = null;
      });
      await b.opening;
      await this.closeIdleFarBuckets();
    }
    return b;
  }

  /** Registers a bucket; a `loaded` one takes its messages straight into the wheel. */
  private addBucket(start: number, loaded: boolean): Bucket {
    assert(!this.buckets.has(start), 'one bucket per minute');
    const b: Bucket = { start, log: null, done: null, pending: 0, loaded, lastUsed: 0, opening: null, users: 0, doneQueue: [] };
    this.buckets.set(start, b);
    return b;
  }

  /** Runs `fn` with the bucket open; it stays open (not closed as idle) until `fn` settles. */
  private async withBucket<T>(start: number, fn: (b: Bucket) => Promise<T>): Promise<T> {
    let b = this.buckets.get(start);
    if (b !== undefined) b.users++;
    try {
      b = await this.openBucket(start);
      if (b.users === 0) b.users++; // created by openBucket just now
      return await fn(b);
    } finally {
      if (b !== undefined) b.users--;
    }
  }

  private async closeIdleFarBuckets(): Promise<void> {
    const open = [...this.buckets.values()].filter((b) => b.log !== null && !b.loaded && b.users === 0 && b.opening === null);
    if (open.length <= OPEN_FAR_BUCKETS_MAX) return;
    open.sort((a, b) => a.lastUsed - b.lastUsed);
    for (const b of open.slice(0, open.length - OPEN_FAR_BUCKETS_MAX)) await this.closeBucket(b);
  }

  private async closeBucket(b: Bucket): Promise<void> {
    const log = b.log;
    const done = b.done;
    b.log = null;
    b.done = null;
    await done?.close();
    await log?.close();
  }

  /** At startup: learns a bucket's pending ids (for cancel and counting) without keeping bodies. */
  private async loadIndex(start: number): Promise<void> {
    const b = await this.withBucket(start, async (b) => {
      const h: IdHash = { h1: 0, h2: 0 };
      const log = b.log as Log;
      this.index.reserve(this.index.size + (log.endOffset - log.startOffset));
      await this.eachPending(b, (r) => {
        this.index.add(idHashing.hashBytes(r.key ?? EMPTY_KEY, h), start / BUCKET_MS, r.offset);
        b.pending++;
      });
      return b;
    });
    if (b.pending === 0 && start + BUCKET_MS <= this.clock.now()) await this.destroyBucket(b);
  }

  /** Puts a bucket's pending messages into the wheel. */
  private async loadIntoWheel(b: Bucket): Promise<void> {
    b.loaded = true;
    await this.withBucket(b.start, (open) =>
      this.eachPending(open, (r) => {
        const key = pack(b.start, r.offset);
        this.near.set(key, r);
        this.place(key, deliverAtOf(r));
      }),
    );
  }

  private async eachPending(b: Bucket, visit: (r: LogRecord) => void): Promise<void> {
    const log = b.log as Log;
    const done = (b.done as AckStore).state;
    let next = log.startOffset;
    while (next < log.endOffset) {
      const records = await log.read(next, { maxBytes: SCAN_CHUNK_BYTES });
      if (records.length === 0) break;
      for (const r of records) if (r.offset >= done.committed && !done.acked.has(r.offset)) visit(r);
      next = records[records.length - 1]!.offset + 1;
    }
  }

  /**
   * Stores a message due at `deliverAt`; resolves once it is fsynced. A publisher-chosen id that
   * is already pending is a duplicate, and so is one for which `firedAlready` says its message
   * was routed already.
   */
  schedule(id: string, callerId: boolean, deliverAt: number, record: ScheduledRecord, firedAlready: () => boolean | Promise<boolean> = () => false): Promise<'scheduled' | 'duplicate'> {
    // A busy publisher can hold the event loop for tens of ms at a time, past any timer: its
    // publishes fire what came due meanwhile.
    this.fireIfDue();
    if (!callerId) return this.store(id, idHashing.hashId(id), deliverAt, record);
    return this.scheduleCallerId(id, deliverAt, record, firedAlready);
  }

  /**
   * One schedule per caller id at a time: the duplicate check and the append of one id never
   * interleave with another's, so two concurrent publishes of an id store it once.
   */
  private async scheduleCallerId(id: string, deliverAt: number, record: ScheduledRecord, firedAlready: () => boolean | Promise<boolean>): Promise<'scheduled' | 'duplicate'> {
    const before = this.callerIdsInFlight.get(id);
    const mine = (async () => {
      if (before !== undefined) await before.catch(() => {});
      const h = idHashing.hashId(id);
      if ((await this.pendingLocation(id, h)) !== null) return 'duplicate' as const;
      // Asked only after the pending check: a message leaves `pending` when its fire claims it,
      // and that fire has claimed its key in the target queues' dedupe windows before anything
      // else runs, so one of the two checks sees it. (Asked before, a fire between them, even
      // the one `fireIfDue` just started, let a resend store a second copy: the soak found it.)
      if (await firedAlready()) return 'duplicate' as const;
      return this.store(id, h, deliverAt, record);
    })();
    this.callerIdsInFlight.set(id, mine);
    try {
      return await mine;
    } finally {
      if (this.callerIdsInFlight.get(id) === mine) this.callerIdsInFlight.delete(id);
    }
  }

  /** Appends to the message's minute bucket; into an open one at once (no await before the append). */
  private store(id: string, h: IdHash, deliverAt: number, record: ScheduledRecord): Promise<'scheduled'> {
    const start = Math.floor(deliverAt / BUCKET_MS) * BUCKET_MS;
    const now = this.clock.now();
    // A bucket made now holds nothing yet: within the lookahead there is nothing to load, so its
    // messages go straight into the wheel (not read back by a later tick).
    const b = this.buckets.get(start) ?? this.addBucket(start, start < now + LOOKAHEAD_MS);
    if (b.log === null) return this.withBucket(start, (open) => this.append(open, id, h, deliverAt, record, now));
    b.users++; // its files stay open until the append is done
    b.lastUsed = now;
    return this.append(b, id, h, deliverAt, record, now).finally(() => {
      b.users--;
    });
  }

  private async append(b: Bucket, id: string, h: IdHash, deliverAt: number, record: ScheduledRecord, now: number): Promise<'scheduled'> {
    const offset = await (b.log as Log).appendOne({ key: id, value: record.value, headers: record.headers, timestamp: now });
    this.index.add(h, b.start / BUCKET_MS, offset);
    b.pending++;
    if (b.loaded) {
      // Near future: keep what was stored for the fire (a string as it is, bytes copied).
      const key = pack(b.start, offset);
      this.near.set(key, new HeldRecord(id, typeof record.value === 'string' ? record.value : Buffer.from(record.value), record.headers));
      this.place(key, deliverAt);
      // Due already (a short delay outlasted by its own fsync): fire now, not at the next wake.
      this.fireIfDue();
    }
    return 'scheduled';
  }

  /** The location of the pending message with this id, or null. Candidates of the hash are confirmed by their stored key. */
  private async pendingLocation(id: string, h: IdHash): Promise<number | null> {
    for (const loc of this.index.find(h)) {
      if (!this.index.has(h, loc.bucket, loc.offset)) continue; // fired or cancelled while we read another
      const key = pack(loc.bucket * BUCKET_MS, loc.offset);
      if ((await this.idAt(key)) === id && this.index.has(h, loc.bucket, loc.offset)) return key;
    }
    return null;
  }

  /** The id of the pending message at `key`: from memory when it is near, else read from its bucket. */
  private async idAt(key: number): Promise<string | null> {
    return (await this.recordAt(key)).keyText();
  }

  /** The pending message at `key`: from memory when it is near, else read from its bucket. */
  private async recordAt(key: number): Promise<DelayedRecord> {
    const near = this.near.get(key);
    if (near !== undefined) return near;
    const { bucketStart, offset } = unpack(key);
    // The caller found it pending just now, so its bucket exists and, while we use it, stays.
    assert(this.buckets.has(bucketStart), 'a pending message has its bucket');
    return this.withBucket(bucketStart, (b) => readAt(b, offset));
  }

  /** Cancels a pending delayed message; false when no pending message has this id (or it was routed already). */
  async cancel(id: string): Promise<boolean> {
    const h = idHashing.hashId(id);
    const key = await this.pendingLocation(id, h);
    if (key === null) return false;
    // A crash between a fire and its done mark (written in batches) leaves a message that was
    // routed pending again until it fires once more at startup. Such a message is not cancelled:
    // it reached a queue already (maybe not all of them; its next fire completes that). The soak
    // found cancels answering true for messages that had been delivered.
    const { bucketStart, offset } = unpack(key);
    // Only a message whose bucket has begun can be due: a future one needs no second read.
    if (bucketStart <= this.clock.now()) {
      const record = await this.recordAt(key);
      if (deliverAtOf(record) <= this.clock.now() && (await this.fired(record))) return false;
    }
    // Claimed, with no await since it was confirmed: a fire that comes now finds it gone.
    if (!this.index.remove(h, bucketStart / BUCKET_MS, offset)) return false;
    this.wheel.cancel(key);
    this.near.delete(key);
    await this.withBucket(bucketStart, (b) => this.markDone(b, offset));
    return true;
  }

  /** Records a message as fired or cancelled, durably. Empty past buckets are removed by `advance`. */
  private async markDone(b: Bucket, offset: number): Promise<void> {
    const done = b.done as AckStore;
    if (!ackInto(done.state, offset)) return;
    await done.persistOne(offset, true);
    b.pending--;
  }

  private async destroyBucket(b: Bucket): Promise<void> {
    this.buckets.delete(b.start);
    await this.closeBucket(b);
    const dir = this.bucketDir(b.start);
    await Log.destroy(path.join(dir, 'messages'));
    await Log.destroy(path.join(dir, 'done'));
    await fs.promises.rm(dir, { recursive: true, force: true });
  }

  /**
   * Loads buckets coming due and starts the fires of every message due by now; writes the done
   * marks that are due. Neither the loads nor the fires are awaited (see `settled`).
   */
  async advance(): Promise<void> {
    if (this.firing) return;
    this.firing = true;
    try {
      const now = this.clock.now();
      // A bucket coming due loads in the background, a chunk per read: a big one takes a while,
      // and messages of buckets loaded earlier must not wait for it. Two minutes ahead is plenty.
      for (const b of this.buckets.values()) if (!b.loaded && b.start < now + LOOKAHEAD_MS) this.startLoading(b);
      this.loadedSinceAdvance = false;
      this.fireDue();
      if (this.doneQueued >= DONE_BATCH_MAX || (this.doneQueued > 0 && now - this.doneFlushedAt >= DONE_FLUSH_MS)) this.flushDone();
      // A bucket whose minute has passed and whose messages are all durably done goes away.
      for (const b of [...this.buckets.values()]) {
        if (b.pending === 0 && b.start + BUCKET_MS <= now && b.opening === null && b.users === 0 && !this.loads.has(b)) await this.destroyBucket(b);
      }
    } finally {
      this.firing = false;
    }
  }

  /** Puts `key` in the wheel and makes sure something wakes up when it is due. */
  private place(key: number, dueAt: number): void {
    this.wheel.schedule(key, dueAt);
    if (dueAt < this.nextWakeAt) {
      this.nextWakeAt = dueAt;
      this.armWake();
    }
  }

  /** Fires what is due, if anything can be: one clock read and a comparison otherwise. */
  private fireIfDue(): void {
    if (this.clock.now() >= this.nextWakeAt) this.fireDue();
  }

  /**
   * Takes every key due by now out of the wheel and starts its fire, then arms the wake timer for
   * the next. Synchronous, so it fires in whatever turn calls it (timer, tick or publish). Fires run
   * without holding up the next call, so one slow fsync does not make later messages late; at
   * most FIRE_IN_FLIGHT_MAX run at once (their fsyncs are shared), the rest wait in `backlog`.
   */
  private fireDue(): void {
    if (this.closed) return;
    for (const key of this.wheel.advance(this.clock.now())) {
      if (this.firesInFlight < FIRE_IN_FLIGHT_MAX && this.backlog.length === 0) this.startFire(key);
      else this.backlog.push(key);
    }
    this.nextWakeAt = this.wheel.nextWakeAt();
    this.armWake();
  }

  private startFire(key: number): void {
    this.firesInFlight++;
    void this.fireOne(key).finally(() => {
      this.firesInFlight--;
      this.startBacklog();
    });
  }

  private startBacklog(): void {
    while (this.firesInFlight < FIRE_IN_FLIGHT_MAX && this.backlogHead < this.backlog.length) this.startFire(this.backlog[this.backlogHead++]!);
    if (this.backlogHead > 0 && this.backlogHead === this.backlog.length) {
      this.backlog = [];
      this.backlogHead = 0;
    }
  }

  /**
   * Arms the wake timer for `nextWakeAt`, unless it is already armed that early. It is unref'd
   * (the broker's ticker keeps the process alive while messages are pending) and fires once per
   * wake, never in a loop: a wake that finds nothing due re-arms at least 1 ms later.
   */
  private armWake(): void {
    if (this.closed || this.nextWakeAt === Number.POSITIVE_INFINITY) return;
    if (this.wakeTimer !== null && this.wakeTimerAt <= this.nextWakeAt) return;
    if (this.wakeTimer !== null) clearTimeout(this.wakeTimer);
    const wait = Math.min(Math.max(this.nextWakeAt - this.clock.now(), 1), WAKE_MAX_MS);
    this.wakeTimerAt = this.nextWakeAt;
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = null;
      this.wakeTimerAt = Number.POSITIVE_INFINITY;
      this.fireDue();
    }, wait);
    this.wakeTimer.unref();
  }

  private startLoading(b: Bucket): void {
    const load = this.loadIntoWheel(b)
      .catch((err: Error) => {
        this.onError(err);
        b.loaded = false; // tried again on the next advance; entries already placed are placed again, harmlessly
      })
      .finally(() => {
        this.loads.delete(b);
        this.loadedSinceAdvance = true;
      });
    this.loads.set(b, load);
  }

  /**
   * Fires one due message; the promise never rejects. With its record in memory and its bucket
   * open (the usual case) the fire starts synchronously: every await before the append would
   * queue it behind all the microtasks a busy publisher has pending.
   */
  private fireOne(key: number): Promise<void> {
    const { bucketStart, offset } = unpack(key);
    const b = this.buckets.get(bucketStart);
    if (b === undefined) return DONE;
    const r = this.near.get(key);
    if (r === undefined || b.log === null) return this.fireFromDisk(key, bucketStart, offset);
    b.users++; // its files stay open until the fire is done
    return this.fireRecord(b, key, offset, r).finally(() => {
      b.users--;
    });
  }

  /** A fire whose record is not in memory (a retry): reads it from its bucket first. */
  private async fireFromDisk(key: number, bucketStart: number, offset: number): Promise<void> {
    try {
      await this.withBucket(bucketStart, async (b) => this.fireRecord(b, key, offset, this.near.get(key) ?? (await readAt(b, offset))));
    } catch (err) {
      // Not read, so not claimed: try again shortly rather than lose it.
      this.onError(err as Error);
      this.place(key, this.clock.now() + 1000);
    }
  }

  /** Claims the message, routes it, and marks it done once confirmed; a failed route is retried in a second. */
  private fireRecord(b: Bucket, key: number, offset: number, r: DelayedRecord): Promise<void> {
    this.near.delete(key);
    const h = idHashing.hashId(r.keyText());
    // Claimed: from here a cancel finds nothing and says so, since the message is on its way.
    if (!this.index.remove(h, b.start / BUCKET_MS, offset)) return DONE; // cancelled meanwhile
    let fired: Promise<void>;
    try {
      fired = this.fire(r);
    } catch (err) {
      fired = Promise.reject(err as Error);
    }
    return fired.then(
      () => {
        // Routed and confirmed: done in memory now (so nothing loads it again), on disk with the next batch.
        if (ackInto((b.done as AckStore).state, offset)) {
          b.doneQueue.push(offset);
          this.doneQueued++;
        }
      },
      (err: unknown) => {
        this.onError(err as Error);
        this.index.add(h, b.start / BUCKET_MS, offset);
        this.place(key, this.clock.now() + 1000);
      },
    );
  }

  /**
   * Writes the queued done marks, one group-committed write per bucket. A bucket's `pending`
   * drops only once its marks are durable, so it is never deleted with a mark unwritten. A failed
   * write is queued again: until a mark is durable, a restart fires that message again, into the
   * target queues' dedupe window.
   */
  private flushDone(): void {
    this.doneFlushedAt = this.clock.now();
    for (const b of this.buckets.values()) {
      if (b.doneQueue.length === 0) continue;
      const offsets = b.doneQueue;
      b.doneQueue = [];
      this.doneQueued -= offsets.length;
      this.doneFlushes++;
      void this.withBucket(b.start, async (open) => {
        await (open.done as AckStore).persist(offsets, true);
        open.pending -= offsets.length;
      })
        .then(() => {
          this.doneFlushFailed = false;
        })
        .catch((err: Error) => {
          this.onError(err);
          this.doneFlushFailed = true;
          for (const o of offsets) b.doneQueue.push(o);
          this.doneQueued += offsets.length;
        })
        .finally(() => this.doneFlushes--);
    }
  }

  /**
   * Resolves once everything started so far has settled: bucket loads (and the fires of what they
   * found due), fires, and the done marks, which it writes at once. Tests with a fake clock rely on it.
   */
  async settled(): Promise<void> {
    for (;;) {
      if (this.loads.size > 0) await Promise.all([...this.loads.values()]);
      else if (this.firing || this.firesInFlight > 0 || this.backlog.length > 0 || this.doneFlushes > 0) await new Promise((r) => setTimeout(r, 1));
      else if (this.loadedSinceAdvance) await this.advance(); // fires what the loads found due
      else if (this.doneQueued > 0 && !this.doneFlushFailed) this.flushDone(); // a failing disk is retried by `advance`, not here
      else return;
    }
  }

  async close(): Promise<void> {
    await this.settled();
    this.closed = true;
    if (this.wakeTimer !== null) clearTimeout(this.wakeTimer);
    this.wakeTimer = null;
    for (const b of this.buckets.values()) await this.closeBucket(b);
    // A closed store may stay referenced (a reopen often runs before the old broker is dropped).
    this.index.clear();
    this.near.clear();
  }
}

const EMPTY_KEY = Buffer.alloc(0);
const DONE: Promise<void> = Promise.resolve();

/** Reads the record at `offset` of an open bucket; a pending message that is missing is corruption. */
async function readAt(b: Bucket, offset: number): Promise<LogRecord> {
  const [r] = await (b.log as Log).read(offset, { maxRecords: 1, maxBytes: 64 * 1024 });
  if (r === undefined || r.offset !== offset) throw new SpoolError('SPOOL_ERR_CORRUPT', `delayed message ${offset} of bucket ${b.start} is missing`);
  return r;
}

export function deliverAtOf(r: LogRecord | DelayedRecord): number {
  const v = r.headerText('\0d');
  return v === undefined ? ('timestamp' in r ? r.timestamp : 0) : Number(v);
}
