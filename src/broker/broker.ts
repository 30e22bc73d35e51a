/**
 * The embedded broker: exchanges route to queues, queues are logs, consumer groups read them.
 * Names follow amqplib where they can, so RabbitMQ users feel at home.
 *
 * @example
 *   const broker = await Broker.open({ dataDir: './data' });
 *   await broker.assertExchange('orders', 'topic');
 *   await broker.assertQueue('billing');
 *   await broker.bindQueue('billing', 'orders', 'order.*');
 *   const r = await broker.publish('orders', 'order.created', JSON.stringify({ id: 1 }));
 *   const consumer = await broker.consume('billing', async (msg) => console.log(msg.json()), { group: 'billing-svc' });
 *   await consumer.close();
 *   await broker.close();
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { SpoolError } from '../errors.js';
import { type Clock, type Storage, systemClock, nodeStorage } from '../log/index.js';
import { readWholeFile, writeFileAtomic } from '../log/storage.js';
import type { Message } from './delivery.js';
import { type AckMode, type Consumer, type ConsumerOptions, type Handler } from './group.js';
import { DirLock } from './lock.js';
import type { LogRecord } from '../log/index.js';
import { type Body, type Headers, checkHeaders, generateId } from './message.js';
import { checkExchangeName, checkName } from './names.js';
import { Queue, type QueueOptions } from './queue.js';
import { EXCHANGE_TYPES, ExchangeRouter, type ExchangeType } from './routing.js';
import { Subscription } from './subscription.js';
import { WorkerPool } from './workers.js';

export interface BrokerOptions {
  /** Directory holding every queue; created if missing. Default './data'. */
  dataDir?: string;
  clock?: Clock;
  /** Largest message body. Default 4 MiB. */
  maxMessageBytes?: number;
  /** Segment size of queue logs. Default 128 MiB. */
  segmentBytesMax?: number;
  /** How often lock timeouts are checked, in ms. Default 1000. */
  sweepIntervalMs?: number;
  /** @internal The I/O seam for queue logs (tests). */
  storage?: Storage;
}

export interface ExchangeOptions {
  /** Where messages go that this exchange cannot route. */
  alternateExchange?: string;
}

export interface PublishOptions {
  /** The message id; publishing the same id again within the dedupe window stores nothing. Default: a generated ULID. */
  id?: string;
  headers?: Headers;
  /** Report an unroutable message with a 'return' event. */
  mandatory?: boolean;
}

export type PublishStatus = 'confirmed' | 'duplicate' | 'unroutable';

export interface PublishResult {
  id: string;
  status: PublishStatus;
  /** The queues the message was routed to. */
  queues: string[];
}

/** Events the broker emits. */
export interface BrokerEvents {
  /** A mandatory message that routed nowhere. */
  return: [{ id: string; exchange: string; routingKey: string; body: Body; headers: Headers | undefined }];
  /** Any message that routed nowhere (mandatory or not). */
  unroutable: [{ id: string; exchange: string; routingKey: string }];
  /** A message removed without delivery: nacked without requeue, or dropped by overflow. */
  drop: [{ queue: string; group: string; id: string; offset: number; reason: 'rejected' | 'maxlen' }];
  error: [Error];
}

interface Topology {
  version: 1;
  exchanges: Record<string, { type: ExchangeType; options: ExchangeOptions }>;
  queues: Record<string, QueueOptions>;
  bindings: { exchange: string; queue: string; pattern: string }[];
}

const TOPOLOGY_FILE = 'topology.json';
const MiB = 1024 * 1024;

export interface ConsumeOptions extends ConsumerOptions {
  group?: string;
  /** With a handler module path: how many worker threads run it (default 1). */
  workers?: number;
}

export class Broker extends EventEmitter<BrokerEvents> {
  readonly dataDir: string;
  private readonly clock: Clock;
  private readonly maxMessageBytes: number;
  private readonly queues = new Map<string, Queue>();
  private readonly exchanges = new Map<string, { type: ExchangeType; options: ExchangeOptions; router: ExchangeRouter }>();
  private topology: Topology;
  private closed = false;
  private sweeper: NodeJS.Timeout;
  private readonly counters = { published: 0, duplicates: 0, unroutable: 0, dropped: 0 };
  private readonly consumers = new Set<Consumer | Subscription>();

  private constructor(
    dataDir: string,
    private readonly options: BrokerOptions,
    private readonly lock: DirLock,
    topology: Topology,
  ) {
    super();
    this.dataDir = dataDir;
    this.clock = options.clock ?? systemClock;
    this.maxMessageBytes = options.maxMessageBytes ?? 4 * MiB;
    this.topology = topology;
    this.sweeper = setInterval(() => this.sweep(), options.sweepIntervalMs ?? 1000);
    this.sweeper.unref();
  }

