// Semantics of ack modes ('none', 'auto', 'manual'), redelivery on consumer close, and lock timeouts.
import { afterEach, describe, expect, it } from 'vitest';
import type { Message } from '../../src/broker/delivery.js';
import { BrokerHarness, Inbox, range, sendAll, waitFor, waitForCommitted } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

describe('ack modes', () => {
  it("'none' is at most once: nothing is redelivered after close, even when the handler threw", async () => {
    // Proves ack 'none' acks on delivery: handlers throw (sync and async) for all 6 messages; after closing, another consumer of the group and a restart both receive nothing.
    let b = await h.openBroker();
    await b.assertQueue('q');
    await sendAll(b, 'q', range(6));
    const inbox = new Inbox();
    const c = await b.consume('q', inbox.handler('n', (m) => {
      if (m.offset % 2 === 0) throw new Error('sync boom');
      return Promise.reject(new Error('async boom'));
    }), { group: 'g', ack: 'none' });
    await inbox.waitForCount(6);
    await c.close();
    await waitForCommitted(b, 'q', 'g', 6);
    const after = new Inbox();
    const c2 = await b.consume('q', after.handler(), { group: 'g', ack: 'manual' });
    await after.expectStays(0, 150);
    await c2.close();
    b = await h.restart(b);
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 6, lag: 0 });
    const restarted = new Inbox();
    await b.consume('q', restarted.handler(), { group: 'g', ack: 'manual' });
    await restarted.expectStays(0, 100);
    expect(inbox.messages.every((m) => m.deliveryCount === 1)).toBe(true);
  });

  it("'auto' acks when the handler resolves and redelivers (redelivered, deliveryCount 2) when it throws", async () => {
    // Proves auto ack both ways: 'bad-async' rejects and 'bad-sync' throws on their first delivery; both come back once with redelivered true and deliveryCount 2, the good ones once; all end up committed and never return.
    let b = await h.openBroker();
    await b.assertQueue('q');
    await sendAll(b, 'q', ['ok1', 'bad-async', 'bad-sync', 'ok2']);
    const inbox = new Inbox();
    const c = await b.consume('q', inbox.handler('a', async (m) => {
      if (m.deliveryCount === 1 && m.body.toString() === 'bad-async') throw new Error('reject');
    }), { group: 'g' });
    // A sync-throwing handler on a second group.
    const inbox2 = new Inbox();
    const c2 = await b.consume('q', inbox2.handler('s', (m) => {
      if (m.deliveryCount === 1 && m.body.toString() === 'bad-sync') throw new Error('throw');
    }), { group: 'g2' });
    await inbox.waitForCount(5);
    await inbox2.waitForCount(5);
    await inbox.expectStays(5, 100);
    expect(inbox2.got).toHaveLength(5);
    for (const [box, bad] of [[inbox, 'bad-async'], [inbox2, 'bad-sync']] as const) {
      const deliveries = box.messages.filter((m) => m.body.toString() === bad);
      expect(deliveries.map((m) => [m.deliveryCount, m.redelivered])).toEqual([
        [1, false],
        [2, true],
      ]);
      const others = box.messages.filter((m) => m.body.toString() !== bad);
      expect(others.map((m) => m.body.toString()).sort()).toEqual(['bad-async', 'bad-sync', 'ok1', 'ok2'].filter((x) => x !== bad).sort());
      expect(others.every((m) => m.deliveryCount === 1 && !m.redelivered)).toBe(true);
    }
    await waitForCommitted(b, 'q', 'g', 4);
    await waitForCommitted(b, 'q', 'g2', 4);
    await c.close();
    await c2.close();
    b = await h.restart(b);
    const after = new Inbox();
    await b.consume('q', after.handler(), { group: 'g' });
    await b.consume('q', after.handler(), { group: 'g2' });
    await after.expectStays(0, 100);
  });

  it("'manual': ack, nack (requeue → redelivered), nack requeue:false → 'drop' event and gone", async () => {
    // Proves manual settlement: ack → 'acked' (twice → 'unknown'); nack → redelivered with deliveryCount 2; nack {requeue:false} → 'drop' {reason 'rejected'}, never redelivered, counted in stats().dropped.
    const b = await h.openBroker();
    await b.assertQueue('q');
    const ids = await sendAll(b, 'q', ['a', 'b', 'c']);
    const drops: unknown[] = [];
    b.on('drop', (e) => drops.push(e));
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'g', ack: 'manual' });
    await inbox.waitForCount(3);
    const [a, bm, c] = inbox.messages as [Message, Message, Message];
    expect(await a.ack()).toBe('acked');
    expect(await a.ack()).toBe('unknown');
    expect(await a.nack()).toBe('unknown');
    expect(await bm.nack()).toBe('nacked');
    expect(await bm.ack()).toBe('unknown');
    await inbox.waitForCount(4);
    const again = inbox.messages[3]!;
    expect(again.body.toString()).toBe('b');
    expect(again.offset).toBe(bm.offset);
    expect(again.deliveryCount).toBe(2);
    expect(again.redelivered).toBe(true);
    expect(await c.nack({ requeue: false })).toBe('nacked');
    expect(drops).toEqual([{ queue: 'q', group: 'g', id: ids[2], offset: 2, reason: 'rejected' }]);
    expect(await c.ack()).toBe('unknown');
    await inbox.expectStays(4, 150);
    expect(b.stats().dropped).toBe(1);
    expect(await again.nack()).toBe('nacked');
    await inbox.waitForCount(5);
    expect(inbox.messages[4]!.deliveryCount).toBe(3);
    expect(await inbox.messages[4]!.ack()).toBe('acked');
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 3, lag: 0, inFlight: 0 });
  });

  it('unacked deliveries of a closed consumer go to another consumer of the group, marked redelivered', async () => {
    // Proves close hands back: A holds 3 unacked messages (B idle meanwhile); closing A gives all 3 to B with redelivered true; A's late ack is 'unknown'.
    const b = await h.openBroker();
    await b.assertQueue('q');
    await sendAll(b, 'q', range(3));
    const inbox = new Inbox();
    const a = await b.consume('q', inbox.handler('A'), { group: 'g', ack: 'manual', prefetch: 10 });
    await inbox.waitForCount(3);
    await b.consume('q', inbox.handler('B'), { group: 'g', ack: 'manual', prefetch: 10 });
    await inbox.expectStays(3, 100);
    await a.close();
    await inbox.waitForCount(6);
    await inbox.expectStays(6, 50);
    const fromB = inbox.got.filter((g) => g.who === 'B').map((g) => g.msg);
    expect(fromB.map((m) => m.body.toString())).toEqual(['m0', 'm1', 'm2']);
    expect(fromB.every((m) => m.redelivered && m.deliveryCount === 2)).toBe(true);
    expect(await inbox.messages[0]!.ack()).toBe('unknown');
    for (const m of fromB) expect(await m.ack()).toBe('acked');
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 3, lag: 0 });
  });

  it("a lock timeout takes a delivery back: it is redelivered and the old delivery's late ack is 'unknown'", async () => {
    // Proves lock expiry (lockTimeoutMs 200, sweep 20 ms): an unacked delivery comes back after ≥200 ms with deliveryCount 2; acking the old delivery then returns 'unknown' and acks nothing; acking the new one commits.
    const b = await h.openBroker({ sweepIntervalMs: 20 });
    await b.assertQueue('q');
    const inbox = new Inbox();
    const at: number[] = [];
    await b.consume('q', inbox.handler('X', () => void at.push(Date.now())), { group: 'g', ack: 'manual', prefetch: 1, lockTimeoutMs: 200 });
    await b.sendToQueue('q', 'locked');
    await inbox.waitForCount(2, 3000);
    const [old, fresh] = inbox.messages as [Message, Message];
    expect(at[1]! - at[0]!).toBeGreaterThanOrEqual(190);
    expect([old.deliveryCount, old.redelivered]).toEqual([1, false]);
    expect([fresh.deliveryCount, fresh.redelivered]).toEqual([2, true]);
    expect(fresh.offset).toBe(old.offset);
    expect(await old.ack()).toBe('unknown');
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 0, inFlight: 1 });
    expect(await old.nack({ requeue: false })).toBe('unknown');
    expect(await fresh.ack()).toBe('acked');
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 1, lag: 0, inFlight: 0 });
    await inbox.expectStays(2, 300);
  });

  it('a lock timeout redelivers to another consumer of the group, not back to the one that sat on it', async () => {
    // Proves expiry moves work away from a stuck consumer: X (lockTimeoutMs 150) holds the only message unacked, Y (idle, with credit) joins; after the timeout the redelivery must reach Y, and X's late ack is 'unknown'.
    const b = await h.openBroker({ sweepIntervalMs: 20 });
    await b.assertQueue('q');
    const inbox = new Inbox();
    const acks: Promise<string>[] = [];
    const handler = (who: string) => inbox.handler(who, (m) => void (m.deliveryCount >= 2 && acks.push(m.ack())));
    await b.consume('q', handler('X'), { group: 'g', ack: 'manual', prefetch: 1, lockTimeoutMs: 150 });
    await b.sendToQueue('q', 'locked');
    await inbox.waitForCount(1);
    await b.consume('q', handler('Y'), { group: 'g', ack: 'manual', prefetch: 1, lockTimeoutMs: 30_000 });
    await inbox.waitForCount(2, 3000);
    const [first, second] = inbox.got as [{ who: string; msg: Message }, { who: string; msg: Message }];
    expect(first.who).toBe('X');
    expect(second.msg.deliveryCount).toBe(2);
    expect(second.who, 'consumer that received the redelivery').toBe('Y');
    await waitFor(() => acks.length === 1, 'the redelivery to be acked');
    expect(await acks[0]).toBe('acked');
    expect(await first.msg.ack()).toBe('unknown');
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 1, lag: 0, inFlight: 0 });
  });
});
