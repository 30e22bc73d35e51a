/**
 * A queue: one log of messages, its consumer groups, the dedupe window, limits and retention.
 * On disk: <dataDir>/queues/<name>/messages (the log) and .../groups/<group> (each group's state).
 */
import fs from 'node:fs';
import path from 'node:path';
import { SpoolError } from '../errors.js';
import { Log, type Clock, type LogOptions, nodeStorage, recordBytesBound } from '../log/index.js';
import { writeFileAtomic } from '../log/storage.js';
import { AckStore, ackInto } from './ack-store.js';
import { ConsumerGroup, type ConsumerOptions, type DeathReason, type GroupHooks } from './group.js';
import type { LogRecord, RecordInput } from '../log/index.js';
import { type StoredMessage, dedupeKeyOf, expiresAtOf, toRecord } from './message.js';
import { SizeWindow } from './size-window.js';
import { type Claim, DedupeWindow } from './dedupe-window.js';

export type Overflow = 'drop-head' | 'reject-publish';

export interface QueueOptions {
  /** Exchange that receives rejected, expired, overflowed or over-limit messages (dead-lettering). */
  deadLetterExchange?: string;
  deadLetterRoutingKey?: string;
  /** Milliseconds a message may wait before it expires. */
  messageTtl?: number;
  /** Deliveries after which a message is dead-lettered instead of redelivered. */
  deliveryLimit?: number;
  maxLength?: number;
  maxBytes?: number;
  overflow?: Overflow;
  /** How long a publisher-chosen id is remembered for dedupe (default 2 minutes). */
  dedupeWindowMs?: number;
}

export const DEDUPE_WINDOW_MS_DEFAULT = 120_000;
const confirmed = (): 'confirmed' => 'confirmed';
const DUPLICATE: Promise<'duplicate'> = Promise.resolve('duplicate');
const TTL_MARKER = 'has-message-ttl';
/** The saved floor of a queue without groups whose head expired (decimal text). */
const FLOOR_FILE = 'floor';
/**
 * Offsets that expired (their own ttl) and were dead-lettered while the queue had no group, kept
 * as an ack log: groups created later skip them. An AckStore, so it is durable and compact.
 */
const EXPIRED_DIR = 'expired-unconsumed';
/** The dedupe window is bounded: past this many keys the oldest are forgotten early. */
const DEDUPE_ENTRIES_MAX = 1_000_000;
/**
 * How long a group's acks that nobody awaits ('auto' handlers, a served client's DONE) wait for
 * more before their write and fdatasync (ack-store.ts). A crash loses at most this much more of
 * them than before: those messages are delivered again (at least once, as before).
 */
const ACK_BATCH_MS = 5;

export interface QueueHooks {
  /** Moves a message out of the queue (dead-letter exchange, error exchange, or a 'drop' event). */
  deadLetter(queue: Queue, record: LogRecord, group: string, reason: DeathReason, error: unknown, errorExchange: string | null): Promise<void>;
  /** Calls `fire` at `dueAt` (the broker's timing wheel). */
  schedule(key: string, dueAt: number, fire: () => void): void;
  error(err: Error): void;
}

/** Record bytes per log append of a batch publish: well under the log's 16 MiB append limit. */
const APPEND_CHUNK_BYTES = 4 * 1024 * 1024;

function byteLengthOf(v: Buffer | Uint8Array | string): number {
  return typeof v === 'string' ? Buffer.byteLength(v) : v.byteLength;
}

/** A message the bulk path can append as it is: no dedupe key, no expiry. */
function isPlain(m: StoredMessage): boolean {
  return m.expiresAt === undefined && m.dedupeKey === undefined && !m.callerId;
}

export class Queue {
  readonly groups = new Map<string, ConsumerGroup>();
  private readonly dedupe: DedupeWindow;
  private readonly groupOpening = new Map<string, Promise<ConsumerGroup>>();
  /** Offsets below this were dropped by drop-head overflow; new groups start at or after it. */
  private floor = 0;
  /** Body sizes of queued messages, kept only when maxBytes is set. */
  private sizes: SizeWindow | null = null;
  private unsubscribe: () => void;
  private trimming = false;
  private ttlMarked = false;
  private ttlMarking: Promise<void> | null = null;
  /** Offsets whose own TTL has passed, waiting for the expiry loop. */
  private readonly dueExpiries = new Set<number>();
  private expiring = false;
  private expiringHead = false;
  private droppingHead = false;
  private dropHeadTarget = 0;
  /** When the head of an unconsumed queue expires next (0: unknown, check now). */
  private headExpiresAt = 0;
  /** No length or byte limit: appends need no bookkeeping. */
  private readonly plain: boolean;
  /** With reject-publish: messages (and their bytes) whose appends are in flight, counted as queued. */
  private reservedCount = 0;
  private reservedBytes = 0;
  /** See EXPIRED_DIR; opened when first needed (or at open when it exists). */
  private expiredAlone: AckStore | null = null;