  /** Opens the data dir (taking its lock), restoring topology, queues and groups. */
  static async open(options: BrokerOptions = {}): Promise<Broker> {
    const dataDir = path.resolve(options.dataDir ?? './data');
    await fs.promises.mkdir(path.join(dataDir, 'queues'), { recursive: true });
    const lock = DirLock.acquire(dataDir);
    try {
      const topology = await readTopology(dataDir);
      const broker = new Broker(dataDir, options, lock, topology);
      await broker.restore();
      return broker;
    } catch (err) {
      lock.release();
      throw err;
    }
  }

  private async restore(): Promise<void> {
    for (const [name, ex] of Object.entries(this.topology.exchanges)) {
      this.exchanges.set(name, { ...ex, router: new ExchangeRouter(ex.type) });
    }
    for (const [name, opts] of Object.entries(this.topology.queues)) await this.openQueue(name, opts);
    for (const b of this.topology.bindings) this.exchanges.get(b.exchange)?.router.bind(b.queue, b.pattern);
  }

  private get logOptions() {
    return {
      segmentBytesMax: this.options.segmentBytesMax,
      recordBytesMax: this.maxMessageBytes + 64 * 1024,
      batchBytesMax: Math.max(16 * MiB, this.maxMessageBytes + 128 * 1024),
      ...(this.options.storage ? { storage: this.options.storage } : {}),
    };
  }

  private async openQueue(name: string, opts: QueueOptions): Promise<Queue> {
    const q = await Queue.open(name, path.join(this.dataDir, 'queues', name), opts, this.clock, this.logOptions, {
      rejected: (queue, record, group, reason) => this.onRejected(queue, record, group, reason),
      error: (err) => this.emitError(err),
    });
    this.queues.set(name, q);
    return q;
  }

  private onRejected(queue: Queue, record: LogRecord, group: string, reason: 'rejected' | 'maxlen'): void {
    this.counters.dropped++;
    this.emit('drop', { queue: queue.name, group, id: record.keyText(), offset: record.offset, reason });
  }

  private emitError(err: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  private checkOpen(): void {
    if (this.closed) throw new SpoolError('SPOOL_ERR_CLOSED', 'the broker is closed');
  }

  private saveTopology(): Promise<void> {
    return writeFileAtomic(nodeStorage, path.join(this.dataDir, TOPOLOGY_FILE), Buffer.from(JSON.stringify(this.topology, null, 2)));
  }

  /**
   * Declares an exchange; idempotent when the type and options match.
   * @example await broker.assertExchange('orders', 'topic');
   */
  async assertExchange(name: string, type: ExchangeType, options: ExchangeOptions = {}): Promise<{ exchange: string }> {
    this.checkOpen();
    if (name === '') throw new SpoolError('SPOOL_ERR_INVALID_NAME', 'the default exchange cannot be declared');
    checkName('exchange', name);
    if (!EXCHANGE_TYPES.includes(type)) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `exchange type must be one of ${EXCHANGE_TYPES.join(', ')}`);
    if (options.alternateExchange !== undefined) checkName('exchange', options.alternateExchange);
    const normalized: ExchangeOptions = options.alternateExchange === undefined ? {} : { alternateExchange: options.alternateExchange };
    const existing = this.exchanges.get(name);
    if (existing !== undefined) {
      if (existing.type !== type || JSON.stringify(existing.options) !== JSON.stringify(normalized)) {
        throw new SpoolError('SPOOL_ERR_PRECONDITION', `exchange ${name} exists with type ${existing.type} and options ${JSON.stringify(existing.options)}`);
      }
      return { exchange: name };
    }
    this.exchanges.set(name, { type, options: normalized, router: new ExchangeRouter(type) });
    this.topology.exchanges[name] = { type, options: normalized };
    await this.saveTopology();
    return { exchange: name };
  }

  async deleteExchange(name: string): Promise<void> {
    this.checkOpen();
    checkName('exchange', name);
    if (!this.exchanges.has(name)) throw new SpoolError('SPOOL_ERR_NOT_FOUND', `no exchange ${name}`);
    this.exchanges.delete(name);
    delete this.topology.exchanges[name];
    this.topology.bindings = this.topology.bindings.filter((b) => b.exchange !== name);
    await this.saveTopology();
  }

