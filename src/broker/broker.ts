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
import { Message } from './delivery.js';
import { type AckMode, type Consumer, type ConsumerOptions, type DeathReason, type Handler, type ResolvedConsumerOptions } from './group.js';
import { type DelayedRecord, DelayStore, deliverAtOf } from './delay-store.js';
import { TimingWheel } from './timing-wheel.js';
import { DirLock } from './lock.js';
import type { LogRecord } from '../log/index.js';
import { BATCH_MESSAGES_MAX, type Body, type Headers, type StoredMessage, META_CALLER_ID, META_DELIVER_AT, META_ROUTE, META_TTL, NEW_ID, checkHeaders, generateId, generateIds, routeOf, userHeadersOf } from './message.js';
import { checkExchangeName, checkName } from './names.js';
import { Queue, type QueueOptions } from './queue.js';
import { EXCHANGE_TYPES, ExchangeRouter, type ExchangeType } from './routing.js';
import { Subscription } from './subscription.js';
import { WorkerPool } from './workers.js';
import { IdempotencyStore, idempotentHandler } from '../idempotency/index.js';

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
  /**
   * How often the broker's own timers (per-message TTLs, retries, queue-TTL scans) are processed,
   * in ms, while any are pending (otherwise once a second, so an idle broker costs next to no CPU).
   * Delayed messages do not wait for it: the delay store wakes on its own timer. Default 5.
   */
  tickIntervalMs?: number;
  /**
   * A queue's write of at most this many bytes, with no other write of that queue in flight, is
   * made and fdatasynced on the event loop's thread rather than the thread pool: a lone publish
   * is confirmed about 40% sooner (two thread wake-ups fewer), and the loop waits as long as one
   * fdatasync (~0.1-0.2 ms on an SSD). Paused for a second whenever they average over 1 ms (a
   * slow disk). Busy queues write larger batches through the thread pool as before. 0 turns it off.
   * Default 16 KiB.
   */
  blockingCommitBytes?: number;
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
  /** Route the message this many ms from now (stored durably at once). */
  delay?: number;
  /** Route the message at this time (stored durably at once). */
  deliverAt?: Date | number;
  /** Milliseconds the message may wait in a queue before it expires (and is dead-lettered). */
  ttl?: number;
}

/** One message of `publishBatch`: its routing key and body, and the options of `publish`. */
export interface BatchMessage extends PublishOptions {
  routingKey: string;
  body: Body;
}

export { BATCH_MESSAGES_MAX } from './message.js';

/** A publish whose arguments were checked: what storing or scheduling it needs. */
/** A checked publish: the message as stored, and its ttl and due time as the caller gave them. */
interface CheckedPublish extends StoredMessage {
  ttl: number | undefined;
  deliverAt: number | undefined;
}

/** The messages of one `publishBatch` call that go to one queue, and their places in the call. */
interface BatchShare {
  stored: StoredMessage[];
  index: number[];
}

export type PublishStatus = 'confirmed' | 'duplicate' | 'unroutable';

export interface PublishResult {
  id: string;
  status: PublishStatus;
  /** The queues the message was routed to (none yet for a delayed message). */
  queues: string[];
  /** For a delayed message: when it will be routed (ms since the epoch). */
  deliverAt?: number;
}

/** What `replay` moves and where. */
export interface ReplayOptions {
  /** Default: each message's original exchange and routing key (from its x-death). */
  to?: { exchange: string; routingKey?: string } | { queue: string };
  /** Only messages for which this returns true (or matching these fields) are moved. */
  filter?: ((msg: Message) => boolean) | { reason?: string; routingKey?: string; id?: string };
  /** At most this many messages. */
  limit?: number;
}

/** One entry of a dead-lettered message's `x-death` header, newest first (RabbitMQ's layout). */
export interface DeathRecord {
  reason: DeathReason;
  queue: string;
  exchange: string;
  'routing-keys': string[];
  count: number;
  time: number;
  'last-error'?: string;
}

