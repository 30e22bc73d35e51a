// Semantics of consumer groups: pub/sub across groups, a work queue inside one, where a new group
// starts, and durable out-of-order acks.
import { afterEach, describe, expect, it } from 'vitest';
import type { Message } from '../../src/broker/delivery.js';
import { BrokerHarness, Inbox, fakeClock, range, sendAll, sleep, waitForCommitted } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

describe('consumer groups', () => {
  it('two groups each receive every message, in order', async () => {
    // Proves pub/sub across groups: 20 messages, groups g1 and g2 each consume all 20 in publish order; lag is 0 for both afterwards.
    const b = await h.openBroker();
    await b.assertQueue('q');
    const bodies = range(20);
    await sendAll(b, 'q', bodies);
    const in1 = new Inbox();
    const in2 = new Inbox();
    await b.consume('q', in1.handler(), { group: 'g1' });
    await b.consume('q', in2.handler(), { group: 'g2' });
    await in1.waitForCount(20);
    await in2.waitForCount(20);
    expect(in1.bodies()).toEqual(bodies);
    expect(in2.bodies()).toEqual(bodies);
    await b.sendToQueue('q', 'late');
    await in1.waitForCount(21);
    await in2.waitForCount(21);
    await in1.expectStays(21, 50);
    const again = await h.restart(b);
    const st = again.queueStats('q');
    expect(st.groups.g1).toMatchObject({ committed: 21, lag: 0 });
    expect(st.groups.g2).toMatchObject({ committed: 21, lag: 0 });
  });

  it('consumers in one group split the messages: none goes to two of them', async () => {
    // Proves the work-queue split: two consumers in group 'w' (prefetch 2, slow handlers) get 60 messages between them, each exactly once overall, both get some.
    const b = await h.openBroker();
    await b.assertQueue('q');
    const inbox = new Inbox();
    const slow = async () => sleep(2);
    await b.consume('q', inbox.handler('A', slow), { group: 'w', prefetch: 2 });
    await b.consume('q', inbox.handler('B', slow), { group: 'w', prefetch: 2 });
    const bodies = range(60);
    await Promise.all(bodies.map((x) => b.sendToQueue('q', x)));
    await inbox.waitForCount(60);
    await inbox.expectStays(60, 100);
    const a = inbox.bodies('A');
    const bb = inbox.bodies('B');
    expect(a.length).toBeGreaterThan(0);
    expect(bb.length).toBeGreaterThan(0);
    expect(a.filter((x) => bb.includes(x))).toEqual([]);
    expect([...a, ...bb].sort()).toEqual([...bodies].sort());
    expect(inbox.messages.every((m) => m.deliveryCount === 1)).toBe(true);
    await waitForCommitted(b, 'q', 'w', 60);
  });

  it("a new group starts at 'earliest' by default, or at 'latest', an offset, or a time", async () => {
    // Proves each `from`: with 5 old messages (t0) and 3 newer ones (t1), then 2 published after the groups exist, each group receives exactly its expected bodies.
    const clock = fakeClock(1_000_000);
    const b = await h.openBroker({ clock });
    await b.assertQueue('q');
    await sendAll(b, 'q', range(5, 'old'));
    clock.advance(1000);
    const t1 = clock.now();
    await sendAll(b, 'q', range(3, 'mid'));
    clock.advance(1000);
    const groups: [string, Parameters<typeof b.consume>[2]][] = [
      ['dflt', {}],
      ['early', { from: 'earliest' }],
      ['late', { from: 'latest' }],
      ['off6', { from: 6 }],
      ['off0', { from: 0 }],
      ['offbig', { from: 1000 }],
      ['time', { from: new Date(t1) }],
      ['timefuture', { from: new Date(t1 + 10_000_000) }],
    ];
    const inboxes = new Map<string, Inbox>();
    for (const [g, opts] of groups) {
      const inbox = new Inbox();
      inboxes.set(g, inbox);
      await b.consume('q', inbox.handler(g), { ...opts, group: g });
    }
    await sendAll(b, 'q', ['new0', 'new1']);
    const all = [...range(5, 'old'), ...range(3, 'mid'), 'new0', 'new1'];
    const expected: Record<string, string[]> = {
      dflt: all,
      early: all,
      late: ['new0', 'new1'],
      off6: ['mid1', 'mid2', 'new0', 'new1'],
      off0: all,
      offbig: ['new0', 'new1'],
      time: ['mid0', 'mid1', 'mid2', 'new0', 'new1'],
      timefuture: ['new0', 'new1'],
    };
    for (const [g, want] of Object.entries(expected)) await inboxes.get(g)!.waitForCount(want.length);
    await sleep(100);
    for (const [g, want] of Object.entries(expected)) expect(inboxes.get(g)!.bodies(), `group ${g}`).toEqual(want);
  });

  it('`from` only positions a new group: an existing group resumes at its committed offset', async () => {
    // Proves an existing group ignores `from`: group g acks 3 messages, closes; reconsuming with from 'earliest' and from 0 yields only the 2 newer messages.
    const b = await h.openBroker();
    await b.assertQueue('q');
    await sendAll(b, 'q', range(3));
    const first = new Inbox();
    const c = await b.consume('q', first.handler(), { group: 'g' });
    await first.waitForCount(3);
    await waitForCommitted(b, 'q', 'g', 3);
    await c.close();
    await sendAll(b, 'q', ['n0', 'n1']);
    const second = new Inbox();
    await b.consume('q', second.handler(), { group: 'g', from: 0 });
    await second.waitForCount(2);
    await second.expectStays(2, 80);
    expect(second.bodies()).toEqual(['n0', 'n1']);
  });

  it('out-of-order manual acks persist across restarts: committed offset plus individual acks', async () => {
    // Proves durable ack state: of offsets 0..5 ack 1,3,5, restart → only 0,2,4 come back; ack 0 (committed 2), restart → only 2,4 come back.
    let b = await h.openBroker();
    await b.assertQueue('q');
    await sendAll(b, 'q', range(6));
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'g', ack: 'manual', prefetch: 10 });
    await inbox.waitForCount(6);
    const byOffset = new Map<number, Message>(inbox.messages.map((m) => [m.offset, m]));
    expect([...byOffset.keys()].sort()).toEqual([0, 1, 2, 3, 4, 5]);
    for (const o of [5, 1, 3]) expect(await byOffset.get(o)!.ack()).toBe('acked');
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 0, lag: 3 });

    b = await h.restart(b);
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 0, lag: 3 });
    const second = new Inbox();
    await b.consume('q', second.handler(), { group: 'g', ack: 'manual', prefetch: 10 });
    await second.waitForCount(3);
    await second.expectStays(3, 100);
    expect(second.messages.map((m) => m.offset)).toEqual([0, 2, 4]);
    expect(second.bodies()).toEqual(['m0', 'm2', 'm4']);
    expect(await second.messages[0]!.ack()).toBe('acked');
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 2, lag: 2 });

    b = await h.restart(b);
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 2, lag: 2 });
    const third = new Inbox();
    await b.consume('q', third.handler(), { group: 'g', ack: 'manual', prefetch: 10 });
    await third.waitForCount(2);
    await third.expectStays(2, 100);
    expect(third.messages.map((m) => m.offset)).toEqual([2, 4]);
    for (const m of third.messages) expect(await m.ack()).toBe('acked');
    expect(b.queueStats('q').groups.g).toMatchObject({ committed: 6, lag: 0 });
  });
});

