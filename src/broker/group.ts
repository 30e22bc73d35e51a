/**
 * A consumer group on one queue. Every group sees every message (pub/sub across groups);
 * consumers inside a group compete (a work queue). The group reads the queue's log lazily, in
 * batches, so memory does not grow with the backlog: only prefetched deliveries and one read
 * batch are held.
 *
 * Transitions (each states input → precondition → outcome → events):
 * - deliver: next record from redelivery queue or log → a consumer has credit → in flight with a
 *   new deliveryId and deliveryCount+1 (ack 'none': acked at once).
 * - ack: a delivery in flight with this deliveryId → acked (committed offset advances when
 *   contiguous), persisted by the ack store → credit returns to the consumer.
 * - nack requeue: in flight → back at the head of the redelivery queue, redelivered later.
 * - nack no requeue: in flight → acked and handed to the queue's reject hook ('drop' event until
 *   dead-lettering lands).
 * - lock timeout / consumer closed: in flight → redelivery queue (the old delivery's ack is 'unknown').
 */
import assert from 'node:assert/strict';
import { SpoolError } from '../errors.js';
import type { Clock, Log, LogRecord } from '../log/index.js';
import { AckStore, ackInto } from './ack-store.js';
import { Message, type SettleStatus, type Settler } from './delivery.js';

export type AckMode = 'none' | 'auto' | 'manual';
export type Handler = (msg: Message) => unknown;

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

const READ_BATCH_BYTES = 1024 * 1024;

export interface GroupHooks {
  /** A message nacked without requeue. */
  rejected(record: LogRecord, group: string): void;
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
  private redeliver: InFlight[] = [];
  private readonly inflight = new Map<number, InFlight>();
  private deliverySeq = 0;
  private pumping = false;
  private pumpAgain = false;
  private pumpScheduled = false;
  private closed = false;