  /**
   * Declares a queue; idempotent when the options match, SPOOL_ERR_PRECONDITION when they conflict.
   * @example await broker.assertQueue('billing', { deliveryLimit: 5 });
   */
  async assertQueue(name: string, options: QueueOptions = {}): Promise<{ queue: string; messageCount: number; consumerCount: number }> {
    this.checkOpen();
    checkName('queue', name);
    const normalized = normalizeQueueOptions(options);
    let q = this.queues.get(name);
    if (q !== undefined) {
      if (JSON.stringify(q.options) !== JSON.stringify(normalized)) {
        throw new SpoolError('SPOOL_ERR_PRECONDITION', `queue ${name} exists with options ${JSON.stringify(q.options)}`);
      }
    } else {
      this.topology.queues[name] = normalized;
      q = await this.openQueue(name, normalized);
      await this.saveTopology();
    }
    let consumers = 0;
    for (const g of q.groups.values()) consumers += g.consumerCount;
    return { queue: name, messageCount: q.depth, consumerCount: consumers };
  }

  /** Deletes a queue, its messages and its groups. */
  async deleteQueue(name: string): Promise<void> {
    this.checkOpen();
    const q = this.getQueue(name);
    this.queues.delete(name);
    delete this.topology.queues[name];
    this.topology.bindings = this.topology.bindings.filter((b) => b.queue !== name);
    for (const ex of this.exchanges.values()) ex.router.unbind(name);
    await this.saveTopology();
    await q.close();
    await Queue.destroy(q.dir);
  }

