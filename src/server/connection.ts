/**
 * One client connection on the server: the handshake, request dispatch, publishes, and the
 * consumers it owns (docs/protocol.md §3–§6).
 *
 * Lifecycle: 'hello' (only HELLO is accepted) → 'open' → 'draining' (server shutdown: no new
 * frames, in-flight requests finish) → 'closed'. Whatever goes wrong with the bytes of this
 * connection (a bad frame, a throw while handling one, a silent peer) ends this connection only:
 * its consumers are closed and their unsettled deliveries go back to the queue.
 */
import crypto from 'node:crypto';
import type { Socket } from 'node:net';
import type { PublishResult } from '../broker/broker.js';
import { SpoolError, isSpoolError } from '../errors.js';
import { NEW_ID } from '../broker/message.js';
import {
  decodeAck,
  decodeDone,
  decodeDoneRuns,
  decodeHello,
  decodeNack,
  decodePublish,
  decodeRequest,
  encodeClose,
  encodeConfirm,
  encodeConfirms,
  encodeError,
  encodeHeartbeat,
  encodeResponse,
  encodeWelcome,
  frameTypeName,
  decodeCredit,
  type PublishFrame,
  type Request,
} from './wire/codec.js';
import {
  FEATURE_CONFIRMS,
  FEATURE_DONE_RUNS,
  FEATURE_NEW_IDS,
  FEATURE_RECORDS,
  FRAME_LENGTH_MIN,
  FRAME_TYPE_IGNORABLE,
  FrameType,
  HEARTBEAT_MISSES_MAX,
  HELLO_TIMEOUT_MS,
  SERVER_INFLIGHT_MAX,
  RECORDS_FRAME_BYTES_MAX,
  SERVER_OUTPUT_BYTES_HIGH,
} from './wire/constants.js';
import { FrameReader } from './wire/frame-reader.js';
import { FrameWriter } from './wire/frame-writer.js';
import { ConnectionConsumers } from './connection-consumers.js';
import { type BatchedPublish, PublishBatcher } from './publish-batch.js';
import { toWireJson } from './wire/wire-json.js';
import { type SerialQueue, type ServedBroker, TOPOLOGY_OPS, brokerMethod } from './served-broker.js';

export interface ConnectionOptions {
  /** The token a client must present in HELLO, or null for none (unix socket, loopback without a token). */
  token: string | null;
  heartbeatMs: number;
  maxFrameBytes: number;
  /** Called once when the connection has closed. */
  onClosed: (c: ServerConnection) => void;
  /** Shared by all connections: topology changes run one at a time. */
  topology: SerialQueue;
  /** An error no client can be told about (a fire-and-forget ack that failed, a bug while closing). */
  onError: (err: unknown) => void;
}

type State = 'hello' | 'open' | 'draining' | 'closed';

/** How long a closing connection may take to flush its last frames before it is destroyed. */
const CLOSE_LINGER_MS = 1000;

export class ServerConnection {
  private state: State = 'hello';
  private readonly onDone = (tag: number, failure: string | null) => this.consumers.done(tag, failure);
  private readonly onDoneRun = (first: number, count: number) => this.consumers.doneRun(first, count);
  private readonly reader: FrameReader;
  private readonly writer: FrameWriter;
  private readonly consumers: ConnectionConsumers;
  /** Each PUBLISH is decoded into this one object (its fields are copied out at once). */
  private readonly publishFrame: PublishFrame = { toQueue: false, mandatory: false, newId: false, target: '', routingKey: '', id: '', options: undefined, body: Buffer.alloc(0) };
  /** Publishes of the chunk being parsed, handed to the broker together (publish-batch.ts). */
  private readonly publishes: PublishBatcher;
  private readonly openedAt = Date.now();
  private lastHeardAt = Date.now();
  /** Requests (publishes included) handed to the broker and not yet answered. */
  private inflight = 0;
  private readingPaused = false;
  private drained: (() => void) | null = null;
  /** The client takes CONFIRMS (HELLO `features`): confirms of consecutive request ids are sent as one. */
  private confirmRuns = false;
  /** The client sends PUBLISH flag NEW_ID (FEATURE_NEW_IDS), which this connection honours. */
  private newIds = false;
  /** The run of confirms not yet written: request ids runFirst.. (runCount of them), one answer. */
  private runFirst = 0;
  private runCount = 0;
  private runStatus: PublishResult['status'] = 'confirmed';
  private runQueues: readonly string[] = [];

