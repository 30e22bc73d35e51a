#!/usr/bin/env node
/**
 * The `spool` command. Thin commands over library functions (one file each under commands/);
 * this one place maps errors to exit statuses: 0 success, 1 error, 2 usage error.
 */
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { SpoolError } from '../errors.js';
import { registerBind } from './commands/bind.js';
import { registerCancel } from './commands/cancel.js';
import { registerConsume } from './commands/consume.js';
import { registerDlq } from './commands/dlq.js';
import { registerExchange } from './commands/exchange.js';
import { registerHelp } from './commands/help.js';
import { registerProduce } from './commands/produce.js';
import { registerQueue } from './commands/queue.js';
import { registerServe } from './commands/serve.js';
import { registerStats } from './commands/stats.js';
import { registerTail } from './commands/tail.js';
import { registerVerify } from './commands/verify.js';
import { EXIT_OK, EXIT_USAGE, exitCodeFor } from './exit-codes.js';
import { type CliIo, processIo } from './io.js';
import { paint } from './output.js';

/** The package version: package.json is two levels up from src/cli, three from dist/src/cli. */
function version(): string {
  for (const rel of ['../../package.json', '../../../package.json']) {
    try {
      const pkg = JSON.parse(fs.readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'spoolmq' && pkg.version !== undefined) return pkg.version;
    } catch {
      // try the next
    }
  }
  return '0.0.0';
}

export function buildProgram(io: CliIo): Command {
  // exitOverride and configureOutput first: subcommands copy them when they are created.
  const program = new Command('spool')
    .description('Spool: a durable message broker on append-only logs')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .showHelpAfterError('(add --help for usage)')
    .version(version(), '-V, --version');
  program.addHelpText(
    'after',
    [
      '',
      'Every command takes --data <dir> (default ./data), --broker <url> and --json.',
      'A command uses --broker when given, else the server the data dir advertises, else opens the data dir itself.',
      '',
      'Examples:',
      '  $ spool serve                          # terminal 1: own ./data, serve it on ./data/spool.sock',
      '  $ spool consume orders                 # terminal 2',
      '  $ spool produce orders hello           # terminal 3',
      '  $ spool stats',
      '  $ spool help exit-codes',
      '',
    ].join('\n'),
  );
  registerServe(program, io);
  registerProduce(program, io);
  registerConsume(program, io);
  registerQueue(program, io);
  registerExchange(program, io);
  registerBind(program, io);
  registerDlq(program, io);
  registerStats(program, io);
  registerCancel(program, io);
  registerTail(program, io);
  registerVerify(program, io);
  registerHelp(program, io);
  return program;
}

/** Runs the CLI with `argv` (user arguments only); returns the exit status. */
export async function run(argv: string[], io: CliIo = processIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT_OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander printed the message (or the help) already.
      return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }
    const code = err instanceof SpoolError ? `${err.code}: ` : '';
    io.err(`${paint(io, 'err').red('spool:')} ${code}${(err as Error)?.message ?? String(err)}\n`);
    return exitCodeFor(err);
  }
}

function invokedDirectly(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return fs.realpathSync(script) === fs.realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (invokedDirectly()) {
  const code = await run(process.argv.slice(2));
  await processIo.flush?.();
  await new Promise<void>((resolve) => process.stderr.write('', () => resolve()));
  process.exit(code);
}
