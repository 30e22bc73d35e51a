/**
 * How a command finds its broker:
 *   1. `--broker <url>` when given;
 *   2. else a live server that the data dir's LOCK advertises: connect to it;
 *   3. else open the data dir embedded for the command's duration (Broker.open / close).
 * A data dir held by a live process that does not serve (another short command, embedded) is
 * waited for briefly: such commands hold the lock for milliseconds.
 */
import path from 'node:path';
import { Broker } from '../broker/broker.js';
import { liveOwner } from '../broker/lock.js';
import { connect } from '../client/index.js';
import { SpoolError, isSpoolError } from '../errors.js';
import { startServer, type SpoolServer } from '../server/index.js';
import type { CommonOptions } from './common.js';
import type { CliIo } from './io.js';

type MaybePromise<T> = T | Promise<T>;

/** What a command may see of a delivered message (embedded Message and RemoteMessage both fit). */
export interface CliMessage {
  readonly id: string;
  readonly queue: string;
  readonly exchange: string;
  readonly routingKey: string;
  readonly offset: number;
  readonly timestamp: number;
  readonly deliveryCount: number;
  readonly redelivered: boolean;
  readonly body: Buffer;
  readonly headers: Record<string, unknown>;
  ack(): Promise<unknown>;
  nack(options?: { requeue?: boolean }): Promise<unknown>;
}

export interface CliPublishOptions {
  id?: string;
  headers?: Record<string, string>;
  delay?: number;
  ttl?: number;
  mandatory?: boolean;
}

export interface CliPublishResult {
  id: string;
  status: string;
  queues: string[];
  deliverAt?: number;
}

export interface QueueStatsLike {
  queue: string;
  depth: number;
  startOffset: number;
  endOffset: number;
  groups: Record<string, { committed: number; lag: number; inFlight: number; consumers: number }>;
  options?: Record<string, unknown>;
}

/** The subset of the Broker API the CLI uses; the embedded Broker and the RemoteBroker both provide it. */
export interface BrokerLike {
  assertQueue(name: string, options?: Record<string, unknown>): Promise<{ queue: string; messageCount: number; consumerCount: number }>;
  deleteQueue(name: string): Promise<void>;
  purgeQueue?(name: string): Promise<unknown>;
  assertExchange(name: string, type: string, options?: Record<string, unknown>): Promise<unknown>;
  deleteExchange(name: string): Promise<void>;
  bindQueue(queue: string, exchange: string, pattern?: string): Promise<void>;
  unbindQueue(queue: string, exchange: string, pattern?: string): Promise<void>;
  publish(exchange: string, routingKey: string, body: Buffer | string, options?: CliPublishOptions): Promise<CliPublishResult>;
  sendToQueue(queue: string, body: Buffer | string, options?: CliPublishOptions): Promise<CliPublishResult>;
  consume(
    queue: string,
    handler: (msg: CliMessage) => unknown,
    options?: { group?: string; ack?: 'none' | 'auto' | 'manual'; prefetch?: number; concurrency?: number; from?: 'earliest' | 'latest' | number | Date },
  ): Promise<{ close(): Promise<void> }>;
  queueStats(name: string): MaybePromise<QueueStatsLike>;
  stats(): MaybePromise<Record<string, number>>;
  listQueues(): MaybePromise<string[]>;
  listExchanges(): MaybePromise<{ name: string; type: string; options: Record<string, unknown> }[]>;
  listBindings(): MaybePromise<{ exchange: string; queue: string; pattern: string }[]>;
  cancel?(id: string): Promise<boolean>;
  replay?(fromQueue: string, options?: Record<string, unknown>): Promise<{ replayed: number; remaining: number }>;
  close(): Promise<void>;
}

export interface BrokerSession {
  broker: BrokerLike;
  /** 'remote': connected to a server; 'embedded': this process opened the data dir. */
  mode: 'remote' | 'embedded';
  /** The server's URL, or the data dir opened. */
  where: string;
  /** The data dir (absolute); for remote brokers given by --broker, the --data option, which may not be the server's. */
  dataDir: string;
  /** Set when embedded. */
  embedded: Broker | null;
  close(): Promise<void>;
}

