/**
 * A consumer group on one queue. Every group sees every message (pub/sub across groups);
 * consumers inside a group compete (a work queue). The group reads the queue's log lazily, in
 * batches, so memory does not grow with the backlog: only prefetched deliveries and one read
 * batch are held.
 *
 * Transitions (input → precondition → outcome → events):
 * - deliver: next record from the redelivery queue or the log → a consumer has credit, the
 *   message is not expired, not over its delivery limit, not waiting for a retry → in flight with
 *   a new deliveryId and deliveryCount+1, the count persisted first when the queue has a
 *   deliveryLimit (ack 'none': acked at once).
 * - ack: a delivery in flight with this deliveryId → acked (committed offset advances when
 *   contiguous), persisted by the ack store → credit returns to the consumer.
 * - nack requeue: in flight → back at the head of the redelivery queue.
 * - nack with delay (retry): in flight → its due time persisted; redelivered when due.
 * - nack no requeue / last retry failed: in flight → dead-lettered (reason 'rejected'), then acked.
 * - expire: a message past its TTL, delivered or not at the head → dead-lettered ('expired'), then acked.
 * - over delivery limit: deliveryCount reached → dead-lettered ('delivery_limit'), then acked.
 * - lock timeout / consumer closed: in flight → redelivery queue (the old delivery's ack is 'unknown').
 */
import assert from 'node:assert/strict';
import { SpoolError } from '../errors.js';
import type { Clock, Log, LogRecord } from '../log/index.js';
import { AckStore, ackInto } from './ack-store.js';
import { Message, type SettleStatus, type Settler } from './delivery.js';
import { expiresAtOf } from './message.js';
import { OffsetTable } from './offset-table.js';

export type AckMode = 'none' | 'auto' | 'manual';
export type Handler = (msg: Message) => unknown;

/** Why a message left its queue without being acked by a consumer (RabbitMQ's x-death reasons). */
export type DeathReason = 'rejected' | 'expired' | 'maxlen' | 'delivery_limit';

export interface RetryOptions {
  /** Deliveries in all, the first included (default 3). */
  attempts?: number;
  backoff?: { initial?: number; factor?: number; max?: number; jitter?: number };
  /** 'requeue' (default): nack with a delay, durably, through the timing wheel. 'local': run the handler again in process. */
  mode?: 'requeue' | 'local';
}

export interface ConsumerOptions {
  group?: string;
  ack?: AckMode;
  /** Most deliveries held by this consumer at once (default 100). */
  prefetch?: number;
  /** Most handlers running at once (default 1). */
  concurrency?: number;
  /** A delivery held longer than this is taken back and redelivered (default 30 s). */
  lockTimeoutMs?: number;
  /** Where a new group starts: 'earliest' (default), 'latest', an offset, or a time. */
  from?: 'earliest' | 'latest' | number | Date;
  /** Retry a failing handler (ack 'auto') before giving the message up. */
  retry?: RetryOptions;
  /** Where a message goes after its last failed attempt when its queue has no dead-letter exchange. */
  errorExchange?: string;
}

/**
 * @internal Where a consumer's deliveries go instead of a `Message` and a handler call each: the
 * server forwarding an 'auto' consumer's deliveries to its client (src/server). A handler carries
 * one under `DELIVERY_SINK`; a consumer without `retry` then hands each delivery to `take`, and
 * whoever holds it settles it once through `Consumer.settleTaken` or `settleTakenQuietly`.
 * Why: a served delivery made a Message, a handler call and a promise-like per message only to
 * copy the record out and wait for the client's DONE.
 */
export interface DeliverySink {
  take(delivery: TakenDelivery): void;
}

/** @internal A delivery handed to a sink: in flight until settled or taken back. */
export interface TakenDelivery {
  readonly record: LogRecord;
  readonly deliveryId: number;
  readonly deliveryCount: number;
  /** The consumer holding it; null once it is settled or taken back (a later settle is 'unknown'). */
  readonly consumer: Consumer | null;
}

/** @internal The property of a handler function that carries its `DeliverySink`. */
export const DELIVERY_SINK: unique symbol = Symbol('spool.deliverySink');