  private constructor(
    readonly name: string,
    readonly dir: string,
    readonly options: QueueOptions,
    readonly log: Log,
    private readonly clock: Clock,
    private readonly logOptions: LogOptions,
    private readonly hooks: QueueHooks,
  ) {
    this.plain = options.maxLength === undefined && options.maxBytes === undefined;
    this.dedupe = new DedupeWindow(this.dedupeWindowMs, DEDUPE_ENTRIES_MAX, (offset) => this.dedupeKeyAt(offset));
    this.unsubscribe = log.onAppend(() => {
      for (const g of this.groups.values()) if (g.consumerCount > 0) g.schedulePump();
    });
  }

  static async open(name: string, dir: string, options: QueueOptions, clock: Clock, logOptions: LogOptions, hooks: QueueHooks): Promise<Queue> {
    const { log } = await Log.open(path.join(dir, 'messages'), { ...logOptions, clock });
    const q = new Queue(name, dir, options, log, clock, logOptions, hooks);
    await q.rebuildDedupe();
    await q.loadFloor();
    if (fs.existsSync(path.join(dir, EXPIRED_DIR))) await q.openExpiredAlone();
    for (const g of await listDirs(path.join(dir, 'groups'))) await q.group(g, {});
    if (options.maxBytes !== undefined) await q.loadSizes();
    if (q.groups.size > 0 && (options.overflow ?? 'drop-head') === 'drop-head') {
      // With groups, drops go through each group (which dead-letters them), and the floor (not
      // saved on this path, it moves with every publish) is where the limits put the head.
      if (options.maxLength !== undefined) q.floor = Math.max(q.floor, log.endOffset - options.maxLength);
      if (q.sizes !== null) q.floor = Math.max(q.floor, q.sizes.headFor(options.maxBytes as number));
    }
    await q.rearmExpiries();
    return q;
  }

  /**
   * Once the broker has its whole topology back (every queue and binding): finishes overflow that
   * a crash interrupted, dead-lettering as it goes (never silently). Not at open: a queue opened
   * before the bindings are restored would dead-letter into an exchange that routes nowhere yet.
   */
  resume(): void {
    if ((this.options.overflow ?? 'drop-head') === 'drop-head') this.dropHeadIfOver();
  }

  private async loadSizes(): Promise<void> {
    const sizes = new SizeWindow(this.head());
    let next = sizes.start;
    while (next < this.log.endOffset) {
      const records = await this.log.read(next, { maxBytes: 4 * 1024 * 1024 });
      if (records.length === 0) break;
      for (const r of records) sizes.add(r.offset, r.value.length);
      next = records[records.length - 1]!.offset + 1;
    }
    this.sizes = sizes;
  }

  private get dedupeWindowMs(): number {
    return this.options.dedupeWindowMs ?? DEDUPE_WINDOW_MS_DEFAULT;
  }

  /** Whether `key` was stored (or is being stored) within the dedupe window: a publish of it now would be a duplicate. */
  holdsDedupeKey(key: string): boolean | Promise<boolean> {
    return this.dedupe.holds(key, this.clock.now());
  }

  /** The dedupe key stored at `offset` ('' when it has none), or null when the record is gone. */
  private async dedupeKeyAt(offset: number): Promise<string | null> {
    if (offset < this.log.startOffset || offset >= this.log.endOffset) return null;
    const [r] = await this.log.read(offset, { maxRecords: 1 });
    if (r === undefined || r.offset !== offset) return null;
    return dedupeKeyOf(r) ?? '';
  }

