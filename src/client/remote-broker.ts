/**
 * `connect(url)`: a broker in another process, with the embedded `Broker`'s API (docs/protocol.md).
 *
 * Code moves between embedded and remote by changing one line: every call has the same name,
 * arguments, results and error codes. The differences: every method returns a promise (the
 * embedded `queueStats`, `stats` and `list*` return values directly; `await` works for both), and
 * a worker-thread handler module cannot be used remotely.
 *
 * Reliability (docs/protocol.md §5): the client reconnects with exponential backoff. A publish is
 * confirmed only by the server's CONFIRM. One interrupted by a lost connection is resent after
 * reconnecting with the same id (the client makes the id when the caller gave none), so the
 * broker's dedupe window stores it once; the caller sees one result, or SPOOL_ERR_TIMEOUT after
 * its deadline. Consumers are re-created after reconnecting.
 *
 * @example
 *   const broker = await connect('unix:///var/lib/spool/spool.sock');   // or Broker.open(...)
 *   await broker.assertQueue('billing');
 *   const r = await broker.sendToQueue('billing', JSON.stringify({ id: 1 }));
 *   const c = await broker.consume('billing', async (msg) => console.log(msg.json()), { group: 'svc' });
 *   await c.close();
 *   await broker.close();
 */
import { EventEmitter } from 'node:events';
import type { Broker, ConsumeOptions, ExchangeOptions, PublishOptions, PublishResult, ReplayOptions } from '../broker/broker.js';
import type { SettleStatus } from '../broker/delivery.js';
import type { AckMode } from '../broker/group.js';
import { BATCH_MESSAGES_MAX, type Body, type Headers, checkHeaders, generateId } from '../broker/message.js';
import { checkExchangeName, checkName } from '../broker/names.js';
import type { QueueOptions } from '../broker/queue.js';
import type { ExchangeType } from '../broker/routing.js';
import { SpoolError, isSpoolError } from '../errors.js';
import {
  type ConfirmStatus,
  decodeConfirm,
  decodeConfirms,
  type DeliveryLayout,
  newDeliveryLayout,
  deliveryConsumerId,
  decodeError,
  decodeResponse,
  encodeAck,
  encodeCredit,
  encodeDoneRuns,
  encodeDoneTags,
  encodeNack,
  encodePublish,
  encodeRequest,
  requestJson,
  scanDelivery,
  recordsCount,
  scanRecordEntry,
} from '../server/wire/codec.js';
import { r32 } from '../server/wire/bytes.js';
import { FRAME_TYPE_IGNORABLE, FrameType, MAX_FRAME_BYTES_DEFAULT, PUBLISH_MANDATORY, PUBLISH_NEW_ID, PUBLISH_TO_QUEUE, RECORDS_ENTRY_FIXED_BYTES } from '../server/wire/constants.js';
import type { FrameWriter } from '../server/wire/frame-writer.js';
import { toWireJson, trimArgs } from '../server/wire/wire-json.js';
import { TagTable } from '../server/tag-table.js';
import { ClientSession, errorFromWire } from './connection.js';
import { RemoteConsumer, type ConsumerLink, type RemoteHandler } from './remote-consumer.js';
import { RemoteMessage, type RemoteSettler } from './remote-message.js';
import { RemoteSubscription } from './remote-subscription.js';
import { type BrokerAddress, describeAddress, parseBrokerUrl } from './url.js';

export interface ReconnectOptions {
  /** First delay after a lost connection. Default 100 ms. */
  initialDelayMs?: number;
  /** Longest delay between attempts. Default 5000 ms. */
  maxDelayMs?: number;
  /** Growth per failed attempt. Default 2. */
  factor?: number;
}

export interface ConnectOptions {
  /** The server's token (overrides `?token=` in the URL). */
  token?: string;
  /** Deadline of every call, in ms; a publish not confirmed by then fails with SPOOL_ERR_TIMEOUT. Default 30 s. */
  timeoutMs?: number;
  /** Deadline of one connection attempt, handshake included. Default 5 s. */
  connectTimeoutMs?: number;
  /** Reconnect policy, or false to fail calls with SPOOL_ERR_DISCONNECTED when the connection drops. */
  reconnect?: ReconnectOptions | false;
  /** Most requests on the wire at once; later ones wait their turn, in order. Default 10,000. */
  maxInFlight?: number;
  /** Largest frame this client accepts before the server announces its own limit. Default 16 MiB + 64 KiB. */
  maxFrameBytes?: number;
  /** A name the server may show for this connection. */
  clientName?: string;
}

/** Publish options over the wire: the embedded ones, and a per-call deadline. */
export interface RemotePublishOptions extends PublishOptions {
  /** This call's deadline in ms (default: the connection's `timeoutMs`). Not sent to the server. */
  timeoutMs?: number;
}

/** One message of `publishBatch`: its routing key and body, and the options of `publish`. */
export interface RemoteBatchMessage extends RemotePublishOptions {
  routingKey: string;
  body: Body;
}

/** A publish whose arguments were checked and whose id is fixed (resends carry the same one). */
interface PreparedPublish {
  flags: number;
  target: string;
  routingKey: string;
  id: string;
  callerId: boolean;
  optionsJson: string;
  body: Body;
  headers: Headers | undefined;
  mandatory: boolean;
  timeoutMs: number;
}

export type RemoteConsumeOptions = Omit<ConsumeOptions, 'workers'>;