  /** Binds a queue to an exchange with a binding key (a pattern for topic exchanges). */
  async bindQueue(queue: string, exchange: string, pattern = ''): Promise<void> {
    this.checkOpen();
    this.getQueue(queue);
    const ex = this.getExchange(exchange);
    if (typeof pattern !== 'string') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'binding key must be a string');
    if (ex.router.bind(queue, pattern)) {
      this.topology.bindings.push({ exchange, queue, pattern });
      await this.saveTopology();
    }
  }

  async unbindQueue(queue: string, exchange: string, pattern = ''): Promise<void> {
    this.checkOpen();
    this.getQueue(queue);
    const ex = this.getExchange(exchange);
    if (ex.router.unbind(queue, pattern) > 0) {
      this.topology.bindings = this.topology.bindings.filter((b) => !(b.exchange === exchange && b.queue === queue && b.pattern === pattern));
      await this.saveTopology();
    }
  }

  private getQueue(name: string): Queue {
    checkName('queue', name);
    const q = this.queues.get(name);
    if (q === undefined) throw new SpoolError('SPOOL_ERR_NOT_FOUND', `no queue ${name}`);
    return q;
  }

  private getExchange(name: string) {
    checkName('exchange', name);
    const ex = this.exchanges.get(name);
    if (ex === undefined) throw new SpoolError('SPOOL_ERR_NOT_FOUND', `no exchange ${name}`);
    return ex;
  }

  /** The queues a message published to `exchange` with `routingKey` reaches (following alternate exchanges). */
  private route(exchange: string, routingKey: string): readonly string[] {
    if (exchange === '') return this.queues.has(routingKey) ? [routingKey] : [];
    const seen = new Set<string>();
    let name: string | undefined = exchange;
    while (name !== undefined && !seen.has(name)) {
      seen.add(name);
      const ex = this.exchanges.get(name);
      if (ex === undefined) return [];
      const queues = ex.router.route(routingKey);
      if (queues.length > 0) return queues;
      name = ex.options.alternateExchange;
    }
    return [];
  }

  /**
   * Publishes a message; resolves after it is fsynced in every queue it routes to.
   * @example
   *   const r = await broker.publish('orders', 'order.created', body, { id: 'order-1', mandatory: true });
   *   // r.status: 'confirmed' | 'duplicate' | 'unroutable'
   */
  async publish(exchange: string, routingKey: string, body: Body, options: PublishOptions = {}): Promise<PublishResult> {
    this.checkOpen();
    checkExchangeName(exchange);
    if (exchange !== '' && !this.exchanges.has(exchange)) throw new SpoolError('SPOOL_ERR_NOT_FOUND', `no exchange ${exchange}`);
    if (typeof routingKey !== 'string') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'routing key must be a string');
    const size = typeof body === 'string' ? Buffer.byteLength(body) : body instanceof Uint8Array ? body.byteLength : -1;
    if (size < 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'body must be a Buffer, Uint8Array or string');
    if (size > this.maxMessageBytes) {
      throw new SpoolError('SPOOL_ERR_MESSAGE_TOO_LARGE', `message of ${size} bytes exceeds maxMessageBytes ${this.maxMessageBytes}`);
    }
    const callerId = options.id !== undefined;
    if (callerId && (typeof options.id !== 'string' || options.id.length === 0 || Buffer.byteLength(options.id) > 1024)) {
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'id must be a non-empty string of at most 1024 bytes');
    }
    const headers = checkHeaders(options.headers);
    const id = callerId ? (options.id as string) : generateId();
    const queues = this.route(exchange, routingKey);
    if (queues.length === 0) {
      this.counters.unroutable++;
      this.emit('unroutable', { id, exchange, routingKey });
      if (options.mandatory) this.emit('return', { id, exchange, routingKey, body, headers });
      return { id, status: 'unroutable', queues: [] };
    }
    const stored = { id, callerId, exchange, routingKey, headers, body, expiresAt: undefined };
    let status: PublishStatus;
    if (queues.length === 1) {
      status = await (this.queues.get(queues[0] as string) as Queue).append(stored);
    } else {
      const results = await Promise.all(queues.map((q) => (this.queues.get(q) as Queue).append(stored)));
      status = results.every((r) => r === 'duplicate') ? 'duplicate' : 'confirmed';
    }
    if (status === 'duplicate') this.counters.duplicates++;
    else this.counters.published++;
    return { id, status, queues: queues as string[] };
  }

  /**
   * Publishes straight to a queue through the default exchange.
   * @example await broker.sendToQueue('billing', 'hello', { id: 'msg-1' });
   */
  sendToQueue(queue: string, body: Body, options: PublishOptions = {}): Promise<PublishResult> {
    this.checkOpen();
    this.getQueue(queue);
    return this.publish('', queue, body, options);
  }

  private async consumerGroup(queue: string, options: ConsumeOptions) {
    this.checkOpen();
    const q = this.getQueue(queue);
    const groupName = options.group ?? 'default';
    checkName('group', groupName);
    return q.group(groupName, { from: options.from });
  }

  /**
   * Starts a consumer. `ack`: 'auto' (default) acks when the handler resolves and nacks when it
   * throws; 'manual' leaves it to `msg.ack()`/`msg.nack()`; 'none' is at most once.
   * @example
   *   const c = await broker.consume('billing', async (msg) => { await charge(msg.json()); },
   *     { group: 'billing-svc', prefetch: 100, concurrency: 8 });
   */
  async consume(queue: string, handler: Handler | string, options: ConsumeOptions = {}): Promise<Consumer> {
    if (typeof handler === 'string') return this.consumeWithWorkers(queue, handler, options);
    if (typeof handler !== 'function') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'handler must be a function or a module path');
    const resolved = resolveConsumerOptions(options, 'auto');
    const group = await this.consumerGroup(queue, options);
    const c = group.addConsumer(handler, resolved);
    this.track(c, async () => {});
    return c;
  }

  private track(c: Consumer, after: () => Promise<void>): void {
    this.consumers.add(c);
    const close = c.close.bind(c);
    c.close = async () => {
      this.consumers.delete(c);
      await close();
      await after();
    };
  }

  /**
   * Runs a handler module on a worker_threads pool. The module's default export (or `handler`)
   * gets the message's data; resolving acks, throwing nacks (ack 'auto'; 'none' is also allowed).
   * @example
   *   await broker.consume('images', './resize.js', { workers: 4, prefetch: 64 });
   */
  private async consumeWithWorkers(queue: string, modulePath: string, options: ConsumeOptions): Promise<Consumer> {
    const workers = options.workers ?? 1;
    const resolved = resolveConsumerOptions({ concurrency: workers * 2, ...options }, 'auto');
    if (resolved.ack === 'manual') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', "a worker handler acks by resolving: use ack 'auto' or 'none'");
    const pool = new WorkerPool(modulePath, workers);
    try {
      await pool.ready();
      const group = await this.consumerGroup(queue, options);
      const c = group.addConsumer(pool.handler, resolved);
      this.track(c, () => pool.close());
      return c;
    } catch (err) {
      await pool.close();
      if (err instanceof SpoolError) throw err;
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `cannot load handler module ${modulePath}: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * An async iterator over a queue. With ack 'manual' (default) call `msg.ack()`; with 'auto'
   * a message is acked when the loop asks for the next one. Breaking out of the loop closes it.
   * @example
   *   for await (const msg of broker.subscribe('billing', { group: 'audit' })) { await msg.ack(); }
   */
  subscribe(queue: string, options: ConsumeOptions = {}): Subscription {
    const resolved = resolveConsumerOptions(options, 'manual');
    const sub = new Subscription(resolved.ack);
    const started = this.consumerGroup(queue, options).then((group) => {
      const c = group.addConsumer(sub.handler, { ...resolved, concurrency: resolved.ack === 'auto' ? 1 : resolved.prefetch });
      sub.attach(c);
      this.consumers.add(sub);
      sub.onClose(() => this.consumers.delete(sub));
    });
    sub.starting(started);
    return sub;
  }

  /** Depth, consumers and per-group lag of a queue. */
  queueStats(name: string) {
    const q = this.getQueue(name);
    const groups: Record<string, { committed: number; lag: number; inFlight: number; consumers: number }> = {};
    for (const [gname, g] of q.groups) groups[gname] = { committed: g.committed, lag: g.lag, inFlight: g.inFlightCount, consumers: g.consumerCount };
    return { queue: name, depth: q.depth, startOffset: q.log.startOffset, endOffset: q.log.endOffset, groups };
  }

  stats() {
    return { ...this.counters, queues: this.queues.size, exchanges: this.exchanges.size };
  }

  listQueues(): string[] {
    return [...this.queues.keys()].sort();
  }

  listExchanges(): { name: string; type: ExchangeType; options: ExchangeOptions }[] {
    return [...this.exchanges].map(([name, e]) => ({ name, type: e.type, options: e.options }));
  }

  listBindings(): { exchange: string; queue: string; pattern: string }[] {
    return [...this.topology.bindings];
  }

  private sweep(): void {
    for (const q of this.queues.values()) for (const g of q.groups.values()) g.expireLocks();
  }

  /** Closes consumers (their unacked messages stay for redelivery), waits for acks to be durable, and releases the data dir. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    for (const c of [...this.consumers]) await c.close();
    try {
      for (const q of this.queues.values()) await q.close();
    } finally {
      this.lock.release();
    }
  }
}

function normalizeQueueOptions(o: QueueOptions): QueueOptions {
  if (o === null || typeof o !== 'object') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'queue options must be an object');
  const out: QueueOptions = {};
  const positive = (k: keyof QueueOptions) => {
    const v = o[k];
    if (v === undefined) return;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${k} must be a non-negative integer`);
    (out as Record<string, unknown>)[k] = v;
  };
  if (o.deadLetterExchange !== undefined) out.deadLetterExchange = checkName('exchange', o.deadLetterExchange);
  if (o.deadLetterRoutingKey !== undefined) {
    if (typeof o.deadLetterRoutingKey !== 'string') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'deadLetterRoutingKey must be a string');
    out.deadLetterRoutingKey = o.deadLetterRoutingKey;
  }
  positive('messageTtl');
  positive('deliveryLimit');
  positive('maxLength');
  positive('maxBytes');
  if (o.overflow !== undefined) {
    if (o.overflow !== 'drop-head' && o.overflow !== 'reject-publish') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', "overflow must be 'drop-head' or 'reject-publish'");
    out.overflow = o.overflow;
  }
  positive('dedupeWindowMs');
  return out;
}