/** Events the broker emits. */
export interface BrokerEvents {
  /** A mandatory message that routed nowhere. */
  return: [{ id: string; exchange: string; routingKey: string; body: Body; headers: Headers | undefined }];
  /** Any message that routed nowhere (mandatory or not). */
  unroutable: [{ id: string; exchange: string; routingKey: string }];
  /** A message that left its queue without a dead-letter exchange to go to, or whose dead-lettering was a cycle. */
  drop: [{ queue: string; group: string; id: string; offset: number; reason: DeathReason | 'cycle' }];
  /** A message moved to a dead-letter exchange (or a consumer's error exchange). */
  deadLetter: [{ queue: string; group: string; id: string; offset: number; reason: DeathReason; exchange: string; queues: string[] }];
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
/** BrokerOptions.blockingCommitBytes: a lone 4 KiB publish, or a burst of ~100 small ones. */
/** The tick's period while nothing timed is pending: a check that this is still so, in case some path did not wake it. */
const IDLE_TICK_MS = 1000;
const BLOCKING_COMMIT_BYTES = 16 * 1024;

export interface ConsumeOptions extends ConsumerOptions {
  group?: string;
  /**
   * Exactly-once handling per group: each message id is claimed in the broker's idempotency
   * store before the handler runs, and one already handled is acked without calling it
   * (docs/idempotency.md, including the window that remains).
   */
  idempotent?: boolean | { windowMs?: number };
  /** With a handler module path: how many worker threads run it (default 1). */
  workers?: number;
}

/**
 * The dedupe key a delayed message is fired with, and whether it is its caller id: a caller id is
 * the key itself, as for an immediate publish; without one (or in a record from before the mark)
 * it is the broker's id and the due time.
 */
function fireKeyOf(r: DelayedRecord): { key: string; callerId: boolean } {
  const callerId = r.headerText(META_CALLER_ID) !== undefined;
  return { key: callerId ? r.keyText() : `${r.keyText()}\0at\0${deliverAtOf(r)}`, callerId };
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
  private ticker: NodeJS.Timeout;
  /** The tick's period while timed work is pending (`tickIntervalMs`). */
  private readonly tickMs: number;
  /** False while nothing timed is pending: the tick then runs every IDLE_TICK_MS. */
  private tickingFast = true;
  private delays: DelayStore | null = null;
  /** Broker-wide timers (retries, per-message expiry), keyed so a re-arm replaces the old one. */
  private readonly timers: TimingWheel<string>;
  private readonly timerActions = new Map<string, () => void>();
  private ticking = false;
  /** Set once `restore` has every exchange, queue, binding and the delay store back: ticks wait for it. */
  private restored = false;
  private topologySaving: Promise<void> = Promise.resolve();
  private idempotency: Promise<IdempotencyStore> | null = null;
  private readonly counters = { published: 0, duplicates: 0, unroutable: 0, dropped: 0, deadLettered: 0, scheduled: 0 };
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
    this.timers = new TimingWheel<string>({ tickMs: 4, startMs: this.clock.now() });
    this.tickMs = options.tickIntervalMs ?? 5;
    this.ticker = setInterval(() => void this.tick(), this.tickMs);
    this.ticker.unref();
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
    for (const q of this.queues.values()) q.resume();
    this.delays = await DelayStore.open(
      path.join(this.dataDir, 'delayed'),
      this.clock,
      this.logOptions,
      (r) => this.fireDelayed(r),
      (r) => this.firedAlready(r),
    );
    this.delays.onError = (err) => this.emitError(err);
    this.restored = true;
    // Overdue delays, re-armed expiries and TTL queues must not wait for the idle tick.
    this.wakeTicker();
  }

  private get logOptions() {
    return {
      clock: this.clock,
      segmentBytesMax: this.options.segmentBytesMax,
      recordBytesMax: this.maxMessageBytes + 64 * 1024,
      batchBytesMax: Math.max(16 * MiB, this.maxMessageBytes + 128 * 1024),
      blockingCommitBytes: this.options.blockingCommitBytes ?? BLOCKING_COMMIT_BYTES,
      ...(this.options.storage ? { storage: this.options.storage } : {}),
    };
  }

  private async openQueue(name: string, opts: QueueOptions): Promise<Queue> {
    const q = await Queue.open(name, path.join(this.dataDir, 'queues', name), opts, this.clock, this.logOptions, {
      deadLetter: (queue, record, group, reason, error, errorExchange) => this.deadLetter(queue, record, group, reason, error, errorExchange),
      schedule: (key, dueAt, fire) => this.schedule(key, dueAt, fire),
      error: (err) => this.emitError(err),
    });
    this.queues.set(name, q);
    if (q.expiresByAge) this.wakeTicker();
    return q;
  }

  /** Arms a broker timer; the same key re-arms (replaces) it. */
  private schedule(key: string, dueAt: number, fire: () => void): void {
    this.timerActions.set(key, fire);
    this.timers.schedule(key, dueAt);
    this.wakeTicker();
  }

  /**
   * Whether anything waits for the tick: broker timers, pending delayed messages, or a queue
   * whose messages expire by age. When nothing does, the tick slows to IDLE_TICK_MS: a 5 ms
   * interval alone cost an idle broker with a consumer ~2.7% of a core (measured).
   */
  private hasTimedWork(): boolean {
    if (this.timers.size > 0 || (this.delays?.pendingCount ?? 0) > 0) return true;
    for (const q of this.queues.values()) if (q.expiresByAge) return true;
    return false;
  }

  private setTickPeriod(ms: number): void {
    clearInterval(this.ticker);
    this.ticker = setInterval(() => void this.tick(), ms);
    this.keepAlive();
  }