  constructor(
    readonly name: string,
    readonly queue: string,
    private readonly log: Log,
    private readonly acks: AckStore,
    private readonly clock: Clock,
    private readonly hooks: GroupHooks,
  ) {
    this.readCursor = Math.max(acks.state.committed, log.startOffset);
    acks.onError = (err) => hooks.error(err);
    acks.onDurable = () => hooks.progressed();
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

  addConsumer(handler: Handler, options: Required<Pick<ConsumerOptions, 'ack' | 'prefetch' | 'concurrency' | 'lockTimeoutMs'>>): Consumer {
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

  private takeBack(entry: InFlight): void {
    this.inflight.delete(entry.record.offset);
    if (entry.consumer !== null) entry.consumer.held--;
    entry.lastConsumer = entry.consumer;
    entry.consumer = null;
    this.redeliver.push(entry);
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
            const record = this.bufferHead < this.buffer.length ? this.takeBuffered() : await this.fill();
            if (record === null) break;
            consumer = consumer.closed ? this.pickConsumer(null) : consumer;
            if (consumer === null) {
              this.bufferHead--; // put it back
              break;
            }
            entry = { record, deliveryId: 0, deliveryCount: 0, consumer: null, lastConsumer: null, deadline: 0 };
          }
          this.deliver(consumer, entry);
        }
      } while (this.pumpAgain);
    } catch (err) {
      this.hooks.error(err as Error);
    } finally {
      this.pumping = false;
    }
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
      if (!this.isAcked(e.record.offset)) return e;
    }
    return null;
  }

  private isAcked(offset: number): boolean {
    return offset < this.acks.state.committed || this.acks.state.acked.has(offset);
  }

  private takeBuffered(): LogRecord | null {
    while (this.bufferHead < this.buffer.length) {
      const r = this.buffer[this.bufferHead++] as LogRecord;
      if (!this.isAcked(r.offset)) return r;
    }
    return null;
  }

  /** Reads the next batch from the log; returns its first unacked record, or null when caught up. */
  private async fill(): Promise<LogRecord | null> {
    for (;;) {
      if (this.readCursor < this.log.startOffset) this.readCursor = this.log.startOffset;
      if (this.readCursor >= this.log.endOffset) return null;
      const records = await this.log.read(this.readCursor, { maxBytes: READ_BATCH_BYTES });
      if (records.length === 0) return null;
      this.buffer = records;
      this.bufferHead = 0;
      this.readCursor = records[records.length - 1]!.offset + 1;
      const r = this.takeBuffered();
      if (r !== null) return r;
    }
  }

  private deliver(consumer: Consumer, entry: InFlight): void {
    entry.deliveryId = ++this.deliverySeq;
    entry.deliveryCount++;
    const msg = new Message(entry.record, this.queue, entry.deliveryId, entry.deliveryCount, this);
    if (consumer.ackMode === 'none') {
      // At most once: delivered means done.
      this.ackOffset(entry.record.offset, false);
      msg.settled = true;
    } else {
      entry.consumer = consumer;
      entry.deadline = this.clock.now() + consumer.lockTimeoutMs;
      this.inflight.set(entry.record.offset, entry);
    }
    consumer.held++;
    consumer.push(msg);
  }

  settle(msg: Message, ack: boolean, requeue: boolean): Promise<SettleStatus> {
    const entry = this.inflight.get(msg.offset);
    if (msg.settled || entry === undefined || entry.deliveryId !== msg.deliveryId) return Promise.resolve('unknown');
    msg.settled = true;
    this.inflight.delete(msg.offset);
    if (entry.consumer !== null) entry.consumer.held--;
    entry.lastConsumer = entry.consumer;
    entry.consumer = null;
    this.schedulePump();
    if (ack) {
      const durable = this.ackOffset(msg.offset, true);
      return (durable as Promise<void>).then(() => 'acked' as const);
    }
    if (requeue) {
      this.redeliver.unshift(entry);
      return Promise.resolve('nacked');
    }
    const durable = this.ackOffset(msg.offset, true);
    this.hooks.rejected(entry.record, this.name);
    return (durable as Promise<void>).then(() => 'nacked' as const);
  }

  /** @internal Auto-ack path: no promise wanted. */
  settleQuietly(msg: Message, ack: boolean): void {
    const entry = this.inflight.get(msg.offset);
    if (msg.settled || entry === undefined || entry.deliveryId !== msg.deliveryId) return;
    msg.settled = true;
    this.inflight.delete(msg.offset);
    if (entry.consumer !== null) entry.consumer.held--;
    entry.lastConsumer = entry.consumer;
    entry.consumer = null;
    this.schedulePump();
    if (ack) this.ackOffset(msg.offset, false);
    else this.redeliver.unshift(entry);
  }

  private ackOffset(offset: number, wantPromise: boolean): Promise<void> | undefined {
    ackInto(this.acks.state, offset);
    return this.acks.persistOne(offset, wantPromise);
  }

  /** Acks everything below `offset` that is not in flight (drop-head overflow). Returns the records' offsets it dropped. */
  dropBefore(offset: number): number[] {
    const dropped: number[] = [];
    for (let o = this.acks.state.committed; o < offset; o++) {
      if (!this.inflight.has(o) && !this.acks.state.acked.has(o)) {
        ackInto(this.acks.state, o);
        dropped.push(o);
      }
    }
    if (dropped.length > 0) this.acks.persist(dropped, false);
    return dropped;
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

/**
 * One consumer in a group. Holds at most `prefetch` deliveries and runs at most `concurrency`
 * handlers; the rest wait in `waiting` (bounded by prefetch).
 */
export class Consumer {
  held = 0;
  closed = false;
  readonly ackMode: AckMode;
  readonly prefetch: number;
  readonly concurrency: number;
  readonly lockTimeoutMs: number;
  private running = 0;
  private waiting: Message[] = [];
  private waitingHead = 0;
  private idle: (() => void)[] = [];

  constructor(
    private readonly group: ConsumerGroup,
    private readonly handler: Handler,
    options: Required<Pick<ConsumerOptions, 'ack' | 'prefetch' | 'concurrency' | 'lockTimeoutMs'>>,
  ) {
    this.ackMode = options.ack;
    this.prefetch = options.prefetch;
    this.concurrency = options.concurrency;
    this.lockTimeoutMs = options.lockTimeoutMs;
  }

  get groupName(): string {
    return this.group.name;
  }

  /** @internal */
  push(msg: Message): void {
    assert(this.held <= this.prefetch, 'a consumer never holds more than its prefetch');
    if (this.running < this.concurrency) this.run(msg);
    else this.waiting.push(msg);
  }

  private run(msg: Message): void {
    this.running++;
    let result: unknown;
    try {
      result = this.handler(msg);
    } catch (err) {
      this.finish(msg, false, err);
      return;
    }
    if (result !== null && typeof result === 'object' && typeof (result as Promise<unknown>).then === 'function') {
      (result as Promise<unknown>).then(
        () => this.finish(msg, true, undefined),
        (err: unknown) => this.finish(msg, false, err),
      );
    } else {
      this.finish(msg, true, undefined);
    }
  }

  private finish(msg: Message, ok: boolean, _err: unknown): void {
    this.running--;
    if (this.ackMode === 'auto') this.group.settleQuietly(msg, ok);
    else if (this.ackMode === 'none') {
      this.held--;
      this.group.schedulePump();
    }
    if (this.waitingHead < this.waiting.length && !this.closed) {
      const next = this.waiting[this.waitingHead++] as Message;
      if (this.waitingHead === this.waiting.length) {
        this.waiting = [];
        this.waitingHead = 0;
      }
      this.run(next);
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
    if (this.running > 0) await new Promise<void>((resolve) => this.idle.push(resolve));
    this.group.removeConsumer(this);
  }
}
