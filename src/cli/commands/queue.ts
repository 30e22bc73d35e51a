/** `spool queue create|list|delete|purge|stats`: queue administration. */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { SpoolError, isSpoolError } from '../../errors.js';
import { type BrokerLike, type QueueStatsLike, withBroker } from '../broker-access.js';
import { type CommonOptions, common, examples, oneOf, parseCount, parseDuration } from '../common.js';
import type { CliIo } from '../io.js';
import { emit, paint, table } from '../output.js';

export interface QueueCreateOptions {
  deadLetterExchange?: string;
  deadLetterRoutingKey?: string;
  messageTtl?: number;
  deliveryLimit?: number;
  maxLength?: number;
  maxBytes?: number;
  overflow?: 'drop-head' | 'reject-publish';
  dedupeWindowMs?: number;
}

export async function createQueue(broker: BrokerLike, name: string, options: QueueCreateOptions) {
  return broker.assertQueue(name, options as Record<string, unknown>);
}

export interface QueueRow {
  name: string;
  depth: number;
  groups: number;
  consumers: number;
  inFlight: number;
}

export async function listQueues(broker: BrokerLike): Promise<QueueRow[]> {
  const rows: QueueRow[] = [];
  for (const name of await broker.listQueues()) {
    const s = await broker.queueStats(name);
    const groups = Object.values(s.groups);
    rows.push({
      name,
      depth: s.depth,
      groups: groups.length,
      consumers: groups.reduce((a, g) => a + g.consumers, 0),
      inFlight: groups.reduce((a, g) => a + g.inFlight, 0),
    });
  }
  return rows;
}

export async function queueStats(broker: BrokerLike, name: string): Promise<QueueStatsLike> {
  return broker.queueStats(name);
}

/** The options a queue was declared with: from the broker when it tells, else from the data dir's topology.json (read only). */
export async function queueOptionsOf(broker: BrokerLike, dataDir: string, name: string): Promise<Record<string, unknown>> {
  const s = await broker.queueStats(name);
  if (s.options !== undefined) return s.options;
  try {
    const topology = JSON.parse(await fs.promises.readFile(path.join(dataDir, 'topology.json'), 'utf8')) as { queues?: Record<string, Record<string, unknown>> };
    const options = topology.queues?.[name];
    if (options !== undefined) return options;
  } catch {
    // fall through
  }
  throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `cannot learn the options of queue ${name} (no topology.json in ${dataDir}); purge needs them to recreate it`);
}

export interface PurgeResult {
  queue: string;
  /** Messages removed. */
  purged: number;
  /** 'purge': the broker's purgeQueue; 'recreate': deleted and declared again with the same options and bindings. */
  method: 'purge' | 'recreate';
  /** With 'recreate': the consumer groups that were dropped with the queue (they start again from the next message). */
  groupsDropped: string[];
  bindingsRestored: number;
}

function notSupported(err: unknown): boolean {
  return isSpoolError(err, 'SPOOL_ERR_INVALID_ARGUMENT') && /not supported/.test(err.message);
}

/** Removes every waiting message of a queue. Uses the broker's purgeQueue when it has one. */
export async function purgeQueue(broker: BrokerLike, dataDir: string, name: string): Promise<PurgeResult> {
  const before = await broker.queueStats(name);
  if (typeof broker.purgeQueue === 'function') {
    try {
      const r = await broker.purgeQueue(name);
      const purged = typeof r === 'number' ? r : typeof (r as { purged?: unknown })?.purged === 'number' ? (r as { purged: number }).purged : before.depth;
      return { queue: name, purged, method: 'purge', groupsDropped: [], bindingsRestored: 0 };
    } catch (err) {
      if (!notSupported(err)) throw err;
    }
  }
  const options = await queueOptionsOf(broker, dataDir, name);
  const bindings = (await broker.listBindings()).filter((b) => b.queue === name);
  await broker.deleteQueue(name);
  await broker.assertQueue(name, options);
  for (const b of bindings) await broker.bindQueue(name, b.exchange, b.pattern);
  return { queue: name, purged: before.depth, method: 'recreate', groupsDropped: Object.keys(before.groups), bindingsRestored: bindings.length };
}

interface CreateCli extends CommonOptions {
  deadLetterExchange?: string;
  deadLetterRoutingKey?: string;
  messageTtl?: number;
  deliveryLimit?: number;
  maxLength?: number;
  maxBytes?: number;
  overflow?: 'drop-head' | 'reject-publish';
  dedupeWindow?: number;
}

