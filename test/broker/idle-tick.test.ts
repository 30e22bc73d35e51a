// The broker's tick slows down when nothing timed is pending (an idle broker with a consumer
// costs next to no CPU), and timed work brings it back at once, so nothing is late.
import { afterEach, describe, expect, it } from 'vitest';
import type { Broker } from '../../src/broker/broker.js';
import { BrokerHarness, waitFor } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

/** Counts the broker's ticks from now on. */
function countTicks(b: Broker): { count: number } {
  const seen = { count: 0 };
  const inner = b as unknown as { tick: () => Promise<void> };
  const tick = inner.tick.bind(b);
  inner.tick = () => {
    seen.count++;
    return tick();
  };
  return seen;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('idle tick', () => {
  it('a broker with a consumer and nothing timed ticks about once a second, not every 5 ms', async () => {
    // Proves the slow idle tick: with the old fixed 5 ms interval, 300 ms held ~60 ticks.
    const b = await h.openBroker();
    await b.assertQueue('q');
    const c = await b.consume('q', () => {}, { group: 'g' });
    await sleep(50); // the first ticks find nothing timed and slow down
    const ticks = countTicks(b);
    await sleep(300);
    expect(ticks.count).toBeLessThanOrEqual(1);
    await c.close();
  });

  it('a message with its own ttl wakes the tick: it is dead-lettered on time, not at the next slow tick', async () => {
    // Proves the wake path: publish with ttl 50 ms to an idle (slow-ticking) broker; the copy must reach the dead-letter queue well before the 1 s idle tick.
    const b = await h.openBroker();
    await b.assertExchange('dlx', 'fanout');
    await b.assertQueue('dead');
    await b.bindQueue('dead', 'dlx', '');
    await b.assertQueue('q', { deadLetterExchange: 'dlx' });
    await (await b.consume('q', () => {}, { group: 'g', prefetch: 1 })).close();
    await sleep(50);
    const ticks = countTicks(b);
    await sleep(100);
    expect(ticks.count).toBeLessThanOrEqual(1); // slow before the publish
    const t0 = performance.now();
    await b.publish('', 'q', 'short-lived', { ttl: 50 });
    await waitFor(() => b.queueStats('dead').endOffset === 1, 'the ttl message dead-lettered', 900);
    expect(performance.now() - t0).toBeLessThan(500);
  });

  it('a queue with a messageTtl keeps the fast tick', async () => {
    // Proves the queue-age check counts: messages of a messageTtl queue expire by the tick, so it stays at tickIntervalMs.
    const b = await h.openBroker();
    await b.assertQueue('q', { messageTtl: 60_000 });
    const c = await b.consume('q', () => {}, { group: 'g' });
    await sleep(50);
    const ticks = countTicks(b);
    await sleep(200);
    expect(ticks.count).toBeGreaterThan(10);
    await c.close();
  });
});
