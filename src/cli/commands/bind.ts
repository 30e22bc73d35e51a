/** `spool bind` and `spool unbind`: route an exchange's messages to a queue, or stop. */
import type { Command } from 'commander';
import { withBroker } from '../broker-access.js';
import { type CommonOptions, common } from '../common.js';
import type { CliIo } from '../io.js';
import { emit } from '../output.js';

export function registerBind(program: Command, io: CliIo): void {
  const bind = program
    .command('bind')
    .description('bind a queue to an exchange with a binding key (a pattern for topic exchanges)')
    .argument('<queue>')
    .argument('<exchange>')
    .argument('[pattern]', 'binding key; topic: * matches one word, # zero or more', '');
  common(bind, ['spool bind billing events "order.*"', 'spool bind audit events "#"', 'spool bind everyone broadcast']);
  bind.action(async (queue: string, exchange: string, pattern: string, opts: CommonOptions) => {
    await withBroker(opts, io, ({ broker }) => broker.bindQueue(queue, exchange, pattern));
    emit(io, opts.json, { queue, exchange, pattern, bound: true }, (d) => `bound ${d.queue} to ${d.exchange}${d.pattern === '' ? '' : ` with ${JSON.stringify(d.pattern)}`}`);
  });

  const unbind = program
    .command('unbind')
    .description('remove a binding')
    .argument('<queue>')
    .argument('<exchange>')
    .argument('[pattern]', 'the binding key it was bound with', '');
  common(unbind, ['spool unbind billing events "order.*"']);
  unbind.action(async (queue: string, exchange: string, pattern: string, opts: CommonOptions) => {
    await withBroker(opts, io, ({ broker }) => broker.unbindQueue(queue, exchange, pattern));
    emit(io, opts.json, { queue, exchange, pattern, bound: false }, (d) => `unbound ${d.queue} from ${d.exchange}${d.pattern === '' ? '' : ` (${JSON.stringify(d.pattern)})`}`);
  });
}
