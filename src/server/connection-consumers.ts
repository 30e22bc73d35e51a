/**
 * The consumers one connection runs on the broker, and their deliveries (docs/protocol.md §4).
 *
 * Each remote consumer is a real `broker.consume` whose handler forwards the message as a
 * DELIVERY frame. The broker's own prefetch accounting is the credit: what the handler returns
 * decides when a slot comes back.
 * - 'manual': the handler returns at once; ACK/NACK settle the message (msg.ack()/msg.nack()).
 * - 'auto': the handler returns a promise that DONE resolves (ack) or rejects (nack or retry),
 *   so the broker applies exactly the embedded auto-ack and retry rules.
 * - 'none': the message is acked as it is delivered; the handler's promise resolves on CREDIT.
 * Closing a consumer (or losing the connection) settles every pending handler promise as a
 * failure ('auto') or as done ('none') so the broker's close can finish, and the broker hands the
 * unsettled messages to the group's other consumers.
 */
import assert from 'node:assert/strict';
import type { Message } from '../broker/delivery.js';
import type { Consumer } from '../broker/group.js';
import { SpoolError } from '../errors.js';
import { META_HEADERS, META_ROUTE } from '../broker/message.js';
import { encodeDeliveryBytes } from './wire/codec.js';
import type { FrameWriter } from './wire/frame-writer.js';
import type { ServedBroker } from './served-broker.js';
import { TagTable } from './tag-table.js';

type AckMode = 'none' | 'auto' | 'manual';

interface RemoteConsumer {
  id: number;
  ack: AckMode;
  consumer: Consumer | null;
  closed: boolean;
  /** 'none' mode: handler calls waiting for CREDIT, oldest first. */
  creditWaiters: Delivery[];
}

/**
 * One delivery on its way to the client, and the broker's handler call for it. It is its own
 * thenable: the broker's consumer calls `then(ok, fail)` on what the handler returns, and DONE or
 * CREDIT calls those back, so no Promise is made per message.
 */
class Delivery {
  private ok: (() => void) | null = null;
  private fail: ((err: unknown) => void) | null = null;
  /** 0 running, 1 ended well, 2 ended with `err` (fields, not an object: one allocation per message is enough). */
  private state = 0;
  private err: unknown = undefined;

  constructor(
    readonly msg: Message,
    readonly consumerId: number,
  ) {}

  then(ok: () => void, fail: (err: unknown) => void): void {
    if (this.state === 1) return ok();
    if (this.state === 2) return fail(this.err);
    this.ok = ok;
    this.fail = fail;
  }

  /** Ends the handler call: resolved (ack in 'auto'), or rejected (nack or retry in 'auto'). Idempotent. */
  finish(ok: boolean, err?: unknown): void {
    if (this.state !== 0) return;
    this.state = ok ? 1 : 2;
    this.err = err;
    const cb = ok ? this.ok : this.fail;
    this.ok = null;
    this.fail = null;
    if (cb !== null) (cb as (e?: unknown) => void)(err);
  }
}

/** A failure the client's handler reported (DONE with outcome 1). */
export class RemoteHandlerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RemoteHandlerError';
  }
}

export class ConnectionConsumers {
  private readonly consumers = new Map<number, RemoteConsumer>();
  private readonly deliveries = new TagTable<Delivery>();
  private tagNext = 1;
  private tagsWrapped = false;

  constructor(
    private readonly broker: ServedBroker,
    private readonly writer: FrameWriter,
  ) {}