  /** Reloads the publisher-chosen ids of the last dedupe window from the log, so the window survives restart. */
  private async rebuildDedupe(): Promise<void> {
    const since = this.clock.now() - this.dedupeWindowMs;
    let next = await this.log.offsetForTime(since);
    while (next < this.log.endOffset) {
      const records = await this.log.read(next, { maxBytes: 4 * 1024 * 1024 });
      if (records.length === 0) break;
      for (const r of records) {
        if (r.timestamp < since) continue;
        const key = dedupeKeyOf(r);
        if (key !== undefined) this.dedupe.restore(key, r.offset, r.timestamp + this.dedupeWindowMs);
      }
      next = records[records.length - 1]!.offset + 1;
    }
  }

  /** Messages waiting: not yet acked by the slowest group (or all retained ones without groups). */
  get depth(): number {
    const head = this.head();
    let gone = 0;
    if (this.groups.size === 0 && this.expiredAlone !== null) for (const o of this.expiredAlone.state.acked) if (o >= head) gone++;
    return this.log.endOffset - head - gone;
  }

  private head(): number {
    if (this.groups.size === 0) return Math.max(this.floor, this.dropHeadTarget, this.log.startOffset, this.expiredAlone?.state.committed ?? 0);
    let min = Number.MAX_SAFE_INTEGER;
    for (const g of this.groups.values()) min = Math.min(min, g.committed);
    return min;
  }

  /** Where retention may delete up to: what every group has durably acked, or -1 while a group is opening. */
  private retentionHead(): number {
    if (this.groups.size === 0 || this.groupOpening.size > 0) return -1;
    let min = Number.MAX_SAFE_INTEGER;
    for (const g of this.groups.values()) min = Math.min(min, g.durableCommitted);
    return min;
  }

  /**
   * Appends a message unless its publisher-chosen id was seen within the window.
   * Resolves after the message is fsynced.
   */
  append(m: StoredMessage): Promise<'confirmed' | 'duplicate'> {
    if (m.expiresAt === undefined && this.plain) {
      // The common cases (no limits, no TTL): one log append, after the dedupe check when the
      // message has a key. (One extra promise; everything else goes through the full checks.)
      const dedupeKey = m.dedupeKey ?? (m.callerId ? m.id : undefined);
      if (dedupeKey === undefined) return this.log.appendOne(toRecord(m)).then(confirmed);
      return this.appendDeduped(m, dedupeKey);
    }
    return this.appendChecked(m);
  }

  private appendDeduped(m: StoredMessage, dedupeKey: string): Promise<'confirmed' | 'duplicate'> {
    // Claimed before the append, so a concurrent publish of the same key sees it.
    const claim = this.claimKey(m, dedupeKey, this.clock.now());
    if (claim === 'duplicate') return DUPLICATE;
    if (claim === 'claimed') return this.appendClaimed(m, dedupeKey);
    return claim.then((c) => (c === 'duplicate' ? 'duplicate' : this.appendClaimed(m, dedupeKey)));
  }

  /** Claims `m`'s dedupe key `key`; without a lookup when it is the message's id and that id is new (StoredMessage.newId). */
  private claimKey(m: StoredMessage, key: string, now: number): Claim | Promise<Claim> {
    return m.newId && m.dedupeKey === undefined ? this.dedupe.claimNew(key, now) : this.dedupe.claim(key, now);
  }

  private appendClaimed(m: StoredMessage, dedupeKey: string): Promise<'confirmed'> {
    return this.log.appendOne(toRecord(m)).then(
      (offset) => {
        this.dedupe.stored(dedupeKey, offset);
        return 'confirmed' as const;
      },
      (err: unknown) => {
        this.dedupe.release(dedupeKey);
        throw err;
      },
    );
  }

  /**
   * Appends several messages as one log append (one batch, one fdatasync at most): the batch
   * publish path. Returns each message's status, in order. Duplicates, also within `ms`, are
   * skipped; a failure appends none of them and releases their dedupe claims.
   */
  appendMany(ms: readonly StoredMessage[]): Promise<('confirmed' | 'duplicate')[]> {
    if (this.plain && ms.every(isPlain)) return this.appendPlain(ms);
    return this.appendManyChecked(ms);
  }