/** `replay`'s options, as embedded; only an object filter crosses the wire (a function is refused). */
export type { ReplayOptions };
export type ReplayResult = Awaited<ReturnType<Broker['replay']>>;

export interface RemoteBrokerEvents {
  /** A mandatory message that routed nowhere (reported to the publisher that sent it). */
  return: [{ id: string; exchange: string; routingKey: string; body: Body; headers: Headers | undefined }];
  /** A consumer could not be re-created after reconnecting, or reconnecting is impossible (wrong token). */
  error: [Error];
  /** The connection was lost; calls wait for the reconnect (up to their deadlines). */
  disconnect: [Error];
  /** Connected again after a loss; in-flight publishes are being resent and consumers re-created. */
  reconnect: [{ attempts: number; downMs: number }];
}

type QueueStats = ReturnType<Broker['queueStats']>;
type BrokerStats = ReturnType<Broker['stats']>;
type ExchangeInfo = ReturnType<Broker['listExchanges']>[number];
type BindingInfo = ReturnType<Broker['listBindings']>[number];

const DEFAULT_PREFETCH = 100;
const SWEEP_INTERVAL_MS = 100;

type CallKind = 'publish' | 'request' | 'settle';

/** One request from its submission to its answer, across reconnects when it is safe to resend. */
interface Call {
  readonly rid: number;
  readonly kind: CallKind;
  /** Safe to send again on a new connection (publishes with their id; idempotent requests). */
  readonly resend: boolean;
  readonly deadline: number;
  /** For messages: `publish of id …`, or the request's op. */
  readonly what: string;
  /** Written on the current session and not yet answered. */
  onWire: boolean;
  /** Answered, failed or timed out: never written again. */
  done: boolean;
  /** When it was submitted, among this broker's calls (set by `submit`). */
  order: number;
  attempts: number;
  write(w: FrameWriter, rid: number): void;
  /** The answer (CONFIRM or RESPONSE payload). */
  complete(type: number, payload: Buffer): void;
  fail(err: Error): void;
}

export class RemoteBroker extends EventEmitter<RemoteBrokerEvents> implements ConsumerLink, RemoteSettler {
  private session: ClientSession | null = null;
  /** Numbers sessions, so a delivery tag is only ever used on the connection that issued it. */
  private sessionSeq = 0;
  /** Calls by request id (sequential, so a TagTable: no Map insert and delete per publish). */
  private readonly calls = new TagTable<Call>();
  /** Submission numbers, so that calls can be listed in the order they were made. */
  private callsMade = 0;
  /** Calls not on the wire yet, oldest first (resends go to the front). */
  private waiting: Call[] = [];
  private waitingHead = 0;
  private onWireCount = 0;
  private ridNext = 1;
  private earliestDeadline = Number.POSITIVE_INFINITY;
  private readonly consumers = new Map<number, RemoteConsumer>();
  /** DONE entries and CREDIT counts of the current session, written at its next flush. */
  /** DONE entries gathered this turn: tags, and the failures among them by index (usually none). */
  private doneTags: number[] = [];
  private doneCount = 0;
  private readonly doneFailures = new Map<number, string>();
  private readonly creditOwed = new Map<number, number>();
  private consumerIdNext = 1;
  /** Filled by each DELIVERY, and each delivery of a RECORDS, as it arrives (one object, reused). */
  private readonly layout: DeliveryLayout = newDeliveryLayout();
  /** The messages of the RECORDS frame being read, made before any is handed on (reused). */
  private readonly recordsBatch: RemoteMessage[] = [];
  /** The session's server takes DONE_RUNS. */
  private doneRuns = false;
  /** The session's server takes PUBLISH flag NEW_ID. @internal (read by PublishCall) */
  newIds = false;
  private serverMaxFrameBytes: number;
  private readonly sweeper: NodeJS.Timeout;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private reconnectAttempts = 0;
  private downSince = 0;
  private closing: Promise<void> | null = null;
  private closed = false;
  /** Set when reconnecting is impossible (wrong token, protocol mismatch) or disabled: every call fails with it. */
  private dead: Error | null = null;
  private idleWaiters: (() => void)[] = [];
  private readonly timeoutMs: number;
  private readonly maxInFlight: number;
  private readonly reconnect: Required<ReconnectOptions> | null;
  /** The last publish target that passed its name check, and the flags it was checked with. */
  private checkedTarget: unknown = undefined;
  private checkedTargetFlags = -1;

  /** @internal Use connect(). */
  constructor(
    readonly address: BrokerAddress,
    private readonly options: ConnectOptions,
  ) {
    super();
    this.timeoutMs = positiveInt(options.timeoutMs, 30_000, 'timeoutMs');
    this.maxInFlight = positiveInt(options.maxInFlight, 10_000, 'maxInFlight');
    this.serverMaxFrameBytes = positiveInt(options.maxFrameBytes, MAX_FRAME_BYTES_DEFAULT, 'maxFrameBytes');
    const r = options.reconnect;
    this.reconnect =
      r === false
        ? null
        : {
            initialDelayMs: positiveInt(r?.initialDelayMs, 100, 'reconnect.initialDelayMs'),
            maxDelayMs: positiveInt(r?.maxDelayMs, 5000, 'reconnect.maxDelayMs'),
            factor: r?.factor ?? 2,
          };
    this.sweeper = setInterval(() => this.sweepDeadlines(), SWEEP_INTERVAL_MS);
    this.sweeper.unref();
  }

