// Proves dead-lettering for each reason (rejected, expired, maxlen, delivery_limit) with RabbitMQ-style x-death contents, count increments on a second death, deadLetterRoutingKey, and cycle handling (an expiry loop is cut with a 'cycle' drop; a loop through a rejection is allowed); fake clock where time matters.
import { afterEach, describe, expect, it } from 'vitest';
import type { Broker } from '../../src/broker/broker.js';
import { BrokerHarness, Inbox, fakeClock, sleep, waitFor } from '../support/broker-helpers.js';
import { at, openFake, recordEvents, xDeath } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

const T0 = 1_700_000_000_000;

/** Topic 'ex' → 'work' on 'order.*' (with `opts`); 'work' dead-letters to fanout 'dlx' → 'dlq'. */
async function setup(b: Broker, opts: Record<string, unknown> = {}): Promise<void> {
  await b.assertExchange('ex', 'topic');
  await b.assertExchange('dlx', 'fanout');
  await b.assertQueue('dlq');
  await b.bindQueue('dlq', 'dlx');
  await b.assertQueue('work', { deadLetterExchange: 'dlx', ...opts });
  await b.bindQueue('work', 'ex', 'order.*');
}

async function dlqInbox(b: Broker, n: number, group = 'audit'): Promise<Inbox> {
  const inbox = new Inbox();
  await b.consume('dlq', inbox.handler(), { group });
  await inbox.waitForCount(n);
  return inbox;
}