function sinkOf(handler: Handler): DeliverySink | null {
  return (handler as Handler & { [DELIVERY_SINK]?: DeliverySink })[DELIVERY_SINK] ?? null;
}

export interface ResolvedConsumerOptions {
  ack: AckMode;
  prefetch: number;
  concurrency: number;
  lockTimeoutMs: number;
  retry: Required<Omit<RetryOptions, 'backoff'>> & { backoff: Required<NonNullable<RetryOptions['backoff']>> } | null;
  errorExchange: string | null;
}

interface InFlight {
  record: LogRecord;
  deliveryId: number;
  deliveryCount: number;
  consumer: Consumer | null;
  /** Who held it last: a redelivery goes to someone else when anyone else has room. */
  lastConsumer: Consumer | null;
  deadline: number;
}

const READ_BATCH_BYTES = 256 * 1024;

/** The queue-level policy a group applies. */
export interface GroupPolicy {
  messageTtl: number | undefined;
  deliveryLimit: number | undefined;
}

export interface GroupHooks {
  /**
   * Moves a message out of the queue for `reason`: to the dead-letter exchange, or the consumer's
   * error exchange, or (with neither) a 'drop' event. Resolves once that is durable.
   */
  deadLetter(record: LogRecord, group: string, reason: DeathReason, error: unknown, errorExchange: string | null): Promise<void>;
  /** A retry's due time: call `fire` then (the broker owns the timing wheel). */
  scheduleRetry(key: string, dueAt: number, fire: () => void): void;
  /** Retention may advance. */
  progressed(): void;
  error(err: Error): void;
}

export class ConsumerGroup implements Settler {
  private consumers: Consumer[] = [];
  private rr = 0;
  private buffer: LogRecord[] = [];
  private bufferHead = 0;
  private readCursor: number;
  /** The next batch, read while the one before is delivered (see `readNext`). */
  private readAhead: { from: number; records: Promise<LogRecord[]> } | null = null;
  private redeliver: InFlight[] = [];
  private readonly inflight = new OffsetTable<InFlight>();
  /** Offsets being dead-lettered or expired right now: not to be delivered meanwhile. */
  private readonly leaving = new Set<number>();
  private deliverySeq = 0;
  private pumping = false;
  private pumpAgain = false;
  private pumpScheduled = false;
  private closed = false;
  /** Queue-TTL expiry scan position, and the time before which nothing there can expire. */
  private ttlCursor: number;
  private ttlNextAt = 0;
  private ttlScanning = false;

  constructor(
    readonly name: string,
    readonly queue: string,
    private readonly log: Log,
    private readonly acks: AckStore,
    private readonly clock: Clock,
    private readonly policy: GroupPolicy,
    private readonly hooks: GroupHooks,
  ) {
    this.readCursor = Math.max(acks.state.committed, log.startOffset);
    this.ttlCursor = this.readCursor;
    acks.onError = (err) => hooks.error(err);
    acks.onDurable = () => hooks.progressed();
    // Retries pending from before a restart fire at their due times.
    for (const [offset, dueAt] of acks.state.retryAt) this.armRetry(offset, dueAt);
  }

  /** The committed offset the disk knows; retention deletes only below it. */
  get durableCommitted(): number {
    return this.acks.durableCommitted;
  }

  get committed(): number {
    return this.acks.state.committed;
  }

  get consumerCount(): number {
    return this.consumers.length;
  }

  get inFlightCount(): number {
    return this.inflight.size;
  }

  /** Messages not yet acked by this group. */
  get lag(): number {
    return Math.max(0, this.log.endOffset - this.acks.state.committed - this.acks.state.acked.size);
  }

  isAcked(offset: number): boolean {
    return offset < this.acks.state.committed || this.acks.state.acked.has(offset);
  }

  addConsumer(handler: Handler, options: ResolvedConsumerOptions): Consumer {
    if (this.closed) throw new SpoolError('SPOOL_ERR_CLOSED', 'the broker is closed');
    const c = new Consumer(this, handler, options);
    this.consumers.push(c);
    this.schedulePump();
    return c;
  }

