// Per-message ttl in a queue no group reads yet: a message behind a head that lives on is
// dead-lettered on time, exactly once, and groups created later (also after a restart) skip it.
import { afterEach, describe, expect, it } from 'vitest';
import type { Broker } from '../../src/broker/broker.js';
import type { Message } from '../../src/broker/delivery.js';
import { BrokerHarness, Inbox, fakeClock, sleep, waitFor } from '../support/broker-helpers.js';
import { at, openFake } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

const T0 = 1_700_000_000_000;

async function withDlq(b: Broker, opts: Record<string, unknown> = {}): Promise<void> {
  await b.assertExchange('dlx', 'fanout');
  await b.assertQueue('dlq');
  await b.bindQueue('dlq', 'dlx');
  await b.assertQueue('q', { deadLetterExchange: 'dlx', ...opts });
}

const dlqDepth = (b: Broker) => b.queueStats('dlq').endOffset;

async function bodiesFor(b: Broker, queue: string, group: string, n: number): Promise<string[]> {
  const inbox = new Inbox();
  const c = await b.consume(queue, inbox.handler(), { group });
  await inbox.waitForCount(n);
  await inbox.expectStays(n, 60);
  await c.close();
  return inbox.messages.map((m: Message) => m.body.toString());
}

describe('per-message ttl with no group', () => {
  it('dead-letters a message behind a long-lived head on time, and a later group never sees it', async () => {
    // Head without ttl, then a ttl-1000 message: nothing at +999, the DLQ has it at +1000 (reason expired); a group created afterwards gets only the head and the message after.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await withDlq(b);
    await b.sendToQueue('q', 'head');
    const { id } = await b.sendToQueue('q', 'short', { ttl: 1000 });
    await b.sendToQueue('q', 'tail');
    await at(b, clock, T0 + 999);
    await sleep(20);
    expect(dlqDepth(b)).toBe(0);
    await at(b, clock, T0 + 1000);
    await at(b, clock, T0 + 1004);
    await waitFor(() => dlqDepth(b) === 1, 'the expired message dead-lettered');
    const [dead] = await collect(b, 'dlq', 1);
    expect(dead?.id).toBe(id);
    expect((dead?.headers['x-death'] as unknown as { reason: string }[])[0]?.reason).toBe('expired');
    expect(b.queueStats('q').depth).toBe(2);
    expect(await bodiesFor(b, 'q', 'late', 2)).toEqual(['head', 'tail']);
    expect(dlqDepth(b)).toBe(1);
  });

  it('a group created after a restart still skips it, and nothing is dead-lettered twice', async () => {
    // Expire alone, restart, let the clock pass the 2-minute dedupe window: the DLQ still holds one copy and a new group sees only the live messages.
    const clock = fakeClock(T0);
    let { b } = await openFake(h, clock);
    await withDlq(b);
    await b.sendToQueue('q', 'head');
    await b.sendToQueue('q', 'short', { ttl: 500 });
    await at(b, clock, T0 + 500);
    await at(b, clock, T0 + 504);
    await waitFor(() => dlqDepth(b) === 1, 'dead-lettered once');
    await h.close(b);
    ({ b } = await openFake(h, clock, { dataDir: b.dataDir }));
    await at(b, clock, T0 + 600_000);
    await sleep(30);
    expect(dlqDepth(b)).toBe(1);
    expect(await bodiesFor(b, 'q', 'after-restart', 1)).toEqual(['head']);
    expect(dlqDepth(b)).toBe(1);
  });

  it('with a queue messageTtl too, the head run does not dead-letter an already expired message again', async () => {
    // messageTtl 2000 and one message with ttl 100 behind the head: at +100 the DLQ has 1; at +2000 the head run expires the other two, 3 in all, none twice.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await withDlq(b, { messageTtl: 2000 });
    await b.sendToQueue('q', 'a');
    await b.sendToQueue('q', 'b', { ttl: 100 });
    await b.sendToQueue('q', 'c');
    await at(b, clock, T0 + 100);
    await at(b, clock, T0 + 104);
    await waitFor(() => dlqDepth(b) === 1, 'the short one');
    await at(b, clock, T0 + 2000);
    await at(b, clock, T0 + 2004);
    await waitFor(() => dlqDepth(b) === 3, 'the rest by the queue ttl');
    await sleep(30);
    expect(dlqDepth(b)).toBe(3);
    expect((await collect(b, 'dlq', 3)).map((m) => m.body.toString())).toEqual(['b', 'a', 'c']);
  });
});

async function collect(b: Broker, queue: string, n: number): Promise<Message[]> {
  const inbox = new Inbox();
  const c = await b.consume(queue, inbox.handler(), { group: `peek-${queue}` });
  await inbox.waitForCount(n);
  await c.close();
  return inbox.messages;
}