  /** True while a connection to the server is up. */
  get connected(): boolean {
    return this.session !== null;
  }

  /** Where this client connects (without the token). */
  get url(): string {
    return describeAddress(this.address);
  }

  // --- connection lifecycle ---

  /** @internal The first connection; connect() fails if it fails. */
  async open(): Promise<void> {
    this.adopt(await this.newSession());
  }

  private newSession(): Promise<ClientSession> {
    const token = this.options.token ?? (this.address.kind === 'tcp' ? this.address.token : undefined);
    return ClientSession.open(
      this.address,
      {
        token,
        clientName: this.options.clientName,
        connectTimeoutMs: positiveInt(this.options.connectTimeoutMs, 5000, 'connectTimeoutMs'),
        maxFrameBytes: positiveInt(this.options.maxFrameBytes, MAX_FRAME_BYTES_DEFAULT, 'maxFrameBytes'),
      },
      {
        frame: (type, rid, buf, start, end) => this.onFrame(type, rid, buf, start, end),
        closed: (err) => this.onSessionClosed(err),
      },
    );
  }

  private adopt(session: ClientSession): void {
    this.session = session;
    this.doneRuns = session.doneRuns;
    this.newIds = session.newIds;
    session.writer.beforeFlush = () => this.flushSettlements(session.writer);
    this.sessionSeq++;
    this.serverMaxFrameBytes = session.maxFrameBytes;
    this.pump();
  }

  private onSessionClosed(err: SpoolError | null): void {
    this.session = null;
    // Their tags belong to the lost connection.
    this.doneCount = 0;
    this.doneFailures.clear();
    this.creditOwed.clear();
    for (const c of this.consumers.values()) c.dropWaiting();
    // Calls on the wire: resend the safe ones first (in their original order), settle the rest.
    const again: Call[] = [];
    for (const call of this.callsInOrder()) {
      if (!call.onWire) continue;
      call.onWire = false;
      if (call.resend) again.push(call);
      else this.abandon(call, err);
    }
    this.onWireCount = 0;
    const stillWaiting: Call[] = [];
    for (let i = this.waitingHead; i < this.waiting.length; i++) {
      const call = this.waiting[i] as Call;
      if (call.done) continue;
      // A settle names a delivery tag of the lost connection: it must never reach another one.
      if (call.kind === 'settle') this.abandon(call, err);
      else stillWaiting.push(call);
    }
    this.waiting = again.concat(stillWaiting);
    this.waitingHead = 0;
    if (this.closed) return;
    const reason = err ?? new SpoolError('SPOOL_ERR_DISCONNECTED', 'the connection closed');
    this.downSince = Date.now();
    this.reconnectAttempts = 0;
    if (this.listenerCount('disconnect') > 0) this.emit('disconnect', reason);
    if (isFatal(reason) || this.reconnect === null) {
      this.failAll(reason);
      if (isFatal(reason)) this.emitError(reason);
      return;
    }
    this.scheduleReconnect();
  }

  /** Ends a call whose connection was lost and which is not safe to resend. */
  private abandon(call: Call, err: SpoolError | null): void {
    this.finishCall(call);
    if (call.kind === 'settle') {
      call.complete(FrameType.RESPONSE, Buffer.from('"unknown"'));
      return;
    }
    call.fail(
      new SpoolError('SPOOL_ERR_DISCONNECTED', `the connection was lost while ${call.what} was in flight; it is not safe to resend, so its outcome is unknown${err ? ` (${err.message})` : ''}`, {
        cause: err ?? undefined,
      }),
    );
  }

