// Proves the remote client is a drop-in for the embedded Broker: one script of every API call (errors included) runs against both, and the recorded results must be equal.
import { afterEach, describe, expect, it } from 'vitest';
import type { Broker } from '../../src/broker/broker.js';
import type { RemoteBroker } from '../../src/client/index.js';
import { isSpoolError } from '../../src/errors.js';
import { ServerHarness, sleep, waitFor } from './helpers.js';

const h = new ServerHarness();
afterEach(() => h.cleanup());

/** What the script reads from a delivered message (the embedded Message and RemoteMessage both have it). */
interface Msg {
  id: string;
  queue: string;
  exchange: string;
  routingKey: string;
  offset: number;
  timestamp: number;
  deliveryId: number;
  deliveryCount: number;
  redelivered: boolean;
  body: Buffer;
  headers: Record<string, unknown>;
  json<T>(): T;
  ack(): Promise<string>;
  nack(o?: { requeue?: boolean }): Promise<string>;
}

type AnyBroker = Broker | RemoteBroker;

/** Replaces what legitimately differs between two runs (wall-clock times, generated ids). */
function normalize(v: unknown, key = ''): unknown {
  if (key === 'time' || key === 'timestamp') return typeof v;
  if (key === 'deliverAt') return typeof v === 'number' && v > 1_600_000_000_000 ? 'ms' : v;
  if (Array.isArray(v)) return v.map((x) => normalize(x));
  if (v instanceof Uint8Array) return `bytes:${Buffer.from(v).toString('hex')}`;
  if (v !== null && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = normalize(x, k);
    return out;
  }
  return v;
}

class Recorder {
  readonly log: unknown[] = [];

  async call<T>(label: string, f: () => T | Promise<T>): Promise<T | undefined> {
    try {
      const v = await f();
      this.log.push([label, 'ok', normalize(v)]);
      return v;
    } catch (err) {
      this.log.push([label, 'error', isSpoolError(err) ? err.code : `not a SpoolError: ${(err as Error).message}`]);
      return undefined;
    }
  }

  note(label: string, v: unknown): void {
    this.log.push([label, 'note', normalize(v)]);
  }
}

/** Ids the broker or client made up: they differ between runs. */
const generatedIds = new Set<string>();

function describeMsg(m: Msg): Record<string, unknown> {
  expect(Number.isSafeInteger(m.deliveryId) && m.deliveryId > 0).toBe(true);
  expect(typeof m.timestamp).toBe('number');
  return {
    id: generatedIds.has(m.id) ? '<generated>' : m.id,
    queue: m.queue,
    exchange: m.exchange,
    routingKey: m.routingKey,
    offset: m.offset,
    deliveryCount: m.deliveryCount,
    redelivered: m.redelivered,
    body: m.body.toString('hex'),
    headers: normalize(m.headers),
  };
}

