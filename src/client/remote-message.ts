/**
 * A message delivered over the wire: the same fields and methods as the embedded `Message`
 * (src/broker/delivery.ts), so a handler runs unchanged against either broker.
 */
import type { NackOptions, SettleStatus } from '../broker/delivery.js';
import type { Headers } from '../broker/message.js';

/** How a RemoteMessage reaches the server to settle; implemented by the RemoteBroker. */
export interface RemoteSettler {
  /** Sends ACK or NACK for `msg` and resolves to the server's answer ('unknown' once the delivery's connection is gone). */
  settle(msg: RemoteMessage, ack: boolean, requeue: boolean): Promise<SettleStatus>;
}

export class RemoteMessage {
  readonly id: string;
  readonly queue: string;
  readonly exchange: string;
  readonly routingKey: string;
  readonly offset: number;
  readonly timestamp: number;
  /** The broker's id of this delivery (a redelivery gets a new one). */
  readonly deliveryId: number;
  readonly deliveryCount: number;
  readonly body: Buffer;
  readonly headers: Headers;
  /** @internal The connection-scoped delivery tag (0: nothing to settle, ack 'none'). */
  readonly tag: number;
  /** @internal Which connection delivered it: a tag means nothing on another. */
  readonly session: number;
  /** @internal Set once acked, nacked or reported DONE. */
  settled: boolean;

  constructor(
    tag: number,
    offset: number,
    timestamp: number,
    deliveryId: number,
    deliveryCount: number,
    id: string,
    exchange: string,
    routingKey: string,
    headers: Record<string, unknown> | undefined,
    body: Buffer,
    queue: string,
    session: number,
    settledAlready: boolean,
    private readonly settler: RemoteSettler,
  ) {
    this.id = id;
    this.queue = queue;
    this.exchange = exchange;
    this.routingKey = routingKey;
    this.offset = offset;
    this.timestamp = timestamp;
    this.deliveryId = deliveryId;
    this.deliveryCount = deliveryCount;
    this.body = body;
    this.headers = (headers ?? {}) as Headers;
    this.tag = tag;
    this.session = session;
    this.settled = settledAlready;
  }

  /** True when this message was delivered before (to this group). */
  get redelivered(): boolean {
    return this.deliveryCount > 1;
  }

  /** The body parsed as JSON. */
  json<T = unknown>(): T {
    return JSON.parse(this.body.toString('utf8')) as T;
  }

  /** Acknowledges the message; resolves once the ack is durable on the server. 'unknown' if it was already settled or taken back. */
  ack(): Promise<SettleStatus> {
    return this.settler.settle(this, true, false);
  }

  /** Rejects the message: by default it is redelivered; with `{ requeue: false }` it is dead-lettered (or dropped with an event). */
  nack(options: NackOptions = {}): Promise<SettleStatus> {
    return this.settler.settle(this, false, options.requeue ?? true);
  }
}
