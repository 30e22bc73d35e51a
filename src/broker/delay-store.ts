/**
 * Delayed messages: stored durably at publish, routed through their exchange when due.
 *
 * On disk (docs/format.md "Delayed messages") messages are bucketed by due time: one bucket per
 * minute, each a message log plus a "done" set (fired or cancelled offsets, kept like a group's
 * acks). Only buckets due within the lookahead are loaded into the timing wheel; the far future
 * waits on disk, so memory holds the near future plus one compact index entry per pending id
 * (for cancel). A bucket whose every message is done is deleted. RocketMQ's timer log and
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
    readonly value: Buffer,
    private readonly headers: Readonly<Record<string, string>>,
  ) {}
  keyText(): string {
    return this.id;
  }
  headerText(name: string): string | undefined {
    return this.headers[name];
  }
}

/** Fires a due message: publishes it to its exchange. Resolves once it is confirmed there. */
export type FireFn = (record: DelayedRecord) => Promise<void>;

export class DelayStore {
  private readonly buckets = new Map<number, Bucket>();
  private readonly index = new Map<string, number>();
  /** The records of loaded (near-future) buckets, so firing reads nothing from disk. */
  private readonly near = new Map<number, DelayedRecord>();
  private readonly wheel: TimingWheel<number>;
  private firing = false;
  private firesInFlight = 0;
  private readonly fireSlots: (() => void)[] = [];
  onError: (err: Error) => void = () => {};

  private constructor(
    private readonly dir: string,
    private readonly clock: Clock,
    private readonly logOptions: LogOptions,
    private readonly fire: FireFn,
  ) {
    this.wheel = new TimingWheel<number>({ tickMs: 2, startMs: clock.now() });
  }