  /** Timed work arrived: back to the fast tick (the slow one would also find it, up to a second late). */
  private wakeTicker(): void {
    if (this.tickingFast || this.closed) return;
    this.tickingFast = true;
    this.setTickPeriod(this.tickMs);
  }

  /**
   * Runs what is due now and waits until the delayed messages it fired are routed. Tests with a
   * fake clock call this after moving the clock. @internal
   */
  async runTimers(): Promise<void> {
    while (this.ticking) await new Promise((r) => setTimeout(r, 1));
    await this.tick();
    await this.delays?.settled();
  }

  /** Runs what is due: delayed messages, per-message expiries, retries, queue-TTL scans (every few ms). */
  private async tick(): Promise<void> {
    // Nothing due runs before the whole topology is back: a message dead-lettered while the
    // bindings were still missing was dropped (the soak found it).
    if (this.ticking || this.closed || !this.restored) return;
    this.ticking = true;
    try {
      for (const key of this.timers.advance(this.clock.now())) {
        const fire = this.timerActions.get(key);
        this.timerActions.delete(key);
        fire?.();
      }
      for (const q of this.queues.values()) await q.expireByQueueTtl();
      await this.delays?.advance();
      this.keepAlive();
      if (this.closed) return;
      if (!this.hasTimedWork()) {
        if (this.tickingFast) {
          this.tickingFast = false;
          this.setTickPeriod(IDLE_TICK_MS);
        }
      } else {
        this.wakeTicker();
      }
    } catch (err) {
      this.emitError(err as Error);
    } finally {
      this.ticking = false;
    }
  }

  /**
   * Moves a message out of `queue` (RabbitMQ's dead-lettering, docs/architecture.md "Dead letters"):
   * to the queue's dead-letter exchange with an updated x-death header; else, for a consumer
   * that gave up, to its error exchange with x-exception headers; else a 'drop' event. A message
   * dead-lettered back into a queue it already died in, with no rejection on the way, is a cycle
   * and is dropped with an event. Resolves once the copy is durable wherever it went.
   */
  private async deadLetter(queue: Queue, record: LogRecord, group: string, reason: DeathReason, error: unknown, errorExchange: string | null): Promise<void> {
    const id = record.keyText();
    const offset = record.offset;
    const route = routeOf(record);
    const headers: Headers = { ...userHeadersOf(record) };
    const dlx = queue.options.deadLetterExchange;
    const errorText = error === undefined ? undefined : error instanceof Error ? error.message : String(error);
    // Deterministic, so a crash after the copy but before the ack does not copy it twice.
    const dedupeKey = `${id}\0dl\0${queue.name}\0${group}\0${offset}`;
    if (dlx === undefined && errorExchange !== null && reason === 'rejected') {
      headers['x-exception-message'] = errorText ?? '';
      headers['x-exception-stack'] = error instanceof Error ? (error.stack ?? '') : '';
      headers['x-original-queue'] = queue.name;
      headers['x-original-routing-key'] = route.routingKey;
      headers['x-original-exchange'] = route.exchange;
      const queues = this.exchanges.has(errorExchange) ? this.route(errorExchange, route.routingKey) : [];
      if (queues.length === 0) {
        this.counters.dropped++;
        this.emit('drop', { queue: queue.name, group, id, offset, reason });
        return;
      }
      await this.appendTo(queues, { id, callerId: false, newId: false, dedupeKey, exchange: errorExchange, routingKey: route.routingKey, headers, body: record.value, expiresAt: undefined });
      this.counters.deadLettered++;
      this.emit('deadLetter', { queue: queue.name, group, id, offset, reason, exchange: errorExchange, queues: [...queues] });
      return;
    }
    if (dlx === undefined) {
      this.counters.dropped++;
      this.emit('drop', { queue: queue.name, group, id, offset, reason });
      return;
    }
    const deaths = Array.isArray(headers['x-death']) ? (headers['x-death'] as unknown as DeathRecord[]) : [];
    const routingKey = queue.options.deadLetterRoutingKey ?? route.routingKey;
    // Cycle rule (RabbitMQ): a target queue the message already died in, with no rejection in the chain.
    const rejectedInChain = reason === 'rejected' || deaths.some((d) => d.reason === 'rejected');
    // The queue it dies in now counts too: A dead-lettering straight back into A is a cycle.
    const targets = this.route(dlx, routingKey).filter((t) => rejectedInChain || (t !== queue.name && !deaths.some((d) => d.queue === t)));
    const same = deaths.find((d) => d.queue === queue.name && d.reason === reason);
    const entry: DeathRecord = {
      reason,
      queue: queue.name,
      exchange: route.exchange,
      'routing-keys': [route.routingKey],
      count: (same?.count ?? 0) + 1,
      time: this.clock.now(),
      ...(errorText === undefined ? {} : { 'last-error': errorText }),
    };
    headers['x-death'] = [entry, ...deaths.filter((d) => d !== same)] as unknown as Headers[string];
    if (targets.length === 0) {
      this.counters.dropped++;
      this.emit('drop', { queue: queue.name, group, id, offset, reason: this.route(dlx, routingKey).length > 0 ? 'cycle' : reason });
      return;
    }
    await this.appendTo(targets, { id, callerId: false, newId: false, dedupeKey, exchange: dlx, routingKey, headers, body: record.value, expiresAt: undefined });
    this.counters.deadLettered++;
    this.emit('deadLetter', { queue: queue.name, group, id, offset, reason, exchange: dlx, queues: [...targets] });
  }

