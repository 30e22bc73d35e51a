/**
 * A message delivered over the wire: the same fields and methods as the embedded `Message`
 * (src/broker/delivery.ts), so a handler runs unchanged against either broker.
 */
import type { NackOptions, SettleStatus } from '../broker/delivery.js';
import type { Headers } from '../broker/message.js';
import { readText } from '../server/wire/bytes.js';
import { type DeliveryLayout, deliveryExchange, deliveryRoutingKey } from '../server/wire/codec.js';

/** How a RemoteMessage reaches the server to settle; implemented by the RemoteBroker. */
export interface RemoteSettler {
  /** Sends ACK or NACK for `msg` and resolves to the server's answer ('unknown' once the delivery's connection is gone). */
  settle(msg: RemoteMessage, ack: boolean, requeue: boolean): Promise<SettleStatus>;
}

/**
 * The text fields and the body are decoded from the frame on first access, as the embedded
 * `Message` decodes them from the log: a handler that reads only some of them pays for those.
 * The frame was checked when it arrived (codec `scanDelivery`), so decoding cannot fail.
 */
export class RemoteMessage {
  readonly queue: string;
  readonly offset: number;
  readonly timestamp: number;
  /** The broker's id of this delivery (a redelivery gets a new one). */
  readonly deliveryId: number;
  readonly deliveryCount: number;
  /** @internal The connection-scoped delivery tag (0: nothing to settle, ack 'none'). */
  readonly tag: number;
  /** @internal Which connection delivered it: a tag means nothing on another. */
  readonly session: number;
  /** @internal Set once acked, nacked or reported DONE. */
  settled: boolean;
  private readonly frame: Buffer;
  private readonly idStart: number;
  private readonly idEnd: number;
  private readonly exchangeStart: number;
  private readonly exchangeEnd: number;
  private readonly keyStart: number;
  private readonly keyEnd: number;
  private readonly bodyStart: number;
  private readonly bodyEnd: number;
  private idCache: string | undefined;
  private exchangeCache: string | undefined;
  private keyCache: string | undefined;
  private bodyCache: Buffer | undefined;
  private headersCache: Headers | undefined;

  constructor(
    /** The bytes the DELIVERY was read in (kept by the message) and where its fields lie in them. */
    frame: Buffer,
    layout: DeliveryLayout,
    queue: string,
    session: number,
    settledAlready: boolean,
    private readonly settler: RemoteSettler,
  ) {
    this.frame = frame;
    this.tag = layout.tag;
    this.offset = layout.offset;
    this.timestamp = layout.timestamp;
    this.deliveryId = layout.deliveryId;
    this.deliveryCount = layout.deliveryCount;
    this.idStart = layout.idStart;
    this.idEnd = layout.idEnd;
    this.exchangeStart = layout.exchangeStart;
    this.exchangeEnd = layout.exchangeEnd;
    this.keyStart = layout.keyStart;
    this.keyEnd = layout.keyEnd;
    this.bodyStart = layout.bodyStart;
    this.bodyEnd = layout.bodyEnd;
    this.headersCache = layout.headers as Headers | undefined;
    this.queue = queue;
    this.session = session;
    this.settled = settledAlready;
  }

  get id(): string {
    return (this.idCache ??= readText(this.frame, this.idStart, this.idEnd));
  }
  get exchange(): string {
    return (this.exchangeCache ??= deliveryExchange(this.frame, this.exchangeStart, this.exchangeEnd));
  }
  get routingKey(): string {
    return (this.keyCache ??= deliveryRoutingKey(this.frame, this.keyStart, this.keyEnd));
  }
  get body(): Buffer {
    return (this.bodyCache ??= this.frame.subarray(this.bodyStart, this.bodyEnd));
  }
  get headers(): Headers {
    return (this.headersCache ??= {});
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
