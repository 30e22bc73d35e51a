/**
 * What a consumer receives. Methods live on the prototype so a delivery costs one small object.
 * Vocabulary from nats.js JsMsg: ack, nack (optionally without requeue), and a delivery count.
 */
import type { LogRecord } from '../log/index.js';
import { type Headers, routeOf, userHeadersOf } from './message.js';

/** The outcome of an ack or nack: expected outcomes are values, not exceptions. */
export type SettleStatus = 'acked' | 'nacked' | 'unknown';

export interface NackOptions {
  /** Put the message back for redelivery (default true). False drops or dead-letters it. */
  requeue?: boolean;
}

/** The group side of a delivery: how ack and nack reach the consumer group. */
export interface Settler {
  settle(msg: Message, ack: boolean, requeue: boolean): Promise<SettleStatus>;
}

export class Message {
  /** Set by the group; identifies this delivery (a redelivery gets a new one). */
  readonly deliveryId: number;
  readonly queue: string;
  readonly deliveryCount: number;
  private headersCache: Headers | undefined;
  private routeCache: { exchange: string; routingKey: string } | undefined;
  private idCache: string | undefined;
  /** @internal */
  settled = false;

  constructor(
    /** @internal */ readonly record: LogRecord,
    queue: string,
    deliveryId: number,
    deliveryCount: number,
    private readonly settler: Settler,
  ) {
    this.queue = queue;
    this.deliveryId = deliveryId;
    this.deliveryCount = deliveryCount;
  }

  get id(): string {
    if (this.idCache === undefined) this.idCache = this.record.keyText();
    return this.idCache;
  }
  get exchange(): string {
    this.routeCache ??= routeOf(this.record);
    return this.routeCache.exchange;
  }
  get routingKey(): string {
    this.routeCache ??= routeOf(this.record);
    return this.routeCache.routingKey;
  }
  get offset(): number {
    return this.record.offset;
  }
  get timestamp(): number {
    return this.record.timestamp;
  }
  get body(): Buffer {
    return this.record.value;
  }
  /** True when this message was delivered before (to this group). */
  get redelivered(): boolean {
    return this.deliveryCount > 1;
  }
  get headers(): Headers {
    this.headersCache ??= userHeadersOf(this.record);
    return this.headersCache;
  }

  /** The body parsed as JSON. */
  json<T = unknown>(): T {
    return JSON.parse(this.record.value.toString('utf8')) as T;
  }

  /** Acknowledges the message; resolves once the ack is durable. 'unknown' if it was already settled or taken back. */
  ack(): Promise<SettleStatus> {
    return this.settler.settle(this, true, false);
  }

  /** Rejects the message: by default it is redelivered; with `{ requeue: false }` it is dead-lettered (or dropped with an event). */
  nack(options: NackOptions = {}): Promise<SettleStatus> {
    return this.settler.settle(this, false, options.requeue ?? true);
  }
}