  /**
   * The bulk path without limits, dedupe keys or expiries: the records go to the log as they are,
   * one append per chunk, and there is nothing to claim, reserve or watch per message.
   */
  private async appendPlain(ms: readonly StoredMessage[]): Promise<'confirmed'[]> {
    const records = new Array<RecordInput>(ms.length);
    const appends: Promise<unknown>[] = [];
    let from = 0;
    let bytes = 0;
    for (let i = 0; i < ms.length; i++) {
      const m = ms[i] as StoredMessage;
      const r = toRecord(m);
      records[i] = r;
      const size = recordBytesBound(r);
      if (i > from && bytes + size > APPEND_CHUNK_BYTES) {
        appends.push(this.log.append(records.slice(from, i)));
        from = i;
        bytes = 0;
      }
      bytes += size;
    }
    appends.push(this.log.append(from === 0 ? records : records.slice(from)));
    // Every chunk settles before the call does, as on the checked path: a retry never races a chunk still in flight.
    const settled = await Promise.allSettled(appends);
    for (const a of settled) if (a.status === 'rejected') throw a.reason;
    return new Array<'confirmed'>(ms.length).fill('confirmed');
  }

  private async appendManyChecked(ms: readonly StoredMessage[]): Promise<('confirmed' | 'duplicate')[]> {
    const now = this.clock.now();
    const statuses: ('confirmed' | 'duplicate')[] = new Array<'confirmed' | 'duplicate'>(ms.length).fill('duplicate');
    const taken: number[] = [];
    const records: RecordInput[] = [];
    /** The dedupe key each taken record claimed, if any (parallel to `records`). */
    const keys: (string | undefined)[] = [];
    const rejectWhenFull = this.options.overflow === 'reject-publish';
    let full: string | null = null;
    let takenBytes = 0;
    for (let i = 0; i < ms.length; i++) {
      const m = ms[i] as StoredMessage;
      const dedupeKey = m.dedupeKey ?? (m.callerId ? m.id : undefined);
      if (dedupeKey !== undefined) {
        const claim = this.claimKey(m, dedupeKey, now);
        if ((typeof claim === 'string' ? claim : await claim) === 'duplicate') continue;
      }
      if (rejectWhenFull) {
        // Reserved as taken, so this batch's earlier messages and other appends in flight count.
        const size = byteLengthOf(m.body);
        full = this.fullReason(size, this.reservedCount, this.reservedBytes);
        if (full !== null) {
          if (dedupeKey !== undefined) this.dedupe.release(dedupeKey);
          break;
        }
        this.reservedCount++;
        this.reservedBytes += size;
        takenBytes += size;
      }
      taken.push(i);
      records.push(toRecord(m));
      keys.push(dedupeKey);
    }
    try {
      return await this.appendTaken(ms, statuses, taken, records, keys, full);
    } finally {
      if (rejectWhenFull) {
        this.reservedCount -= taken.length;
        this.reservedBytes -= takenBytes;
      }
    }
  }