  private scheduleReconnect(): void {
    const r = this.reconnect;
    if (r === null || this.reconnectTimer !== null || this.closed) return;
    const base = Math.min(r.maxDelayMs, r.initialDelayMs * r.factor ** this.reconnectAttempts);
    const delayMs = Math.round(base * (0.8 + 0.4 * Math.random()));
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.reconnectAttempts++;
      this.newSession().then(
        (session) => {
          if (this.closed) {
            session.close();
            return;
          }
          this.adopt(session);
          this.reopenConsumers();
          if (this.listenerCount('reconnect') > 0) this.emit('reconnect', { attempts: this.reconnectAttempts, downMs: Date.now() - this.downSince });
        },
        (err: SpoolError) => {
          if (isFatal(err)) {
            this.failAll(err);
            this.emitError(err);
            return;
          }
          this.scheduleReconnect();
        },
      );
    }, delayMs);
  }

  private emitError(err: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  /** Fails every call, now and later (reconnecting is impossible or disabled). */
  private failAll(err: Error): void {
    this.dead = err;
    for (const call of this.callsInOrder()) {
      this.finishCall(call);
      if (call.kind === 'settle') call.complete(FrameType.RESPONSE, Buffer.from('"unknown"'));
      else call.fail(err);
    }
    this.waiting = [];
    this.waitingHead = 0;
  }

  // --- calls ---

  /** Every call not yet answered, oldest first (a snapshot: the caller may finish them). */
  private callsInOrder(): Call[] {
    const all: Call[] = [];
    this.calls.forEach((call) => all.push(call));
    return all.sort((a, b) => a.order - b.order);
  }

  private submit(call: Call): void {
    call.order = ++this.callsMade;
    this.calls.set(call.rid, call);
    if (call.deadline < this.earliestDeadline) this.earliestDeadline = call.deadline;
    if (this.session !== null && this.waitingHead === this.waiting.length && this.onWireCount < this.maxInFlight) this.writeCall(call, this.session);
    else this.waiting.push(call);
  }

  private writeCall(call: Call, session: ClientSession): void {
    // DONE and CREDIT gathered so far go first: a consumerClose must not overtake its last acks.
    if (this.doneCount > 0 || this.creditOwed.size > 0) this.flushSettlements(session.writer);
    call.onWire = true;
    call.attempts++;
    this.onWireCount++;
    call.write(session.writer, call.rid);
  }

  /** Writes waiting calls while the window has room. */
  private pump(): void {
    const session = this.session;
    if (session === null) return;
    while (this.waitingHead < this.waiting.length && this.onWireCount < this.maxInFlight) {
      const call = this.waiting[this.waitingHead++] as Call;
      if (!call.done) this.writeCall(call, session);
    }
    if (this.waitingHead === this.waiting.length) {
      this.waiting = [];
      this.waitingHead = 0;
    }
  }

  private finishCall(call: Call): void {
    call.done = true;
    this.calls.take(call.rid);
    if (call.onWire) {
      call.onWire = false;
      this.onWireCount--;
    }
    if (this.calls.size === 0 && this.idleWaiters.length > 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  private newRid(): number {
    for (;;) {
      const rid = this.ridNext;
      this.ridNext = rid >= 0xffff_fffe ? 1 : rid + 1;
      if (!this.calls.has(rid)) return rid;
    }
  }

  private sweepDeadlines(): void {
    const now = Date.now();
    if (now < this.earliestDeadline) return;
    let earliest = Number.POSITIVE_INFINITY;
    for (const call of this.callsInOrder()) {
      if (call.deadline > now) {
        if (call.deadline < earliest) earliest = call.deadline;
        continue;
      }
      this.finishCall(call);
      if (call.kind === 'settle') call.complete(FrameType.RESPONSE, Buffer.from('"unknown"'));
      else call.fail(timeoutError(call));
    }
    this.earliestDeadline = earliest;
    this.pump();
  }

  /** A frame of the session, whose payload is `buf[start, end)`. */
  private onFrame(type: number, rid: number, buf: Buffer, start: number, end: number): void {
    if (type === FrameType.DELIVERY) {
      const c = this.consumers.get(deliveryConsumerId(buf, start, end));
      if (c === undefined) return; // closed here; the server takes it back when the close arrives
      // Scanned in place: the message keeps the bytes read and its fields' positions, no view.
      c.push(new RemoteMessage(buf, scanDelivery(buf, this.layout, start, end), c.queue, this.sessionSeq, c.ackMode === 'none', this));
      return;
    }
    if (type === FrameType.RECORDS) {
      this.onRecords(buf, start, end);
      return;
    }
    const payload = buf.subarray(start, end);
    switch (type) {
      case FrameType.CONFIRM:
      case FrameType.RESPONSE:
      case FrameType.ERROR: {
        const call = this.calls.get(rid);
        if (call === undefined || !call.onWire) return; // timed out meanwhile
        this.finishCall(call);
        if (type === FrameType.ERROR) {
          const { code, message } = decodeError(payload);
          call.fail(errorFromWire(code, message));
        } else {
          call.complete(type, payload);
        }
        this.pump();
        return;
      }
      case FrameType.CONFIRMS: {
        const { count, status, queues, extra } = decodeConfirms(payload);
        if (rid === 0 || rid + count - 1 > 0xffff_fffe) throw new SpoolError('SPOOL_ERR_PROTOCOL', `CONFIRMS of ${count} from request ${rid} runs past the request ids`);
        for (let k = 0; k < count; k++) {
          const call = this.calls.get(rid + k);
          if (call === undefined || !call.onWire) continue; // timed out meanwhile
          if (!(call instanceof PublishCall)) throw new SpoolError('SPOOL_ERR_PROTOCOL', `CONFIRMS names request ${rid + k}, which is not a publish`);
          this.finishCall(call);
          call.confirmed(status, queues, extra);
        }
        this.pump();
        return;
      }
      default:
        if ((type & FRAME_TYPE_IGNORABLE) !== 0) return;
        throw new SpoolError('SPOOL_ERR_PROTOCOL', `unexpected frame type ${type} from the server`);
    }
  }

  /**
   * A RECORDS frame: deliveries to one consumer, each scanned in place. Every entry is checked
   * before any handler runs, so a malformed frame delivers nothing (the session ends over it).
   */
  private onRecords(buf: Buffer, start: number, end: number): void {
    const count = recordsCount(buf, start, end);
    const c = this.consumers.get(r32(buf, start));
    if (c === undefined) return; // closed here; the server takes them back when the close arrives
    const batch = this.recordsBatch;
    try {
      let rec = start + 8 + count * RECORDS_ENTRY_FIXED_BYTES;
      for (let i = 0; i < count; i++) {
        rec = scanRecordEntry(buf, this.layout, start, count, i, rec, end);
        batch.push(new RemoteMessage(buf, this.layout, c.queue, this.sessionSeq, c.ackMode === 'none', this));
      }
      for (let i = 0; i < count; i++) c.push(batch[i] as RemoteMessage);
    } finally {
      batch.length = 0;
    }
  }

  private checkOpen(): void {
    if (this.closing !== null) throw new SpoolError('SPOOL_ERR_CLOSED', 'the remote broker connection is closed');
    if (this.dead !== null) throw this.dead;
  }

  /** Sends a REQUEST for broker method `op`. `resend`: the call is idempotent and may be repeated after a reconnect. */
  private request<T>(op: string, args: readonly unknown[], resend: boolean, extra: { consumer?: number } = {}, internal = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (!internal) this.checkOpen();
      const json = requestJson({ op, args: trimArgs(args), ...extra });
      if (json.length * 3 + 64 > this.serverMaxFrameBytes && Buffer.byteLength(json) + 5 > this.serverMaxFrameBytes) {
        // The server would close the connection over it (and a resend would do the same again).
        throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `the arguments of ${op} take ${Buffer.byteLength(json)} bytes, over the server's frame limit ${this.serverMaxFrameBytes}`);
      }
      this.submit({
        rid: this.newRid(),
        kind: 'request',
        resend,
        deadline: Date.now() + this.timeoutMs,
        what: op,
        onWire: false,
        done: false,
        order: 0,
        attempts: 0,
        write: (w, rid) => encodeRequest(w, rid, json),
        complete: (_type, payload) => resolve(decodeResponse(payload) as T),
        fail: reject,
      });
    });
  }

  // --- publishing ---

  /**
   * Publishes a message; resolves once the server confirms it is fsynced in every queue it routes to.
   * @example
   *   const r = await broker.publish('orders', 'order.created', body, { id: 'order-1', mandatory: true });
   */
  publish(exchange: string, routingKey: string, body: Body, options: RemotePublishOptions = {}): Promise<PublishResult> {
    return this.sendPublish(0, exchange, routingKey, body, options);
  }

  /**
   * Publishes straight to a queue through the default exchange.
   * @example await broker.sendToQueue('billing', 'hello', { id: 'msg-1' });
   */
  sendToQueue(queue: string, body: Body, options: RemotePublishOptions = {}): Promise<PublishResult> {
    return this.sendPublish(PUBLISH_TO_QUEUE, queue, '', body, options);
  }

  /**
   * Publishes many messages to one exchange, as the embedded `publishBatch` does: each message is
   * checked here before any is sent, so one bad message rejects the call (naming its index) and
   * nothing is published. Then they are pipelined; the server hands the publishes of one socket
   * read to the broker's `publishBatch` together. Resolves with one result per message, in order,
   * once the server confirmed them all; rejects with the first failure (the others may have been
   * stored: retry with the same ids, as with the embedded call).
   * @example
   *   const results = await remote.publishBatch('orders', [
   *     { routingKey: 'order.created', body: '{"id":1}', id: 'order-1' },
   *     { routingKey: 'order.created', body: '{"id":2}', id: 'order-2' },
   *   ]);
   */
  publishBatch(exchange: string, messages: readonly RemoteBatchMessage[]): Promise<PublishResult[]> {
    try {
      this.checkOpen();
      if (!Array.isArray(messages)) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'messages must be an array of { routingKey, body, ...options }');
      if (messages.length > BATCH_MESSAGES_MAX) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `a batch holds at most ${BATCH_MESSAGES_MAX} messages, got ${messages.length}`);
      const prepared = messages.map((m, i) => {
        try {
          if (m === null || typeof m !== 'object') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'a message must be an object { routingKey, body, ...options }');
          return this.preparePublish(0, exchange, m.routingKey, m.body, m);
        } catch (err) {
          if (err instanceof SpoolError) throw new SpoolError(err.code, `messages[${i}]: ${err.message}`, { cause: err });
          throw err;
        }
      });
      return Promise.all(prepared.map((p) => new Promise<PublishResult>((resolve, reject) => this.submitPublish(p, resolve, reject))));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  private sendPublish(flags: number, target: string, routingKey: string, body: Body, options: RemotePublishOptions): Promise<PublishResult> {
    return new Promise<PublishResult>((resolve, reject) => {
      this.checkOpen();
      this.submitPublish(this.preparePublish(flags, target, routingKey, body, options), resolve, reject);
    });
  }

  private submitPublish(p: PreparedPublish, resolve: (r: PublishResult) => void, reject: (err: Error) => void): void {
    const { flags, target, routingKey, id, callerId, optionsJson, body, headers, mandatory } = p;
    this.submit(new PublishCall(this, this.newRid(), Date.now() + p.timeoutMs, flags, target, routingKey, id, !callerId, optionsJson, body, headers, mandatory, resolve, reject));
  }

  /** Checks one publish's arguments (throwing a typed error) and fixes its id: everything a send needs. */
  private preparePublish(flags: number, target: string, routingKey: string, body: Body, options: RemotePublishOptions): PreparedPublish {
    {
      // Publishes mostly repeat their target: a name that passed its check once is not checked again.
      if (target !== this.checkedTarget || flags !== this.checkedTargetFlags) {
        if (flags & PUBLISH_TO_QUEUE) checkName('queue', target);
        else checkExchangeName(target);
        this.checkedTarget = target;
        this.checkedTargetFlags = flags;
      }
      if (!(flags & PUBLISH_TO_QUEUE) && typeof routingKey !== 'string') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'routing key must be a string');
      const size = typeof body === 'string' ? body.length : body instanceof Uint8Array ? body.byteLength : -1;
      if (size < 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'body must be a Buffer, Uint8Array or string');
      const callerId = options.id !== undefined;
      if (callerId && (typeof options.id !== 'string' || options.id.length === 0 || Buffer.byteLength(options.id) > 1024)) {
        throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'id must be a non-empty string of at most 1024 bytes');
      }
      const headers = checkHeaders(options.headers);
      // The id is fixed here, before the first attempt, so every resend carries the same one.
      const id = callerId ? (options.id as string) : generateId();
      const optionsJson = publishOptionsJson(options);
      if (options.mandatory) flags |= PUBLISH_MANDATORY;
      this.checkFrameFits(body, target, routingKey, id, optionsJson);
      const timeoutMs = options.timeoutMs === undefined ? this.timeoutMs : positiveInt(options.timeoutMs, 0, 'timeoutMs');
      return { flags, target, routingKey, id, callerId, optionsJson, body, headers, mandatory: options.mandatory === true, timeoutMs };
    }
  }

  /** @internal PublishCall: a mandatory message came back unroutable. */
  returned(r: RemoteBrokerEvents['return'][0]): void {
    if (this.listenerCount('return') > 0) this.emit('return', r);
  }

  private checkFrameFits(body: Body, target: string, routingKey: string, id: string, optionsJson: string): void {
    const max = this.serverMaxFrameBytes;
    const overhead = 64 + target.length * 3 + routingKey.length * 3 + id.length * 3 + optionsJson.length * 3;
    const roughBody = typeof body === 'string' ? body.length * 3 : body.byteLength;
    if (roughBody + overhead <= max) return;
    const exact = 18 + Buffer.byteLength(target) + Buffer.byteLength(routingKey) + Buffer.byteLength(id) + Buffer.byteLength(optionsJson) + (typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength);
    if (exact > max) throw new SpoolError('SPOOL_ERR_MESSAGE_TOO_LARGE', `message of ${exact} bytes (with its metadata) exceeds the server's frame limit ${max}`);
  }

  // --- topology and admin: the embedded names and arguments ---

  assertExchange(name: string, type: ExchangeType, options?: ExchangeOptions): Promise<{ exchange: string }> {
    return this.request('assertExchange', [name, type, options], true);
  }
  deleteExchange(name: string): Promise<void> {
    return this.request('deleteExchange', [name], false);
  }
  assertQueue(name: string, options?: QueueOptions): Promise<{ queue: string; messageCount: number; consumerCount: number }> {
    return this.request('assertQueue', [name, options], true);
  }
  deleteQueue(name: string): Promise<void> {
    return this.request('deleteQueue', [name], false);
  }
  bindQueue(queue: string, exchange: string, pattern?: string): Promise<void> {
    return this.request('bindQueue', [queue, exchange, pattern], true);
  }
  unbindQueue(queue: string, exchange: string, pattern?: string): Promise<void> {
    return this.request('unbindQueue', [queue, exchange, pattern], true);
  }
  /** Removes a queue's waiting messages (when the server's broker supports it). */
  purgeQueue(name: string): Promise<unknown> {
    return this.request('purgeQueue', [name], false);
  }
  queueStats(name: string): Promise<QueueStats> {
    return this.request('queueStats', [name], true);
  }
  stats(): Promise<BrokerStats> {
    return this.request('stats', [], true);
  }
  listQueues(): Promise<string[]> {
    return this.request('listQueues', [], true);
  }
  listExchanges(): Promise<ExchangeInfo[]> {
    return this.request('listExchanges', [], true);
  }
  listBindings(): Promise<BindingInfo[]> {
    return this.request('listBindings', [], true);
  }
  /** Cancels a delayed message by id; resolves true if it was pending. */
  cancel(id: string): Promise<boolean> {
    return this.request('cancel', [id], false);
  }
  /**
   * Moves messages from a (dead-letter) queue back to an exchange or queue. Only object filters
   * cross the wire: a function filter is refused with SPOOL_ERR_INVALID_ARGUMENT.
   */
  replay(fromQueue: string, options: ReplayOptions = {}): Promise<ReplayResult> {
    if (options !== null && typeof options === 'object' && typeof options.filter === 'function') {
      return Promise.reject(
        new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'a function filter cannot be sent to a remote broker: use an object filter ({ reason, routingKey, id }) or replay embedded'),
      );
    }
    return this.request('replay', [fromQueue, options], false);
  }

  // --- consuming ---

  /**
   * Starts a consumer. `ack`: 'auto' (default) acks when the handler resolves and nacks when it
   * throws; 'manual' leaves it to `msg.ack()`/`msg.nack()`; 'none' is at most once. `prefetch` is
   * the server's credit for this consumer; `concurrency` bounds the handlers running here.
   */
  async consume(queue: string, handler: RemoteHandler | string, options: RemoteConsumeOptions = {}): Promise<RemoteConsumer> {
    this.checkOpen();
    if (typeof handler === 'string') {
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'a handler module runs on worker threads of the broker process and cannot be used remotely: pass a function');
    }
    if (typeof handler !== 'function') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'handler must be a function or a module path');
    const resolved = resolveConsumerOptions(options, 'auto');
    const wireOptions: Record<string, unknown> = { ...options, ack: resolved.ack, prefetch: resolved.prefetch };
    delete wireOptions.concurrency;
    delete (wireOptions as { workers?: unknown }).workers;
    toWireJson(wireOptions); // refuses what cannot cross (a function), before anything is registered
    const c = new RemoteConsumer(this.consumerIdNext++, queue, handler, resolved, wireOptions, this);
    // Registered before asking: deliveries may arrive ahead of the answer.
    this.consumers.set(c.consumerId, c);
    try {
      const r = await this.request<{ group: string }>('consume', [queue, wireOptions], true, { consumer: c.consumerId });
      c.groupName = r.group;
      c.opened = true;
      return c;
    } catch (err) {
      this.consumers.delete(c.consumerId);
      c.closed = true;
      throw err;
    }
  }

  /**
   * An async iterator over a queue. With ack 'manual' (default) call `msg.ack()`; with 'auto'
   * a message is acked when the loop asks for the next one. Breaking out of the loop closes it.
   * @example
   *   for await (const msg of broker.subscribe('billing', { group: 'audit' })) { await msg.ack(); }
   */
  subscribe(queue: string, options: RemoteConsumeOptions = {}): RemoteSubscription {
    const resolved = resolveConsumerOptions(options, 'manual');
    const sub = new RemoteSubscription(resolved.ack);
    sub.starting(this.consume(queue, sub.handler, { ...options, ack: resolved.ack, concurrency: resolved.ack === 'auto' ? 1 : resolved.prefetch }));
    return sub;
  }

  /**
   * After a reconnect: the server forgot this connection's consumers; start them again. One whose
   * first consume request is still unanswered needs nothing: that request is resent as it is.
   */
  private reopenConsumers(): void {
    for (const c of this.consumers.values()) {
      if (c.closed || !c.opened) continue;
      this.request('consume', [c.queue, c.wireOptions], false, { consumer: c.consumerId }, true).catch((err: Error) => {
        if (isSpoolError(err, 'SPOOL_ERR_DISCONNECTED')) return; // the next reconnect tries again
        this.consumers.delete(c.consumerId);
        c.closed = true;
        this.emitError(new SpoolError(isSpoolError(err) ? err.code : 'SPOOL_ERR_DISCONNECTED', `consumer on ${c.queue} could not be re-created after reconnecting: ${err.message}`, { cause: err }));
      });
    }
  }

  /** @internal ConsumerLink: gathered, and sent as one DONE frame per event-loop turn. */
  done(msg: RemoteMessage, failure: string | null): void {
    if (this.session === null || msg.session !== this.sessionSeq) return;
    if (failure !== null) this.doneFailures.set(this.doneCount, failure);
    this.doneTags[this.doneCount++] = msg.tag;
    this.session.writer.schedule();
  }

  /** @internal ConsumerLink: gathered per consumer, and sent once per event-loop turn. */
  credit(consumerId: number, msg: RemoteMessage): void {
    if (this.session === null || msg.session !== this.sessionSeq) return;
    this.creditOwed.set(consumerId, (this.creditOwed.get(consumerId) ?? 0) + 1);
    this.session.writer.schedule();
  }

  /** Writes the DONE and CREDIT gathered this turn (the session writer's beforeFlush). */
  private flushSettlements(w: FrameWriter): void {
    if (this.doneCount > 0) {
      if (this.doneRuns) encodeDoneRuns(w, this.doneTags, this.doneCount, this.doneFailures);
      else encodeDoneTags(w, this.doneTags, this.doneCount, this.doneFailures);
      this.doneCount = 0;
      this.doneFailures.clear();
    }
    if (this.creditOwed.size > 0) {
      for (const [consumerId, count] of this.creditOwed) encodeCredit(w, consumerId, count);
      this.creditOwed.clear();
    }
  }

  /** @internal ConsumerLink */
  async closeConsumer(c: RemoteConsumer): Promise<void> {
    if (!this.consumers.delete(c.consumerId)) return;
    if (this.session === null) return; // the server dropped it with the connection
    try {
      await this.request('consumerClose', [], false, { consumer: c.consumerId }, true);
    } catch (err) {
      if (!isSpoolError(err, 'SPOOL_ERR_DISCONNECTED') && !isSpoolError(err, 'SPOOL_ERR_TIMEOUT')) throw err;
    }
  }

  /** @internal RemoteSettler: msg.ack() / msg.nack(). */
  settle(msg: RemoteMessage, ack: boolean, requeue: boolean): Promise<SettleStatus> {
    if (msg.settled || msg.tag === 0) return Promise.resolve('unknown');
    msg.settled = true;
    // A tag means nothing on another connection: that delivery was taken back when this one dropped.
    if (this.session === null || msg.session !== this.sessionSeq) return Promise.resolve('unknown');
    return new Promise<SettleStatus>((resolve, reject) => {
      this.submit({
        rid: this.newRid(),
        kind: 'settle',
        resend: false,
        deadline: Date.now() + this.timeoutMs,
        what: ack ? 'ack' : 'nack',
        onWire: false,
        done: false,
        order: 0,
        attempts: 0,
        write: ack ? (w, rid) => encodeAck(w, rid, msg.tag) : (w, rid) => encodeNack(w, rid, msg.tag, requeue),
        complete: (_type, payload) => resolve(decodeResponse(payload) as SettleStatus),
        fail: reject,
      });
    });
  }

  // --- closing ---

  /**
   * Closes consumers (their unacked messages are redelivered to others), waits for in-flight
   * calls to be answered (each within its deadline), then closes the connection.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const c of [...this.consumers.values()]) await c.close().catch(() => {});
      if (this.calls.size > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
      this.closed = true;
      if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
      clearInterval(this.sweeper);
      const s = this.session;
      this.session = null;
      s?.close();
    })();
    return this.closing;
  }
}

/** Connects to a Spool server. `url`: `unix:///path/spool.sock`, `tcp://host:port?token=…`, or a socket (or data dir) path. */
export async function connect(url: string, options: ConnectOptions = {}): Promise<RemoteBroker> {
  const broker = new RemoteBroker(parseBrokerUrl(url), options);
  try {
    await broker.open();
  } catch (err) {
    await broker.close();
    throw err;
  }
  return broker;
}

