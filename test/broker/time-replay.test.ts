// Proves replay of a dead-letter queue in process: messages go back to their original exchange and routing key (from x-death) or to a given exchange / queue, filtered by function or by {reason, routingKey, id}, up to a limit with an exact remaining count, and an unroutable one stays in the DLQ.
import { afterEach, describe, expect, it } from 'vitest';
import type { Broker } from '../../src/broker/broker.js';
import { BrokerHarness, Inbox, fakeClock, sleep, waitFor } from '../support/broker-helpers.js';
import { at, openFake, readAll, xDeath } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

const T0 = 1_700_000_000_000;

/** 'ex' topic → 'work' ('order.*', DLX fanout 'dlx' → 'dlq'); 'other' direct → 'other-q' ('fixed' and 'order.a'); plain 'target'. */
async function setup(b: Broker): Promise<void> {
  await b.assertExchange('ex', 'topic');
  await b.assertExchange('dlx', 'fanout');
  await b.assertExchange('other', 'direct');
  await b.assertQueue('dlq');
  await b.bindQueue('dlq', 'dlx');
  await b.assertQueue('work', { deadLetterExchange: 'dlx' });
  await b.bindQueue('work', 'ex', 'order.*');
  await b.assertQueue('other-q');
  await b.bindQueue('other-q', 'other', 'fixed');
  await b.bindQueue('other-q', 'other', 'order.a');
  await b.assertQueue('target');
}

/** Publishes each [routingKey, body, id?] to 'ex' and rejects them all from 'work', so they sit in 'dlq'. */
async function rejectAll(b: Broker, msgs: [string, string, string?][]): Promise<void> {
  const before = b.queueStats('dlq').endOffset;
  for (const [rk, body, id] of msgs) await b.publish('ex', rk, body, id === undefined ? {} : { id });
  const c = await b.consume('work', (m) => void m.nack({ requeue: false }), { group: 'g', ack: 'manual', prefetch: 100 });
  await waitFor(() => b.queueStats('dlq').endOffset === before + msgs.length, `${msgs.length} in the DLQ`);
  await c.close();
}

const bodiesIn = async (b: Broker, q: string, n: number, group = `r${Math.random()}`) => (await readAll(b, q, group.replace('.', ''), n)).map((m) => m.body.toString());