  /** Appends one message to each queue; resolves when all copies are durable. */
  private appendTo(queues: readonly string[], stored: StoredMessage): Promise<PublishStatus> {
    if (queues.length === 0) return Promise.resolve('unroutable');
    if (queues.length === 1) return (this.queues.get(queues[0] as string) as Queue).append(stored);
    return Promise.all(queues.map((q) => (this.queues.get(q) as Queue).append(stored))).then((results) =>
      results.every((r) => r === 'duplicate') ? 'duplicate' : 'confirmed',
    );
  }

  /** Whether a due delayed message reached a queue already: one it routes to holds its fire's dedupe key. */
  private async firedAlready(r: DelayedRecord): Promise<boolean> {
    const route = routeOf(r);
    const { holding } = await this.dedupeKeyHolders(fireKeyOf(r).key, route.exchange, route.routingKey);
    return holding > 0;
  }

  /**
   * Whether the caller id `id` is in the dedupe window of every queue the route reaches now (false
   * when it reaches none: routing happens again at the fire).
   */
  private async storedInEveryQueue(id: string, exchange: string, routingKey: string): Promise<boolean> {
    const { holding, queues } = await this.dedupeKeyHolders(id, exchange, routingKey);
    return queues > 0 && holding === queues;
  }

  /** Of the queues the route reaches now, how many hold `key` in their dedupe window. */
  private async dedupeKeyHolders(key: string, exchange: string, routingKey: string): Promise<{ holding: number; queues: number }> {
    const queues = this.route(exchange, routingKey);
    let holding = 0;
    for (const q of queues) if (await (this.queues.get(q) as Queue).holdsDedupeKey(key)) holding++;
    return { holding, queues: queues.length };
  }

  /**
   * A delayed message is due: route it now, with a dedupe key (`fireKeyOf`) so that it lands once
   * however often it fires. With a caller id, a resend of the publish after a lost connection,
   * scheduled again because the first had fired already, is dropped by the queues' dedupe windows;
   * the broker's id and due time cover a re-fire after a crash.
   */
  private async fireDelayed(r: DelayedRecord): Promise<void> {
    const id = r.keyText();
    const route = routeOf(r);
    const ttl = r.headerText(META_TTL);
    const headersRaw = r.headerText('\0h');
    const fireKey = fireKeyOf(r);
    const stored: StoredMessage = {
      id,
      callerId: fireKey.callerId,
      newId: false,
      // A caller id dedupes by itself (no separate key); the broker's id by the key with its due time.
      dedupeKey: fireKey.callerId ? undefined : fireKey.key,
      exchange: route.exchange,
      routingKey: route.routingKey,
      headers: headersRaw === undefined ? undefined : (JSON.parse(headersRaw) as Headers),
      body: r.value,
      expiresAt: ttl === undefined ? undefined : this.clock.now() + Number(ttl),
    };
    const queues = this.route(route.exchange, route.routingKey);
    if (queues.length === 0) {
      this.counters.unroutable++;
      this.emit('unroutable', { id, exchange: route.exchange, routingKey: route.routingKey });
      return;
    }
    await this.appendTo(queues, stored);
  }