function isFatal(err: Error): boolean {
  return isSpoolError(err, 'SPOOL_ERR_UNAUTHORIZED') || isSpoolError(err, 'SPOOL_ERR_PROTOCOL');
}

function timeoutError(call: Call): SpoolError {
  const late = `not answered within its deadline (${call.attempts} attempt${call.attempts === 1 ? '' : 's'})`;
  if (call.kind === 'publish') return new SpoolError('SPOOL_ERR_TIMEOUT', `${call.what} ${late}; it may have landed: retry with the same id to store it at most once`);
  return new SpoolError('SPOOL_ERR_TIMEOUT', `${call.what} ${late}`);
}

function positiveInt(v: number | undefined, dflt: number, what: string): number {
  const x = v ?? dflt;
  if (!Number.isSafeInteger(x) || x < 1) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${what} must be a positive integer`);
  return x;
}

/** The options sent with a publish besides id and mandatory, as wire JSON ('' when none). */
function publishOptionsJson(options: RemotePublishOptions): string {
  let rest: Record<string, unknown> | null = null;
  for (const key in options) {
    // A publishBatch message is its own options object: its routingKey and body travel in their
    // own PUBLISH fields, never again as JSON (a Buffer body would grow four-fold).
    if (key === 'id' || key === 'mandatory' || key === 'timeoutMs' || key === 'routingKey' || key === 'body') continue;
    const v = (options as Record<string, unknown>)[key];
    if (v === undefined) continue;
    (rest ??= {})[key] = v;
  }
  return rest === null ? '' : toWireJson(rest);
}

/** The embedded broker's consumer option rules (src/broker/broker.ts), checked here so the client can size itself. */
function resolveConsumerOptions(o: RemoteConsumeOptions, defaultAck: AckMode): { ack: AckMode; prefetch: number; concurrency: number } {
  const ack = o.ack ?? defaultAck;
  if (ack !== 'none' && ack !== 'auto' && ack !== 'manual') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', "ack must be 'none', 'auto' or 'manual'");
  const int = (v: number | undefined, d: number, what: string) => {
    const x = v ?? d;
    if (!Number.isSafeInteger(x) || x < 1) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${what} must be a positive integer`);
    return x;
  };
  const prefetch = int(o.prefetch, DEFAULT_PREFETCH, 'prefetch');
  return { ack, prefetch, concurrency: Math.min(int(o.concurrency, 1, 'concurrency'), prefetch) };
}