export function registerQueue(program: Command, io: CliIo): void {
  const queue = program.command('queue').description('create, list, delete, purge and inspect queues');
  examples(queue, ['spool queue create orders', 'spool queue list', 'spool queue stats orders --json']);

  const create = queue
    .command('create')
    .description('declare a queue (idempotent when the options match)')
    .argument('<name>')
    .option('--dead-letter-exchange <exchange>', 'exchange that receives rejected, expired or over-limit messages')
    .option('--dead-letter-routing-key <key>', 'routing key for dead letters (default: the original)')
    .option('--message-ttl <duration>', 'messages expire after waiting this long (500, 5s, 2m, 1h)', parseDuration)
    .option('--delivery-limit <n>', 'dead-letter a message after n deliveries', parseCount)
    .option('--max-length <n>', 'most messages waiting', parseCount)
    .option('--max-bytes <n>', 'most body bytes waiting', parseCount)
    .option('--overflow <policy>', 'at the limit: drop-head or reject-publish', oneOf(['drop-head', 'reject-publish'] as const))
    .option('--dedupe-window <duration>', 'how long publisher-chosen ids are remembered (default 2m)', parseDuration);
  common(create, ['spool queue create orders', 'spool queue create orders --dead-letter-exchange dlx --delivery-limit 5', 'spool queue create jobs --max-length 10000 --overflow reject-publish']);
  create.action(async (name: string, opts: CreateCli) => {
    const options: QueueCreateOptions = {};
    if (opts.deadLetterExchange !== undefined) options.deadLetterExchange = opts.deadLetterExchange;
    if (opts.deadLetterRoutingKey !== undefined) options.deadLetterRoutingKey = opts.deadLetterRoutingKey;
    if (opts.messageTtl !== undefined) options.messageTtl = opts.messageTtl;
    if (opts.deliveryLimit !== undefined) options.deliveryLimit = opts.deliveryLimit;
    if (opts.maxLength !== undefined) options.maxLength = opts.maxLength;
    if (opts.maxBytes !== undefined) options.maxBytes = opts.maxBytes;
    if (opts.overflow !== undefined) options.overflow = opts.overflow;
    if (opts.dedupeWindow !== undefined) options.dedupeWindowMs = opts.dedupeWindow;
    const r = await withBroker(opts, io, ({ broker }) => createQueue(broker, name, options));
    emit(io, opts.json, r, (d) => `queue ${d.queue}: ${d.messageCount} messages, ${d.consumerCount} consumers`);
  });

  const list = queue.command('list').description('list queues with depth, groups and consumers');
  common(list, ['spool queue list', 'spool queue list --json']);
  list.action(async (opts: CommonOptions) => {
    const rows = await withBroker(opts, io, ({ broker }) => listQueues(broker));
    emit(io, opts.json, rows, (d) =>
      d.length === 0 ? 'no queues' : table(['QUEUE', 'DEPTH', 'GROUPS', 'CONSUMERS', 'IN FLIGHT'], d.map((r) => [r.name, r.depth, r.groups, r.consumers, r.inFlight]), paint(io)),
    );
  });

  const del = queue.command('delete').description('delete a queue with its messages and groups').argument('<name>');
  common(del, ['spool queue delete orders']);
  del.action(async (name: string, opts: CommonOptions) => {
    await withBroker(opts, io, ({ broker }) => broker.deleteQueue(name));
    emit(io, opts.json, { queue: name, deleted: true }, (d) => `deleted queue ${d.queue}`);
  });

  const purge = queue.command('purge').description('remove every waiting message of a queue').argument('<name>');
  common(purge, ['spool queue purge orders']);
  purge.action(async (name: string, opts: CommonOptions) => {
    const r = await withBroker(opts, io, ({ broker, dataDir }) => purgeQueue(broker, dataDir, name));
    emit(io, opts.json, r, (d) => {
      const head = `purged ${d.purged} message${d.purged === 1 ? '' : 's'} from ${d.queue}`;
      if (d.method === 'purge') return head;
      const groups = d.groupsDropped.length > 0 ? `; consumer groups reset: ${d.groupsDropped.join(', ')}` : '';
      return `${head} (this broker has no purge: the queue was deleted and recreated with the same options and ${d.bindingsRestored} binding${d.bindingsRestored === 1 ? '' : 's'}${groups})`;
    });
  });

  const stats = queue.command('stats').description('depth, offsets and per-group lag of a queue').argument('<name>');
  common(stats, ['spool queue stats orders', 'spool queue stats orders --json']);
  stats.action(async (name: string, opts: CommonOptions) => {
    const s = await withBroker(opts, io, ({ broker }) => queueStats(broker, name));
    emit(io, opts.json, s, (d) => {
      const head = `queue ${d.queue}: depth ${d.depth}, offsets ${d.startOffset}..${d.endOffset}`;
      const groups = Object.entries(d.groups);
      if (groups.length === 0) return `${head}\nno consumer groups`;
      return `${head}\n${table(['GROUP', 'COMMITTED', 'LAG', 'IN FLIGHT', 'CONSUMERS'], groups.map(([g, x]) => [g, x.committed, x.lag, x.inFlight, x.consumers]), paint(io))}`;
    });
  });
}