/** Every API call, in an order whose outcome does not depend on timing. */
async function script(b: AnyBroker, r: Recorder): Promise<void> {
  // Topology, with the error cases.
  await r.call('assertExchange', () => b.assertExchange('orders', 'topic'));
  await r.call('assertExchange again', () => b.assertExchange('orders', 'topic'));
  await r.call('assertExchange conflicting', () => b.assertExchange('orders', 'direct'));
  await r.call('assertExchange default', () => b.assertExchange('', 'topic'));
  await r.call('assertExchange bad name', () => b.assertExchange('no spaces', 'topic'));
  await r.call('assertExchange bad type', () => b.assertExchange('x', 'weird' as 'topic'));
  await r.call('assertExchange alternate', () => b.assertExchange('alt', 'fanout', { alternateExchange: 'orders' }));
  await r.call('assertExchange dlx', () => b.assertExchange('dlx', 'fanout'));
  await r.call('assertExchange unbound', () => b.assertExchange('unbound', 'direct'));
  await r.call('assertQueue billing', () => b.assertQueue('billing'));
  await r.call('assertQueue conflicting', () => b.assertQueue('billing', { deliveryLimit: 5 }));
  await r.call('assertQueue bad option', () => b.assertQueue('q2', { maxLength: -1 }));
  await r.call('assertQueue dlq', () => b.assertQueue('dlq'));
  await r.call('assertQueue work', () => b.assertQueue('work', { deadLetterExchange: 'dlx' }));
  await r.call('assertQueue audit', () => b.assertQueue('audit'));
  await r.call('bindQueue billing', () => b.bindQueue('billing', 'orders', 'order.*'));
  await r.call('bindQueue audit', () => b.bindQueue('audit', 'orders', '#'));
  await r.call('bindQueue dlq', () => b.bindQueue('dlq', 'dlx'));
  await r.call('bindQueue default pattern', () => b.bindQueue('audit', 'dlx'));
  await r.call('bindQueue missing queue', () => b.bindQueue('nope', 'orders', 'x'));
  await r.call('bindQueue missing exchange', () => b.bindQueue('billing', 'nope', 'x'));
  await r.call('unbindQueue', () => b.unbindQueue('audit', 'dlx'));

  // Publishing.
  await r.call('publish', () => b.publish('orders', 'order.created', 'hello', { id: 'o1' }));
  await r.call('publish duplicate', () => b.publish('orders', 'order.created', 'hello again', { id: 'o1' }));
  const returned: unknown[] = [];
  const onReturn = (e: { id: string; exchange: string; routingKey: string; body: unknown; headers: unknown }) =>
    returned.push({ ...e, body: Buffer.from(e.body as string).toString() });
  b.on('return', onReturn);
  await r.call('publish mandatory unroutable', () => b.publish('unbound', 'k', 'lost', { id: 'lost-1', mandatory: true, headers: { why: 'test' } }));
  b.off('return', onReturn);
  r.note('return events', returned);
  await r.call('publish unroutable', () => b.publish('unbound', 'k', 'lost too', { id: 'lost-2' }));
  await r.call('publish via alternate exchange', () => b.publish('alt', 'order.alt', 'via alt', { id: 'alt-1' }));
  await r.call('publish missing exchange', () => b.publish('nope', 'k', 'x'));
  await r.call('publish bad body', () => b.publish('orders', 'k', 42 as unknown as string));
  await r.call('publish bad routing key', () => b.publish('orders', 7 as unknown as string, 'x'));
  await r.call('publish bad id', () => b.publish('orders', 'k', 'x', { id: '' }));
  // Headers shaped like wire JSON's markers arrive as sent, as they do embedded.
  await r.call('publish headers', () => b.publish('orders', 'order.paid', '{"n":2}', { id: 'o2', headers: { a: 1, nested: { list: [1, 'two', null, true] }, when: { $date: 5 }, gone: { $undefined: true }, esc: { $escape: [[1]] } } }));
  await r.call('publish reserved header', () => b.publish('orders', 'order.paid', 'x', { headers: { '\0x': 1 } }));
  await r.call('publish binary', () => b.sendToQueue('billing', Buffer.from([0, 1, 2, 254, 255]), { id: 'bin' }));
  await r.call('publish empty body', () => b.sendToQueue('billing', '', { id: 'empty' }));
  await r.call('publish ttl', () => b.sendToQueue('billing', 'with ttl', { id: 'ttl-1', ttl: 60_000 }));
  await r.call('sendToQueue missing', () => b.sendToQueue('nope', 'x'));
  await r.call('sendToQueue bad name', () => b.sendToQueue('bad name', 'x'));
  const gen = await b.sendToQueue('billing', 'generated id');
  generatedIds.add(gen.id);
  r.note('generated id', { status: gen.status, queues: gen.queues, isString: typeof gen.id === 'string' && gen.id.length > 0 });
  for (let i = 0; i < 3; i++) await r.call(`sendToQueue work ${i}`, () => b.sendToQueue('work', `w${i}`, { id: `w${i}` }));

  // Reading the state.
  await r.call('queueStats', () => b.queueStats('billing'));
  await r.call('queueStats missing', () => b.queueStats('nope'));
  await r.call('stats', () => b.stats());
  await r.call('listQueues', () => b.listQueues());
  await r.call('listExchanges', () => b.listExchanges());
  await r.call('listBindings', () => b.listBindings());

  // consume, ack 'auto': a handler that throws once gets the message again, redelivered.
  const auto: Record<string, unknown>[] = [];
  let failedOnce = false;
  const c1 = await b.consume(
    'billing',
    (m: Msg) => {
      auto.push(describeMsg(m));
      if (m.id === 'o2' && !failedOnce) {
        failedOnce = true;
        throw new Error('first try fails');
      }
    },
    { group: 'g-auto', prefetch: 4 },
  );
  await waitFor(() => auto.length >= 8, `8 auto deliveries (have ${auto.length})`);
  await c1.close();
  // Where a redelivery falls among the prefetched messages depends on timing, not on the API.
  auto.sort((x, y) => (x.offset as number) - (y.offset as number) || (x.deliveryCount as number) - (y.deliveryCount as number));
  r.note('auto deliveries', auto);
  await r.call('queueStats after auto', () => b.queueStats('billing'));

  // consume, ack 'manual': statuses of ack, double ack, nack without requeue (dead-letters).
  const statuses: unknown[] = [];
  const held: Msg[] = [];
  const c2 = await b.consume('work', (m: Msg) => void held.push(m), { group: 'g-manual', ack: 'manual', prefetch: 10 });
  await waitFor(() => held.length >= 3, '3 manual deliveries');
  const [m0, m1, m2] = held as [Msg, Msg, Msg];
  statuses.push(await m0.ack(), await m0.ack(), await m1.nack({ requeue: false }), await m2.nack());
  await waitFor(() => held.length >= 4, 'the requeued message again');
  const again = held[3] as Msg;
  statuses.push(describeMsg(again), await again.ack());
  await c2.close();
  r.note('manual statuses', statuses);

  // subscribe (manual by default): the dead-lettered message, with its x-death.
  await waitFor(async () => (await b.queueStats('dlq')).depth >= 1, 'the dead-lettered message');
  const sub = b.subscribe('dlq', { group: 'g-sub' });
  for await (const m of sub) {
    r.note('subscribed', describeMsg(m as Msg));
    r.note('subscribed ack', await m.ack());
    break;
  }

  // consume, ack 'none': at most once; ack() is 'unknown'.
  const none: string[] = [];
  const c3 = await b.consume(
    'billing',
    async (m: Msg) => {
      none.push(`${generatedIds.has(m.id) ? '<generated>' : m.id}:${await m.ack()}`);
    },
    { group: 'g-none', ack: 'none' },
  );
  await waitFor(() => none.length >= 7, '7 deliveries in ack none');
  await c3.close();
  r.note('none', none);

  // Retries then dead-letter with the handler's error text (ack 'auto' with retry).
  await r.call('publish for retry', () => b.sendToQueue('work', 'always fails', { id: 'retry-1' }));
  let attempts = 0;
  const c4 = await b.consume(
    'work',
    () => {
      attempts++;
      throw new Error('boom');
    },
    { group: 'g-retry', prefetch: 1, retry: { attempts: 2, backoff: { initial: 10, factor: 1, max: 10, jitter: 0 } } },
  );
  await waitFor(async () => (await b.queueStats('work')).groups['g-retry']?.committed === 4, 'g-retry to give up on every message', 10_000);
  await c4.close();
  r.note('retry attempts', attempts);

  // Delayed publish, cancel.
  await r.call('publish delayed', () => b.sendToQueue('audit', 'later', { id: 'd1', delay: 50 }));
  await r.call('publish delayed far', () => b.sendToQueue('audit', 'much later', { id: 'd2', deliverAt: new Date(Date.now() + 3_600_000) }));
  await r.call('cancel', () => b.cancel('d2'));
  await r.call('cancel again', () => b.cancel('d2'));
  await r.call('cancel bad id', () => b.cancel(''));
  await waitFor(async () => (await b.queueStats('audit')).endOffset >= 4, 'the delayed message to arrive');

  // Replay from the dead-letter queue with an object filter.
  await r.call('dlq before replay', () => b.queueStats('dlq'));
  await r.call('replay', () => b.replay('dlq', { filter: { reason: 'rejected' }, limit: 10 }));
  await r.call('replay missing queue', () => b.replay('nope'));
  await r.call('replay bad limit', () => b.replay('dlq', { limit: -1 }));

  // Teardown, with the errors.
  await r.call('deleteExchange', () => b.deleteExchange('alt'));
  await r.call('deleteExchange missing', () => b.deleteExchange('alt'));
  await r.call('deleteQueue', () => b.deleteQueue('audit'));
  await r.call('deleteQueue missing', () => b.deleteQueue('audit'));
  await r.call('listQueues at end', () => b.listQueues());
  await r.call('listBindings at end', () => b.listBindings());
  await r.call('stats at end', () => b.stats());
  await sleep(10);
}

