// Proves the delay store fires without waiting for the broker's ticker: on its own timer armed for the next due message (real clock, ticker off) without spinning while idle; from a publish made after a message came due, synchronously; at once when a message came due while its own publish was being fsynced; with a new minute bucket in the wheel at once; and with near bodies kept as published (fake clock, ticker off).
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BrokerHarness, fakeClock, sleep, waitFor } from '../support/broker-helpers.js';
import { NEVER_MS, gatedStorage, openFake, stats } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

const T0 = 1_700_000_000_000;


describe('delay: the store fires on its own', () => {
  it('with the broker ticker off, 30 delays of 20–200 ms arrive on their own timer: none early, each once, max lateness < 100 ms', async () => {
    // The ticker would never run (NEVER_MS): only the store's timer, armed for the next due message, can fire them.
    const b = await h.openBroker({ tickIntervalMs: NEVER_MS });
    await b.assertExchange('ex', 'topic');
    await b.assertQueue('q');
    await b.bindQueue('q', 'ex', '#');
    const lateness = new Map<string, number>();
    await b.consume(
      'q',
      (msg) => {
        expect(lateness.has(msg.id), `${msg.id} delivered twice`).toBe(false);
        lateness.set(msg.id, Date.now() - Number(msg.headers.due));
      },
      { group: 'g' },
    );
    await Promise.all(
      Array.from({ length: 30 }, (_, i) => {
        const due = Date.now() + 20 + Math.floor(Math.random() * 181);
        return b.publish('ex', 'k', `m${i}`, { deliverAt: due, headers: { due } });
      }),
    );
    await waitFor(() => lateness.size === 30, `all 30 delivered (${lateness.size})`, 3000);
    const s = stats([...lateness.values()]);
    expect(s.min, JSON.stringify(s)).toBeGreaterThanOrEqual(0);
    expect(s.max, JSON.stringify(s)).toBeLessThan(100);
  });

  it('does not spin: with 1,000 messages pending 90 s ahead, half a second passes with at most a few timers armed and little CPU', async () => {
    const b = await h.openBroker();
    await b.assertExchange('ex', 'topic');
    await b.assertQueue('q');
    await b.bindQueue('q', 'ex', '#');
    const due = Date.now() + 90_000;
    await Promise.all(Array.from({ length: 1000 }, (_, i) => b.publish('ex', 'k', `m${i}`, { deliverAt: due + i })));
    await sleep(50);
    const timers = vi.spyOn(globalThis, 'setTimeout');
    try {
      const before = process.cpuUsage();
      await sleep(500);
      const used = process.cpuUsage(before);
      expect(timers.mock.calls.length, 'setTimeout calls while idle (one is the sleep)').toBeLessThanOrEqual(5);
      expect((used.user + used.system) / 1000, 'CPU ms used while idle').toBeLessThan(50);
    } finally {
      timers.mockRestore();
    }
  });

  it('a publish made after a message came due fires it before the publish returns (no tick, no timer)', async () => {
    // The fake clock is moved past A's due time and nothing runs the timers: a publish of B notices
    // A is due and starts its fire synchronously, so A's route is looked up (here: unroutable) in that call.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await b.assertExchange('ex', 'topic');
    const unroutable: string[] = [];
    b.on('unroutable', (e) => unroutable.push(e.id));
    const a = await b.publish('ex', 'k', 'A', { deliverAt: T0 + 60_000 });
    await b.runTimers(); // nothing due yet
    clock.t = T0 + 60_000;
    const pb = b.publish('ex', 'k', 'B', { deliverAt: T0 + 3_600_000 });
    expect(unroutable).toEqual([a.id]);
    await pb;
    expect(await b.cancel(a.id)).toBe(false);
  });

  it('a message due while its own publish was being fsynced is on its way when the publish resolves', async () => {
    // Its fsync is held until the fake clock is past its due time; once the publish resolves, cancel
    // finds nothing pending, though no tick ran and no timer had a chance to.
    const { gate, storage } = gatedStorage(`${'/'}delayed${'/'}`);
    const { b, clock } = await openFake(h, fakeClock(T0), { storage });
    await b.assertExchange('ex', 'topic');
    await b.assertQueue('q');
    await b.bindQueue('q', 'ex', '#');
    await b.publish('ex', 'k', 'X', { deliverAt: T0 + 30_000 }); // the same minute bucket, so A's append needs no open
    await b.runTimers();
    gate.closed = true;
    const pa = b.publish('ex', 'k', 'A', { deliverAt: T0 + 10 });
    await waitFor(() => gate.waiting > 0, 'the delayed append waits for its fsync');
    clock.t = T0 + 20;
    gate.closed = false;
    const a = await pa;
    expect(a.status).toBe('confirmed');
    expect(await b.cancel(a.id)).toBe(false);
    await waitFor(() => b.queueStats('q').endOffset === 1, 'A routed');
  });

  it('a near message fires with its body as published: a Buffer changed afterwards fires unchanged, a string as its UTF-8', async () => {
    const { b, clock } = await openFake(h, fakeClock(T0));
    await b.assertExchange('ex', 'topic');
    await b.assertQueue('q');
    await b.bindQueue('q', 'ex', '#');
    await b.runTimers(); // nothing pending: the buckets the publishes make are in the wheel at once
    const bytes = Buffer.from('before');
    await b.publish('ex', 'k', bytes, { deliverAt: T0 + 10 });
    bytes.write('AFTER!');
    await b.publish('ex', 'k', 'grüße', { deliverAt: T0 + 20 });
    clock.t = T0 + 20;
    await b.runTimers();
    const got: string[] = [];
    await b.consume('q', (m) => void got.push(m.body.toString('utf8')), { group: 'g', from: 'earliest' });
    await waitFor(() => got.length === 2, 'both delivered');
    expect(got).toEqual(['before', 'grüße']);
  });

  it('a minute bucket made by a publish is in the wheel at once: no tick needs to read it back before its messages can fire', async () => {
    const { b, clock } = await openFake(h, fakeClock(T0));
    await b.assertExchange('ex', 'topic');
    const unroutable: string[] = [];
    b.on('unroutable', (e) => unroutable.push(e.id));
    const a = await b.publish('ex', 'k', 'A', { deliverAt: T0 + 10 });
    clock.t = T0 + 10;
    const pb = b.publish('ex', 'k', 'B', { deliverAt: T0 + 3_600_000 });
    expect(unroutable).toEqual([a.id]);
    await pb;
  });
});