describe('reasons and x-death contents', () => {
  it("rejected: nack({ requeue: false }) → DLQ with x-death [{ reason, queue, exchange, routing-keys, count 1, time }] and a 'deadLetter' event", async () => {
    // One message through ex/order.created is nacked without requeue at clock T0+50; the DLQ copy keeps id, body and user headers, and carries exactly one x-death entry with every field.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await setup(b);
    const ev = recordEvents(b);
    const { id } = await b.publish('ex', 'order.created', 'o1', { headers: { tenant: 't1' } });
    const inbox = new Inbox();
    await b.consume('work', inbox.handler(), { group: 'g', ack: 'manual' });
    await inbox.waitForCount(1);
    clock.t = T0 + 50;
    expect(await inbox.messages[0]!.nack({ requeue: false })).toBe('nacked');
    const dead = (await dlqInbox(b, 1)).messages[0]!;
    expect([dead.id, dead.body.toString(), dead.headers.tenant]).toEqual([id, 'o1', 't1']);
    expect(xDeath(dead)).toEqual([{ reason: 'rejected', queue: 'work', exchange: 'ex', 'routing-keys': ['order.created'], count: 1, time: T0 + 50 }]);
    expect(ev.deadLetters).toEqual([expect.objectContaining({ queue: 'work', group: 'g', id, reason: 'rejected', exchange: 'dlx', queues: ['dlq'] })]);
    expect(b.stats().deadLettered).toBe(1);
  });

  it('expired: reason expired, time = the expiry instant', async () => {
    // messageTtl 300 with an idle group: at +300 the DLQ copy has x-death reason 'expired', time T0+300.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await setup(b, { messageTtl: 300 });
    await (await b.consume('work', () => {}, { group: 'g' })).close();
    await b.publish('ex', 'order.expiring', 'e1');
    await at(b, clock, T0 + 300);
    const dead = (await dlqInbox(b, 1)).messages[0]!;
    expect(xDeath(dead)).toEqual([{ reason: 'expired', queue: 'work', exchange: 'ex', 'routing-keys': ['order.expiring'], count: 1, time: T0 + 300 }]);
  });

  it("maxlen: drop-head overflow dead-letters the dropped heads with reason 'maxlen' (group exists)", async () => {
    // maxLength 2 with an idle group; 5 published → m0..m2 in the DLQ with reason 'maxlen', the group then gets m3, m4.
    const { b } = await openFake(h, fakeClock(T0));
    await setup(b, { maxLength: 2 });
    await (await b.consume('work', () => {}, { group: 'g' })).close();
    for (let i = 0; i < 5; i++) await b.publish('ex', 'order.x', `m${i}`);
    const dead = await dlqInbox(b, 3);
    expect(dead.bodies()).toEqual(['m0', 'm1', 'm2']);
    for (const m of dead.messages) expect(xDeath(m)[0]).toMatchObject({ reason: 'maxlen', queue: 'work', count: 1 });
    const inbox = new Inbox();
    await b.consume('work', inbox.handler(), { group: 'g' });
    await inbox.waitForCount(2);
    expect(inbox.bodies()).toEqual(['m3', 'm4']);
  });

  // Regression test (report: "TTL and drop-head do nothing on a queue without consumer groups", fixed in src while this suite was written): Queue.dropHeadIfOver only
  // calls group.dropBefore, so with no group the overflowed heads vanish: no dead-letter, no 'drop', no counter.
  it("maxlen with no consumer group: the dropped heads still go to the DLX (never a silent loss)", async () => {
    // maxLength 2, no group ever: 5 published → 3 must reach the DLQ (or at least raise 'drop' events).
    const { b } = await openFake(h, fakeClock(T0));
    await setup(b, { maxLength: 2 });
    const ev = recordEvents(b);
    for (let i = 0; i < 5; i++) await b.publish('ex', 'order.x', `m${i}`);
    await sleep(50);
    expect({ inDlq: b.queueStats('dlq').endOffset, drops: ev.drops.length }).toEqual({ inDlq: 3, drops: 0 });
  });

  it('delivery_limit: after deliveryLimit deliveries the message is dead-lettered instead of delivered again', async () => {
    // deliveryLimit 3, a consumer that always nacks with requeue: exactly 3 deliveries (counts 1,2,3), then the DLQ has it with reason 'delivery_limit'.
    const { b } = await openFake(h, fakeClock(T0));
    await setup(b, { deliveryLimit: 3 });
    await b.publish('ex', 'order.bad', 'loop');
    const counts: number[] = [];
    await b.consume('work', (m) => void (counts.push(m.deliveryCount), m.nack()), { group: 'g', ack: 'manual' });
    const dead = (await dlqInbox(b, 1)).messages[0]!;
    expect(counts).toEqual([1, 2, 3]);
    expect(xDeath(dead)[0]).toMatchObject({ reason: 'delivery_limit', queue: 'work', count: 1 });
  });

  it('x-death: a second death in the same queue for the same reason increments count (newest first); another reason adds an entry', async () => {
    // work has messageTtl 10 s. Rejected → DLQ; replayed at +1 s; rejected again → one entry {work, rejected, count 2, time +1 s}; replayed at +2 s and left to expire at +12 s → [{expired, count 1, time +12 s}, {rejected, count 2}].
    const { b, clock } = await openFake(h, fakeClock(T0));
    await setup(b, { messageTtl: 10_000 });
    await b.publish('ex', 'order.twice', 'x');
    const rejectNext = async (n: number) => {
      const inbox = new Inbox();
      const c = await b.consume('work', inbox.handler(), { group: 'g', ack: 'manual' });
      await inbox.waitForCount(1);
      await inbox.messages[0]!.nack({ requeue: false });
      await waitFor(() => b.queueStats('dlq').endOffset === n, `death ${n} in the DLQ`);
      await c.close();
    };
    await rejectNext(1);
    clock.t = T0 + 1000;
    expect(await b.replay('dlq')).toEqual({ replayed: 1, remaining: 0 });
    await rejectNext(2);
    clock.t = T0 + 2000;
    expect(await b.replay('dlq')).toEqual({ replayed: 1, remaining: 0 });
    await at(b, clock, T0 + 11_999);
    await sleep(20);
    expect(b.queueStats('dlq').endOffset).toBe(2);
    await at(b, clock, T0 + 12_000);
    await waitFor(() => b.queueStats('dlq').endOffset === 3, 'the third death (expired)');
    const inbox = new Inbox();
    await b.consume('dlq', inbox.handler(), { group: 'audit' });
    await inbox.waitForCount(3);
    const common = { queue: 'work', exchange: 'ex', 'routing-keys': ['order.twice'] };
    expect(xDeath(inbox.messages[1]!)).toEqual([{ reason: 'rejected', ...common, count: 2, time: T0 + 1000 }]);
    expect(xDeath(inbox.messages[2]!)).toEqual([
      { reason: 'expired', ...common, count: 1, time: T0 + 12_000 },
      { reason: 'rejected', ...common, count: 2, time: T0 + 1000 },
    ]);
  });

  it('deadLetterRoutingKey replaces the routing key on the way to the DLX; x-death keeps the original', async () => {
    // work dead-letters to direct 'dlx2' with key 'dead'; dlq2 binds 'dead' only; a rejected 'order.created' arrives in dlq2 with routingKey 'dead' and x-death routing-keys ['order.created'].
    const { b } = await openFake(h, fakeClock(T0));
    await b.assertExchange('ex', 'topic');
    await b.assertExchange('dlx2', 'direct');
    await b.assertQueue('dlq2');
    await b.bindQueue('dlq2', 'dlx2', 'dead');
    await b.assertQueue('work', { deadLetterExchange: 'dlx2', deadLetterRoutingKey: 'dead' });
    await b.bindQueue('work', 'ex', '#');
    await b.publish('ex', 'order.created', 'r');
    await b.consume('work', (m) => void m.nack({ requeue: false }), { group: 'g', ack: 'manual' });
    const inbox = new Inbox();
    await b.consume('dlq2', inbox.handler(), { group: 'audit' });
    await inbox.waitForCount(1);
    const m = inbox.messages[0]!;
    expect([m.exchange, m.routingKey]).toEqual(['dlx2', 'dead']);
    expect(xDeath(m)[0]).toMatchObject({ reason: 'rejected', exchange: 'ex', 'routing-keys': ['order.created'] });
  });

  it("a DLX that routes nowhere: 'drop' with the death reason and the dropped counter", async () => {
    // work's DLX exists but nothing is bound; a rejected message raises 'drop' (reason 'rejected'), stats().dropped 1, deadLettered 0.
    const { b } = await openFake(h, fakeClock(T0));
    await b.assertExchange('void', 'fanout');
    await b.assertQueue('work', { deadLetterExchange: 'void' });
    const ev = recordEvents(b);
    const { id } = await b.sendToQueue('work', 'r');
    await b.consume('work', (m) => void m.nack({ requeue: false }), { group: 'g', ack: 'manual' });
    await waitFor(() => ev.drops.length === 1, "a 'drop' event");
    expect(ev.drops[0]).toMatchObject({ queue: 'work', id, reason: 'rejected' });
    expect([b.stats().dropped, b.stats().deadLettered]).toEqual([1, 0]);
  });
});

