/** `spool produce`: publishes messages given as arguments, or one per line from stdin, and prints each confirmation. */
import fs from 'node:fs';
import readline from 'node:readline';
import type { Command } from 'commander';
import { SpoolError } from '../../errors.js';
import type { BrokerLike, CliPublishOptions, CliPublishResult } from '../broker-access.js';
import { withBroker } from '../broker-access.js';
import { type CommonOptions, collect, common, parseDuration, parseHeaders, usageError } from '../common.js';
import type { CliIo } from '../io.js';
import { type Progress, jsonLine, noProgress, progress } from '../output.js';

export interface ProduceTarget {
  /** Publish straight to this queue (default exchange)... */
  queue?: string;
  /** ...or through this exchange with `routingKey`. */
  exchange?: string;
  routingKey?: string;
  /** The message id; with several messages, message n gets `<id>.<n>` (so re-running a file dedupes). */
  id?: string;
  headers?: Record<string, string>;
  delay?: number;
  ttl?: number;
}

export interface Confirmation extends CliPublishResult {
  /** 1-based position of the message in the input. */
  n: number;
}

export interface ProduceSummary {
  published: number;
  confirmed: number;
  duplicate: number;
  unroutable: number;
}

/** Publishes `messages` in order with up to `window` in flight (sharing fsyncs); calls `onConfirm` in input order. */
export async function produceMessages(
  broker: BrokerLike,
  target: ProduceTarget,
  messages: AsyncIterable<string> | Iterable<string>,
  onConfirm: (c: Confirmation) => void,
  options: { window?: number; several?: boolean } = {},
): Promise<ProduceSummary> {
  const window = options.window ?? 256;
  const summary: ProduceSummary = { published: 0, confirmed: 0, duplicate: 0, unroutable: 0 };
  const pending: Promise<Confirmation>[] = [];
  let n = 0;
  let failure: unknown = null;
  const settleOne = async () => {
    const p = pending.shift() as Promise<Confirmation>;
    try {
      const c = await p;
      summary.published++;
      if (c.status === 'duplicate') summary.duplicate++;
      else if (c.status === 'unroutable') summary.unroutable++;
      else summary.confirmed++;
      onConfirm(c);
    } catch (err) {
      failure ??= err;
    }
  };
  for await (const body of messages) {
    if (failure !== null) break;
    n++;
    const opts: CliPublishOptions = {};
    if (target.id !== undefined) opts.id = options.several ? `${target.id}.${n}` : target.id;
    if (target.headers !== undefined) opts.headers = target.headers;
    if (target.delay !== undefined) opts.delay = target.delay;
    if (target.ttl !== undefined) opts.ttl = target.ttl;
    const index = n;
    const sent =
      target.exchange !== undefined
        ? broker.publish(target.exchange, target.routingKey ?? '', body, opts)
        : broker.sendToQueue(target.queue as string, body, opts);
    const p = sent.then((r) => ({ n: index, id: r.id, status: r.status, queues: r.queues, ...(r.deliverAt !== undefined ? { deliverAt: r.deliverAt } : {}) }));
    p.catch(() => {}); // observed in order by settleOne
    pending.push(p);
    while (pending.length >= window) await settleOne();
  }
  while (pending.length > 0) await settleOne();
  if (failure !== null) throw failure;
  return summary;
}

/** Lines of a stream (a trailing newline ends the last line; an empty last line is not a message). */
async function* linesOf(input: NodeJS.ReadableStream, onBytes: (n: number) => void): AsyncIterable<string> {
  const rl = readline.createInterface({ input, crlfDelay: Infinity });
  try {
    for await (const line of rl) {
      onBytes(Buffer.byteLength(line) + 1);
      yield line;
    }
  } finally {
    rl.close();
  }
}

function sizeOfInput(input: NodeJS.ReadableStream): number {
  const fd = (input as { fd?: unknown }).fd;
  if (typeof fd !== 'number') return 0;
  try {
    const st = fs.fstatSync(fd);
    return st.isFile() ? st.size : 0;
  } catch {
    return 0;
  }
}