/** A publish from its submission to its CONFIRM: one object with its fields, no closures per message. */
class PublishCall implements Call {
  readonly kind = 'publish';
  readonly resend = true;
  onWire = false;
  done = false;
  order = 0;
  attempts = 0;

  constructor(
    private readonly broker: RemoteBroker,
    readonly rid: number,
    readonly deadline: number,
    private readonly flags: number,
    private readonly target: string,
    private readonly routingKey: string,
    /** Fixed before the first attempt, so every resend carries the same one. */
    private readonly id: string,
    /** The id is this client's (a fresh ULID), so no other publish can have stored it before. */
    private readonly idGenerated: boolean,
    private readonly optionsJson: string,
    private readonly body: Body,
    private readonly headers: Headers | undefined,
    private readonly mandatory: boolean,
    private readonly resolve: (r: PublishResult) => void,
    readonly fail: (err: Error) => void,
  ) {}

  get what(): string {
    return `publish of id ${this.id}`;
  }

  write(w: FrameWriter, rid: number): void {
    // NEW_ID on the first attempt only: once written, the server may have stored the id, so a
    // resend must be looked up (docs/protocol.md §3 PUBLISH).
    const newId = this.idGenerated && this.attempts === 1 && this.broker.newIds;
    encodePublish(w, rid, newId ? this.flags | PUBLISH_NEW_ID : this.flags, this.target, this.routingKey, this.id, this.optionsJson, this.body);
  }

  complete(_type: number, payload: Buffer): void {
    const { status, queues, extra } = decodeConfirm(payload);
    this.confirmed(status, queues, extra);
  }

  /** The server's answer (a CONFIRM, or this publish's share of a CONFIRMS). */
  confirmed(status: ConfirmStatus, queues: string[], extra: Record<string, unknown> | undefined): void {
    if (status === 'unroutable' && this.mandatory) {
      const toQueue = (this.flags & PUBLISH_TO_QUEUE) !== 0;
      this.broker.returned({ id: this.id, exchange: toQueue ? '' : this.target, routingKey: toQueue ? this.target : this.routingKey, body: this.body, headers: this.headers });
    }
    // A resend that finds the id stored means its first attempt landed: the message is there, once.
    // So does any 'duplicate' of an id this client made (the server retried it after a batch failed).
    const landedBefore = status === 'duplicate' && (this.attempts > 1 || this.idGenerated);
    const result: PublishResult = { id: this.id, status: landedBefore ? 'confirmed' : status, queues };
    this.resolve(extra === undefined ? result : { ...result, ...extra });
  }
}