  private emitError(err: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  private checkOpen(): void {
    if (this.closed) throw new SpoolError('SPOOL_ERR_CLOSED', 'the broker is closed');
  }

  /** Saves are chained: concurrent declarations must not race on the temp file, and the last state wins. */
  private saveTopology(): Promise<void> {
    const save = this.topologySaving.catch(() => {}).then(() =>
      writeFileAtomic(nodeStorage, path.join(this.dataDir, TOPOLOGY_FILE), Buffer.from(JSON.stringify(this.topology, null, 2))),
    );
    this.topologySaving = save;
    return save;
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
    // Files first: a crash in between leaves a declared, empty queue, never resurrected messages.
    await q.close();
    await Queue.destroy(q.dir);
    await this.saveTopology();
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
    const direct = this.exchanges.get(exchange);
    if (direct === undefined) return [];
    const first = direct.router.route(routingKey);
    if (first.length > 0 || direct.options.alternateExchange === undefined) return first;
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
  publish(exchange: string, routingKey: string, body: Body, options: PublishOptions = NO_OPTIONS): Promise<PublishResult> {
    try {
      return this.publishNow(exchange, routingKey, body, options);
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  /** Validates and routes synchronously (throwing), then returns the confirmation's promise: one promise per publish on the common path. */
  private publishNow(exchange: string, routingKey: string, body: Body, options: PublishOptions): Promise<PublishResult> {
    this.checkOpen();
    this.checkExchange(exchange);
    const p = this.checkPublish(exchange, routingKey, body, options);
    if (p.deliverAt !== undefined && p.deliverAt > this.clock.now()) return this.publishDelayed(p.id, p.callerId, exchange, routingKey, body, p.headers, p.ttl, p.deliverAt);
    const queues = this.route(exchange, routingKey);
    if (queues.length === 0) return Promise.resolve(this.unroutable(p.id, exchange, routingKey, body, p.headers, options.mandatory === true));
    return this.appendTo(queues, p).then((status) => {
      if (status === 'duplicate') this.counters.duplicates++;
      else this.counters.published++;
      return { id: p.id, status, queues: queues as string[] };
    });
  }

  /**
   * Publishes many messages to one exchange, each with its own routing key, body and options.
   * The messages for one queue go to its log as one append, so a batch costs one fdatasync per
   * queue instead of many publishes sharing them: the fastest way to publish in bulk (Kafka's
   * producer batch). Resolves after every message is durable in every queue it routes to, with
   * one result per message, in order. Every message is checked before anything is stored: one
   * bad message rejects the whole call with a typed error naming its index, and nothing is
   * published. A failed append rejects the call; messages for other queues may have been
   * stored, so retry with the same ids and the dedupe window makes each land once.
   * @example
   *   const results = await broker.publishBatch('orders', [
   *     { routingKey: 'order.created', body: JSON.stringify({ id: 1 }), id: 'order-1' },
   *     { routingKey: 'order.created', body: JSON.stringify({ id: 2 }), id: 'order-2' },
   *   ]);
   *   // results[i].status: 'confirmed' | 'duplicate' | 'unroutable'
   */
  publishBatch(exchange: string, messages: readonly BatchMessage[]): Promise<PublishResult[]> {
    try {
      return this.publishBatchNow(exchange, messages);
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  private publishBatchNow(exchange: string, messages: readonly BatchMessage[]): Promise<PublishResult[]> {
    this.checkOpen();
    this.checkExchange(exchange);
    if (!Array.isArray(messages)) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'messages must be an array of { routingKey, body, ...options }');
    if (messages.length > BATCH_MESSAGES_MAX) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `a batch holds at most ${BATCH_MESSAGES_MAX} messages, got ${messages.length}`);
    const n = messages.length;
    // Check them all first: a bad message must not leave the ones before it published.
    const checked = new Array<CheckedPublish>(n);
    // Made together (one clock read, one string), for the messages without an id of their own:
    // a served client's publishes all carry one, and ids made for them would go unused.
    let missing = 0;
    for (let i = 0; i < n; i++) if ((messages[i] as BatchMessage | null)?.id === undefined) missing++;
    const generated = generateIds(missing);
    let nextGenerated = 0;
    for (let i = 0; i < n; i++) {
      const m = messages[i] as BatchMessage;
      try {
        if (m === null || typeof m !== 'object') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'a message must be an object { routingKey, body, ...options }');
        checked[i] = this.checkPublish(exchange, m.routingKey, m.body, m, m.id === undefined ? generated[nextGenerated++] : undefined);
      } catch (err) {
        if (err instanceof SpoolError) throw new SpoolError(err.code, `messages[${i}]: ${err.message}`, { cause: err });
        throw err;
      }
    }
    const results = new Array<PublishResult>(n);
    const pending: Promise<unknown>[] = [];
    const perQueue = new Map<string, BatchShare>();
    const routed = new Array<readonly string[] | undefined>(n);
    const now = this.clock.now();
    // Bulk messages mostly repeat one routing key and reach one queue: remember the last of each.
    let lastKey: string | null = null;
    let lastQueues: readonly string[] = [];
    let lastQueue: string | null = null;
    let lastShare: BatchShare | null = null;
    for (let i = 0; i < n; i++) {
      const m = messages[i] as BatchMessage;
      const p = checked[i] as CheckedPublish;
      if (p.deliverAt !== undefined && p.deliverAt > now) {
        pending.push(this.publishDelayed(p.id, p.callerId, exchange, m.routingKey, m.body, p.headers, p.ttl, p.deliverAt).then((r) => (results[i] = r)));
        continue;
      }
      const queues = m.routingKey === lastKey ? lastQueues : this.route(exchange, m.routingKey);
      lastKey = m.routingKey;
      lastQueues = queues;
      routed[i] = queues;
      if (queues.length === 0) {
        results[i] = this.unroutable(p.id, exchange, m.routingKey, m.body, p.headers, m.mandatory === true);
        continue;
      }
      for (let k = 0; k < queues.length; k++) {
        const q = queues[k] as string;
        let share: BatchShare | null | undefined = q === lastQueue ? lastShare : perQueue.get(q);
        if (share === undefined || share === null) perQueue.set(q, (share = { stored: [], index: [] }));
        lastQueue = q;
        lastShare = share;
        share.stored.push(p);
        share.index.push(i);
      }
    }
    // A message routed to several queues is a duplicate only when every queue already had it.
    const confirmedSomewhere = new Uint8Array(messages.length);
    for (const [q, entry] of perQueue) {
      pending.push(
        (this.queues.get(q) as Queue).appendMany(entry.stored).then((statuses) => {
          for (let j = 0; j < statuses.length; j++) if (statuses[j] === 'confirmed') confirmedSomewhere[entry.index[j] as number] = 1;
        }),
      );
    }
    return Promise.all(pending).then(() => {
      for (let i = 0; i < messages.length; i++) {
        const queues = routed[i];
        if (queues === undefined || queues.length === 0) continue;
        const status: PublishStatus = confirmedSomewhere[i] === 1 ? 'confirmed' : 'duplicate';
        if (status === 'duplicate') this.counters.duplicates++;
        else this.counters.published++;
        results[i] = { id: (checked[i] as CheckedPublish).id, status, queues: queues as string[] };
      }
      return results;
    });
  }

  private checkExchange(exchange: string): void {
    if (exchange !== '' && !this.exchanges.has(exchange)) {
      checkExchangeName(exchange);
      throw new SpoolError('SPOOL_ERR_NOT_FOUND', `no exchange ${exchange}`);
    }
  }

  /**
   * Checks one publish's routing key, body and options; throws a typed error, stores nothing.
   * Returns the message as it is stored (one object per publish, for the queues and the log).
   */
  private checkPublish(exchange: string, routingKey: unknown, body: unknown, options: PublishOptions, generatedId?: string): CheckedPublish {
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
    const id = callerId ? (options.id as string) : (generatedId ?? generateId());
    const ttl = options.ttl;
    if (ttl !== undefined && (!Number.isSafeInteger(ttl) || ttl < 0)) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'ttl must be a non-negative integer (ms)');
    const deliverAt = this.deliverAtOf(options);
    const expiresAt = ttl === undefined ? undefined : this.clock.now() + ttl;
    const newId = callerId && (options as { [NEW_ID]?: boolean })[NEW_ID] === true;
    return { id, callerId, newId, exchange, routingKey, headers, body: body as Body, expiresAt, ttl, deliverAt };
  }

  private unroutable(id: string, exchange: string, routingKey: string, body: Body, headers: Headers | undefined, mandatory: boolean): PublishResult {
    this.counters.unroutable++;
    this.emit('unroutable', { id, exchange, routingKey });
    if (mandatory) this.emit('return', { id, exchange, routingKey, body, headers });
    return { id, status: 'unroutable', queues: [] };
  }

  private deliverAtOf(options: PublishOptions): number | undefined {
    const { delay, deliverAt } = options;
    if (delay !== undefined && deliverAt !== undefined) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'give delay or deliverAt, not both');
    if (delay !== undefined) {
      if (typeof delay !== 'number' || !Number.isFinite(delay) || delay < 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'delay must be a non-negative number of ms');
      return this.clock.now() + Math.round(delay);
    }
    if (deliverAt === undefined) return undefined;
    const at = deliverAt instanceof Date ? deliverAt.getTime() : deliverAt;
    if (typeof at !== 'number' || !Number.isSafeInteger(at)) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'deliverAt must be a valid Date or ms timestamp');
    return at;
  }