describe('embedded and remote give the same results', () => {
  it('runs one script of every API call against both and compares the records', async () => {
    const embedded = new Recorder();
    await script(await h.broker(), embedded);
    const { server } = await h.served();
    const remote = new Recorder();
    await script(await h.client(server.url), remote);
    if (process.env.SHOW_LOG) console.log(JSON.stringify(embedded.log, null, 0).replace(/\],\[/g, "],\n["));
    expect(remote.log.length).toBe(embedded.log.length);
    for (let i = 0; i < embedded.log.length; i++) expect(remote.log[i], `record ${i}: ${JSON.stringify((embedded.log[i] as unknown[])[0])}`).toEqual(embedded.log[i]);
  });

  it('publishBatch: the same results, the same stored messages and the same refusals, embedded and remote', async () => {
    // Proves publishBatch parity: routing per key, dedupe within and across batches, unroutable + mandatory, a delayed message, and all-or-nothing refusal of a batch with one bad message.
    const run = async (b: AnyBroker, r: Recorder): Promise<void> => {
      await b.assertExchange('orders', 'topic');
      await b.assertQueue('billing');
      await b.assertQueue('audit');
      await b.bindQueue('billing', 'orders', 'order.*');
      await b.bindQueue('audit', 'orders', '#');
      await r.call('batch', () =>
        b.publishBatch('orders', [
          { routingKey: 'order.created', body: 'a', id: 'b-1', headers: { n: 1 } },
          { routingKey: 'shipment.sent', body: Buffer.from([1, 2]), id: 'b-2' },
          { routingKey: 'order.created', body: 'again', id: 'b-1' },
          { routingKey: 'order.paid', body: 'later', id: 'b-3', delay: 60_000 },
        ]),
      );
      await r.call('batch repeated', () => b.publishBatch('orders', [{ routingKey: 'order.created', body: 'x', id: 'b-2' }]));
      await r.call('batch with a bad message', () =>
        b.publishBatch('orders', [
          { routingKey: 'order.created', body: 'fine', id: 'b-4' },
          { routingKey: 'order.created', body: 42 as unknown as string, id: 'b-5' },
        ]),
      );
      await r.call('batch to a missing exchange', () => b.publishBatch('nope', [{ routingKey: 'k', body: 'x', id: 'b-6' }]));
      await r.call('batch not an array', () => b.publishBatch('orders', {} as unknown as []));
      await r.call('empty batch', () => b.publishBatch('orders', []));
      const stats = await Promise.all(['billing', 'audit'].map((q) => b.queueStats(q)));
      r.note('depths', stats.map((s) => s.endOffset));
    };
    const embedded = new Recorder();
    await run(await h.broker(), embedded);
    const { server } = await h.served();
    const remote = new Recorder();
    await run(await h.client(server.url), remote);
    expect(embedded.log.find((x) => (x as unknown[])[0] === 'batch with a bad message')).toEqual(['batch with a bad message', 'error', 'SPOOL_ERR_INVALID_ARGUMENT']);
    expect(embedded.log.at(-1)).toEqual(['depths', 'note', [2, 2]]);
    expect(remote.log).toEqual(embedded.log);
  });

  it('refuses what cannot cross the wire, before sending anything', async () => {
    const { broker, server } = await h.served();
    const c = await h.client(server.url);
    await broker.assertQueue('dlq');
    await expect(c.replay('dlq', { filter: () => true })).rejects.toMatchObject({ code: 'SPOOL_ERR_INVALID_ARGUMENT' });
    await expect(c.consume('dlq', './handler.js')).rejects.toMatchObject({ code: 'SPOOL_ERR_INVALID_ARGUMENT' });
    await expect(c.assertQueue('dlq', { deadLetterRoutingKey: (() => 'x') as unknown as string })).rejects.toMatchObject({ code: 'SPOOL_ERR_INVALID_ARGUMENT' });
    // The connection is still fine.
    expect(await c.listQueues()).toEqual(['dlq']);
  });

  it('a call the server does not know is answered "not supported" and the connection stays', async () => {
    const { server } = await h.served();
    const c = await h.client(server.url);
    // purgeQueue is offered by the protocol; this broker may not have it.
    const purge = await c.purgeQueue('nothing').then(
      () => 'ok',
      (err: unknown) => (isSpoolError(err) ? err.code : 'other'),
    );
    expect(['SPOOL_ERR_INVALID_ARGUMENT', 'SPOOL_ERR_NOT_FOUND', 'ok']).toContain(purge);
    expect(await c.listQueues()).toEqual([]);
  });
});
