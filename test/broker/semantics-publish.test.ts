// Semantics of publishing: confirms and durability, returns of unroutable messages, alternate
// exchanges, generated ids, and the publisher-id dedupe window.
import { afterEach, describe, expect, it } from 'vitest';
import type { Message } from '../../src/broker/delivery.js';
import { BrokerHarness, Inbox, fakeClock } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

describe('publisher confirms', () => {
  it('a confirmed publish is durable: it is read back after close and reopen', async () => {
    // Proves 'confirmed' means stored: publish with id and headers, restart the broker, consume and compare every field.
    let b = await h.openBroker();
    await b.assertExchange('orders', 'topic');
    await b.assertQueue('billing');
    await b.bindQueue('billing', 'orders', 'order.*');
    const r = await b.publish('orders', 'order.created', JSON.stringify({ n: 1 }), { id: 'order-1', headers: { tenant: 'acme', n: 2, ok: true, none: null } });
    expect(r).toEqual({ id: 'order-1', status: 'confirmed', queues: ['billing'] });
    const bin = await b.publish('orders', 'order.binary', Buffer.from([0, 1, 2, 255]));
    expect(bin.status).toBe('confirmed');
    expect(b.stats().published).toBe(2);

    b = await h.restart(b);
    expect(b.queueStats('billing').endOffset).toBe(2);
    const inbox = new Inbox();
    await b.consume('billing', inbox.handler(), { group: 'g' });
    await inbox.waitForCount(2);
    const [m0, m1] = inbox.messages as [Message, Message];
    expect(m0.id).toBe('order-1');
    expect(m0.json()).toEqual({ n: 1 });
    expect(m0.headers).toEqual({ tenant: 'acme', n: 2, ok: true, none: null });
    expect(m0.exchange).toBe('orders');
    expect(m0.routingKey).toBe('order.created');
    expect(m0.queue).toBe('billing');
    expect(m0.offset).toBe(0);
    expect(m0.deliveryCount).toBe(1);
    expect(m0.redelivered).toBe(false);
    expect(m1.id).toBe(bin.id);
    expect([...m1.body]).toEqual([0, 1, 2, 255]);
    expect(m1.offset).toBe(1);
  });
});