  private async publishDelayed(
    id: string,
    callerId: boolean,
    exchange: string,
    routingKey: string,
    body: Body,
    headers: Headers | undefined,
    ttl: number | undefined,
    deliverAt: number,
  ): Promise<PublishResult> {
    const h: Record<string, string> = { [META_ROUTE]: `${exchange}\0${routingKey}`, [META_DELIVER_AT]: String(deliverAt) };
    // A caller id marks the record, so its fire is deduplicated by that id (see fireDelayed).
    if (callerId) h[META_CALLER_ID] = '';
    if (headers !== undefined) h['\0h'] = JSON.stringify(headers);
    if (ttl !== undefined) h[META_TTL] = String(ttl);
    // An id that fired already, within the dedupe window of every queue it routes to, is a
    // duplicate too: a resend (the client's after a lost connection) or a reuse, answered as an
    // immediate publish would be.
    const status = await (this.delays as DelayStore).schedule(id, callerId, deliverAt, { value: body, headers: h }, () => this.storedInEveryQueue(id, exchange, routingKey));
    if (status === 'duplicate') {
      this.counters.duplicates++;
      return { id, status: 'duplicate', queues: [], deliverAt };
    }
    this.counters.scheduled++;
    this.wakeTicker();
    this.keepAlive();
    return { id, status: 'confirmed', queues: [], deliverAt };
  }