  private async appendTaken(
    ms: readonly StoredMessage[],
    statuses: ('confirmed' | 'duplicate')[],
    taken: readonly number[],
    records: readonly RecordInput[],
    keys: readonly (string | undefined)[],
    full: string | null,
  ): Promise<('confirmed' | 'duplicate')[]> {
    if (records.length === 0) {
      if (full !== null) throw new SpoolError('SPOOL_ERR_QUEUE_FULL', `queue ${this.name} is at ${full}`);
      return statuses;
    }
    // One log append per chunk (an append has a byte limit); the chunks share fdatasyncs.
    const chunks: { from: number; to: number }[] = [];
    let from = 0;
    let bytes = 0;
    for (let j = 0; j < records.length; j++) {
      const r = records[j] as RecordInput;
      // Shared frozen headers are small (a route); otherwise count exactly. A bound, not the size.
      const size = recordBytesBound(r);
      if (j > from && bytes + size > APPEND_CHUNK_BYTES) {
        chunks.push({ from, to: j });
        from = j;
        bytes = 0;
      }
      bytes += size;
    }
    chunks.push({ from, to: records.length });
    const appended = await Promise.allSettled(chunks.map((c) => this.log.append(records.slice(c.from, c.to)).then((r) => r.baseOffset)));
    // Each chunk's keys are remembered when it is stored, and released when it failed (so a retry stores them).
    for (let c = 0; c < chunks.length; c++) {
      const a = appended[c] as PromiseSettledResult<number>;
      const { from: first, to } = chunks[c] as { from: number; to: number };
      for (let j = first; j < to; j++) {
        const key = keys[j];
        if (key === undefined) continue;
        if (a.status === 'fulfilled') this.dedupe.stored(key, a.value + (j - first));
        else this.dedupe.release(key);
      }
    }
    const failed = appended.find((a) => a.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
    const bases = appended.map((a) => (a as PromiseFulfilledResult<number>).value);
    const expiries: Promise<void>[] = [];
    for (let c = 0; c < chunks.length; c++) {
      const { from: first, to } = chunks[c] as { from: number; to: number };
      for (let j = first; j < to; j++) {
        const offset = (bases[c] as number) + (j - first);
        const i = taken[j] as number;
        const m = ms[i] as StoredMessage;
        statuses[i] = 'confirmed';
        if (this.sizes !== null) this.sizes.add(offset, byteLengthOf(m.body));
        if (m.expiresAt !== undefined) expiries.push(this.watchExpiry(offset, m.expiresAt));
      }
    }
    await Promise.all(expiries);
    if (full !== null) {
      throw new SpoolError('SPOOL_ERR_QUEUE_FULL', `queue ${this.name} is at ${full}: ${taken.length} of ${ms.length} messages were stored; retry the rest (the same ids are deduplicated)`);
    }
    if (this.options.overflow !== 'reject-publish') this.dropHeadIfOver();
    return statuses;
  }

  private async appendChecked(m: StoredMessage): Promise<'confirmed' | 'duplicate'> {
    const dedupeKey = m.dedupeKey ?? (m.callerId ? m.id : undefined);
    if (dedupeKey !== undefined) {
      // Claimed before the append, so a concurrent publish of the same key sees it.
      const claim = this.claimKey(m, dedupeKey, this.clock.now());
      if ((typeof claim === 'string' ? claim : await claim) === 'duplicate') return 'duplicate';
    }
    const overflow = this.options.overflow ?? 'drop-head';
    const size = byteLengthOf(m.body);
    const reserved = overflow === 'reject-publish';
    if (reserved) {
      // Appends still in flight count too, so a burst of concurrent publishes cannot overshoot.
      const full = this.fullReason(size, this.reservedCount, this.reservedBytes);
      if (full !== null) {
        if (dedupeKey !== undefined) this.dedupe.release(dedupeKey);
        throw new SpoolError('SPOOL_ERR_QUEUE_FULL', `queue ${this.name} is at ${full}`);
      }
      this.reservedCount++;
      this.reservedBytes += size;
    }
    let offset: number;
    try {
      offset = await this.log.appendOne(toRecord(m));
    } catch (err) {
      if (dedupeKey !== undefined) this.dedupe.release(dedupeKey);
      throw err;
    } finally {
      if (reserved) {
        this.reservedCount--;
        this.reservedBytes -= size;
      }
    }
    if (dedupeKey !== undefined) this.dedupe.stored(dedupeKey, offset);
    this.sizes?.add(offset, size);
    if (m.expiresAt !== undefined) await this.watchExpiry(offset, m.expiresAt);
    if (overflow === 'drop-head') this.dropHeadIfOver();
    return 'confirmed';
  }

  /**
   * Arms the expiry of a message with its own TTL, so it is dead-lettered on time even when it
   * is not at the head and no consumer is attached. A marker file says the queue has such
   * messages, so a restart rescans for them only when it must.
   */
  private async watchExpiry(offset: number, expiresAt: number): Promise<void> {
    if (!this.ttlMarked) {
      // Durable before it matters: a restart must know to re-arm expiries. One write, shared by
      // concurrent first publishes.
      this.ttlMarking ??= writeFileAtomic(nodeStorage, path.join(this.dir, TTL_MARKER), Buffer.alloc(0)).then(() => {
        this.ttlMarked = true;
      });
      try {
        await this.ttlMarking;
      } catch (err) {
        this.ttlMarking = null;
        throw err;
      }
    }
    this.hooks.schedule(`x\0${this.name}\0${offset}`, expiresAt, () => this.expireOffset(offset));
  }

  /** Queues an expiry; one loop reads due offsets in order, a batch at a time, instead of one read each. */
  private expireOffset(offset: number): void {
    this.dueExpiries.add(offset);
    if (!this.expiring) void this.drainExpiries();
  }

  private async drainExpiries(): Promise<void> {
    this.expiring = true;
    try {
      while (this.dueExpiries.size > 0) {
        const offsets = [...this.dueExpiries].sort((a, b) => a - b);
        const first = offsets[0] as number;
        const alone = this.groups.size === 0 && this.groupOpening.size === 0;
        if (first < this.log.startOffset || (alone && first < this.head())) {
          this.dueExpiries.delete(first);
          continue;
        }
        const records = await this.log.read(first, { maxBytes: 1024 * 1024 });
        if (records.length === 0) {
          this.dueExpiries.delete(first);
          continue;
        }
        for (const r of records) {
          if (!this.dueExpiries.delete(r.offset)) continue;
          if (this.groups.size > 0) {
            for (const g of this.groups.values()) g.expireOffset(r);
          } else {
            await this.expireAlone(r);
          }
        }
        this.dueExpiries.delete(first);
      }
    } catch (err) {
      this.hooks.error(err as Error);
      this.dueExpiries.clear();
    } finally {
      this.expiring = false;
    }
  }

  /**
   * A message with its own ttl expired while no group reads the queue: dead-letter it now (on
   * time, also behind a head that lives on), then record it so groups created later skip it. A
   * crash in between dead-letters it again at restart; the dead-letter copy's dedupe key makes
   * that land once.
   */
  private async expireAlone(r: LogRecord): Promise<void> {
    if (this.groups.size > 0 || this.groupOpening.size > 0) {
      for (const g of this.groups.values()) g.expireOffset(r);
      return;
    }
    if (r.offset < this.head()) return;
    const store = this.expiredAlone ?? (await this.openExpiredAlone());
    if (store.state.acked.has(r.offset)) return;
    await this.hooks.deadLetter(this, r, '', 'expired', undefined, null);
    ackInto(store.state, r.offset);
    await store.persistOne(r.offset, true);
  }

  private async openExpiredAlone(): Promise<AckStore> {
    this.expiredAlone ??= await AckStore.open(path.join(this.dir, EXPIRED_DIR), Math.max(this.floor, this.log.startOffset), this.log.startOffset, this.logOptions);
    return this.expiredAlone;
  }

  /** True when the message at `offset` expired while the queue had no group (a new group skips it). */
  private expiredWhileAlone(offset: number): boolean {
    const s = this.expiredAlone?.state;
    return s !== undefined && (s.acked.has(offset) || (offset < s.committed && offset >= this.floor));
  }

  /** At open: re-arms the expiry of messages with their own TTL (only when the queue ever had one). */
  private async rearmExpiries(): Promise<void> {
    if (!fs.existsSync(path.join(this.dir, TTL_MARKER))) return;
    this.ttlMarked = true;
    let next = this.head();
    while (next < this.log.endOffset) {
      const records = await this.log.read(next, { maxBytes: 4 * 1024 * 1024 });
      if (records.length === 0) break;
      for (const r of records) {
        const at = expiresAtOf(r);
        if (at !== undefined) this.hooks.schedule(`x\0${this.name}\0${r.offset}`, at, () => this.expireOffset(r.offset));
      }
      next = records[records.length - 1]!.offset + 1;
    }
  }

  /** Whether the broker's tick has work here: messages expire by age (messageTtl), or ones with their own TTL wait with no group to read them. */
  get expiresByAge(): boolean {
    return this.options.messageTtl !== undefined || (this.ttlMarked && this.groups.size === 0);
  }

  /** Expires messages past the queue's messageTtl in every group (called on the broker's timer). */
  async expireByQueueTtl(): Promise<void> {
    if (this.groups.size === 0 && this.groupOpening.size === 0) return this.expireUnconsumedHead();
    if (this.options.messageTtl === undefined) return;
    for (const g of this.groups.values()) await g.expireByQueueTtl();
  }

  /**
   * A queue no group reads yet (the "TTL + dead-letter exchange" wait-queue pattern) still
   * expires its messages on time: from the head, each expired message is dead-lettered and the
   * floor moves past it, so groups created later never see it (with one messageTtl that is all
   * of them); the floor is saved so a restart does not expire them again. Messages with their
   * own ttl behind a live head expire apart (`expireAlone`); this run steps over them.
   */
  private async expireUnconsumedHead(): Promise<void> {
    if (this.expiringHead || (this.options.messageTtl === undefined && !this.ttlMarked)) return;
    const now = this.clock.now();
    if (now < this.headExpiresAt) return;
    this.expiringHead = true;
    const before = this.floor;
    try {
      for (;;) {
        const from = Math.max(this.floor, this.log.startOffset);
        if (from >= this.log.endOffset) break;
        const records = await this.log.read(from, { maxBytes: 256 * 1024 });
        if (records.length === 0) break;
        let stop = false;
        for (const r of records) {
          if (this.expiredWhileAlone(r.offset)) {
            // Dead-lettered already, off the head: the floor just moves past it.
            this.floor = r.offset + 1;
            continue;
          }
          const own = expiresAtOf(r);
          const byQueue = this.options.messageTtl === undefined ? undefined : r.timestamp + this.options.messageTtl;
          const at = own === undefined ? byQueue : byQueue === undefined ? own : Math.min(own, byQueue);
          if (at === undefined || at > now) {
            this.headExpiresAt = at ?? Number.MAX_SAFE_INTEGER;
            stop = true;
            break;
          }
          await this.hooks.deadLetter(this, r, '', 'expired', undefined, null);
          this.floor = r.offset + 1;
        }
        if (stop || this.groups.size > 0) break;
      }
      if (this.log.endOffset <= Math.max(this.floor, this.log.startOffset)) this.headExpiresAt = 0;
    } catch (err) {
      this.hooks.error(err as Error);
    } finally {
      this.expiringHead = false;
      if (this.floor > before) await this.saveFloor().catch((err: Error) => this.hooks.error(err));
    }
  }

  private async saveFloor(): Promise<void> {
    await writeFileAtomic(nodeStorage, path.join(this.dir, FLOOR_FILE), Buffer.from(String(this.floor)));
  }

  private async loadFloor(): Promise<void> {
    try {
      const saved = Number((await fs.promises.readFile(path.join(this.dir, FLOOR_FILE), 'utf8')).trim());
      if (Number.isSafeInteger(saved) && saved > this.floor) this.floor = Math.min(saved, this.log.endOffset);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  /** Why a message of `size` bytes would overflow the queue, or null when it fits. */
  /** Why a message of `size` bytes does not fit, after `aheadCount` messages of `aheadBytes` not yet appended; null when it fits. */
  private fullReason(size: number, aheadCount = 0, aheadBytes = 0): string | null {
    const { maxLength, maxBytes } = this.options;
    if (maxLength !== undefined && this.depth + aheadCount >= maxLength) return `maxLength ${maxLength}`;
    if (maxBytes !== undefined && this.sizes !== null) {
      this.sizes.advanceTo(this.head());
      if (this.sizes.total + aheadBytes + size > maxBytes) return `maxBytes ${maxBytes}`;
    }
    return null;
  }

  private dropHeadIfOver(): void {
    if (this.plain) return;
    const { maxLength, maxBytes } = this.options;
    let newHead = -1;
    if (maxLength !== undefined && this.depth > maxLength) newHead = this.log.endOffset - maxLength;
    if (maxBytes !== undefined && this.sizes !== null) {
      this.sizes.advanceTo(this.head());
      if (this.sizes.total > maxBytes) newHead = Math.max(newHead, this.sizes.headFor(maxBytes));
    }
    if (newHead <= this.floor && newHead <= this.head()) return;
    if (this.groups.size === 0) {
      void this.dropUnconsumedHead(newHead);
      return;
    }
    this.floor = Math.max(this.floor, newHead);
    for (const g of this.groups.values()) g.dropBefore(newHead);
  }

  /**
   * Overflow with no group attached: the dropped head still leaves with reason 'maxlen'
   * (dead-lettered, or a 'drop' event), and only then does the floor move past it.
   */
  private async dropUnconsumedHead(newHead: number): Promise<void> {
    if (this.droppingHead) {
      this.dropHeadTarget = Math.max(this.dropHeadTarget, newHead);
      return;
    }
    this.droppingHead = true;
    this.dropHeadTarget = newHead;
    const before = this.floor;
    try {
      while (Math.max(this.floor, this.log.startOffset) < this.dropHeadTarget) {
        const records = await this.log.read(Math.max(this.floor, this.log.startOffset), { maxBytes: 256 * 1024 });
        if (records.length === 0) break;
        for (const r of records) {
          if (r.offset >= this.dropHeadTarget) break;
          await this.hooks.deadLetter(this, r, '', 'maxlen', undefined, null);
          this.floor = r.offset + 1;
        }
      }
    } catch (err) {
      this.hooks.error(err as Error);
    } finally {
      this.droppingHead = false;
      if (this.floor > before) await this.saveFloor().catch((err: Error) => this.hooks.error(err));
    }
  }

  /** The group, opened (and created at `from`) on first use. */
  async group(name: string, options: Pick<ConsumerOptions, 'from'>): Promise<ConsumerGroup> {
    const existing = this.groups.get(name);
    if (existing !== undefined) return existing;
    const opening = this.groupOpening.get(name);
    if (opening !== undefined) return opening;
    const p = this.openGroup(name, options);
    this.groupOpening.set(name, p);
    try {
      return await p;
    } finally {
      this.groupOpening.delete(name);
    }
  }

  private async startOffset(from: ConsumerOptions['from']): Promise<number> {
    // Offsets below a drop in progress are on their way out: a new group never sees them.
    const earliest = Math.max(this.log.startOffset, this.floor, this.dropHeadTarget);
    if (from === undefined || from === 'earliest') return earliest;
    if (from === 'latest') return this.log.endOffset;
    if (from instanceof Date && Number.isFinite(from.getTime())) return Math.max(earliest, await this.log.offsetForTime(from.getTime()));
    if (typeof from !== 'number' || !Number.isSafeInteger(from) || from < 0) {
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `from must be 'earliest', 'latest', an offset or a valid Date`);
    }
    return Math.min(Math.max(earliest, from), this.log.endOffset);
  }

  private async openGroup(name: string, options: Pick<ConsumerOptions, 'from'>): Promise<ConsumerGroup> {
    const dir = path.join(this.dir, 'groups', name);
    // Validated before anything is created, so a bad `from` leaves no group behind.
    const start = await this.startOffset(options.from);
    await fs.promises.mkdir(path.join(this.dir, 'groups'), { recursive: true });
    const acks = await AckStore.open(dir, start, this.log.startOffset, this.logOptions, ACK_BATCH_MS);
    await this.skipExpiredAlone(acks, start);
    const hooks: GroupHooks = {
      deadLetter: (record, group, reason, error, errorExchange) => this.hooks.deadLetter(this, record, group, reason, error, errorExchange),
      scheduleRetry: (key, dueAt, fire) => this.hooks.schedule(key, dueAt, fire),
      progressed: () => void this.trim(),
      error: (err) => this.hooks.error(err),
    };
    const policy = { messageTtl: this.options.messageTtl, deliveryLimit: this.options.deliveryLimit };
    const g = new ConsumerGroup(name, this.name, this.log, acks, this.clock, policy, hooks);
    this.groups.set(name, g);
    return g;
  }

  /** A new group starts with the messages that expired while the queue had no group acked, durably. */
  private async skipExpiredAlone(acks: AckStore, start: number): Promise<void> {
    const s = this.expiredAlone?.state;
    if (s === undefined) return;
    const skipped: number[] = [];
    for (let o = Math.max(start, this.floor); o < s.committed; o++) if (ackInto(acks.state, o)) skipped.push(o);
    for (const o of s.acked) if (o >= start && ackInto(acks.state, o)) skipped.push(o);
    if (skipped.length > 0) await acks.persist(skipped, true);
  }

  /** Retention: drop log segments every group has acked past. */
  async trim(): Promise<number> {
    const upTo = this.retentionHead();
    if (this.trimming || upTo < 0) return 0;
    this.trimming = true;
    try {
      return await this.log.deleteBefore(upTo);
    } catch (err) {
      this.hooks.error(err as Error);
      return 0;
    } finally {
      this.trimming = false;
    }
  }

  async close(): Promise<void> {
    this.unsubscribe();
    for (const g of this.groups.values()) await g.close();
    await this.expiredAlone?.close();
    await this.log.close();
  }

  /** Deletes the queue's files; the queue must be closed. */
  static async destroy(dir: string): Promise<void> {
    for (const g of await listDirs(path.join(dir, 'groups'))) await Log.destroy(path.join(dir, 'groups', g));
    await Log.destroy(path.join(dir, 'messages'));
    await fs.promises.rm(dir, { recursive: true, force: true });
  }
}

async function listDirs(dir: string): Promise<string[]> {
  try {
    const entries = await fs.promises.readdir(dir, { withFileTypes: true });
    return entries.filter((e) => e.isDirectory()).map((e) => e.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}
