/** `spool cancel <id>`: cancels a delayed message that has not been routed yet. */
import type { Command } from 'commander';
import { requireMethod, withBroker } from '../broker-access.js';
import { type CommonOptions, common } from '../common.js';
import type { CliIo } from '../io.js';
import { emit } from '../output.js';

export function registerCancel(program: Command, io: CliIo): void {
  const cmd = program.command('cancel').description('cancel a delayed message (published with --delay) before it is routed').argument('<id>', 'the message id');
  common(cmd, ['spool produce orders --delay 30m --id reminder-42 "pay now"', 'spool cancel reminder-42']);
  cmd.action(async (id: string, opts: CommonOptions) => {
    const cancelled = await withBroker(opts, io, ({ broker }) => requireMethod(broker, 'cancel', 'cancel')(id));
    emit(io, opts.json, { id, cancelled }, (d) => (d.cancelled ? `cancelled ${d.id}` : `nothing pending with id ${d.id}`));
  });
}