  /**
   * Cancels a pending delayed message, for example when the order got paid. Resolves true when a
   * pending message with this id was cancelled, false when none was pending.
   * @example
   *   const { id } = await broker.publish('orders', 'order.unpaid', body, { delay: 30 * 60_000 });
   *   await broker.cancel(id);
   */
  async cancel(id: string): Promise<boolean> {
    this.checkOpen();
    if (typeof id !== 'string' || id === '') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'id must be a non-empty string');
    return (this.delays as DelayStore).cancel(id);
  }

  /**
   * Moves dead-lettered messages out of `fromQueue` back to their original exchange and routing
   * key (from their x-death), or to `to`. Each is confirmed at its target before it leaves, and
   * the target's dedupe window makes a replay interrupted by a crash land each message once.
   * Messages "in" a dead-letter queue are those its `replay` group has not taken yet.
   * @example
   *   const { replayed } = await broker.replay('orders.dlq', { filter: { reason: 'rejected' }, limit: 100 });
   */
  async replay(fromQueue: string, options: ReplayOptions = {}): Promise<{ replayed: number; remaining: number }> {
    this.checkOpen();
    const q = this.getQueue(fromQueue);
    const limit = options.limit ?? Number.MAX_SAFE_INTEGER;
    if (!Number.isSafeInteger(limit) || limit < 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'limit must be a non-negative integer');
    const to = options.to;
    if (to !== undefined) {
      if ('queue' in to) this.getQueue(to.queue);
      else this.getExchange(to.exchange);
    }
    const group = await q.group(REPLAY_GROUP, { from: 'earliest' });
    let replayed = 0;
    let remaining = 0;
    let next = group.committed;
    // Only what is there now: a message replayed back into this queue is not replayed again.
    const end = q.log.endOffset;
    while (next < end) {
      const records = await q.log.read(Math.max(next, q.log.startOffset), { maxBytes: 1024 * 1024 });
      if (records.length === 0) break;
      for (const r of records) {
        if (r.offset >= end) break;
        next = r.offset + 1;
        if (group.isAcked(r.offset)) continue;
        const msg = new Message(r, fromQueue, 0, 0, { settle: () => Promise.resolve('unknown' as const) });
        if (replayed >= limit || !matchesFilter(msg, options.filter)) {
          remaining++;
          continue;
        }
        const headers = msg.headers;
        const deaths = Array.isArray(headers['x-death']) ? (headers['x-death'] as unknown as DeathRecord[]) : [];
        const first = deaths[deaths.length - 1];
        let queues: readonly string[];
        let exchange: string;
        let routingKey: string;
        if (to !== undefined && 'queue' in to) {
          queues = [to.queue];
          exchange = '';
          routingKey = to.queue;
        } else {
          exchange = to?.exchange ?? first?.exchange ?? msg.exchange;
          routingKey = to?.routingKey ?? first?.['routing-keys'][0] ?? msg.routingKey;
          queues = exchange === '' ? (this.queues.has(routingKey) ? [routingKey] : []) : this.route(exchange, routingKey);
        }
        if (queues.length === 0) {
          remaining++;
          continue;
        }
        await this.appendTo(queues, {
          id: msg.id,
          callerId: false,
          newId: false,
          dedupeKey: `${msg.id}\0replay\0${fromQueue}\0${r.offset}`,
          exchange,
          routingKey,
          headers,
          body: r.value,
          expiresAt: undefined,
        });
        await group.ackDurably(r.offset);
        replayed++;
      }
    }
    return { replayed, remaining };
  }

  /**
   * Publishes straight to a queue through the default exchange.
   * @example await broker.sendToQueue('billing', 'hello', { id: 'msg-1' });
   */
  sendToQueue(queue: string, body: Body, options: PublishOptions = NO_OPTIONS): Promise<PublishResult> {
    try {
      this.checkOpen();
      this.getQueue(queue);
      return this.publishNow('', queue, body, options);
    } catch (err) {
      return Promise.reject(err as Error);
    }
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
    if (options.idempotent !== undefined && options.idempotent !== false) {
      if (resolved.ack !== 'auto') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', "idempotent consumers ack by resolving: use ack 'auto'");
      const windowMs = typeof options.idempotent === 'object' ? options.idempotent.windowMs : undefined;
      handler = idempotentHandler<Message>(await this.idempotencyStore(), group.name, handler, { windowMs, leaseMs: resolved.lockTimeoutMs });
    }
    const c = group.addConsumer(handler, resolved);
    this.track(c, async () => {});
    return c;
  }

  /** The store behind `idempotent` consumers, opened on first use inside the data dir (which this broker's lock already guards). */
  private idempotencyStore(): Promise<IdempotencyStore> {
    this.idempotency ??= IdempotencyStore.open({ dir: path.join(this.dataDir, 'idempotency'), clock: this.clock, lock: false, onError: (err) => this.emitError(err) });
    return this.idempotency;
  }

  private track(c: Consumer, after: () => Promise<void>): void {
    this.consumers.add(c);
    this.keepAlive();
    const close = c.close.bind(c);
    c.close = async () => {
      this.consumers.delete(c);
      this.keepAlive();
      await close();
      await after();
    };
  }

  /**
   * Like an open amqplib connection, a broker with consumers or pending delayed messages keeps
   * the process alive (its timer is ref'd); an idle one does not hold a script open.
   */
  private keepAlive(): void {
    if (this.closed) return;
    if (this.consumers.size > 0 || (this.delays?.pendingCount ?? 0) > 0) this.ticker.ref();
    else this.ticker.unref();
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
      this.keepAlive();
      sub.onClose(() => {
        this.consumers.delete(sub);
        this.keepAlive();
      });
    });
    sub.starting(started);
    return sub;
  }

  /**
   * Records where a server serving this broker listens, in the data dir's lock, so commands
   * started later connect to it instead of trying to open the dir. @internal (used by the server)
   */
  advertise(serving: { socket?: string; tcp?: string } | undefined): void {
    this.lock.advertise(serving);
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
    clearInterval(this.ticker);
    for (const c of [...this.consumers]) await c.close();
    try {
      while (this.ticking) await new Promise((r) => setTimeout(r, 2));
      await this.delays?.close();
      for (const q of this.queues.values()) await q.close();
      if (this.idempotency !== null) await (await this.idempotency).close();
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
  if (o.from !== undefined && o.from !== 'earliest' && o.from !== 'latest' && !(o.from instanceof Date) && !(Number.isSafeInteger(o.from) && (o.from as number) >= 0)) {
    throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `from must be 'earliest', 'latest', an offset or a Date`);
  }
  if (o.errorExchange !== undefined) checkName('exchange', o.errorExchange);
  let retry: ResolvedConsumerOptions['retry'] = null;
  if (o.retry !== undefined) {
    const r = o.retry;
    const b = r.backoff ?? {};
    const num = (v: number | undefined, d: number, what: string, min: number) => {
      const x = v ?? d;
      if (typeof x !== 'number' || !Number.isFinite(x) || x < min) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `retry ${what} must be a number >= ${min}`);
      return x;
    };
    const mode = r.mode ?? 'requeue';
    if (mode !== 'requeue' && mode !== 'local') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', "retry mode must be 'requeue' or 'local'");
    if (ack !== 'auto') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', "retry needs ack 'auto' (a thrown handler error is what is retried)");
    const jitter = num(b.jitter, 0.1, 'backoff.jitter', 0);
    if (jitter > 1) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'retry backoff.jitter must be between 0 and 1');
    retry = {
      attempts: int(r.attempts, 3, 'retry attempts'),
      mode,
      backoff: { initial: num(b.initial, 1000, 'backoff.initial', 0), factor: num(b.factor, 2, 'backoff.factor', 1), max: num(b.max, 60_000, 'backoff.max', 0), jitter },
    };
  }
  return {
    ack,
    prefetch,
    concurrency: Math.min(int(o.concurrency, 1, 'concurrency'), prefetch),
    lockTimeoutMs: int(o.lockTimeoutMs, 30_000, 'lockTimeoutMs'),
    retry,
    errorExchange: o.errorExchange ?? null,
  } satisfies ResolvedConsumerOptions;
}

const REPLAY_GROUP = 'replay';
const NO_OPTIONS: PublishOptions = Object.freeze({});

function matchesFilter(msg: Message, filter: ReplayOptions['filter']): boolean {
  if (filter === undefined) return true;
  if (typeof filter === 'function') return filter(msg);
  if (filter.id !== undefined && msg.id !== filter.id) return false;
  const deaths = msg.headers['x-death'];
  const last = Array.isArray(deaths) ? (deaths[0] as unknown as DeathRecord | undefined) : undefined;
  if (filter.reason !== undefined && last?.reason !== filter.reason) return false;
  if (filter.routingKey !== undefined && (last?.['routing-keys'][0] ?? msg.routingKey) !== filter.routingKey) return false;
  return true;
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
