// Semantics of flow control (prefetch, concurrency) and of subscribe() as an async iterator.
import { afterEach, describe, expect, it } from 'vitest';
import type { Message } from '../../src/broker/delivery.js';
import { BrokerHarness, Inbox, range, sendAll, sleep, waitFor, waitForCommitted, withTimeout } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

describe('flow control', () => {
  it('prefetch bounds the unacked deliveries a consumer holds', async () => {
    // Proves prefetch 3 with manual ack: with no acks exactly 3 of 12 arrive and stay; acking one at a time never lets the unacked count exceed 3, and all 12 get through.
    const b = await h.openBroker();
    await b.assertQueue('q');
    await sendAll(b, 'q', range(12));
    let unacked = 0;
    let maxUnacked = 0;
    const pending: Message[] = [];
    const inbox = new Inbox();
    await b.consume('q', inbox.handler('c', (m) => {
      unacked++;
      maxUnacked = Math.max(maxUnacked, unacked);
      pending.push(m);
    }), { group: 'g', ack: 'manual', prefetch: 3 });
    await inbox.waitForCount(3);
    await inbox.expectStays(3, 150);
    expect(b.queueStats('q').groups.g!.inFlight).toBe(3);
    let acked = 0;
    while (acked < 12) {
      await waitFor(() => pending.length > 0, `a delivery to ack (acked ${acked})`);
      const m = pending.shift() as Message;
      unacked--; // credit returns when ack() is called, so count it released first
      const st = b.queueStats('q').groups.g!.inFlight;
      expect(st).toBeLessThanOrEqual(3);
      expect(await m.ack()).toBe('acked');
      acked++;
      if (acked % 3 === 0) await sleep(5);
    }
    expect(maxUnacked).toBe(3);
    expect(inbox.bodies()).toEqual(range(12));
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 12, inFlight: 0 });
  });

  it('concurrency bounds the handlers running at once (and is capped by prefetch)', async () => {
    // Proves concurrency: slow async handlers; concurrency 3 peaks at exactly 3 running, the default peaks at 1, and concurrency 5 with prefetch 2 peaks at 2; every message is handled once.
    const b = await h.openBroker();
    await b.assertQueue('q');
    await sendAll(b, 'q', range(15));
    const peak = async (group: string, opts: { concurrency?: number; prefetch?: number }) => {
      let running = 0;
      let max = 0;
      const inbox = new Inbox();
      const c = await b.consume('q', inbox.handler(group, async () => {
        running++;
        max = Math.max(max, running);
        await sleep(15);
        running--;
      }), { group, ...opts });
      await inbox.waitForCount(15);
      await waitForCommitted(b, 'q', group, 15);
      await c.close();
      expect(inbox.bodies()).toHaveLength(15);
      expect(new Set(inbox.bodies()).size).toBe(15);
      return max;
    };
    expect(await peak('c3', { concurrency: 3, prefetch: 10 })).toBe(3);
    expect(await peak('c1', { prefetch: 10 })).toBe(1);
    expect(await peak('capped', { concurrency: 5, prefetch: 2 })).toBe(2);
  });
});

describe('subscribe', () => {
  it('for-await with manual ack reads the queue; breaking out closes the subscription', async () => {
    // Proves the iterator: 5 messages come in order, each ack() → 'acked', the group commits 5, and after break the group has no consumers left.
    const b = await h.openBroker();
    await b.assertQueue('q');
    await sendAll(b, 'q', range(5));
    const got: string[] = [];
    await withTimeout((async () => {
      for await (const msg of b.subscribe('q', { group: 's' })) {
        got.push(msg.body.toString());
        expect(await msg.ack()).toBe('acked');
        if (got.length === 5) break;
      }
    })(), 5000, 'the for-await loop');
    expect(got).toEqual(range(5));
    expect(b.queueStats('q').groups.s).toMatchObject({ committed: 5, consumers: 0, inFlight: 0 });
  });

  it('breaking out with unacked messages hands them to the next subscriber, marked redelivered', async () => {
    // Proves break hands back: sub1 acks m0,m1 and breaks while holding m2 unacked; sub2 of the same group gets m2..m4 (m2 redelivered), never m0/m1.
    const b = await h.openBroker();
    await b.assertQueue('q');
    await sendAll(b, 'q', range(5));
    const first: string[] = [];
    await withTimeout((async () => {
      for await (const msg of b.subscribe('q', { group: 's', prefetch: 10 })) {
        first.push(msg.body.toString());
        if (first.length === 3) break;
        await msg.ack();
      }
    })(), 5000, 'the first loop');
    expect(first).toEqual(['m0', 'm1', 'm2']);
    await waitForCommitted(b, 'q', 's', 2);
    const second: Message[] = [];
    await withTimeout((async () => {
      for await (const msg of b.subscribe('q', { group: 's' })) {
        second.push(msg);
        await msg.ack();
        if (second.length === 3) break;
      }
    })(), 5000, 'the second loop');
    expect(second.map((m) => m.body.toString())).toEqual(['m2', 'm3', 'm4']);
    expect(second[0]!.redelivered).toBe(true);
    expect(second[0]!.deliveryCount).toBe(2);
    expect(b.queueStats('q').groups.s).toMatchObject({ committed: 5, lag: 0, consumers: 0 });
  });

  it("ack 'auto': a message is acked when the loop asks for the next; one whose loop body throws is not acked", async () => {
    // Proves the documented auto-ack point: m0,m1 are acked by asking for the next; the loop body throws while holding m2, so m2 must come back (redelivered) to the next subscriber.
    const b = await h.openBroker();
    await b.assertQueue('q');
    await sendAll(b, 'q', range(4));
    const seen: string[] = [];
    const loop = (async () => {
      for await (const msg of b.subscribe('q', { group: 'a', ack: 'auto' })) {
        seen.push(msg.body.toString());
        if (seen.length === 3) throw new Error('processing m2 failed');
      }
    })();
    await expect(withTimeout(loop, 5000, 'the auto loop')).rejects.toThrow('processing m2 failed');
    expect(seen).toEqual(['m0', 'm1', 'm2']);
    await waitForCommitted(b, 'q', 'a', 2);
    const next: Message[] = [];
    await withTimeout((async () => {
      for await (const msg of b.subscribe('q', { group: 'a', ack: 'manual' })) {
        next.push(msg);
        await msg.ack();
        if (msg.body.toString() === 'm3') break;
      }
    })(), 5000, 'the follow-up loop');
    expect(next.map((m) => m.body.toString())).toEqual(['m2', 'm3']);
    expect(next[0]!.redelivered).toBe(true);
  });
});
