// Semantics of publishBatch: per-message routing, results in order, one fdatasync per queue,
// confirms only after fsync, all-or-nothing validation, dedupe, delays, TTL and limits.
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type Storage, type StorageFile, nodeStorage } from '../../src/log/storage.js';
import type { Message } from '../../src/broker/delivery.js';
import { BrokerHarness, Inbox, expectCode, fakeClock, waitFor } from '../support/broker-helpers.js';
import { at, openFake } from '../support/time-helpers.js';

const T0 = 1_700_000_000_000;

const h = new BrokerHarness();
afterEach(() => h.cleanup());

/**
 * Forwards to node:fs, counting fdatasyncs; while `hold` is set, every fdatasync waits for its
 * release. `failWrite(n, pathPart)` makes the n-th next write to a file whose path contains
 * `pathPart` fail with EIO.
 */
class GatedStorage {
  syncs = 0;
  private failing: { left: number; pathPart: string } | null = null;

  failWrite(n: number, pathPart: string): void {
    this.failing = { left: n, pathPart };
  }
  private gate: Promise<void> | null = null;
  private open: (() => void) | null = null;

  hold(): void {
    this.gate = new Promise((resolve) => (this.open = resolve));
  }

  release(): void {
    this.open?.();
    this.gate = null;
  }