  constructor(
    private readonly socket: Socket,
    private readonly broker: ServedBroker,
    private readonly options: ConnectionOptions,
  ) {
    this.writer = new FrameWriter(socket);
    this.reader = new FrameReader(options.maxFrameBytes, (type, requestId, buf, start, end) => this.onFrame(type, requestId, buf, start, end));
    this.consumers = new ConnectionConsumers(broker, this.writer);
    // What a task gathers (a run of confirms, RECORDS deliveries) goes out with that task's write (frame-writer.ts).
    this.writer.beforeFlush = () => this.writeGathered();
    this.publishes = new PublishBatcher(broker, (requestId, r, err) => this.published(requestId, r, err));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => {
      // The peer took our bytes: it is alive, even if what it sent is still unread (paused).
      this.lastHeardAt = Date.now();
      this.maybeResume();
    });
    socket.on('end', () => this.close(null, this.reader.midFrame ? 'the stream ended inside a frame' : 'the client closed'));
    socket.on('error', () => this.close(null, 'socket error'));
    socket.on('close', () => this.close(null, 'socket closed'));
  }

  get isClosed(): boolean {
    return this.state === 'closed';
  }

  /** Heartbeat tick (the server calls it every heartbeatMs): send ours, drop a silent peer (unless our own loop `stalled`). */
  tick(now: number, stalled = false): void {
    if (this.state === 'hello') {
      if (now - this.openedAt > HELLO_TIMEOUT_MS) this.fail(new SpoolError('SPOOL_ERR_TIMEOUT', `no HELLO within ${HELLO_TIMEOUT_MS} ms`), true);
      return;
    }
    if (this.state !== 'open' && this.state !== 'draining') return;
    // While we stop reading because our broker is behind, the peer's heartbeats wait unread: the
    // silence is ours, not its.
    if ((this.readingPaused && this.inflight >= SERVER_INFLIGHT_MAX / 2) || stalled) this.lastHeardAt = now;
    const silentMs = now - this.lastHeardAt;
    if (silentMs > HEARTBEAT_MISSES_MAX * this.options.heartbeatMs) {
      // The peer is gone or frozen; it will not read a goodbye, so do not wait to flush one.
      this.fail(new SpoolError('SPOOL_ERR_TIMEOUT', `no frame from the client for ${silentMs} ms (heartbeat ${this.options.heartbeatMs} ms)`), true);
      return;
    }
    encodeHeartbeat(this.writer);
  }

  private onData(chunk: Buffer): void {
    if (this.state === 'closed' || this.state === 'draining') return;
    this.lastHeardAt = Date.now();
    try {
      this.reader.push(chunk);
    } catch (err) {
      // The publishes before the bad frame were accepted, as they would be one frame at a time.
      this.publishes.flush();
      this.fail(err);
      return;
    }
    this.publishes.flush();
    if (this.inflight >= SERVER_INFLIGHT_MAX || this.writer.backlogBytes >= SERVER_OUTPUT_BYTES_HIGH) {
      // Backpressure (docs/protocol.md §4): stop reading until the broker and the socket catch up.
      this.readingPaused = true;
      this.socket.pause();
    }
  }

  private maybeResume(): void {
    if (!this.readingPaused || this.state !== 'open') return;
    if (this.inflight < SERVER_INFLIGHT_MAX / 2 && this.writer.backlogBytes < SERVER_OUTPUT_BYTES_HIGH / 2) {
      this.readingPaused = false;
      this.socket.resume();
    }
  }

  /** One frame, whose payload is `buf[start, end)`: a PUBLISH is decoded there, other frames get a view. */
  private onFrame(type: number, requestId: number, buf: Buffer, start: number, end: number): void {
    if (this.state === 'open' && type === FrameType.PUBLISH) {
      this.onPublish(requestId, buf, start, end);
      return;
    }
    if (this.state === 'open' && type === FrameType.DONE_RUNS) {
      this.publishes.flush();
      decodeDoneRuns(buf, start, end, this.onDoneRun);
      return;
    }
    const payload = buf.subarray(start, end);
    if (this.state === 'hello') {
      if (type !== FrameType.HELLO) throw new SpoolError('SPOOL_ERR_PROTOCOL', `expected HELLO, got ${frameTypeName(type)}`);
      this.onHello(payload);
      return;
    }
    if (this.state !== 'open') return;
    // Only consecutive publishes are gathered: any other frame sees them handed over first, so
    // the broker gets every frame's work in frame order, as if nothing were gathered.
    this.publishes.flush();
    switch (type) {
      case FrameType.REQUEST:
        return this.onRequest(requestId, payload);
      case FrameType.ACK:
        return this.answer(requestId, this.consumers.ack(decodeAck(payload)));
      case FrameType.NACK: {
        const { tag, requeue } = decodeNack(payload);
        return this.answer(requestId, this.consumers.nack(tag, requeue));
      }
      case FrameType.DONE:
        return decodeDone(payload, this.onDone);
      case FrameType.CREDIT: {
        const { consumerId, count } = decodeCredit(payload);
        return this.consumers.credit(consumerId, count);
      }
      case FrameType.HEARTBEAT:
        return;
      case FrameType.CLOSE:
        this.close(null, 'the client said CLOSE');
        return;
      default:
        if ((type & FRAME_TYPE_IGNORABLE) !== 0) return;
        throw new SpoolError('SPOOL_ERR_PROTOCOL', `unexpected frame type ${frameTypeName(type)} from a client`);
    }
  }

  private onHello(payload: Buffer): void {
    const hello = decodeHello(payload);
    if (this.options.token !== null && !tokensEqual(hello.token, this.options.token)) {
      this.fail(new SpoolError('SPOOL_ERR_UNAUTHORIZED', hello.token === undefined ? 'this server requires a token' : 'wrong token'));
      return;
    }
    this.state = 'open';
    // WELCOME names the client's features this server takes up; the client uses no others.
    const features: string[] = [];
    if (hello.features?.includes(FEATURE_CONFIRMS) === true) {
      this.confirmRuns = true;
      features.push(FEATURE_CONFIRMS);
    }
    if (hello.features?.includes(FEATURE_RECORDS) === true) {
      // A run stays within the frame limit this server announces, which the client accepts.
      this.consumers.sendRecords(Math.min(RECORDS_FRAME_BYTES_MAX, this.options.maxFrameBytes - FRAME_LENGTH_MIN));
      features.push(FEATURE_RECORDS);
    }
    if (hello.features?.includes(FEATURE_DONE_RUNS) === true) features.push(FEATURE_DONE_RUNS);
    if (hello.features?.includes(FEATURE_NEW_IDS) === true) {
      this.newIds = true;
      features.push(FEATURE_NEW_IDS);
    }
    encodeWelcome(this.writer, { heartbeatMs: this.options.heartbeatMs, maxFrameBytes: this.options.maxFrameBytes, ...(features.length > 0 ? { features } : {}) });
  }

  private onPublish(requestId: number, buf: Buffer, start: number, end: number): void {
    if (requestId === 0) throw new SpoolError('SPOOL_ERR_PROTOCOL', 'a PUBLISH needs a non-zero request id');
    const f = decodePublish(buf, this.publishFrame, start, end);
    this.inflight++;
    if (f.toQueue) {
      // sendToQueue checks that the queue exists; publishes gathered before it go first, keeping frame order.
      this.publishes.flush();
      const options: Record<string | symbol, unknown> = f.options === undefined ? { id: f.id } : { ...f.options, id: f.id };
      if (f.mandatory) options.mandatory = true;
      if (f.newId && this.newIds) options[NEW_ID] = true;
      let result: ReturnType<ServedBroker['sendToQueue']>;
      try {
        result = this.broker.sendToQueue(f.target, f.body, options);
      } catch (err) {
        result = Promise.reject(err);
      }
      result.then(
        (r) => this.published(requestId, r, null),
        (err: unknown) => this.published(requestId, null, err),
      );
      return;
    }
    // The routing key and body last: option names from a newer client never replace them.
    const message: BatchedPublish =
      f.options === undefined ? { id: f.id, routingKey: f.routingKey, body: f.body } : { ...f.options, id: f.id, routingKey: f.routingKey, body: f.body };
    if (f.mandatory) message.mandatory = true;
    if (f.newId && this.newIds) message[NEW_ID] = true;
    this.publishes.add(requestId, f.target, message);
  }

  /** A publish's outcome: CONFIRM once the broker has it durable, or ERROR. */
  private published(requestId: number, r: PublishResult | null, err: unknown): void {
    this.finished();
    if (r === null) this.replyError(requestId, err);
    else if (this.state !== 'closed') this.confirm(requestId, r);
  }

  /**
   * CONFIRM, or with a client that takes them, one CONFIRMS per run of consecutive request ids
   * with the same answer: a batch of publishes confirmed by one fsync is answered by one frame
   * (docs/protocol.md §3 CONFIRMS). The run is written at the end of the task, with the rest.
   */
  private confirm(requestId: number, r: PublishResult): void {
    const extra = publishExtraJson(r);
    if (!this.confirmRuns || extra !== '') {
      encodeConfirm(this.writer, requestId, r.status, r.queues, extra);
      return;
    }
    if (this.runCount > 0 && requestId === this.runFirst + this.runCount && r.status === this.runStatus && sameQueues(r.queues, this.runQueues)) {
      this.runCount++;
      return;
    }
    this.writeRun();
    this.runFirst = requestId;
    this.runCount = 1;
    this.runStatus = r.status;
    this.runQueues = r.queues;
    this.writer.schedule();
  }

  /** Writes what this task gathered so far: the run of confirms, the RECORDS deliveries. */
  private writeGathered(): void {
    this.writeRun();
    this.consumers.writePending();
  }

  /** Writes the run of confirms gathered so far. */
  private writeRun(): void {
    const n = this.runCount;
    if (n === 0) return;
    this.runCount = 0;
    if (n === 1) encodeConfirm(this.writer, this.runFirst, this.runStatus, this.runQueues, '');
    else encodeConfirms(this.writer, this.runFirst, n, this.runStatus, this.runQueues);
  }

  private onRequest(requestId: number, payload: Buffer): void {
    const req = decodeRequest(payload);
    if (requestId === 0) throw new SpoolError('SPOOL_ERR_PROTOCOL', 'a REQUEST needs a non-zero request id');
    let result: unknown;
    try {
      result = this.dispatch(req);
    } catch (err) {
      this.replyError(requestId, err);
      return;
    }
    this.inflight++;
    Promise.resolve(result).then(
      (r) => {
        this.finished();
        this.respond(requestId, r);
      },
      (err: unknown) => {
        this.finished();
        this.replyError(requestId, err);
      },
    );
  }

  private dispatch(req: Request): unknown {
    if (req.op === 'consume') {
      const [queue, options] = req.args;
      return this.consumers.open(consumerIdOf(req), queue, options);
    }
    if (req.op === 'consumerClose') return this.consumers.close(consumerIdOf(req)).then(() => null);
    const method = brokerMethod(this.broker, req.op);
    if (method === null) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${req.op} is not supported by this server`);
    if (TOPOLOGY_OPS.has(req.op)) return this.options.topology.run(() => method(...req.args));
    return method(...req.args);
  }

  /** Answers a settle (ACK/NACK) when the client asked for an answer (request id ≠ 0). */
  private answer(requestId: number, settled: Promise<string>): void {
    settled.then(
      (status) => this.respond(requestId, status),
      (err: unknown) => {
        if (requestId !== 0) this.replyError(requestId, err);
        else this.options.onError(err);
      },
    );
  }

  private finished(): void {
    this.inflight--;
    if (this.inflight === 0 && this.drained !== null) this.drained();
    else this.maybeResume();
  }

  private respond(requestId: number, result: unknown): void {
    if (this.state === 'closed' || requestId === 0) return;
    try {
      encodeResponse(this.writer, requestId, result);
    } catch (err) {
      this.replyError(requestId, err);
    }
  }

  private replyError(requestId: number, err: unknown): void {
    if (this.state === 'closed') return;
    encodeError(this.writer, requestId, wireErrorOf(err));
  }

  /** Ends the connection because of `err`: tells the peer why (request id 0), then closes. */
  private fail(err: unknown, destroyNow = false): void {
    if (this.state === 'closed') return;
    this.reader.stop();
    this.writeGathered();
    encodeError(this.writer, 0, wireErrorOf(err));
    this.close(err, (err as Error)?.message ?? String(err), destroyNow);
  }

  /**
   * Server shutdown: stops taking frames, lets in-flight requests finish (so their confirms are
   * sent), says CLOSE, then closes. Bounded by `timeoutMs`.
   */
  async drain(timeoutMs: number): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'draining';
    this.reader.stop();
    this.socket.pause();
    if (this.inflight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        this.drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    // The peer may have gone while we waited.
    if ((this.state as State) === 'closed') return;
    this.writeGathered(); // the last confirms go before CLOSE
    encodeClose(this.writer, 'server shutting down');
    await this.close(null, 'server shutting down');
  }

  /** Closes the connection and its consumers (unsettled deliveries are redelivered to others). Idempotent. */
  close(_err: unknown, _why: string, destroyNow = false): Promise<void> {
    if (this.state === 'closed') return Promise.resolve();
    this.state = 'closed';
    this.reader.stop();
    this.writer.flush();
    this.writer.close();
    if (destroyNow || this.socket.destroyed) {
      this.socket.destroy();
    } else {
      this.socket.end();
      // Read (and ignore) until the peer's end arrives, so the socket closes promptly; a peer
      // that does not read must not keep the socket (and its buffers) alive either.
      this.socket.resume();
      setTimeout(() => this.socket.destroy(), CLOSE_LINGER_MS).unref();
    }
    const closing = this.consumers.closeAll().catch((err: unknown) => this.options.onError(err));
    this.options.onClosed(this);
    return closing;
  }
}

/** The same queue names (the broker shares one array per route, so usually the same array). */
function sameQueues(a: readonly string[], b: readonly string[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Fields of a publish result besides id, status and queues (a delayed message's deliverAt), as wire JSON. */
function publishExtraJson(r: object): string {
  let extra: Record<string, unknown> | null = null;
  for (const key in r) {
    if (key === 'id' || key === 'status' || key === 'queues') continue;
    const v = (r as Record<string, unknown>)[key];
    if (v !== undefined) (extra ??= {})[key] = v;
  }
  return extra === null ? '' : toWireJson(extra);
}

function consumerIdOf(req: Request): number {
  if (req.consumer === undefined) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${req.op} needs a consumer id`);
  return req.consumer;
}

/** The wire form of an error: a SpoolError keeps its code; anything else is reported as unexpected ('' code). */
function wireErrorOf(err: unknown): { code: string; message: string } {
  if (isSpoolError(err)) return { code: err.code, message: err.message };
  return { code: '', message: err instanceof Error ? err.message : String(err) };
}

/** Constant-time token comparison (hashing first makes the lengths equal). */
function tokensEqual(given: string | undefined, expected: string): boolean {
  if (given === undefined) return false;
  const a = crypto.createHash('sha256').update(given).digest();
  const b = crypto.createHash('sha256').update(expected).digest();
  return crypto.timingSafeEqual(a, b);
}