  /** @internal Called by Consumer.close: takes its deliveries back for redelivery. */
  removeConsumer(c: Consumer): void {
    this.consumers = this.consumers.filter((x) => x !== c);
    for (const entry of this.inflight.values()) {
      if (entry.consumer === c) this.takeBack(entry);
    }
    this.schedulePump();
  }

  private release(entry: InFlight): void {
    this.inflight.delete(entry.record.offset);
    if (entry.consumer !== null) entry.consumer.held--;
    entry.lastConsumer = entry.consumer;
    entry.consumer = null;
  }

  private takeBack(entry: InFlight): void {
    this.release(entry);
    this.redeliver.push(requeued(entry));
  }

  /** New records are durable, or credit was returned: deliver what can be delivered. */
  schedulePump(): void {
    if (this.pumpScheduled || this.closed) return;
    this.pumpScheduled = true;
    queueMicrotask(() => {
      this.pumpScheduled = false;
      void this.pump();
    });
  }

  private async pump(): Promise<void> {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    /** The clock, read once per run of the loop between awaits (the lock deadlines need no more). */
    let now: number | undefined;
    try {
      do {
        this.pumpAgain = false;
        for (;;) {
          if (this.closed) return;
          let consumer = this.pickConsumer(null);
          if (consumer === null) break;
          let entry = this.nextRedelivery();
          if (entry !== null && entry.lastConsumer === consumer) {
            // Prefer another consumer for a message this one gave back or sat on.
            consumer = this.pickConsumer(consumer) ?? consumer;
          }
          if (entry === null) {
            let record: LogRecord | null;
            if (this.bufferHead < this.buffer.length) {
              record = this.takeBuffered();
            } else {
              record = await this.fill();
              now = undefined;
            }
            if (record === null) break;
            consumer = consumer.closed ? this.pickConsumer(null) : consumer;
            if (consumer === null) {
              this.bufferHead--; // put it back
              break;
            }
            const count = this.acks.state.counts.get(record.offset) ?? 0;
            entry = { record, deliveryId: 0, deliveryCount: count, consumer: null, lastConsumer: null, deadline: 0 };
          }
          if (this.leavesInstead(entry)) continue;
          now ??= this.clock.now();
          this.deliver(consumer, entry, now);
        }
      } while (this.pumpAgain);
    } catch (err) {
      this.hooks.error(err as Error);
    } finally {
      this.pumping = false;
    }
  }

  /** When a message is past its TTL or its delivery limit, starts its dead-lettering instead of delivering it. */
  private leavesInstead(entry: InFlight): boolean {
    const { messageTtl, deliveryLimit } = this.policy;
    const r = entry.record;
    if (messageTtl !== undefined || r.headerNames > 1) {
      const expiresAt = this.expiresAt(r);
      if (expiresAt !== undefined && expiresAt <= this.clock.now()) {
        this.leave(r, 'expired', undefined, null);
        return true;
      }
    }
    if (deliveryLimit !== undefined && entry.deliveryCount >= deliveryLimit) {
      this.leave(r, 'delivery_limit', undefined, null);
      return true;
    }
    return false;
  }

  private expiresAt(r: LogRecord): number | undefined {
    const own = expiresAtOf(r);
    const queue = this.policy.messageTtl === undefined ? undefined : r.timestamp + this.policy.messageTtl;
    if (own === undefined) return queue;
    return queue === undefined ? own : Math.min(own, queue);
  }

  /** Dead-letters a message (not in flight), then acks it. */
  private leave(r: LogRecord, reason: DeathReason, error: unknown, errorExchange: string | null): void {
    const offset = r.offset;
    if (this.leaving.has(offset) || this.isAcked(offset)) return;
    this.leaving.add(offset);
    this.hooks
      .deadLetter(r, this.name, reason, error, errorExchange)
      .then(
        () => {
          this.ackOffset(offset, false);
        },
        (err: Error) => {
          // Not moved: it stays in the queue and is offered again.
          this.hooks.error(err);
          this.redeliver.push({ record: r, deliveryId: 0, deliveryCount: this.acks.state.counts.get(offset) ?? 0, consumer: null, lastConsumer: null, deadline: 0 });
        },
      )
      .finally(() => {
        this.leaving.delete(offset);
        this.schedulePump();
      });
  }

