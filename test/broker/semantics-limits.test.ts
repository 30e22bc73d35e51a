// Semantics of queue limits (maxLength with both overflow modes, maxBytes) and of retention.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Message } from '../../src/broker/delivery.js';
import { BrokerHarness, Inbox, expectCode, range, sendAll, sleep, waitFor, waitForCommitted } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

describe('maxLength', () => {
  it("overflow 'reject-publish' refuses with SPOOL_ERR_QUEUE_FULL and stores nothing; room frees as the group acks", async () => {
    // Proves reject-publish: 3 fit, the 4th (and via an exchange) fails QUEUE_FULL (retriable) with endOffset unchanged; after one ack the same id is accepted (not a duplicate).
    const b = await h.openBroker();
    await b.assertQueue('q', { maxLength: 3, overflow: 'reject-publish' });
    await b.assertExchange('fx', 'fanout');
    await b.bindQueue('q', 'fx');
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'g', ack: 'manual' });
    await sendAll(b, 'q', range(3));
    const err = await expectCode(() => b.sendToQueue('q', 'over', { id: 'r' }), 'SPOOL_ERR_QUEUE_FULL');
    expect(err.retriable).toBe(true);
    await expectCode(() => b.publish('fx', '', 'over2'), 'SPOOL_ERR_QUEUE_FULL');
    expect(b.queueStats('q').endOffset).toBe(3);
    expect(b.stats().published).toBe(3);
    await inbox.waitForCount(3);
    expect(await inbox.messages[0]!.ack()).toBe('acked');
    const retry = await b.sendToQueue('q', 'over', { id: 'r' });
    expect(retry.status).toBe('confirmed');
    expect(b.queueStats('q').endOffset).toBe(4);
    await expectCode(() => b.sendToQueue('q', 'over3'), 'SPOOL_ERR_QUEUE_FULL');
    await inbox.waitForCount(4);
    expect(inbox.bodies()).toEqual(['m0', 'm1', 'm2', 'over']);
  });

  it("overflow 'reject-publish' holds under a burst: concurrent publishes and batches never overshoot maxLength or maxBytes", async () => {
    // Proves appends in flight count: 40 concurrent sendToQueue + 2 concurrent batches of 10 to maxLength 7 store exactly 7; the same with maxBytes 500 and 100 B bodies stores exactly 5.
    const b = await h.openBroker();
    await b.assertQueue('len', { maxLength: 7, overflow: 'reject-publish' });
    const batch = (tag: string) => Array.from({ length: 10 }, (_, i) => ({ routingKey: 'len', body: `${tag}${i}` }));
    const results = await Promise.allSettled([
      ...Array.from({ length: 40 }, (_, i) => b.sendToQueue('len', `m${i}`)),
      b.publishBatch('', batch('a')),
      b.publishBatch('', batch('b')),
    ]);
    const refused = results.filter((r) => r.status === 'rejected');
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'SPOOL_ERR_QUEUE_FULL' });
    expect(b.queueStats('len').endOffset).toBe(7);

    await b.assertQueue('bytes', { maxBytes: 500, overflow: 'reject-publish' });
    const body = Buffer.alloc(100, 1);
    await Promise.allSettled(Array.from({ length: 30 }, () => b.sendToQueue('bytes', body)));
    expect(b.queueStats('bytes').endOffset).toBe(5);
  });

  it("overflow 'drop-head' (the default): a new group sees only the newest maxLength messages", async () => {
    // Proves drop-head with no group yet: 10 published to maxLength 3, all confirmed; a new group (from earliest) gets m7..m9, also after a restart.
    let b = await h.openBroker();
    await b.assertQueue('q', { maxLength: 3 });
    for (const x of range(10)) expect((await b.sendToQueue('q', x)).status).toBe('confirmed');
    expect(b.queueStats('q').depth).toBe(3);
    b = await h.restart(b);
    expect(b.queueStats('q').depth).toBe(3);
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'fresh' });
    await inbox.waitForCount(3);
    await inbox.expectStays(3, 100);
    expect(inbox.bodies()).toEqual(['m7', 'm8', 'm9']);
  });

  it("overflow 'drop-head' with an existing group: the oldest are dropped for it with 'drop' events (reason 'maxlen')", async () => {
    // Proves drop-head for a group that exists but lags: 5 published to maxLength 3 → 'drop' for offsets 0 and 1 (group g, ids), and g then receives only m2..m4.
    const b = await h.openBroker();
    await b.assertQueue('q', { maxLength: 3 });
    const idle = await b.consume('q', () => {}, { group: 'g' });
    await idle.close();
    const drops: { queue: string; group: string; id: string; offset: number; reason: string }[] = [];
    b.on('drop', (e) => drops.push(e));
    const ids = await sendAll(b, 'q', range(5));
    await waitFor(() => drops.length >= 2, "two 'drop' events");
    await sleep(50);
    expect(drops.sort((x, y) => x.offset - y.offset)).toEqual([
      { queue: 'q', group: 'g', id: ids[0], offset: 0, reason: 'maxlen' },
      { queue: 'q', group: 'g', id: ids[1], offset: 1, reason: 'maxlen' },
    ]);
    expect(b.stats().dropped).toBe(2);
    expect(b.queueStats('q').depth).toBe(3);
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'g' });
    await inbox.waitForCount(3);
    await inbox.expectStays(3, 100);
    expect(inbox.bodies()).toEqual(['m2', 'm3', 'm4']);
  });

  it("overflow 'drop-head': a group created after others exist also sees only the newest maxLength", async () => {
    // Proves drop-head holds for every new group: with group 'old' existing, 10 published to maxLength 3; a new group 'fresh' from earliest must get only m7..m9 (before and after a restart).
    let b = await h.openBroker();
    await b.assertQueue('q', { maxLength: 3 });
    const idle = await b.consume('q', () => {}, { group: 'old' });
    await idle.close();
    await sendAll(b, 'q', range(10));
    const inbox = new Inbox();
    const c = await b.consume('q', inbox.handler(), { group: 'fresh' });
    await inbox.waitForCount(3);
    await inbox.expectStays(inbox.got.length, 100);
    await c.close();
    expect(inbox.bodies(), 'a new group on a drop-head queue at maxLength 3').toEqual(['m7', 'm8', 'm9']);
    b = await h.restart(b);
    const after = new Inbox();
    await b.consume('q', after.handler(), { group: 'fresh2' });
    await after.waitForCount(3);
    await after.expectStays(after.got.length, 100);
    expect(after.bodies(), 'a new group after restart').toEqual(['m7', 'm8', 'm9']);
  });
});