describe('publisher returns', () => {
  it("mandatory + unroutable → status 'unroutable', a 'return' event with the message, nothing stored", async () => {
    // Proves mandatory returns: publish to a key with no binding; check the result, the 'return' and 'unroutable' events, stats and that no queue grew.
    const b = await h.openBroker();
    await b.assertExchange('dx', 'direct');
    await b.assertQueue('q');
    await b.bindQueue('q', 'dx', 'k');
    const returns: unknown[] = [];
    const unroutables: unknown[] = [];
    b.on('return', (e) => returns.push(e));
    b.on('unroutable', (e) => unroutables.push(e));
    const r = await b.publish('dx', 'nobody', 'body', { mandatory: true, id: 'm-1', headers: { h: 'v' } });
    expect(r).toEqual({ id: 'm-1', status: 'unroutable', queues: [] });
    expect(returns).toHaveLength(1);
    const ret = returns[0] as { id: string; exchange: string; routingKey: string; body: unknown; headers: unknown };
    expect(ret).toMatchObject({ id: 'm-1', exchange: 'dx', routingKey: 'nobody', headers: { h: 'v' } });
    expect(String(ret.body)).toBe('body');
    expect(unroutables).toEqual([{ id: 'm-1', exchange: 'dx', routingKey: 'nobody' }]);
    expect(b.stats().unroutable).toBe(1);
    expect(b.stats().published).toBe(0);
    expect(b.queueStats('q').endOffset).toBe(0);
  });

  it("non-mandatory + unroutable → counted in stats().unroutable and an 'unroutable' event, no 'return'", async () => {
    // Proves the non-mandatory path: two unroutable publishes (one on the default exchange) raise 'unroutable' twice, 'return' never, and the counter is 2.
    const b = await h.openBroker();
    await b.assertExchange('tx', 'topic');
    const returns: unknown[] = [];
    const unroutables: { id: string; exchange: string; routingKey: string }[] = [];
    b.on('return', (e) => returns.push(e));
    b.on('unroutable', (e) => unroutables.push(e));
    const r1 = await b.publish('tx', 'a.b', 'x');
    const r2 = await b.publish('', 'no-such-queue', 'y');
    expect(r1.status).toBe('unroutable');
    expect(r2.status).toBe('unroutable');
    expect(returns).toEqual([]);
    expect(unroutables).toEqual([
      { id: r1.id, exchange: 'tx', routingKey: 'a.b' },
      { id: r2.id, exchange: '', routingKey: 'no-such-queue' },
    ]);
    expect(b.stats().unroutable).toBe(2);
  });

  it('an alternate exchange receives what its exchange cannot route', async () => {
    // Proves alternateExchange: a key with no binding on 'main' lands in the AE's queue (confirmed, no unroutable event); a routable key does not reach the AE.
    const b = await h.openBroker();
    await b.assertExchange('ae', 'fanout');
    await b.assertExchange('main', 'direct', { alternateExchange: 'ae' });
    await b.assertQueue('normal');
    await b.assertQueue('unrouted');
    await b.bindQueue('normal', 'main', 'ok');
    await b.bindQueue('unrouted', 'ae');
    let unroutable = 0;
    let returned = 0;
    b.on('unroutable', () => unroutable++);
    b.on('return', () => returned++);
    const lost = await b.publish('main', 'nomatch', 'lost', { mandatory: true });
    expect(lost).toMatchObject({ status: 'confirmed', queues: ['unrouted'] });
    const ok = await b.publish('main', 'ok', 'fine');
    expect(ok).toMatchObject({ status: 'confirmed', queues: ['normal'] });
    expect(unroutable).toBe(0);
    expect(returned).toBe(0);
    expect(b.stats().unroutable).toBe(0);
    expect(b.queueStats('unrouted').endOffset).toBe(1);
    expect(b.queueStats('normal').endOffset).toBe(1);
    const inbox = new Inbox();
    await b.consume('unrouted', inbox.handler(), { group: 'g' });
    await inbox.waitForCount(1);
    expect(inbox.messages[0]!.body.toString()).toBe('lost');
    expect(inbox.messages[0]!.exchange).toBe('main');
    expect(inbox.messages[0]!.routingKey).toBe('nomatch');
  });
});

describe('message ids', () => {
  it('generated ids are unique and sort in publish order', async () => {
    // Proves generated ids are unique and lexicographically time-sortable: 300 publishes (awaited and fired in bursts), ids sorted as strings equal publish order, and consumers see the same ids.
    const b = await h.openBroker();
    await b.assertQueue('q');
    const ids: string[] = [];
    for (let i = 0; i < 100; i++) ids.push((await b.sendToQueue('q', `s${i}`)).id);
    for (let burst = 0; burst < 4; burst++) {
      const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => b.sendToQueue('q', `b${burst}-${i}`)));
      ids.push(...rs.map((r) => r.id));
    }
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
    for (const id of ids) expect(id.length).toBeGreaterThan(0);
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'g', prefetch: 500 });
    await inbox.waitForCount(ids.length);
    expect(inbox.messages.map((m) => m.id).sort()).toEqual(ids);
  });
});