function resolveConsumerOptions(o: ConsumeOptions, defaultAck: AckMode) {
  const ack = o.ack ?? defaultAck;
  if (ack !== 'none' && ack !== 'auto' && ack !== 'manual') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', "ack must be 'none', 'auto' or 'manual'");
  const int = (v: number | undefined, d: number, what: string) => {
    const x = v ?? d;
    if (!Number.isSafeInteger(x) || x < 1) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${what} must be a positive integer`);
    return x;
  };
  const prefetch = int(o.prefetch, 100, 'prefetch');
  return {
    ack,
    prefetch,
    concurrency: Math.min(int(o.concurrency, 1, 'concurrency'), prefetch),
    lockTimeoutMs: int(o.lockTimeoutMs, 30_000, 'lockTimeoutMs'),
  };
}

async function readTopology(dataDir: string): Promise<Topology> {
  try {
    const raw = await readWholeFile(nodeStorage, path.join(dataDir, TOPOLOGY_FILE));
    const t = JSON.parse(raw.toString('utf8')) as Topology;
    if (t.version !== 1) throw new SpoolError('SPOOL_ERR_UNKNOWN_VERSION', `topology version ${String(t.version)} is unknown`);
    return t;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, exchanges: {}, queues: {}, bindings: [] };
    if (err instanceof SyntaxError) throw new SpoolError('SPOOL_ERR_CORRUPT', `${path.join(dataDir, TOPOLOGY_FILE)} is not valid JSON`, { cause: err });
    throw err;
  }
}

export type { Message };