describe('cycles', () => {
  it("a TTL loop back into the same queue is cut: 'drop' with reason 'cycle', no infinite loop", async () => {
    // Queue A (messageTtl 100, idle group) dead-letters through fanout 'loop' back into A. The clock advances 100 ms twenty times: at most one pass back into A, then one 'drop' with reason 'cycle', and A is empty for the group.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await b.assertExchange('loop', 'fanout');
    await b.assertQueue('A', { messageTtl: 100, deadLetterExchange: 'loop' });
    await b.bindQueue('A', 'loop');
    await (await b.consume('A', () => {}, { group: 'g' })).close();
    const ev = recordEvents(b);
    const { id } = await b.sendToQueue('A', 'cyclic');
    for (let i = 1; i <= 20; i++) {
      await at(b, clock, T0 + i * 100);
      await sleep(5);
    }
    await waitFor(() => ev.drops.length >= 1, "a 'cycle' drop");
    await sleep(30);
    expect(ev.drops).toEqual([expect.objectContaining({ queue: 'A', id, reason: 'cycle' })]);
    expect(ev.deadLetters.length, 'passes back into A before the cut').toBeLessThanOrEqual(1);
    expect(b.queueStats('A').endOffset).toBe(1 + ev.deadLetters.length);
    expect(b.queueStats('A').groups.g!.lag).toBe(0);
  });

  it('a two-queue TTL loop A → B → A is cut when the message would re-enter A', async () => {
    // A (ttl 100) → dlx 'toB' → B (ttl 100) → dlx 'toA' → A: one 'deadLetter' A→B, then a 'cycle' drop from B.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await b.assertExchange('toA', 'fanout');
    await b.assertExchange('toB', 'fanout');
    await b.assertQueue('A', { messageTtl: 100, deadLetterExchange: 'toB' });
    await b.assertQueue('B', { messageTtl: 100, deadLetterExchange: 'toA' });
    await b.bindQueue('A', 'toA');
    await b.bindQueue('B', 'toB');
    for (const q of ['A', 'B']) await (await b.consume(q, () => {}, { group: 'g' })).close();
    const ev = recordEvents(b);
    await b.sendToQueue('A', 'pingpong');
    for (let i = 1; i <= 10; i++) {
      await at(b, clock, T0 + i * 100);
      await sleep(5);
    }
    await waitFor(() => ev.drops.length >= 1, "a 'cycle' drop");
    expect(ev.deadLetters.map((e) => `${e.queue}->${e.queues.join(',')}`)).toEqual(['A->B']);
    expect(ev.drops.map((e) => `${e.queue}:${e.reason}`)).toEqual(['B:cycle']);
  });

  it('a loop that includes a rejection is allowed (RabbitMQ rule): each pass counts in x-death', async () => {
    // Queue A dead-letters back into itself; a consumer rejects (requeue false) the first 3 deliveries and acks the 4th: 3 'deadLetter' events, no drop, the 4th delivery's x-death is [{rejected, A, count 3}].
    const { b } = await openFake(h, fakeClock(T0));
    await b.assertExchange('loop', 'fanout');
    await b.assertQueue('A', { deadLetterExchange: 'loop' });
    await b.bindQueue('A', 'loop');
    const ev = recordEvents(b);
    await b.sendToQueue('A', 'again');
    const seen: number[] = [];
    await b.consume(
      'A',
      (m) => {
        const d = m.headers['x-death'];
        seen.push(Array.isArray(d) ? (d[0] as { count: number }).count : 0);
        return seen.length <= 3 ? m.nack({ requeue: false }) : m.ack();
      },
      { group: 'g', ack: 'manual' },
    );
    await waitFor(() => seen.length === 4, '4 deliveries');
    await sleep(30);
    expect(seen).toEqual([0, 1, 2, 3]);
    expect(ev.deadLetters.length).toBe(3);
    expect(ev.drops).toEqual([]);
  });
});