  private pickConsumer(exclude: Consumer | null): Consumer | null {
    const n = this.consumers.length;
    for (let i = 0; i < n; i++) {
      const c = this.consumers[(this.rr + i) % n] as Consumer;
      if (c.held < c.prefetch && !c.closed && c !== exclude) {
        this.rr = (this.rr + i + 1) % n;
        return c;
      }
    }
    return null;
  }

  private nextRedelivery(): InFlight | null {
    while (this.redeliver.length > 0) {
      const e = this.redeliver.shift() as InFlight;
      if (!this.isAcked(e.record.offset) && !this.leaving.has(e.record.offset)) return e;
    }
    return null;
  }

  private deliverable(offset: number): boolean {
    return !this.isAcked(offset) && !this.leaving.has(offset) && !this.inflight.has(offset) && !this.acks.state.retryAt.has(offset);
  }

  private takeBuffered(): LogRecord | null {
    while (this.bufferHead < this.buffer.length) {
      const r = this.buffer[this.bufferHead++] as LogRecord;
      if (this.deliverable(r.offset)) return r;
    }
    return null;
  }

  /** Reads the next batch from the log; returns its first deliverable record, or null when caught up. */
  private async fill(): Promise<LogRecord | null> {
    for (;;) {
      if (this.readCursor < this.log.startOffset) this.readCursor = this.log.startOffset;
      if (this.readCursor >= this.log.endOffset) return null;
      const records = await this.readNext(this.readCursor);
      if (records.length === 0) return null;
      this.buffer = records;
      this.bufferHead = 0;
      this.readCursor = records[records.length - 1]!.offset + 1;
      this.startReadAhead(this.readCursor);
      const r = this.takeBuffered();
      if (r !== null) return r;
    }
  }

  /**
   * The batch at `from`: the one read ahead when it starts there, else a fresh read. Reading the
   * next batch while this one is delivered keeps the pump from stopping for each read (1-1.5 ms
   * per 256 KiB; a served consumer, CPU-bound, spent ~30% of its time there). Stored records
   * never change, so a batch read early is as good as one read now; one read for another
   * offset, or one that failed, is dropped and read again.
   */
  private readNext(from: number): Promise<LogRecord[]> {
    const ahead = this.readAhead;
    this.readAhead = null;
    const read = () => this.log.read(from, { maxBytes: READ_BATCH_BYTES });
    if (ahead === null || ahead.from !== from) return read();
    return ahead.records.catch(read);
  }

  private startReadAhead(from: number): void {
    if (this.closed || from >= this.log.endOffset) return;
    const records = this.log.read(from, { maxBytes: READ_BATCH_BYTES });
    records.catch(() => {}); // handled when used (read again); unused, it is simply dropped
    this.readAhead = { from, records };
  }

  private deliver(consumer: Consumer, entry: InFlight, now: number): void {
    assert(entry.consumer === null, 'an entry is delivered once: one going back is a copy (requeued)');
    const deliveryId = ++this.deliverySeq;
    entry.deliveryId = deliveryId;
    entry.deliveryCount++;
    consumer.held++;
    const sink = consumer.sink;
    if (sink !== null) {
      // The sink takes the entry itself (TakenDelivery): no Message, no handler call.
      assert(consumer.held <= consumer.prefetch, 'a consumer never holds more than its prefetch');
      entry.consumer = consumer;
      entry.deadline = now + consumer.lockTimeoutMs;
      this.inflight.set(entry.record.offset, entry);
      if (this.policy.deliveryLimit === undefined) sink.take(entry);
      else this.persistCountThen(entry, deliveryId, () => sink.take(entry));
      return;
    }
    const msg = new Message(entry.record, this.queue, deliveryId, entry.deliveryCount, this);
    if (consumer.ackMode === 'none') {
      // At most once: delivered means done.
      this.ackOffset(entry.record.offset, false);
      msg.settled = true;
      consumer.push(msg);
      return;
    }
    entry.consumer = consumer;
    entry.deadline = now + consumer.lockTimeoutMs;
    this.inflight.set(entry.record.offset, entry);
    if (this.policy.deliveryLimit === undefined) {
      consumer.push(msg);
      return;
    }
    this.persistCountThen(entry, deliveryId, () => consumer.push(msg));
  }

