// Proves the server's publish batching (src/server/publish-batch.ts) over a real socket: pipelined publishes reach the broker as publishBatch calls yet land in frame order with other frames, and a refused batch answers each publish as if it had been sent alone.
import { afterEach, describe, expect, it } from 'vitest';
import type { Broker } from '../../src/broker/broker.js';
import { isSpoolError } from '../../src/errors.js';
import { ServerHarness, waitFor } from './helpers.js';

const h = new ServerHarness();
afterEach(() => h.cleanup());

/** Records the size of every publishBatch call the server makes, and how it ended. */
function spyBatches(broker: Broker): { sizes: number[]; refused: number } {
  const seen = { sizes: [] as number[], refused: 0 };
  const original = broker.publishBatch.bind(broker);
  broker.publishBatch = (exchange, messages) => {
    seen.sizes.push(messages.length);
    const p = original(exchange, messages);
    p.catch(() => seen.refused++);
    return p;
  };
  return seen;
}

async function bodiesOf(broker: Broker, queue: string, n: number): Promise<string[]> {
  const bodies: string[] = [];
  const c = await broker.consume(queue, (m) => void bodies.push(m.body.toString()), { group: 'check', prefetch: 1000 });
  await waitFor(() => bodies.length === n, `${n} messages read back`);
  await c.close();
  return bodies;
}

describe('publish batching on the server', () => {
  it('hands pipelined publishes over in batches, in frame order with sendToQueue between them', async () => {
    const { broker, server } = await h.served();
    await broker.assertExchange('x', 'fanout');
    await broker.assertQueue('q');
    await broker.bindQueue('q', 'x');
    const seen = spyBatches(broker);
    const c = await h.client(server.url);
    const calls: Promise<unknown>[] = [];
    for (let i = 0; i < 300; i++) calls.push(c.publish('x', '', `a${i}`));
    calls.push(c.sendToQueue('q', 'mid'));
    for (let i = 0; i < 300; i++) calls.push(c.publish('x', '', `b${i}`));
    await Promise.all(calls);
    expect(Math.max(...seen.sizes)).toBeGreaterThan(1);
    const expected = [...Array.from({ length: 300 }, (_, i) => `a${i}`), 'mid', ...Array.from({ length: 300 }, (_, i) => `b${i}`)];
    expect(await bodiesOf(broker, 'q', 601)).toEqual(expected);
  });

  it('a batch refused for one bad message fails only that message; the rest are stored once, in order', async () => {
    const { broker, server } = await h.served();
    await broker.assertExchange('x', 'fanout');
    await broker.assertQueue('q');
    await broker.bindQueue('q', 'x');
    const seen = spyBatches(broker);
    const c = await h.client(server.url);
    const outcomes = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => c.publish('x', '', `m${i}`, i === 7 ? { ttl: -1 } : {})));
    expect(seen.refused).toBeGreaterThan(0); // the batch went to the broker and was refused whole
    outcomes.forEach((o, i) => {
      if (i === 7) expect(o.status === 'rejected' && isSpoolError(o.reason, 'SPOOL_ERR_INVALID_ARGUMENT')).toBe(true);
      else expect(o.status === 'fulfilled' && o.value.status === 'confirmed', `publish ${i}`).toBe(true);
    });
    expect(await bodiesOf(broker, 'q', 19)).toEqual(Array.from({ length: 20 }, (_, i) => `m${i}`).filter((_, i) => i !== 7));
  });

  it('a batch that fills a reject-publish queue halfway: what was stored confirms, the rest is QUEUE_FULL', async () => {
    const { broker, server } = await h.served();
    await broker.assertExchange('x', 'fanout');
    await broker.assertQueue('q', { maxLength: 5, overflow: 'reject-publish' });
    await broker.bindQueue('q', 'x');
    const seen = spyBatches(broker);
    const c = await h.client(server.url);
    const outcomes = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => c.publish('x', '', `m${i}`)));
    expect(seen.refused).toBeGreaterThan(0);
    // As one publish at a time would end: the first five stored (their lone retries find them stored,
    // and the client knows its own ids), the last five refused.
    expect(outcomes.map((o) => (o.status === 'fulfilled' ? o.value.status : isSpoolError(o.reason, 'SPOOL_ERR_QUEUE_FULL') ? 'full' : String(o.reason)))).toEqual([
      ...Array<string>(5).fill('confirmed'),
      ...Array<string>(5).fill('full'),
    ]);
    expect(broker.queueStats('q').endOffset).toBe(5);
  });

  it('a refused batch that stored some messages in another queue: their lone retries are looked up, not stored again', async () => {
    // The client sends its own ids with NEW_ID (no lookup on the server). A batch to A (full after 5)
    // and B stores in B, then is refused; each message is then published alone, and must find its
    // id in B's dedupe window: that fails if the retries keep NEW_ID (B would hold 20).
    const { broker, server } = await h.served();
    await broker.assertExchange('x', 'fanout');
    await broker.assertQueue('a', { maxLength: 5, overflow: 'reject-publish' });
    await broker.assertQueue('b');
    await broker.bindQueue('a', 'x');
    await broker.bindQueue('b', 'x');
    const seen = spyBatches(broker);
    const c = await h.client(server.url);
    await Promise.allSettled(Array.from({ length: 10 }, (_, i) => c.publish('x', '', `m${i}`)));
    expect(seen.refused).toBeGreaterThan(0);
    expect(broker.queueStats('a').endOffset).toBe(5);
    expect(broker.queueStats('b').endOffset).toBe(10);
    expect(await bodiesOf(broker, 'b', 10)).toEqual(Array.from({ length: 10 }, (_, i) => `m${i}`));
  });

  it("a client's publishBatch sends each body once: a body near the frame limit fits, as a lone publish does", async () => {
    // The client once put every batch message's routingKey and body into its options JSON too: a
    // Buffer body travelled again as a JSON array, about four times its size, so this failed.
    const { broker, server } = await h.served({ maxMessageBytes: 1024 * 1024 }, { maxFrameBytes: 256 * 1024 });
    await broker.assertExchange('x', 'direct');
    await broker.assertQueue('q');
    await broker.bindQueue('q', 'x', 'k');
    const c = await h.client(server.url);
    const big = Buffer.alloc(200 * 1024, 7);
    const results = await c.publishBatch('x', [
      { routingKey: 'k', body: big, headers: { n: 1 } },
      { routingKey: 'k', body: 'small' },
    ]);
    expect(results.map((r) => r.status)).toEqual(['confirmed', 'confirmed']);
    const got: { body: Buffer; headers: unknown }[] = [];
    const cons = await broker.consume('q', (m) => void got.push({ body: m.body, headers: m.headers }), { group: 'check' });
    await waitFor(() => got.length === 2, 'both read back');
    await cons.close();
    expect(got[0]?.body.equals(big)).toBe(true);
    expect(got[0]?.headers).toEqual({ n: 1 });
    expect(got[1]?.body.toString()).toBe('small');
  });
});