describe('replay', () => {
  it('moves DLQ messages back to their original exchange and routing key; a second replay finds nothing', async () => {
    // Two rejected messages (order.a, order.b) → replay('dlq') = {2, 0}; 'work' gets both again with their original routing keys and x-death; replay again = {0, 0}.
    const { b } = await openFake(h, fakeClock(T0));
    await setup(b);
    await rejectAll(b, [['order.a', 'A'], ['order.b', 'B']]);
    expect(await b.replay('dlq')).toEqual({ replayed: 2, remaining: 0 });
    const inbox = new Inbox();
    await b.consume('work', inbox.handler(), { group: 'fresh', from: 'earliest' });
    await inbox.waitForCount(4);
    const replayed = inbox.messages.slice(2);
    expect(replayed.map((m) => [m.body.toString(), m.exchange, m.routingKey])).toEqual([['A', 'ex', 'order.a'], ['B', 'ex', 'order.b']]);
    expect(xDeath(replayed[0]!)[0]).toMatchObject({ reason: 'rejected', queue: 'work' });
    expect(await b.replay('dlq')).toEqual({ replayed: 0, remaining: 0 });
  });

  it('to an exchange (with and without a routing key) and to a queue', async () => {
    // 3 in the DLQ: replay {to: other/fixed, limit 1}, then {to: other (original key order.a)}, then {to: queue target}: one lands in each, 'work' gets none.
    const { b } = await openFake(h, fakeClock(T0));
    await setup(b);
    await rejectAll(b, [['order.x', 'X'], ['order.a', 'A'], ['order.y', 'Y']]);
    const workEnd = b.queueStats('work').endOffset;
    expect(await b.replay('dlq', { to: { exchange: 'other', routingKey: 'fixed' }, limit: 1 })).toEqual({ replayed: 1, remaining: 2 });
    expect(await b.replay('dlq', { to: { exchange: 'other' }, filter: (m) => m.body.toString() === 'A' })).toEqual({ replayed: 1, remaining: 1 });
    expect(await b.replay('dlq', { to: { queue: 'target' } })).toEqual({ replayed: 1, remaining: 0 });
    expect(await bodiesIn(b, 'other-q', 2)).toEqual(['X', 'A']);
    expect(await bodiesIn(b, 'target', 1)).toEqual(['Y']);
    expect(b.queueStats('work').endOffset).toBe(workEnd);
  });

  it('filter objects: reason, routingKey, id', async () => {
    // DLQ holds A (rejected, order.a), B (expired, order.b), C (rejected, order.c, id 'c-id'): {reason: expired} moves B; {routingKey: order.c} moves C; {id} of A moves A; remaining counts the rest each time.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await setup(b);
    await rejectAll(b, [['order.a', 'A']]);
    await b.publish('ex', 'order.b', 'B', { ttl: 100 });
    await at(b, clock, T0 + 100);
    await waitFor(() => b.queueStats('dlq').endOffset === 2, 'B expired into the DLQ');
    await rejectAll(b, [['order.c', 'C', 'c-id']]);
    const [a] = await readAll(b, 'dlq', 'peek', 3);
    expect(await b.replay('dlq', { filter: { reason: 'expired' }, to: { queue: 'target' } })).toEqual({ replayed: 1, remaining: 2 });
    expect(await b.replay('dlq', { filter: { routingKey: 'order.c' }, to: { queue: 'target' } })).toEqual({ replayed: 1, remaining: 1 });
    expect(await b.replay('dlq', { filter: { reason: 'rejected', id: 'nope' }, to: { queue: 'target' } })).toEqual({ replayed: 0, remaining: 1 });
    expect(await b.replay('dlq', { filter: { id: a!.id }, to: { queue: 'target' } })).toEqual({ replayed: 1, remaining: 0 });
    expect(await bodiesIn(b, 'target', 3)).toEqual(['B', 'C', 'A']);
  });

  it('limit and remaining: 5 messages replayed 2, 2, 1', async () => {
    // Three replays with limit 2 return {2,3}, {2,1}, {1,0}; the target gets all five once, in DLQ order.
    const { b } = await openFake(h, fakeClock(T0));
    await setup(b);
    await rejectAll(b, ['1', '2', '3', '4', '5'].map((x) => ['order.n', x] as [string, string]));
    const results = [];
    for (let i = 0; i < 3; i++) results.push(await b.replay('dlq', { limit: 2, to: { queue: 'target' } }));
    expect(results).toEqual([{ replayed: 2, remaining: 3 }, { replayed: 2, remaining: 1 }, { replayed: 1, remaining: 0 }]);
    expect(await bodiesIn(b, 'target', 5)).toEqual(['1', '2', '3', '4', '5']);
  });

  it('a message whose original route is gone stays in the DLQ and counts as remaining', async () => {
    // Unbind work from ex after the rejection: replay = {0, 1}; after binding again, {1, 0}.
    const { b } = await openFake(h, fakeClock(T0));
    await setup(b);
    await rejectAll(b, [['order.a', 'A']]);
    await b.unbindQueue('work', 'ex', 'order.*');
    expect(await b.replay('dlq')).toEqual({ replayed: 0, remaining: 1 });
    await b.bindQueue('work', 'ex', 'order.*');
    expect(await b.replay('dlq')).toEqual({ replayed: 1, remaining: 0 });
  });

  // Regression test (report: "replay never ends when a message routes back into the DLQ", fixed in src while this suite was written): Broker.replay loops
  // `while (next < q.log.endOffset)`, re-reading the end that its own appends keep moving.
  it('terminates when a replayed message routes back into the DLQ itself', async () => {
    // A message sent straight to 'dlq' has no x-death, so its original route is ''/'dlq': replay must end (e.g. {1, 0} or {0, 1}) within 1 s instead of re-appending copies forever.
    const { b } = await openFake(h, fakeClock(T0));
    await setup(b);
    await b.sendToQueue('dlq', 'self');
    let settled = false;
    const p = b.replay('dlq').then(
      (r) => ((settled = true), r),
      () => ((settled = true), null),
    );
    const deadline = Date.now() + 1000;
    while (!settled && Date.now() < deadline) await sleep(20);
    const inTime = settled;
    const grew = b.queueStats('dlq').endOffset;
    await h.close(b); // stops a runaway replay (its next append fails)
    await p;
    expect({ inTime, dlqEnd: grew }).toEqual({ inTime: true, dlqEnd: 2 });
  });
});