  /**
   * The count is durable before the handler sees the message, so a message that crashes the
   * whole process still reaches its limit across restarts. `then` runs if the delivery is still
   * in flight by then.
   */
  private persistCountThen(entry: InFlight, deliveryId: number, then: () => void): void {
    this.acks.state.counts.set(entry.record.offset, entry.deliveryCount);
    this.acks.persistCount(entry.record.offset, entry.deliveryCount).then(
      () => {
        if (this.inflight.get(entry.record.offset) === entry && entry.deliveryId === deliveryId) then();
      },
      (err: Error) => {
        this.hooks.error(err);
        if (this.inflight.get(entry.record.offset) === entry) this.takeBack(entry);
        this.schedulePump();
      },
    );
  }

  /** Finds a delivery still in flight under this deliveryId and takes it out of flight. */
  private settleEntry(msg: Message): InFlight | null {
    const entry = this.inflight.get(msg.offset);
    if (msg.settled || entry === undefined || entry.deliveryId !== msg.deliveryId) return null;
    msg.settled = true;
    this.release(entry);
    this.schedulePump();
    return entry;
  }

  settle(msg: Message, ack: boolean, requeue: boolean): Promise<SettleStatus> {
    const entry = this.settleEntry(msg);
    if (entry === null) return Promise.resolve('unknown');
    return this.settled(entry, ack, requeue);
  }

  private settled(entry: InFlight, ack: boolean, requeue: boolean): Promise<SettleStatus> {
    if (ack) return (this.ackOffset(entry.record.offset, true) as Promise<void>).then(() => 'acked' as const);
    if (requeue) {
      this.redeliver.unshift(requeued(entry));
      return Promise.resolve('nacked');
    }
    this.leave(entry.record, 'rejected', undefined, null);
    return Promise.resolve('nacked');
  }

  /** @internal The auto-ack path: ack, or put back for redelivery. */
  settleQuietly(msg: Message, ack: boolean): void {
    const entry = this.settleEntry(msg);
    if (entry === null) return;
    this.settledQuietly(entry, ack);
  }

  private settledQuietly(entry: InFlight, ack: boolean): void {
    if (ack) this.ackOffset(entry.record.offset, false);
    else this.redeliver.unshift(requeued(entry));
  }

  /** Takes a delivery a sink holds out of flight; null when it is not in flight any more. */
  private settleTakenEntry(d: TakenDelivery): InFlight | null {
    const entry = d as InFlight;
    // Entries are never delivered twice (one going back is a copy), so identity is the delivery.
    if (entry.consumer === null || this.inflight.get(entry.record.offset) !== entry) return null;
    this.release(entry);
    this.schedulePump();
    return entry;
  }

  /** @internal As `settle`, for a delivery a sink took. */
  settleTaken(d: TakenDelivery, ack: boolean, requeue: boolean): Promise<SettleStatus> {
    const entry = this.settleTakenEntry(d);
    if (entry === null) return Promise.resolve('unknown');
    return this.settled(entry, ack, requeue);
  }

  /** @internal As `settleQuietly`, for a delivery a sink took: the 'auto' handler ended well (ack) or not (requeue). */
  settleTakenQuietly(d: TakenDelivery, ok: boolean): void {
    const entry = this.settleTakenEntry(d);
    if (entry !== null) this.settledQuietly(entry, ok);
  }

  /** @internal A failed attempt with retries left: redeliver after `delayMs`, durably. */
  retryLater(msg: Message, delayMs: number): void {
    const entry = this.settleEntry(msg);
    if (entry === null) return;
    const offset = msg.offset;
    const dueAt = this.clock.now() + delayMs;
    this.acks.state.retryAt.set(offset, dueAt);
    // The attempt count must survive the wait (and a restart), with or without a deliveryLimit.
    this.acks.state.counts.set(offset, entry.deliveryCount);
    this.acks.persistCount(offset, entry.deliveryCount).catch((err: Error) => this.hooks.error(err));
    this.acks.persistRetry(offset, dueAt).catch((err: Error) => this.hooks.error(err));
    this.armRetry(offset, dueAt);
  }