  /** REQUEST consume: starts a broker consumer that forwards to this connection. Resolves to `{ group }`. */
  async open(id: number, queue: unknown, rawOptions: unknown): Promise<{ group: string }> {
    if (this.consumers.has(id)) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `consumer id ${id} is already in use on this connection`);
    if (rawOptions !== undefined && (rawOptions === null || typeof rawOptions !== 'object' || Array.isArray(rawOptions))) {
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'consume options must be an object');
    }
    const options = { ...(rawOptions as Record<string, unknown> | undefined) };
    delete options.workers;
    const ack = (options.ack ?? 'auto') as AckMode;
    const rc: RemoteConsumer = { id, ack, consumer: null, closed: false, creditWaiters: [] };
    this.consumers.set(id, rc);
    // The whole credit is in flight: the client's own `concurrency` bounds its handlers.
    options.concurrency = Number.MAX_SAFE_INTEGER;
    let consumer: Consumer;
    try {
      consumer = await this.broker.consume(queue as string, (msg: Message) => this.deliver(rc, msg), options);
    } catch (err) {
      if (this.consumers.get(id) === rc) this.consumers.delete(id);
      throw err;
    }
    if (rc.closed) {
      // The client or the connection went away while the broker was starting it.
      await consumer.close();
      throw new SpoolError('SPOOL_ERR_CLOSED', 'the consumer was closed while starting');
    }
    rc.consumer = consumer;
    return { group: (consumer as { groupName?: string }).groupName ?? ((options.group as string | undefined) ?? 'default') };
  }

  /** The broker's handler: one DELIVERY frame, and a return value that says when the credit comes back. */
  private deliver(rc: RemoteConsumer, msg: Message): Delivery | undefined {
    if (rc.closed) {
      // Not sent: 'auto' gives it back, 'manual' is taken back when the close completes.
      if (rc.ack !== 'auto') return undefined;
      const d = new Delivery(msg, rc.id);
      d.finish(false, new Error('consumer closed'));
      return d;
    }
    const tag = rc.ack === 'none' ? 0 : this.newTag();
    // Straight from the stored bytes: the id, route and headers are never decoded here.
    const r = msg.record;
    const headersJson = r.headerNames < 2 ? undefined : r.headerBytes(META_HEADERS);
    encodeDeliveryBytes(this.writer, rc.id, tag, r.offset, r.timestamp, msg.deliveryId, msg.deliveryCount, r.key, r.headerBytes(META_ROUTE), headersJson, r.value);
    const d = new Delivery(msg, rc.id);
    if (rc.ack === 'none') {
      rc.creditWaiters.push(d);
      return d;
    }
    this.deliveries.set(tag, d);
    // 'manual': the handler returns at once; ACK/NACK settle the message itself.
    return rc.ack === 'auto' ? d : undefined;
  }

  private newTag(): number {
    // Tags wrap at 2^32; the live ones are bounded by the prefetch of this connection's consumers.
    // Before the first wrap every tag is new, so only a wrapped counter checks for a live one.
    for (;;) {
      const tag = this.tagNext;
      if (tag >= 0xffff_fffe) {
        this.tagNext = 1;
        this.tagsWrapped = true;
      } else {
        this.tagNext = tag + 1;
      }
      if (!this.tagsWrapped || !this.deliveries.has(tag)) return tag;
    }
  }

  /** ACK: msg.ack(). Resolves to the settle status ('unknown' for a tag already settled or taken back). */
  ack(tag: number): Promise<string> {
    const d = this.take(tag);
    if (d === null) return Promise.resolve('unknown');
    const settled = d.msg.ack();
    // An explicit ack inside an 'auto' handler: the handler call ends too, as a no-op settle.
    d.finish(true);
    return settled;
  }

  /** NACK: msg.nack({ requeue }). */
  nack(tag: number, requeue: boolean): Promise<string> {
    const d = this.take(tag);
    if (d === null) return Promise.resolve('unknown');
    const settled = d.msg.nack({ requeue });
    d.finish(true);
    return settled;
  }

  /** One DONE entry: the client's 'auto' handler ended; an unknown tag (already settled) is ignored. */
  done(tag: number, failure: string | null): void {
    const d = this.deliveries.take(tag);
    if (d === undefined) return;
    if (failure === null) d.finish(true);
    else d.finish(false, new RemoteHandlerError(failure));
  }

  /** CREDIT: the client finished `count` deliveries of a 'none' consumer. */
  credit(consumerId: number, count: number): void {
    const rc = this.consumers.get(consumerId);
    if (rc === undefined) return;
    const released = rc.creditWaiters.splice(0, count);
    for (const d of released) d.finish(true);
  }

  private take(tag: number): Delivery | null {
    return this.deliveries.take(tag) ?? null;
  }

  /** REQUEST consumerClose: stops one consumer; its unsettled deliveries are redelivered. */
  async close(id: number): Promise<void> {
    const rc = this.consumers.get(id);
    if (rc === undefined) return;
    this.consumers.delete(id);
    await this.stop(rc);
  }

  /** Closes every consumer of the connection (it is gone). */
  async closeAll(): Promise<void> {
    const all = [...this.consumers.values()];
    this.consumers.clear();
    await Promise.all(all.map((rc) => this.stop(rc)));
    assert(this.deliveries.size === 0, 'a closed connection holds no deliveries');
  }

  private async stop(rc: RemoteConsumer): Promise<void> {
    rc.closed = true;
    // close() marks the consumer closed at once, then waits for its running handler calls, which
    // are ours: end them now, as failures, so the messages go back rather than being acked.
    const closing = rc.consumer?.close();
    const mine: number[] = [];
    this.deliveries.forEach((d, tag) => {
      if (d.consumerId === rc.id) mine.push(tag);
    });
    for (const tag of mine) this.deliveries.take(tag)?.finish(false, new Error('the remote consumer went away before finishing'));
    const waiters = rc.creditWaiters;
    rc.creditWaiters = [];
    for (const d of waiters) d.finish(true);
    await closing;
  }
}
