/** `spool dlq list|replay <queue>`: look at dead-lettered messages and move them back. */
import path from 'node:path';
import type { Command } from 'commander';
import { SpoolError, isSpoolError } from '../../errors.js';
import { LogTail } from '../../log/tail.js';
import { type BrokerLike, requireMethod, withBroker } from '../broker-access.js';
import { type CommonOptions, common, examples, parseCount, parsePositive } from '../common.js';
import type { CliIo } from '../io.js';
import { emit, paint, progress, table } from '../output.js';
import { type RecordView, recordView } from '../records.js';
import { queueOptionsOf } from './queue.js';

/** The group `broker.replay` uses to remember what it moved out of a dead-letter queue. */
const REPLAY_GROUP = 'replay';

/**
 * The dead-letter queues of `queue`: the queues bound to its dead-letter exchange when it has
 * one, else `queue` itself (it is taken to be a dead-letter queue).
 */
export async function deadLetterQueues(broker: BrokerLike, dataDir: string, queue: string): Promise<{ queues: string[]; via: string | null }> {
  await broker.queueStats(queue); // NOT_FOUND for an unknown queue
  let options: Record<string, unknown> = {};
  try {
    options = await queueOptionsOf(broker, dataDir, queue);
  } catch (err) {
    if (!isSpoolError(err, 'SPOOL_ERR_INVALID_ARGUMENT')) throw err;
  }
  const dlx = options.deadLetterExchange;
  if (typeof dlx !== 'string') return { queues: [queue], via: null };
  const queues = [...new Set((await broker.listBindings()).filter((b) => b.exchange === dlx).map((b) => b.queue))].sort();
  if (queues.length === 0) throw new SpoolError('SPOOL_ERR_NOT_FOUND', `queue ${queue} dead-letters to exchange ${dlx}, but no queue is bound to it`);
  return { queues, via: dlx };
}

export interface DeadLetter extends RecordView {
  queue: string;
  /** The newest x-death entry: why and from where it was dead-lettered. */
  reason: string | null;
  from: string | null;
  count: number | null;
  lastError: string | null;
}

/**
 * Dead letters waiting in `dlq` (not yet replayed), read from its files without taking the lock.
 * Needs the data dir on this machine.
 */
export async function listDeadLetters(broker: BrokerLike, dataDir: string, dlq: string, limit: number): Promise<{ queue: string; total: number; messages: DeadLetter[] }> {
  const s = await broker.queueStats(dlq);
  const start = Math.max(s.startOffset, s.groups[REPLAY_GROUP]?.committed ?? s.startOffset);
  const dir = path.join(dataDir, 'queues', dlq, 'messages');
  let tail: LogTail;
  try {
    tail = await LogTail.open(dir, { offset: start });
  } catch (err) {
    if (isSpoolError(err, 'SPOOL_ERR_NOT_FOUND')) throw new SpoolError('SPOOL_ERR_NOT_FOUND', `dlq list reads the queue's files, and ${dir} has none (is --data the server's data dir?)`);
    throw err;
  }
  const messages: DeadLetter[] = [];
  try {
    while (messages.length < limit && tail.nextOffset < s.endOffset) {
      const records = await tail.poll(Math.min(1000, limit - messages.length));
      if (records.length === 0) break;
      for (const r of records) {
        if (r.offset >= s.endOffset || messages.length >= limit) break;
        const v = recordView(r);
        const deaths = Array.isArray(v.headers['x-death']) ? (v.headers['x-death'] as Record<string, unknown>[]) : [];
        const d = deaths[0];
        messages.push({
          queue: dlq,
          ...v,
          reason: typeof d?.reason === 'string' ? d.reason : null,
          from: typeof d?.queue === 'string' ? d.queue : null,
          count: typeof d?.count === 'number' ? d.count : null,
          lastError: typeof d?.['last-error'] === 'string' ? (d['last-error'] as string) : null,
        });
      }
    }
  } finally {
    await tail.close();
  }
  return { queue: dlq, total: Math.max(0, s.endOffset - start), messages };
}

export interface ReplaySpec {
  to?: { queue: string } | { exchange: string; routingKey?: string };
  filter?: { reason?: string; routingKey?: string; id?: string };
  limit?: number;
}

/** Replays in steps of `step` so progress can be shown; stops when a step moves nothing. */
export async function replayDeadLetters(
  broker: BrokerLike,
  dlq: string,
  spec: ReplaySpec,
  onStep: (replayed: number, remaining: number) => void = () => {},
  step = 1000,
): Promise<{ queue: string; replayed: number; remaining: number }> {
  const replay = requireMethod(broker, 'replay', 'replay');
  let replayed = 0;
  let remaining = 0;
  for (;;) {
    const want = spec.limit === undefined ? step : Math.min(step, spec.limit - replayed);
    if (want <= 0) break;
    const r = await replay(dlq, { ...(spec.to ? { to: spec.to } : {}), ...(spec.filter ? { filter: spec.filter } : {}), limit: want });
    replayed += r.replayed;
    remaining = r.remaining;
    onStep(replayed, remaining);
    if (r.replayed === 0 || r.replayed < want) break;
  }
  return { queue: dlq, replayed, remaining };
}

