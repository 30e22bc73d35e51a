/**
 * `spool tail <queue>`: prints a queue's newest records straight from its segment files (no lock,
 * no broker; works while one runs), and with --follow keeps printing records as they land.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { SpoolError } from '../../errors.js';
import type { LogRecord } from '../../log/index.js';
import { LogTail, type TailProblem, type TailStart } from '../../log/tail.js';
import { type CommonOptions, common, parseCount, usageError } from '../common.js';
import type { CliIo } from '../io.js';
import { jsonLine } from '../output.js';
import { recordLine, recordView } from '../records.js';

export function queueLogDir(dataDir: string, queue: string): string {
  return path.join(path.resolve(dataDir), 'queues', queue, 'messages');
}

/** Opens a follower on a queue's message log. */
export async function openTail(dataDir: string, queue: string, start: TailStart): Promise<LogTail> {
  if (!/^[A-Za-z0-9._-]+$/.test(queue)) throw new SpoolError('SPOOL_ERR_INVALID_NAME', `queue name ${JSON.stringify(queue)} may only hold A-Z a-z 0-9 . _ -`);
  const dir = queueLogDir(dataDir, queue);
  if (!fs.existsSync(dir)) throw new SpoolError('SPOOL_ERR_NOT_FOUND', `no queue ${queue} in ${path.resolve(dataDir)}`);
  return LogTail.open(dir, start);
}

/** The records there now, from `start` (no following). */
export async function readTail(dataDir: string, queue: string, start: TailStart): Promise<LogRecord[]> {
  const tail = await openTail(dataDir, queue, start);
  try {
    const out: LogRecord[] = [];
    for (;;) {
      const records = await tail.poll(10_000);
      out.push(...records);
      if (records.length < 10_000) return out;
    }
  } finally {
    await tail.close();
  }
}

interface TailCli extends CommonOptions {
  follow?: boolean;
  lines: number;
  from?: string;
}

function startOf(opts: TailCli, cmd: Command): TailStart {
  if (opts.from === undefined) return { last: opts.lines };
  if (opts.from === 'earliest' || opts.from === 'latest') return opts.from;
  if (/^\d+$/.test(opts.from)) return { offset: Number(opts.from) };
  return usageError(cmd, '--from must be earliest, latest or an offset');
}

export function registerTail(program: Command, io: CliIo): void {
  const cmd = program
    .command('tail')
    .description("print a queue's newest records from its files (no lock; works while a broker runs)")
    .argument('<queue>')
    .option('-f, --follow', 'keep printing records as they land, until Ctrl-C')
    .option('-n, --lines <n>', 'start this many records before the end', parseCount, 10)
    .option('--from <where>', 'start at earliest, latest or an offset (instead of -n)');
  common(cmd, ['spool tail orders', 'spool tail orders -f', 'spool tail orders --from earliest --json', 'spool tail orders -n 100 -f --data /var/lib/spool']);
  cmd.action(async (queue: string, opts: TailCli) => {
    if (opts.broker !== undefined) usageError(cmd, 'tail reads the files under --data; --broker does not apply');
    const start = startOf(opts, cmd);
    const print = (records: LogRecord[]) => {
      let text = '';
      for (const r of records) text += opts.json ? jsonLine(recordView(r)) : `${recordLine(recordView(r))}\n`;
      if (text.length > 0) io.out(text);
    };
    const onProblem = (p: TailProblem) => io.err(`spool: ${p.file} at byte ${p.position}: ${p.reason}\n`);
    if (!opts.follow) {
      const tail = await openTail(opts.data, queue, start);
      try {
        for (;;) {
          const records = await tail.poll(10_000, onProblem);
          print(records);
          if (records.length < 10_000) break;
        }
      } finally {
        await tail.close();
      }
      return;
    }
    if (io.onInterrupt === undefined) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'tail --follow needs signals to know when to stop');
    const tail = await openTail(opts.data, queue, start);
    let failure: Error | null = null;
    await new Promise<void>((resolve) => {
      const unlisten = (io.onInterrupt as NonNullable<CliIo['onInterrupt']>)(() => done());
      let warned = false;
      const stop = tail.follow(print, onProblem, {
        onError: (err) => {
          failure = err;
          done();
        },
        onWatchError: (err) => {
          if (!warned) io.err(`spool: cannot watch ${tail.dir} (${err.message}); polling every 500 ms instead\n`);
          warned = true;
        },
      });
      let finished = false;
      function done() {
        if (finished) return;
        finished = true;
        unlisten();
        void stop().then(resolve, resolve);
      }
    });
    if (failure !== null) throw failure;
  });
}
