/** `spool consume`: prints messages of a queue as they arrive, until Ctrl-C or --count; acks survive the shutdown. */
import { isUtf8 } from 'node:buffer';
import type { Command } from 'commander';
import { SpoolError } from '../../errors.js';
import type { BrokerLike, CliMessage } from '../broker-access.js';
import { openBroker } from '../broker-access.js';
import { type CommonOptions, type FromOption, common, oneOf, parseFrom, parsePositive } from '../common.js';
import type { CliIo } from '../io.js';
import { jsonLine } from '../output.js';

export type CliAckMode = 'none' | 'auto' | 'manual';

export interface ConsumeSpec {
  queue: string;
  group: string;
  /**
   * none: acked on receipt, before it is printed (at most once);
   * auto: acked once printed (at least once);
   * manual: acked only after the output was flushed to stdout, one message at a time.
   */
  ack: CliAckMode;
  /** Stop after this many messages. */
  count?: number;
  from?: FromOption;
  prefetch?: number;
}

/** A message as `--format json` prints it. */
export function messageJson(msg: CliMessage, group: string): Record<string, unknown> {
  const text = isUtf8(msg.body);
  return {
    queue: msg.queue,
    group,
    offset: msg.offset,
    id: msg.id,
    timestamp: new Date(msg.timestamp).toISOString(),
    exchange: msg.exchange,
    routingKey: msg.routingKey,
    headers: msg.headers,
    deliveryCount: msg.deliveryCount,
    ...(text ? { body: msg.body.toString('utf8') } : { bodyBase64: msg.body.toString('base64') }),
  };
}

/**
 * Consumes until `count` messages were handled or `stop` resolves, then closes the consumer (what
 * it held but did not handle goes back to the queue) and waits for every ack to be durable.
 */
export async function consumeMessages(
  broker: BrokerLike,
  spec: ConsumeSpec,
  print: (msg: CliMessage) => void,
  stop: Promise<unknown>,
  flush: () => Promise<void> = () => Promise.resolve(),
): Promise<{ consumed: number }> {
  let consumed = 0;
  let closing = false;
  let reachedCount!: () => void;
  const enough = new Promise<void>((resolve) => (reachedCount = resolve));
  const acks: Promise<unknown>[] = [];
  let ackError: unknown = null;
  const track = (p: Promise<unknown>) => {
    acks.push(
      p.catch((err: unknown) => {
        ackError ??= err;
      }),
    );
  };
  const handler = async (msg: CliMessage) => {
    // Past the count (or shutting down): not handled, not acked; closing hands it back to the queue.
    if (closing || (spec.count !== undefined && consumed >= spec.count)) return;
    consumed++;
    if (spec.ack === 'none') await msg.ack();
    print(msg);
    if (spec.ack === 'auto') track(msg.ack());
    else if (spec.ack === 'manual') {
      await flush();
      await msg.ack();
    }
    if (spec.count !== undefined && consumed >= spec.count) reachedCount();
  };
  const prefetch = Math.min(spec.prefetch ?? 100, spec.count ?? Number.MAX_SAFE_INTEGER);
  const consumer = await broker.consume(spec.queue, handler, {
    group: spec.group,
    ack: 'manual',
    prefetch,
    concurrency: 1,
    ...(spec.from !== undefined ? { from: spec.from } : {}),
  });
  try {
    if (spec.count === 0) reachedCount();
    await Promise.race([enough, stop]);
  } finally {
    closing = true;
    await consumer.close();
    await Promise.all(acks);
  }
  if (ackError !== null) throw ackError;
  return { consumed };
}

interface ConsumeCliOptions extends CommonOptions {
  group: string;
  ack: CliAckMode;
  count?: number;
  from?: FromOption;
  format: 'value' | 'json';
  prefetch?: number;
}

export function registerConsume(program: Command, io: CliIo): void {
  const cmd = program
    .command('consume')
    .description('print messages of a queue as they arrive, until Ctrl-C or --count (creates the queue if missing)')
    .argument('<queue>', 'the queue to read')
    .option('--group <name>', 'consumer group: consumers in one group share the messages, each group sees all', 'default')
    .option('--ack <mode>', 'none: ack on receipt (at most once); auto: ack once printed; manual: ack after stdout took it', oneOf(['none', 'auto', 'manual'] as const), 'auto')
    .option('--count <n>', 'stop after n messages', parsePositive)
    .option('--from <where>', "where a new group starts: earliest, latest, an offset or an ISO time (an existing group resumes where it was)", parseFrom)
    .option('--format <format>', 'value: the body only; json: one JSON object per message', oneOf(['value', 'json'] as const), 'value')
    .option('--prefetch <n>', 'messages held at once (default 100)', parsePositive);
  common(cmd, [
    'spool consume orders',
    'spool consume orders --count 10 --format json',
    'spool consume orders --group audit --from earliest',
    "spool consume orders --from 2024-05-01T00:00:00Z --ack manual",
  ]);
  cmd.action(async (queue: string, opts: ConsumeCliOptions) => {
    const format = opts.json ? 'json' : opts.format;
    let interrupt!: () => void;
    const stop = new Promise<void>((resolve) => (interrupt = resolve));
    const unlisten = io.onInterrupt?.(() => interrupt()) ?? (() => {});
    try {
      if (io.onInterrupt === undefined && opts.count === undefined) {
        throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'without signals to stop it, consume needs --count');
      }
      // Embedded, this process also serves the data dir, so `spool produce` in another terminal joins it.
      const session = await openBroker(opts, io, { serve: true });
      try {
        const { broker } = session;
        const queues = await broker.listQueues();
        if (!queues.includes(queue)) {
          await broker.assertQueue(queue);
          io.err(`spool: created queue ${queue}\n`);
        }
        io.err(`spool: consuming ${queue} (group ${opts.group}) via ${session.mode === 'remote' ? session.where : `${session.where}, embedded`}; Ctrl-C to stop\n`);
        const spec: ConsumeSpec = { queue, group: opts.group, ack: opts.ack };
        if (opts.count !== undefined) spec.count = opts.count;
        if (opts.from !== undefined) spec.from = opts.from;
        if (opts.prefetch !== undefined) spec.prefetch = opts.prefetch;
        const print = (msg: CliMessage) => io.out(format === 'json' ? jsonLine(messageJson(msg, opts.group)) : `${msg.body.toString('utf8')}\n`);
        const { consumed } = await consumeMessages(broker, spec, print, stop, io.flush ?? undefined);
        io.err(`spool: consumed ${consumed} message${consumed === 1 ? '' : 's'}\n`);
      } finally {
        await session.close();
      }
    } finally {
      unlisten();
    }
  });
}