describe('dedupe by publisher id', () => {
  it("the same id within the window → 'duplicate' and nothing is appended", async () => {
    // Proves dedupe: republishing id 'x' (even with another body) returns 'duplicate', endOffset stays, stats count it; a different id is stored; the consumer sees the first body only.
    const b = await h.openBroker();
    await b.assertQueue('q');
    expect((await b.sendToQueue('q', 'first', { id: 'x' })).status).toBe('confirmed');
    const end = b.queueStats('q').endOffset;
    expect(end).toBe(1);
    const dup = await b.sendToQueue('q', 'second', { id: 'x' });
    expect(dup).toEqual({ id: 'x', status: 'duplicate', queues: ['q'] });
    expect((await b.publish('', 'q', 'third', { id: 'x' })).status).toBe('duplicate');
    expect(b.queueStats('q').endOffset).toBe(end);
    expect(b.stats()).toMatchObject({ published: 1, duplicates: 2 });
    expect((await b.sendToQueue('q', 'other', { id: 'y' })).status).toBe('confirmed');
    expect(b.queueStats('q').endOffset).toBe(2);
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'g' });
    await inbox.waitForCount(2);
    await inbox.expectStays(2, 50);
    expect(inbox.bodies()).toEqual(['first', 'other']);
  });

  it('after the window has passed the same id is accepted again', async () => {
    // Proves the window bound with a fake clock (dedupeWindowMs 50): at +49 ms still a duplicate, at +60 ms confirmed and appended, then a duplicate again.
    const clock = fakeClock();
    const b = await h.openBroker({ clock });
    await b.assertQueue('q', { dedupeWindowMs: 50 });
    expect((await b.sendToQueue('q', 'a', { id: 'x' })).status).toBe('confirmed');
    clock.advance(49);
    expect((await b.sendToQueue('q', 'b', { id: 'x' })).status).toBe('duplicate');
    expect(b.queueStats('q').endOffset).toBe(1);
    clock.advance(11);
    expect((await b.sendToQueue('q', 'c', { id: 'x' })).status).toBe('confirmed');
    expect(b.queueStats('q').endOffset).toBe(2);
    clock.advance(10);
    expect((await b.sendToQueue('q', 'd', { id: 'x' })).status).toBe('duplicate');
    expect(b.queueStats('q').endOffset).toBe(2);
  });

  it('generated ids are never deduped against each other', async () => {
    // Proves only caller-chosen ids enter the window: publishing the same body without ids twice stores two messages.
    const b = await h.openBroker();
    await b.assertQueue('q');
    expect((await b.sendToQueue('q', 'same')).status).toBe('confirmed');
    expect((await b.sendToQueue('q', 'same')).status).toBe('confirmed');
    expect(b.queueStats('q').endOffset).toBe(2);
  });

  it('the dedupe window survives a restart (and still expires after it)', async () => {
    // Proves the window is rebuilt from the log: publish id, restart within the window → duplicate with endOffset unchanged; restart after the window → confirmed.
    const clock = fakeClock();
    let b = await h.openBroker({ clock });
    await b.assertQueue('q', { dedupeWindowMs: 1000 });
    await b.assertQueue('dflt');
    expect((await b.sendToQueue('q', 'a', { id: 'x' })).status).toBe('confirmed');
    expect((await b.sendToQueue('dflt', 'a', { id: 'x' })).status).toBe('confirmed');
    clock.advance(500);
    b = await h.restart(b, { clock });
    expect((await b.sendToQueue('q', 'b', { id: 'x' })).status).toBe('duplicate');
    expect((await b.sendToQueue('dflt', 'b', { id: 'x' })).status).toBe('duplicate');
    expect(b.queueStats('q').endOffset).toBe(1);
    expect(b.queueStats('dflt').endOffset).toBe(1);
    clock.advance(1500);
    b = await h.restart(b, { clock });
    expect((await b.sendToQueue('q', 'c', { id: 'x' })).status).toBe('confirmed');
    expect(b.queueStats('q').endOffset).toBe(2);
    // The default window (2 minutes) has not passed for 'dflt'.
    expect((await b.sendToQueue('dflt', 'c', { id: 'x' })).status).toBe('duplicate');
  });

  it("concurrent publishes of one id → exactly one 'confirmed'", async () => {
    // Proves the claim happens before the append: 25 concurrent publishes of id 'c' to one queue, and 10 to a fanout of two queues, each yield one 'confirmed' and one stored copy per queue.
    const b = await h.openBroker();
    await b.assertQueue('q');
    const rs = await Promise.all(Array.from({ length: 25 }, (_, i) => b.sendToQueue('q', `v${i}`, { id: 'c' })));
    expect(rs.filter((r) => r.status === 'confirmed')).toHaveLength(1);
    expect(rs.filter((r) => r.status === 'duplicate')).toHaveLength(24);
    expect(b.queueStats('q').endOffset).toBe(1);

    await b.assertExchange('fx', 'fanout');
    await b.assertQueue('f1');
    await b.assertQueue('f2');
    await b.bindQueue('f1', 'fx');
    await b.bindQueue('f2', 'fx');
    const fs2 = await Promise.all(Array.from({ length: 10 }, (_, i) => b.publish('fx', '', `w${i}`, { id: 'fan' })));
    expect(fs2.filter((r) => r.status === 'confirmed')).toHaveLength(1);
    expect(b.queueStats('f1').endOffset).toBe(1);
    expect(b.queueStats('f2').endOffset).toBe(1);
  });
});