  private armRetry(offset: number, dueAt: number): void {
    this.hooks.scheduleRetry(`${this.queue}\0${this.name}\0${offset}`, dueAt, () => {
      if (!this.acks.state.retryAt.has(offset) || this.isAcked(offset)) return;
      this.acks.state.retryAt.delete(offset);
      this.acks.persistRetry(offset, 0).catch((err: Error) => this.hooks.error(err));
      void this.redeliverOffset(offset);
    });
  }

  private async redeliverOffset(offset: number): Promise<void> {
    if (offset < this.log.startOffset) return;
    const [r] = await this.log.read(offset, { maxRecords: 1 });
    if (r === undefined || r.offset !== offset) return;
    const count = this.acks.state.counts.get(offset) ?? 0;
    this.redeliver.push({ record: r, deliveryId: 0, deliveryCount: Math.max(count, 1), consumer: null, lastConsumer: null, deadline: 0 });
    this.schedulePump();
  }

  /** @internal The last attempt failed: dead-letter (or send to the error exchange). */
  giveUp(msg: Message, error: unknown, errorExchange: string | null): void {
    const entry = this.settleEntry(msg);
    if (entry === null) return;
    this.leave(entry.record, 'rejected', error, errorExchange);
  }

  /** Acks an offset outside any delivery (replay takes messages this way); resolves once durable. */
  async ackDurably(offset: number): Promise<void> {
    if (!ackInto(this.acks.state, offset)) return;
    await this.acks.persistOne(offset, true);
  }

  private ackOffset(offset: number, wantPromise: boolean): Promise<void> | undefined {
    ackInto(this.acks.state, offset);
    return this.acks.persistOne(offset, wantPromise);
  }

  /**
   * Drop-head overflow: everything below `offset` that is not in flight leaves the queue with
   * reason 'maxlen' (dead-lettered, or dropped with an event), then is acked.
   */
  dropBefore(offset: number): void {
    const dropped: number[] = [];
    for (let o = Math.max(this.acks.state.committed, this.log.startOffset); o < offset; o++) {
      if (this.deliverable(o)) {
        this.leaving.add(o);
        dropped.push(o);
      }
    }
    if (dropped.length > 0) void this.dropOffsets(dropped);
  }

  private async dropOffsets(offsets: number[]): Promise<void> {
    let i = 0;
    try {
      while (i < offsets.length) {
        const records = await this.log.read(offsets[i] as number, { maxBytes: READ_BATCH_BYTES });
        if (records.length === 0) break;
        for (const r of records) {
          if (i >= offsets.length) break;
          if (r.offset !== offsets[i]) continue;
          this.leaving.delete(r.offset);
          this.leave(r, 'maxlen', undefined, null);
          i++;
        }
      }
    } catch (err) {
      this.hooks.error(err as Error);
    }
    // Whatever could not be read any more is gone from the log already.
    for (; i < offsets.length; i++) {
      this.leaving.delete(offsets[i] as number);
      this.ackOffset(offsets[i] as number, false);
    }
  }

  /**
   * Expires a message whose own TTL passed, wherever it is in the queue (the queue's TTL wheel
   * calls this). One in flight is left alone: it expires if it comes back.
   */
  expireOffset(r: LogRecord): void {
    if (!this.deliverable(r.offset)) return;
    this.leave(r, 'expired', undefined, null);
  }

  /**
   * Expires messages past the queue's TTL from the oldest unacked on: with one TTL for the whole
   * queue they expire in offset order, so the scan stops at the first one still alive.
   */
  async expireByQueueTtl(): Promise<void> {
    const ttl = this.policy.messageTtl;
    const now = this.clock.now();
    if (ttl === undefined || this.ttlScanning || now < this.ttlNextAt || this.closed) return;
    this.ttlScanning = true;
    try {
      this.ttlCursor = Math.max(this.ttlCursor, this.acks.state.committed, this.log.startOffset);
      while (this.ttlCursor < this.log.endOffset) {
        const records = await this.log.read(this.ttlCursor, { maxBytes: 256 * 1024 });
        if (records.length === 0) return;
        for (const r of records) {
          if (r.timestamp + ttl > now) {
            this.ttlNextAt = r.timestamp + ttl;
            return;
          }
          if (this.deliverable(r.offset)) this.leave(r, 'expired', undefined, null);
          this.ttlCursor = r.offset + 1;
        }
      }
      this.ttlNextAt = 0;
    } catch (err) {
      this.hooks.error(err as Error);
    } finally {
      this.ttlScanning = false;
    }
  }

