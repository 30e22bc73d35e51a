/** `spool serve`: owns a data dir and keeps its broker running until SIGINT or SIGTERM. */
import type { Command } from 'commander';
import { Broker } from '../../broker/broker.js';
import type { CliIo } from '../io.js';

export function registerServe(program: Command, io: CliIo): void {
  program
    .command('serve')
    .description('run a broker that owns the data dir')
    .option('--data <dir>', 'data directory', './data')
    .addHelpText('after', '\nExamples:\n  $ spool serve\n  $ spool serve --data /var/lib/spool')
    .action(async (opts: { data: string }) => {
      const broker = await Broker.open({ dataDir: opts.data });
      io.err(`spool: serving ${broker.dataDir} (pid ${process.pid}); Ctrl-C to stop\n`);
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      await broker.close();
      io.err('spool: stopped cleanly\n');
    });
}