  storage(): Storage {
    const self = this;
    const wrapFile = (f: StorageFile): StorageFile =>
      new Proxy(f, {
        get(target, prop) {
          if (prop === 'writev') {
            return async (buffers: readonly Buffer[], position: number) => {
              const f = self.failing;
              if (f !== null && target.path.includes(f.pathPart) && --f.left === 0) {
                self.failing = null;
                throw Object.assign(new Error('EIO: injected write failure'), { code: 'EIO' });
              }
              await target.writev(buffers, position);
            };
          }
          // Only the promise forms, which the injected failure and the gate apply to.
          if (prop === 'writevBlocking' || prop === 'syncBlocking') return undefined;
          if (prop === 'sync') {
            return async () => {
              if (self.gate !== null) await self.gate;
              await target.sync();
              self.syncs++;
            };
          }
          const v = Reflect.get(target, prop, target) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
    return new Proxy(nodeStorage, {
      get(target, prop) {
        if (prop === 'open') return async (p: string, mode: Parameters<Storage['open']>[1]) => wrapFile(await target.open(p, mode));
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }
}

async function topicBroker(storage?: Storage) {
  const b = await h.openBroker(storage === undefined ? { maxMessageBytes: 1024 } : { storage });
  await b.assertExchange('orders', 'topic');
  await b.assertQueue('billing');
  await b.assertQueue('audit');
  await b.bindQueue('billing', 'orders', 'order.*');
  await b.bindQueue('audit', 'orders', '#');
  return b;
}

describe('publishBatch', () => {
  it('routes each message by its own key and returns one result per message, in order', async () => {
    // Proves per-message routing and ordering: keys reach different queue sets; each queue holds its messages in batch order with every field.
    const b = await topicBroker();
    const results = await b.publishBatch('orders', [
      { routingKey: 'order.created', body: 'a', id: 'id-a', headers: { n: 1 } },
      { routingKey: 'shipment.sent', body: 'b', id: 'id-b' },
      { routingKey: 'order.paid', body: Buffer.from([1, 2, 3]) },
      { routingKey: 'order.created', body: new Uint8Array([9]), id: 'id-d' },
    ]);
    expect(results.map((r) => [r.id.length > 0, r.status, r.queues])).toEqual([
      [true, 'confirmed', ['billing', 'audit']],
      [true, 'confirmed', ['audit']],
      [true, 'confirmed', ['billing', 'audit']],
      [true, 'confirmed', ['billing', 'audit']],
    ]);
    expect(results[0]?.id).toBe('id-a');
    expect(results[3]?.id).toBe('id-d');
    expect(b.queueStats('billing').endOffset).toBe(3);
    expect(b.queueStats('audit').endOffset).toBe(4);
    expect(b.stats().published).toBe(4);

    const inbox = new Inbox();
    await b.consume('billing', inbox.handler(), { group: 'g' });
    await inbox.waitForCount(3);
    const [m0, m1, m2] = inbox.messages as [Message, Message, Message];
    expect([m0.id, m0.body.toString(), m0.headers, m0.routingKey, m0.exchange]).toEqual(['id-a', 'a', { n: 1 }, 'order.created', 'orders']);
    expect([m1.id, [...m1.body], m1.routingKey]).toEqual([results[2]?.id, [1, 2, 3], 'order.paid']);
    expect([m2.id, [...m2.body]]).toEqual(['id-d', [9]]);
  });

  it('writes each queue its messages as one append: one fdatasync per queue, not one per message', async () => {
    // Proves the batch path: 500 messages to one queue cost at most 2 fdatasyncs (a publish loop awaiting each would cost 500).
    const gated = new GatedStorage();
    const b = await topicBroker(gated.storage());
    await b.assertQueue('solo');
    const before = gated.syncs;
    const results = await b.publishBatch('', Array.from({ length: 500 }, (_, i) => ({ routingKey: 'solo', body: `m${i}` })));
    expect(results.filter((r) => r.status === 'confirmed')).toHaveLength(500);
    expect(b.queueStats('solo').endOffset).toBe(500);
    expect(gated.syncs - before).toBeLessThanOrEqual(2);
  });

  it('resolves only after the fdatasync that makes the messages durable', async () => {
    // Proves confirms follow fsync: with every fdatasync held, the batch stays pending; releasing them resolves it.
    const gated = new GatedStorage();
    const b = await topicBroker(gated.storage());
    gated.hold();
    let done = false;
    const p = b.publishBatch('orders', [
      { routingKey: 'order.created', body: 'x' },
      { routingKey: 'order.paid', body: 'y' },
    ]);
    void p.then(() => (done = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(done).toBe(false);
    gated.release();
    const results = await p;
    expect(results.map((r) => r.status)).toEqual(['confirmed', 'confirmed']);
  });

  it('checks every message first: one bad message rejects the call, names its index and stores nothing', async () => {
    // Proves all-or-nothing validation: bad key, bad body, oversized body, bad id, bad header, bad delay — each rejects with its code and no queue grows, no event fires.
    const b = await topicBroker();
    const events: unknown[] = [];
    b.on('unroutable', (e) => events.push(e));
    const good = { routingKey: 'order.created', body: 'ok' };
    const unroutable = { routingKey: 'x', body: 'nobody binds x... except #' };
    const cases: [unknown, string][] = [
      [{ routingKey: 5, body: 'x' }, 'SPOOL_ERR_INVALID_ARGUMENT'],
      [{ routingKey: 'k', body: 42 }, 'SPOOL_ERR_INVALID_ARGUMENT'],
      [{ routingKey: 'k', body: Buffer.alloc(1025) }, 'SPOOL_ERR_MESSAGE_TOO_LARGE'],
      [{ routingKey: 'k', body: 'x', id: '' }, 'SPOOL_ERR_INVALID_ARGUMENT'],
      [{ routingKey: 'k', body: 'x', headers: { bad: () => 1 } }, 'SPOOL_ERR_INVALID_ARGUMENT'],
      [{ routingKey: 'k', body: 'x', delay: -5 }, 'SPOOL_ERR_INVALID_ARGUMENT'],
      [{ routingKey: 'k', body: 'x', ttl: 1.5 }, 'SPOOL_ERR_INVALID_ARGUMENT'],
      [null, 'SPOOL_ERR_INVALID_ARGUMENT'],
    ];
    for (const [bad, code] of cases) {
      const err = await expectCode(() => b.publishBatch('orders', [good, unroutable, bad as typeof good, good]), code as 'SPOOL_ERR_INVALID_ARGUMENT');
      expect(err.message).toContain('messages[2]');
    }
    await expectCode(() => b.publishBatch('nope', [good]), 'SPOOL_ERR_NOT_FOUND');
    await expectCode(() => b.publishBatch('orders', 'not an array' as unknown as []), 'SPOOL_ERR_INVALID_ARGUMENT');
    expect(b.queueStats('billing').endOffset).toBe(0);
    expect(b.queueStats('audit').endOffset).toBe(0);
    expect(events).toEqual([]);
    expect(await b.publishBatch('orders', [])).toEqual([]);
  });

  it('dedupes by id within the batch, across batches and against single publishes', async () => {
    // Proves the dedupe window on the batch path: repeated ids store once and report 'duplicate'.
    const b = await topicBroker();
    await b.publish('orders', 'order.created', 'first', { id: 'dup-1' });
    const results = await b.publishBatch('orders', [
      { routingKey: 'order.created', body: 'again', id: 'dup-1' },
      { routingKey: 'order.created', body: 'new', id: 'dup-2' },
      { routingKey: 'order.created', body: 'twice in one batch', id: 'dup-2' },
      { routingKey: 'order.created', body: 'generated' },
    ]);
    expect(results.map((r) => r.status)).toEqual(['duplicate', 'confirmed', 'duplicate', 'confirmed']);
    const again = await b.publishBatch('orders', [{ routingKey: 'order.created', body: 'retry', id: 'dup-2' }]);
    expect(again[0]?.status).toBe('duplicate');
    expect(b.queueStats('billing').endOffset).toBe(3);
    expect(b.stats().duplicates).toBe(3);
  });

  it("reports unroutable messages per message and emits 'return' for mandatory ones", async () => {
    // Proves returns on the batch path: only the mandatory unroutable message is returned; routable ones are stored.
    const b = await h.openBroker();
    await b.assertExchange('dx', 'direct');
    await b.assertQueue('q');
    await b.bindQueue('q', 'dx', 'k');
    const returns: { id: string }[] = [];
    b.on('return', (e: { id: string }) => returns.push(e));
    const results = await b.publishBatch('dx', [
      { routingKey: 'k', body: '1' },
      { routingKey: 'none', body: '2', id: 'lost-1', mandatory: true },
      { routingKey: 'none', body: '3', id: 'lost-2' },
    ]);
    expect(results.map((r) => r.status)).toEqual(['confirmed', 'unroutable', 'unroutable']);
    expect(returns.map((r) => r.id)).toEqual(['lost-1']);
    expect(b.stats().unroutable).toBe(2);
    expect(b.queueStats('q').endOffset).toBe(1);
  });

  it('schedules delayed messages of a batch and expires messages with a ttl', async () => {
    // Proves options per message: a delayed one arrives only when due; a ttl one is dead-lettered as expired.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await b.assertExchange('dlx', 'fanout');
    await b.assertQueue('dead');
    await b.bindQueue('dead', 'dlx', '');
    await b.assertQueue('q', { deadLetterExchange: 'dlx' });
    // An idle group: per-message ttl expires behind the head only where a group keeps per-message state.
    await (await b.consume('q', () => {}, { group: 'g' })).close();
    const results = await b.publishBatch('', [
      { routingKey: 'q', body: 'plain' },
      { routingKey: 'q', body: 'later', delay: 10_000 },
      { routingKey: 'q', body: 'short-lived', ttl: 1_000 },
    ]);
    expect(results.map((r) => r.status)).toEqual(['confirmed', 'confirmed', 'confirmed']);
    expect(results[1]?.deliverAt).toBe(T0 + 10_000);
    expect(results[1]?.queues).toEqual([]);
    expect(b.queueStats('q').endOffset).toBe(2);
    await at(b, clock, T0 + 999);
    expect(b.queueStats('dead').endOffset).toBe(0);
    await at(b, clock, T0 + 1_000);
    await at(b, clock, T0 + 1_004);
    await waitFor(() => b.queueStats('dead').endOffset === 1, 'the ttl message dead-lettered');
    await at(b, clock, T0 + 9_999);
    expect(b.queueStats('q').endOffset).toBe(2);
    await at(b, clock, T0 + 10_000);
    await at(b, clock, T0 + 10_004);
    await waitFor(() => b.queueStats('q').endOffset === 3, 'the delayed message routed');
  });

  it('splits a batch larger than one log append into several appends, keeping order', async () => {
    // Proves big batches work: 3,000 × 4 KiB (12 MB, more than one 4 MiB append) lands whole and in order.
    const b = await h.openBroker();
    await b.assertQueue('big');
    const messages = Array.from({ length: 3000 }, (_, i) => ({ routingKey: 'big', body: Buffer.alloc(4096, i % 251), id: `big-${i}` }));
    const results = await b.publishBatch('', messages);
    expect(results.every((r) => r.status === 'confirmed')).toBe(true);
    expect(b.queueStats('big').endOffset).toBe(3000);
    const seen: string[] = [];
    const sub = b.subscribe('big', { group: 'g', ack: 'none' });
    for await (const m of sub) {
      seen.push(m.id);
      expect(m.body[0]).toBe(seen.length - 1 === 0 ? 0 : (seen.length - 1) % 251);
      if (seen.length === 3000) break;
    }
    expect(seen).toEqual(messages.map((m) => m.id));
  });

  it('generated ids: each message is stored and delivered with the id its result names, across chunks', async () => {
    // Proves the stored key bytes of generated ids (written from the id generator's state, not the string) match the returned ids: 2,500 × 2 KiB without ids, so two log appends and two counter carries.
    const b = await h.openBroker();
    await b.assertQueue('gen');
    const results = await b.publishBatch('', Array.from({ length: 2500 }, (_, i) => ({ routingKey: 'gen', body: Buffer.alloc(2048, i % 251) })));
    expect(new Set(results.map((r) => r.id)).size).toBe(2500);
    const seen: string[] = [];
    const sub = b.subscribe('gen', { group: 'g', ack: 'none' });
    for await (const m of sub) {
      seen.push(m.id);
      if (seen.length === 2500) break;
    }
    expect(seen).toEqual(results.map((r) => r.id));
  });

  it('a batch cut by a failed write keeps what was stored, and a retry with the same ids stores the rest once', async () => {
    // Proves the chunked append's bookkeeping: 3,000 × 4 KiB (3 log appends) with the 2nd write failing: the call rejects retriably, the stored part stays, and the retry answers 'duplicate' for it and stores only the rest.
    const gated = new GatedStorage();
    const b = await h.openBroker({ storage: gated.storage() });
    await b.assertQueue('big');
    const messages = Array.from({ length: 3000 }, (_, i) => ({ routingKey: 'big', body: Buffer.alloc(4096, i % 251), id: `cut-${i}` }));
    gated.failWrite(2, `${path.sep}big${path.sep}messages${path.sep}`);
    const err = await expectCode(() => b.publishBatch('', messages), 'SPOOL_ERR_IO');
    expect(err.retriable).toBe(true);
    const stored = b.queueStats('big').endOffset;
    expect(stored).toBeGreaterThan(0);
    expect(stored).toBeLessThan(3000);
    const retry = await b.publishBatch('', messages);
    expect(retry.filter((r) => r.status === 'duplicate')).toHaveLength(stored);
    expect(retry.filter((r) => r.status === 'confirmed')).toHaveLength(3000 - stored);
    expect(b.queueStats('big').endOffset).toBe(3000);
    const seen = new Set<string>();
    for await (const m of b.subscribe('big', { group: 'g', ack: 'none' })) {
      expect(seen.has(m.id), `${m.id} stored twice`).toBe(false);
      seen.add(m.id);
      if (seen.size === 3000) break;
    }
  });

  it('with reject-publish, stores what fits in order and rejects the call with SPOOL_ERR_QUEUE_FULL', async () => {
    // Proves maxLength with reject-publish on the batch path: 3 of 4 fit, the call is refused, and a retry with the same ids stores nothing twice.
    const b = await h.openBroker();
    await b.assertQueue('small', { maxLength: 3, overflow: 'reject-publish' });
    const batch = Array.from({ length: 4 }, (_, i) => ({ routingKey: 'small', body: `m${i}`, id: `s-${i}` }));
    await expectCode(() => b.publishBatch('', batch), 'SPOOL_ERR_QUEUE_FULL');
    expect(b.queueStats('small').endOffset).toBe(3);
    await expectCode(() => b.publishBatch('', batch), 'SPOOL_ERR_QUEUE_FULL');
    expect(b.queueStats('small').endOffset).toBe(3);
  });
});