  /** Takes back deliveries held past their lock timeout. */
  expireLocks(): number {
    const now = this.clock.now();
    let n = 0;
    for (const entry of [...this.inflight.values()]) {
      if (entry.deadline <= now) {
        this.takeBack(entry);
        n++;
      }
    }
    if (n > 0) this.schedulePump();
    return n;
  }

  /** Resolves when all acks so far are durable. */
  drainAcks(): Promise<void> {
    return this.acks.drain();
  }

  async close(): Promise<void> {
    for (const c of [...this.consumers]) await c.close();
    this.closed = true;
    await this.acks.close();
  }
}

/** A fresh entry for a delivery going back: the old one stays settled, so a late settle of it is 'unknown'. */
function requeued(entry: InFlight): InFlight {
  return { record: entry.record, deliveryId: 0, deliveryCount: entry.deliveryCount, consumer: null, lastConsumer: entry.lastConsumer, deadline: 0 };
}

/** The delay before attempt `attempt + 1`, after `attempt` failures: initial·factor^(attempt-1), capped, ± jitter. */
export function backoffMs(backoff: { initial: number; factor: number; max: number; jitter: number }, attempt: number, random = Math.random): number {
  const base = Math.min(backoff.max, backoff.initial * backoff.factor ** Math.max(0, attempt - 1));
  return Math.max(0, Math.round(base * (1 + backoff.jitter * (random() * 2 - 1))));
}

/**
 * @internal What a handler may return instead of a promise when someone else reports how the
 * call ended: the server's deliveries, which the client's DONE ends (src/server). `end` does what
 * the promise settling would, with no closure per message. It may end before the consumer has
 * seen it (the outcome is kept).
 */
export class HandlerCall {
  // Set in the constructor rather than as class fields: one is made per served delivery, and
  // class-field initializers made that ~60% slower (a subclass's construction ~22 -> ~14 ns).
  declare private consumer: Consumer | null;
  declare private called: Message | null;
  declare private attempt: number;
  /** 0 running, 1 ended well, 2 ended with `err`. */
  declare private state: number;
  declare private err: unknown;

  constructor() {
    this.consumer = null;
    this.called = null;
    this.attempt = 0;
    this.state = 0;
    this.err = undefined;
  }

  /** Called by the consumer that ran the handler. */
  started(consumer: Consumer, msg: Message, attempt: number): void {
    assert(this.consumer === null, 'a handler call is started once');
    this.consumer = consumer;
    this.called = msg;
    this.attempt = attempt;
    if (this.state !== 0) consumer.ended(msg, this.state === 1, this.err, attempt);
  }

  /** Ends the call: as its promise resolving (`ok`) or rejecting with `err`. Idempotent. */
  end(ok: boolean, err?: unknown): void {
    if (this.state !== 0) return;
    this.state = ok ? 1 : 2;
    this.err = err;
    if (this.consumer !== null) this.consumer.ended(this.called as Message, ok, err, this.attempt);
  }
}

/**
 * One consumer in a group. Holds at most `prefetch` deliveries and runs at most `concurrency`
 * handlers; the rest wait in `waiting` (bounded by prefetch).
 */
export class Consumer {
  held = 0;
  closed = false;
  /** @internal Set when the handler carries a sink and this consumer can use it ('auto' without retry). */
  readonly sink: DeliverySink | null;
  readonly ackMode: AckMode;
  readonly prefetch: number;
  readonly concurrency: number;
  readonly lockTimeoutMs: number;
  private readonly retry: ResolvedConsumerOptions['retry'];
  private readonly errorExchange: string | null;
  private running = 0;
  private waiting: Message[] = [];
  private waitingHead = 0;
  private idle: (() => void)[] = [];
  private timers = new Set<NodeJS.Timeout>();