  static async open(dir: string, clock: Clock, logOptions: LogOptions, fire: FireFn): Promise<DelayStore> {
    await fs.promises.mkdir(dir, { recursive: true });
    const store = new DelayStore(dir, clock, logOptions, fire);
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
    let b = this.buckets.get(start);
    if (b === undefined) {
      b = { start, log: null, done: null, pending: 0, loaded: false, lastUsed: 0, opening: null, users: 0 };
      this.buckets.set(start, b);
    }
    b.lastUsed = this.clock.now();
    if (b.log === null) {
      // One opener at a time: concurrent schedules into a new bucket share this open.
      b.opening ??= (async () => {
        const dir = this.bucketDir(start);
        const { log } = await Log.open(path.join(dir, 'messages'), { ...this.logOptions, clock: this.clock });
        const done = await AckStore.open(path.join(dir, 'done'), 0, 0, this.logOptions);
        (b as Bucket).log = log;
        (b as Bucket).done = done;
      })().finally(() => {
        (b as Bucket).opening = null;
      });
      await b.opening;
      await this.closeIdleFarBuckets();
    }
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
      await this.eachPending(b, (r) => {
        this.index.set(r.keyText(), pack(start, r.offset));
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
        this.wheel.schedule(key, deliverAtOf(r));
      }),
    );
  }

  private async eachPending(b: Bucket, visit: (r: LogRecord) => void): Promise<void> {
    const log = b.log as Log;
    const done = (b.done as AckStore).state;
    let next = log.startOffset;
    while (next < log.endOffset) {
      const records = await log.read(next, { maxBytes: 4 * 1024 * 1024 });
      if (records.length === 0) break;
      for (const r of records) if (r.offset >= done.committed && !done.acked.has(r.offset)) visit(r);
      next = records[records.length - 1]!.offset + 1;
    }
  }

  /**
   * Stores a message due at `deliverAt`; resolves once it is fsynced. A publisher-chosen id that
   * is already pending is a duplicate.
   */
  async schedule(id: string, callerId: boolean, deliverAt: number, record: { value: Buffer | Uint8Array | string; headers: Record<string, string> }): Promise<'scheduled' | 'duplicate'> {
    if (callerId && this.index.has(id)) return 'duplicate';
    const start = Math.floor(deliverAt / BUCKET_MS) * BUCKET_MS;
    return this.withBucket(start, async (b) => {
      if (callerId && this.index.has(id)) return 'duplicate';
      const offset = await (b.log as Log).appendOne({ key: id, value: record.value, headers: record.headers, timestamp: this.clock.now() });
      const key = pack(start, offset);
      this.index.set(id, key);
      b.pending++;
      if (b.loaded) {
        // Near future: keep what was stored (a copy of the body) for the fire.
        const value = typeof record.value === 'string' ? Buffer.from(record.value) : Buffer.from(record.value);
        this.near.set(key, new HeldRecord(id, value, record.headers));
        this.wheel.schedule(key, deliverAt);
      }
      return 'scheduled';
    });
  }

  /** Cancels a pending delayed message; false when no pending message has this id. */
  async cancel(id: string): Promise<boolean> {
    const key = this.index.get(id);
    if (key === undefined) return false;
    this.index.delete(id);
    this.wheel.cancel(key);
    this.near.delete(key);
    const { bucketStart, offset } = unpack(key);
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

  /** Loads buckets coming due and fires every message due by now. Resolves when those fires settle. */
  async advance(): Promise<void> {
    if (this.firing) return;
    this.firing = true;
    try {
      const now = this.clock.now();
      for (const b of [...this.buckets.values()]) {
        if (!b.loaded && b.start < now + LOOKAHEAD_MS) await this.loadIntoWheel(b);
      }
      const due = this.wheel.advance(this.clock.now());
      // Fires run without holding up the next tick, so one slow fsync does not make later
      // messages late; at most FIRE_IN_FLIGHT_MAX run at once (their fsyncs are shared).
      for (const key of due) {
        while (this.firesInFlight >= FIRE_IN_FLIGHT_MAX) await new Promise<void>((resolve) => this.fireSlots.push(resolve));
        this.firesInFlight++;
        void this.fireOne(key).finally(() => {
          this.firesInFlight--;
          this.fireSlots.shift()?.();
        });
      }
      // A bucket whose minute has passed and whose messages are all done goes away.
      for (const b of [...this.buckets.values()]) {
        if (b.pending === 0 && b.start + BUCKET_MS <= now && b.opening === null && b.users === 0) await this.destroyBucket(b);
      }
    } finally {
      this.firing = false;
    }
  }

  private async fireOne(key: number): Promise<void> {
    const { bucketStart, offset } = unpack(key);
    if (!this.buckets.has(bucketStart)) return;
    let claimed: string | null = null;
    try {
      await this.withBucket(bucketStart, async (b) => {
        let r = this.near.get(key);
        if (r === undefined) {
          const [read] = await (b.log as Log).read(offset, { maxRecords: 1, maxBytes: 64 * 1024 });
          if (read === undefined || read.offset !== offset) throw new SpoolError('SPOOL_ERR_CORRUPT', `delayed message ${offset} of bucket ${bucketStart} is missing`);
          r = read;
        }
        this.near.delete(key);
        const id = r.keyText();
        if (this.index.get(id) !== key) return; // cancelled meanwhile
        // Claimed: from here a cancel finds nothing and says so, since the message is on its way.
        this.index.delete(id);
        claimed = id;
        await this.fire(r);
        await this.markDone(b, offset);
        claimed = null;
      });
    } catch (err) {
      // Not fired: put it back and try again shortly rather than lose it.
      this.onError(err as Error);
      if (claimed !== null) this.index.set(claimed, key);
      this.wheel.schedule(key, this.clock.now() + 1000);
    }
  }

  /** Resolves once every fire started so far has settled. */
  async settled(): Promise<void> {
    while (this.firing || this.firesInFlight > 0) await new Promise((r) => setTimeout(r, 1));
  }

  async close(): Promise<void> {
    await this.settled();
    for (const b of this.buckets.values()) await this.closeBucket(b);
  }
}

export function deliverAtOf(r: LogRecord | DelayedRecord): number {
  const v = r.headerText('\0d');
  return v === undefined ? ('timestamp' in r ? r.timestamp : 0) : Number(v);
}