describe('maxBytes', () => {
  it("maxBytes with overflow 'reject-publish' refuses with SPOOL_ERR_QUEUE_FULL once the queue holds maxBytes", async () => {
    // Proves maxBytes is enforced (errors.ts: "A queue at maxLength/maxBytes with overflow 'reject-publish' refused the message"): 100-byte bodies into maxBytes 1000 must be refused before the 11th fits.
    const b = await h.openBroker();
    await b.assertQueue('q', { maxBytes: 1000, overflow: 'reject-publish' });
    let accepted = 0;
    let refused = 0;
    for (let i = 0; i < 20; i++) {
      try {
        await b.sendToQueue('q', Buffer.alloc(100, 65 + (i % 26)));
        accepted++;
      } catch (err) {
        expect((err as { code?: string }).code).toBe('SPOOL_ERR_QUEUE_FULL');
        refused++;
      }
    }
    expect(accepted, 'messages accepted into a 1000-byte queue').toBeLessThanOrEqual(10);
    expect(refused).toBeGreaterThan(0);
    expect(b.queueStats('q').endOffset).toBe(accepted);
  });
});

describe('retention', () => {
  it('segments every group has acked past are deleted (startOffset advances); a lagging group holds them', async () => {
    // Proves retention is bounded by the slowest group: 4,200 messages in 16 KiB segments; g1 acks all and nothing is deleted while g2 lags; once g2 acks all, startOffset advances and segment files go.
    const b = await h.openBroker({ segmentBytesMax: 16 * 1024 });
    await b.assertQueue('q');
    const idle = await b.consume('q', () => {}, { group: 'g2' });
    await idle.close();
    const N = 4200;
    const body = 'x'.repeat(200);
    for (let i = 0; i < N; i += 100) {
      await Promise.all(Array.from({ length: Math.min(100, N - i) }, () => b.sendToQueue('q', body)));
    }
    const segDir = path.join(b.dataDir, 'queues', 'q', 'messages');
    const segments = () => fs.readdirSync(segDir).filter((n) => n.endsWith('.log')).length;
    const before = segments();
    expect(before).toBeGreaterThan(10);
    expect(b.queueStats('q').startOffset).toBe(0);

    let c = await b.consume('q', () => {}, { group: 'g1', prefetch: 1000 });
    await waitForCommitted(b, 'q', 'g1', N, 20_000);
    await sleep(100);
    expect(b.queueStats('q').startOffset, 'nothing deleted while g2 has acked nothing').toBe(0);
    expect(segments()).toBe(before);
    await c.close();

    c = await b.consume('q', () => {}, { group: 'g2', prefetch: 1000 });
    await waitForCommitted(b, 'q', 'g2', N, 20_000);
    await waitFor(() => b.queueStats('q').startOffset > 0, 'startOffset to advance', 5000);
    const st = b.queueStats('q');
    expect(st.startOffset).toBeLessThanOrEqual(N);
    expect(st.endOffset).toBe(N);
    expect(segments()).toBeLessThan(before);
    await c.close();
    // The queue still works after deleting its head: a new message reaches a group.
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'g1' });
    await b.sendToQueue('q', 'after');
    await inbox.waitForCount(1);
    expect((inbox.messages[0] as Message).body.toString()).toBe('after');
  });
});
