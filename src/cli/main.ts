#!/usr/bin/env node
/**
 * The `spool` command. Thin commands over library functions; one place maps errors to exit codes.
 */
import { Command, CommanderError } from 'commander';
import { SpoolError } from '../errors.js';
import { registerServe } from './commands/serve.js';
import { EXIT_USAGE, exitCodeFor } from './exit-codes.js';
import { type CliIo, processIo } from './io.js';

export function buildProgram(io: CliIo): Command {
  const program = new Command('spool')
    .description('Spool: a durable message broker on append-only logs')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) });
  registerServe(program, io);
  return program;
}

/** Runs the CLI with `argv` (user arguments only); returns the exit status. */
export async function run(argv: string[], io: CliIo = processIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? 0 : EXIT_USAGE;
    }
    const code = err instanceof SpoolError ? `${err.code}: ` : '';
    io.err(`spool: ${code}${(err as Error).message}\n`);
    return exitCodeFor(err);
  }
}

const invokedDirectly = process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href;
if (invokedDirectly || process.argv[1]?.endsWith('/spool')) {
  run(process.argv.slice(2)).then((code) => process.exit(code));
}
