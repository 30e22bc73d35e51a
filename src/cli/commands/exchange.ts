/** `spool exchange create|list|delete`: exchange administration. */
import type { Command } from 'commander';
import { EXCHANGE_TYPES } from '../../broker/routing.js';
import { type BrokerLike, withBroker } from '../broker-access.js';
import { type CommonOptions, common, examples, oneOf } from '../common.js';
import type { CliIo } from '../io.js';
import { emit, paint, table } from '../output.js';

export interface ExchangeRow {
  name: string;
  type: string;
  alternateExchange: string | null;
  bindings: { queue: string; pattern: string }[];
}

export async function listExchanges(broker: BrokerLike): Promise<ExchangeRow[]> {
  const bindings = await broker.listBindings();
  return (await broker.listExchanges())
    .map((e) => ({
      name: e.name,
      type: e.type,
      alternateExchange: typeof e.options?.alternateExchange === 'string' ? e.options.alternateExchange : null,
      bindings: bindings.filter((b) => b.exchange === e.name).map((b) => ({ queue: b.queue, pattern: b.pattern })),
    }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

export function registerExchange(program: Command, io: CliIo): void {
  const exchange = program.command('exchange').description('create, list and delete exchanges');
  examples(exchange, ['spool exchange create events --type topic', 'spool exchange list']);

  const create = exchange
    .command('create')
    .description('declare an exchange (idempotent when type and options match)')
    .argument('<name>')
    .option('--type <type>', `one of ${EXCHANGE_TYPES.join(', ')}`, oneOf(EXCHANGE_TYPES), 'direct')
    .option('--alternate-exchange <exchange>', 'where messages go that this exchange cannot route');
  common(create, ['spool exchange create events --type topic', 'spool exchange create fanout-all --type fanout', 'spool exchange create orders --alternate-exchange unrouted']);
  create.action(async (name: string, opts: CommonOptions & { type: string; alternateExchange?: string }) => {
    const options = opts.alternateExchange !== undefined ? { alternateExchange: opts.alternateExchange } : {};
    await withBroker(opts, io, ({ broker }) => broker.assertExchange(name, opts.type, options));
    emit(io, opts.json, { exchange: name, type: opts.type, ...options }, (d) => `exchange ${d.exchange} (${d.type})`);
  });

  const list = exchange.command('list').description('list exchanges with their bindings');
  common(list, ['spool exchange list', 'spool exchange list --json']);
  list.action(async (opts: CommonOptions) => {
    const rows = await withBroker(opts, io, ({ broker }) => listExchanges(broker));
    emit(io, opts.json, rows, (d) =>
      d.length === 0
        ? 'no exchanges'
        : table(
            ['EXCHANGE', 'TYPE', 'BINDINGS', 'ALTERNATE'],
            d.map((r) => [r.name, r.type, r.bindings.map((b) => (b.pattern === '' ? b.queue : `${b.queue} (${b.pattern})`)).join(', ') || '-', r.alternateExchange ?? '-']),
            paint(io),
          ),
    );
  });

  const del = exchange.command('delete').description('delete an exchange and its bindings').argument('<name>');
  common(del, ['spool exchange delete events']);
  del.action(async (name: string, opts: CommonOptions) => {
    await withBroker(opts, io, ({ broker }) => broker.deleteExchange(name));
    emit(io, opts.json, { exchange: name, deleted: true }, (d) => `deleted exchange ${d.exchange}`);
  });
}