  constructor(
    private readonly group: ConsumerGroup,
    private readonly handler: Handler,
    options: ResolvedConsumerOptions,
  ) {
    this.ackMode = options.ack;
    this.prefetch = options.prefetch;
    this.concurrency = options.concurrency;
    this.lockTimeoutMs = options.lockTimeoutMs;
    this.retry = options.retry;
    this.errorExchange = options.errorExchange;
    // A retry policy needs each attempt's outcome and count here, so it keeps the handler path.
    this.sink = options.ack === 'auto' && options.retry === null ? sinkOf(handler) : null;
  }

  /** @internal Settles a delivery this consumer's sink took (ACK or NACK from the server's client). */
  settleTaken(d: TakenDelivery, ack: boolean, requeue: boolean): Promise<SettleStatus> {
    return this.group.settleTaken(d, ack, requeue);
  }

  /** @internal The sink's 'auto' handler ended: well (ack) or badly (requeue, as a failed embedded handler). */
  settleTakenQuietly(d: TakenDelivery, ok: boolean): void {
    this.group.settleTakenQuietly(d, ok);
  }

  get groupName(): string {
    return this.group.name;
  }

  /** @internal */
  push(msg: Message): void {
    assert(this.held <= this.prefetch, 'a consumer never holds more than its prefetch');
    if (this.running < this.concurrency) this.run(msg, 1);
    else this.waiting.push(msg);
  }

  private run(msg: Message, attempt: number): void {
    this.running++;
    let result: unknown;
    try {
      result = this.handler(msg);
    } catch (err) {
      this.finish(msg, false, err, attempt);
      return;
    }
    if (result instanceof HandlerCall) {
      // Ended by whoever holds it (src/server): no closures per message, as a promise needs.
      result.started(this, msg, attempt);
    } else if (result !== null && typeof result === 'object' && typeof (result as Promise<unknown>).then === 'function') {
      (result as Promise<unknown>).then(
        () => this.finish(msg, true, undefined, attempt),
        (err: unknown) => this.finish(msg, false, err, attempt),
      );
    } else {
      this.finish(msg, true, undefined, attempt);
    }
  }

  /** @internal A HandlerCall ended: what its promise settling would do. */
  ended(msg: Message, ok: boolean, err: unknown, attempt: number): void {
    this.finish(msg, ok, err, attempt);
  }

  private finish(msg: Message, ok: boolean, err: unknown, attempt: number): void {
    if (!ok && this.ackMode === 'auto' && this.retry !== null && !this.closed) {
      if (this.retry.mode === 'local' && attempt < this.retry.attempts) {
        // Run again in process after the backoff, keeping the slot and the delivery.
        const t = setTimeout(() => {
          this.timers.delete(t);
          this.running--;
          if (this.closed) return this.next();
          this.run(msg, attempt + 1);
        }, backoffMs(this.retry.backoff, attempt));
        this.timers.add(t);
        return;
      }
      const tries = this.retry.mode === 'local' ? attempt : msg.deliveryCount;
      if (tries < this.retry.attempts) this.group.retryLater(msg, backoffMs(this.retry.backoff, tries));
      else this.group.giveUp(msg, err, this.errorExchange);
    } else if (this.ackMode === 'auto') {
      this.group.settleQuietly(msg, ok);
    } else if (this.ackMode === 'none') {
      this.held--;
      this.group.schedulePump();
    }
    this.running--;
    this.next();
  }

  private next(): void {
    if (this.waitingHead < this.waiting.length && !this.closed) {
      const next = this.waiting[this.waitingHead++] as Message;
      if (this.waitingHead === this.waiting.length) {
        this.waiting = [];
        this.waitingHead = 0;
      }
      this.run(next, 1);
    } else if (this.running === 0) {
      const idle = this.idle;
      this.idle = [];
      for (const f of idle) f();
    }
  }

  /**
   * Stops taking messages, waits for running handlers to settle, and hands every unsettled
   * delivery back to the group for redelivery to the others.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.waiting = [];
    this.waitingHead = 0;
    for (const t of this.timers) {
      clearTimeout(t);
      this.running--;
    }
    this.timers.clear();
    if (this.running > 0) await new Promise<void>((resolve) => this.idle.push(resolve));
    this.group.removeConsumer(this);
  }
}
