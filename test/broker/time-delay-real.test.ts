// Proves delayed messages fire on time on the real clock with the broker's own 5 ms ticker: 200 messages with random 0–300 ms delays reach a consumer with p99 lateness (arrival − deliverAt) under 50 ms and never before their deliverAt.
import { afterEach, describe, expect, it } from 'vitest';
import { BrokerHarness } from '../support/broker-helpers.js';
import { stats } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

describe('delay: real clock', () => {
  it('200 random 0–300 ms delays: p99 lateness < 50 ms, none early, each delivered once', async () => {
    // Publishes all 200 at once (deliverAt taken from each publish result), a consumer records Date.now() − deliverAt per id; the noisy 2-core VM gets a 50 ms budget.
    const b = await h.openBroker();
    await b.assertExchange('ex', 'topic');
    await b.assertQueue('q');
    await b.bindQueue('q', 'ex', '#');
    const lateness = new Map<string, number>();
    const deliverAt = new Map<string, number>();
    const dupes: string[] = [];
    let resolveAll!: () => void;
    const all = new Promise<void>((r) => (resolveAll = r));
    await b.consume(
      'q',
      (msg) => {
        const now = Date.now();
        const due = Number(msg.headers.due);
        if (lateness.has(msg.id)) dupes.push(msg.id);
        lateness.set(msg.id, now - due);
        if (lateness.size === 200) resolveAll();
      },
      { group: 'g', prefetch: 1000, concurrency: 100 },
    );
    const published = await Promise.all(
      Array.from({ length: 200 }, (_, i) => {
        const due = Date.now() + Math.floor(Math.random() * 301);
        return b.publish('ex', `k.${i}`, `m${i}`, { deliverAt: due, headers: { due } }).then((r) => {
          deliverAt.set(r.id, due);
          return r;
        });
      }),
    );
    expect(published.every((r) => r.status === 'confirmed' || r.queues.length === 1)).toBe(true);
    const timeout = new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`only ${lateness.size} of 200 arrived within 3 s`)), 3000));
    await Promise.race([all, timeout]);
    const s = stats([...lateness.values()]);
    expect(dupes).toEqual([]);
    expect(s.min, `lateness ms ${JSON.stringify(s)}`).toBeGreaterThanOrEqual(0);
    expect(s.p99, `lateness ms ${JSON.stringify(s)}`).toBeLessThan(50);
  });
});