export function describeConfirmation(c: CliPublishResult): string {
  if (c.status === 'confirmed' && c.deliverAt !== undefined) return `scheduled ${c.id} for ${new Date(c.deliverAt).toISOString()}`;
  if (c.status === 'confirmed') return `confirmed ${c.id} -> ${c.queues.join(', ')}`;
  if (c.status === 'duplicate') return `duplicate ${c.id} (already stored; not stored again)`;
  return `unroutable ${c.id} (no queue is bound for it; not stored)`;
}

interface ProduceCliOptions extends CommonOptions {
  exchange?: string;
  key?: string;
  id?: string;
  header?: string[];
  delay?: number;
  ttl?: number;
}

export function registerProduce(program: Command, io: CliIo): void {
  const cmd = program
    .command('produce')
    .description('publish messages (arguments, or one per line from stdin) and print each confirmation')
    .argument('[queue]', 'the queue to publish to (omit with -e)')
    .argument('[message...]', 'message bodies; none: read one message per line from stdin')
    .option('-e, --exchange <exchange>', 'publish through this exchange instead of straight to a queue')
    .option('-k, --key <routing-key>', 'routing key (with -e)')
    .option('--id <id>', 'message id, for dedupe (several messages: <id>.1, <id>.2, …)')
    .option('--header <name=value>', 'a header (repeatable)', collect)
    .option('--delay <duration>', 'route the message after this delay (500, 5s, 2m, 1h)', parseDuration)
    .option('--ttl <duration>', 'the message expires after waiting this long in a queue', parseDuration);
  common(cmd, [
    'spool produce orders hello',
    'spool produce orders \'{"id":1}\' \'{"id":2}\' --header source=cli',
    'spool produce -e events -k order.created \'{"id":1}\'',
    'spool produce orders --delay 30s "reminder"',
    'spool produce orders < messages.txt            # one message per line',
    'spool produce orders --json hello              # one JSON confirmation per line',
  ]);
  cmd.action(async (queueArg: string | undefined, rest: string[], opts: ProduceCliOptions) => {
    const target: ProduceTarget = {};
    let args = rest;
    if (opts.exchange !== undefined) {
      target.exchange = opts.exchange;
      target.routingKey = opts.key ?? '';
      if (queueArg !== undefined) args = [queueArg, ...rest];
    } else {
      if (queueArg === undefined) usageError(cmd, 'name a queue, or an exchange with -e <exchange> -k <routing-key>');
      if (opts.key !== undefined) usageError(cmd, '-k/--key needs -e/--exchange (publishing to a queue needs no routing key)');
      target.queue = queueArg;
    }
    if (opts.id !== undefined) target.id = opts.id;
    const headers = parseHeaders(opts.header);
    if (headers !== undefined) target.headers = headers;
    if (opts.delay !== undefined) target.delay = opts.delay;
    if (opts.ttl !== undefined) target.ttl = opts.ttl;

    let messages: AsyncIterable<string> | Iterable<string>;
    let bar: Progress = noProgress;
    if (args.length > 0) {
      messages = args;
    } else {
      const stdin = io.stdin;
      if (stdin === undefined) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'no messages given and no stdin to read them from');
      if (io.stdinIsTTY) io.err('spool: reading messages from stdin, one per line; Ctrl-D to end\n');
      const size = io.stdinIsTTY ? 0 : sizeOfInput(stdin);
      bar = size > 0 ? progress(io, 'publishing', size, 'bytes') : io.stdinIsTTY ? bar : progress(io, 'publishing', 0, 'messages');
      const bytes = size > 0;
      messages = linesOf(stdin, (n) => bar.increment(bytes ? n : 1));
    }
    const several = args.length !== 1;
    await withBroker(opts, io, async ({ broker }) => {
      try {
        const summary = await produceMessages(broker, target, messages, (c) => io.out(opts.json ? jsonLine(c) : `${describeConfirmation(c)}\n`), { several });
        bar.stop();
        if (several) io.err(`spool: ${summary.published} published (${summary.confirmed} confirmed, ${summary.duplicate} duplicate, ${summary.unroutable} unroutable)\n`);
      } finally {
        bar.stop();
      }
    });
  });
}
