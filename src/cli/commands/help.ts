/** `spool help [command...]` and `spool help exit-codes`. */
import type { Command } from 'commander';
import { ERROR_CODES } from '../../errors.js';
import { exitStatuses } from '../exit-codes.js';
import type { CliIo } from '../io.js';
import { emit, paint, table } from '../output.js';
import { usageError } from '../common.js';

export interface ExitCodes {
  statuses: { status: number; meaning: string }[];
  codes: { code: string; exit: number; retriable: boolean }[];
}

export function exitCodes(): ExitCodes {
  return {
    statuses: exitStatuses(),
    codes: Object.entries(ERROR_CODES).map(([code, v]) => ({ code, exit: v.exit, retriable: v.retriable })),
  };
}

export function renderExitCodes(d: ExitCodes, io: CliIo): string {
  const p = paint(io);
  return [
    table(['STATUS', 'MEANING'], d.statuses.map((s) => [s.status, s.meaning]), p),
    '',
    'Errors print `spool: CODE: message` on stderr and exit with the status of their code:',
    table(['CODE', 'EXIT', 'RETRIABLE'], d.codes.map((c) => [c.code, c.exit, c.retriable ? 'yes' : 'no']), p),
  ].join('\n');
}

export function registerHelp(program: Command, io: CliIo): void {
  program.helpCommand(false);
  const cmd = program
    .command('help')
    .description('show help for a command, or `spool help exit-codes` for the exit statuses')
    .argument('[topic...]', 'a command (e.g. queue create) or exit-codes')
    .option('--json', 'print machine-readable JSON (exit-codes)')
    .addHelpText('after', '\nExamples:\n  $ spool help produce\n  $ spool help queue create\n  $ spool help exit-codes --json\n');
  cmd.action((topic: string[], opts: { json?: boolean }) => {
    if (topic.length === 1 && topic[0] === 'exit-codes') {
      emit(io, opts.json, exitCodes(), (d) => renderExitCodes(d, io));
      return;
    }
    let target: Command = program;
    for (const name of topic) {
      const next = target.commands.find((c) => c.name() === name || c.aliases().includes(name));
      if (next === undefined) usageError(cmd, `no command ${topic.join(' ')} (see spool help)`);
      target = next;
    }
    io.out(target.helpInformation());
  });
}