interface ReplayCli extends CommonOptions {
  toQueue?: string;
  toExchange?: string;
  routingKey?: string;
  limit?: number;
  reason?: string;
  id?: string;
  key?: string;
}

export function registerDlq(program: Command, io: CliIo): void {
  const dlq = program.command('dlq').description('list and replay dead-lettered messages');
  examples(dlq, ['spool dlq list orders', 'spool dlq replay orders']);

  const list = dlq
    .command('list')
    .description("list the dead letters of <queue> (in the queues bound to its dead-letter exchange, or in <queue> itself if it has none)")
    .argument('<queue>')
    .option('--limit <n>', 'at most n messages per dead-letter queue', parseCount, 100);
  common(list, ['spool dlq list orders', 'spool dlq list orders.dlq --limit 10 --json']);
  list.action(async (queue: string, opts: CommonOptions & { limit: number }) => {
    const result = await withBroker(opts, io, async ({ broker, dataDir }) => {
      const { queues, via } = await deadLetterQueues(broker, dataDir, queue);
      const lists = [];
      for (const q of queues) lists.push(await listDeadLetters(broker, dataDir, q, opts.limit));
      return { queue, deadLetterExchange: via, queues: lists };
    });
    emit(io, opts.json, result, (d) =>
      d.queues
        .map((q) => {
          const head = `${q.queue}: ${q.total} dead letter${q.total === 1 ? '' : 's'}${q.messages.length < q.total ? ` (showing ${q.messages.length})` : ''}`;
          if (q.messages.length === 0) return head;
          const rows = q.messages.map((m) => [m.offset, m.timestamp, m.id, m.reason ?? '-', m.from ?? '-', m.count ?? '-', (m.body ?? '<binary>').slice(0, 60)]);
          return `${head}\n${table(['OFFSET', 'TIME', 'ID', 'REASON', 'FROM', 'COUNT', 'BODY'], rows, paint(io))}`;
        })
        .join('\n\n'),
    );
  });

  const replay = dlq
    .command('replay')
    .description('move dead letters back: by default each to the exchange and routing key it was dead-lettered from')
    .argument('<queue>', 'the dead-letter queue, or a queue whose dead-letter exchange leads to one')
    .option('--to-queue <queue>', 'send them all to this queue instead')
    .option('--to-exchange <exchange>', 'send them all through this exchange instead')
    .option('--routing-key <key>', 'with --to-exchange: the routing key (default: the original)')
    .option('--limit <n>', 'move at most n messages', parsePositive)
    .option('--reason <reason>', 'only messages dead-lettered for this reason (rejected, expired, maxlen, delivery_limit)')
    .option('--id <id>', 'only the message with this id')
    .option('--key <routing-key>', 'only messages with this routing key');
  common(replay, ['spool dlq replay orders', 'spool dlq replay orders.dlq --to-queue orders --limit 100', 'spool dlq replay orders --reason expired']);
  replay.action(async (queue: string, opts: ReplayCli) => {
    const spec: ReplaySpec = {};
    if (opts.toQueue !== undefined && opts.toExchange !== undefined) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'give --to-queue or --to-exchange, not both');
    if (opts.toQueue !== undefined) spec.to = { queue: opts.toQueue };
    if (opts.toExchange !== undefined) spec.to = { exchange: opts.toExchange, ...(opts.routingKey !== undefined ? { routingKey: opts.routingKey } : {}) };
    const filter: NonNullable<ReplaySpec['filter']> = {};
    if (opts.reason !== undefined) filter.reason = opts.reason;
    if (opts.id !== undefined) filter.id = opts.id;
    if (opts.key !== undefined) filter.routingKey = opts.key;
    if (Object.keys(filter).length > 0) spec.filter = filter;
    if (opts.limit !== undefined) spec.limit = opts.limit;
    const results = await withBroker(opts, io, async ({ broker, dataDir }) => {
      const { queues } = await deadLetterQueues(broker, dataDir, queue);
      const out = [];
      for (const q of queues) {
        const before = await broker.queueStats(q);
        const bar = progress(io, `replaying ${q}`, spec.limit ?? Math.max(1, before.depth), 'messages');
        let shown = 0;
        try {
          out.push(
            await replayDeadLetters(broker, q, spec, (replayed) => {
              bar.increment(replayed - shown);
              shown = replayed;
            }),
          );
        } finally {
          bar.stop();
        }
      }
      return out;
    });
    emit(io, opts.json, results, (d) => d.map((r) => `replayed ${r.replayed} from ${r.queue}; ${r.remaining} remain`).join('\n'));
  });
}