export interface OpenOptions {
  /** How long to wait for a data dir held by a live process that does not serve. Default 5000 ms. */
  lockWaitMs?: number;
  /** Embedded only: also serve the data dir on its socket while the command runs, so other commands can join. */
  serve?: boolean;
}

async function connectTo(url: string): Promise<BrokerLike> {
  const remote = await connect(url, { clientName: `spool-cli/${process.pid}`, connectTimeoutMs: 5000 });
  return remote as unknown as BrokerLike;
}

function urlFor(serving: { socket?: string; tcp?: string }): string | null {
  if (serving.socket !== undefined) return `unix://${serving.socket}`;
  return serving.tcp ?? null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function openBroker(opts: CommonOptions, io: CliIo, options: OpenOptions = {}): Promise<BrokerSession> {
  const dataDir = path.resolve(opts.data ?? './data');
  if (opts.broker !== undefined) {
    const broker = await connectTo(opts.broker);
    return { broker, mode: 'remote', where: opts.broker, dataDir, embedded: null, close: () => broker.close() };
  }
  const deadline = Date.now() + (options.lockWaitMs ?? 5000);
  for (;;) {
    const owner = liveOwner(dataDir);
    const url = owner?.serving ? urlFor(owner.serving) : null;
    if (owner !== null && url !== null) {
      try {
        const broker = await connectTo(url);
        return { broker, mode: 'remote', where: url, dataDir, embedded: null, close: () => broker.close() };
      } catch (err) {
        // The server may be stopping right now (it unadvertises before it releases the lock).
        if (Date.now() >= deadline) throw err;
        await sleep(50);
        continue;
      }
    }
    try {
      const embedded = await Broker.open({ dataDir });
      return await embeddedSession(embedded, io, options.serve === true);
    } catch (err) {
      if (!isSpoolError(err, 'SPOOL_ERR_LOCKED') || Date.now() >= deadline) {
        if (isSpoolError(err, 'SPOOL_ERR_LOCKED')) {
          throw new SpoolError('SPOOL_ERR_LOCKED', `${err.message}, which serves no socket; stop it, or run \`spool serve --data ${opts.data}\` so commands can share the data dir`);
        }
        throw err;
      }
      await sleep(50);
    }
  }
}

async function embeddedSession(embedded: Broker, io: CliIo, serve: boolean): Promise<BrokerSession> {
  let server: SpoolServer | null = null;
  if (serve) {
    try {
      server = await startServer(embedded, { onError: () => {} });
    } catch (err) {
      io.err(`spool: not serving ${embedded.dataDir} to other commands: ${(err as Error).message}\n`);
    }
  }
  return {
    broker: embedded as unknown as BrokerLike,
    mode: 'embedded',
    where: embedded.dataDir,
    dataDir: embedded.dataDir,
    embedded,
    close: async () => {
      try {
        await server?.close();
      } finally {
        await embedded.close();
      }
    },
  };
}

/** Runs `fn` with a broker found as above, closing it afterwards (also when `fn` throws). */
export async function withBroker<T>(opts: CommonOptions, io: CliIo, fn: (session: BrokerSession) => Promise<T>, options: OpenOptions = {}): Promise<T> {
  const session = await openBroker(opts, io, options);
  try {
    return await fn(session);
  } finally {
    await session.close();
  }
}

/** A method the broker may not have yet, or a SPOOL_ERR_INVALID_ARGUMENT "not supported yet". */
export function requireMethod<K extends keyof BrokerLike>(broker: BrokerLike, name: K, what: string): NonNullable<BrokerLike[K]> {
  const fn = broker[name];
  if (typeof fn !== 'function') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${what} is not supported yet by this broker`);
  return (fn as (...a: unknown[]) => unknown).bind(broker) as NonNullable<BrokerLike[K]>;
}
