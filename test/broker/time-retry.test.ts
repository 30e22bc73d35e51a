// Proves consumer retries: backoffMs's worked numbers; mode 'requeue' redelivers through the timing wheel after the backoff (fake clock: not a ms before), durably across close/reopen, without blocking other messages, then dead-letters with 'last-error' or republishes to the errorExchange with x-exception headers; mode 'local' re-runs the handler in process (real clock) with deliveryCount staying 1.
import { afterEach, describe, expect, it } from 'vitest';
import type { Broker } from '../../src/broker/broker.js';
import type { Message } from '../../src/broker/delivery.js';
import { backoffMs } from '../../src/broker/group.js';
import { BrokerHarness, Inbox, fakeClock, sleep, waitFor } from '../support/broker-helpers.js';
import { at, openFake, recordEvents, xDeath } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

const T0 = 1_700_000_000_000;
const BACKOFF = { initial: 1000, factor: 2, max: 10_000, jitter: 0 };

/** 'ex' topic → 'work' ('order.*', with `opts`); fanout 'dlx' → 'dlq'. */
async function setup(b: Broker, opts: Record<string, unknown>): Promise<void> {
  await b.assertExchange('ex', 'topic');
  await b.assertExchange('dlx', 'fanout');
  await b.assertQueue('dlq');
  await b.bindQueue('dlq', 'dlx');
  await b.assertQueue('work', opts);
  await b.bindQueue('work', 'ex', 'order.*');
}

/** A handler that records every attempt and throws `boom <body>` for bodies starting with 'bad'. */
function failing() {
  const attempts: { body: string; count: number; at: number }[] = [];
  const handler = (clock: { now(): number }) => (m: Message) => {
    attempts.push({ body: m.body.toString(), count: m.deliveryCount, at: clock.now() });
    if (m.body.toString().startsWith('bad')) throw new Error(`boom ${m.body.toString()}`);
  };
  return { attempts, handler, of: (body: string) => attempts.filter((a) => a.body === body) };
}

describe('backoffMs', () => {
  it('worked numbers: initial 1000, factor 2, max 10000, jitter 0 → 1000, 2000, 4000, 8000, 10000, 10000', () => {
    // Attempts 1..6 through the exported function, then the jitter bounds with a fixed random source.
    expect([1, 2, 3, 4, 5, 6].map((a) => backoffMs(BACKOFF, a))).toEqual([1000, 2000, 4000, 8000, 10_000, 10_000]);
    const j = { ...BACKOFF, jitter: 0.5 };
    expect([backoffMs(j, 1, () => 0), backoffMs(j, 1, () => 0.5), backoffMs(j, 1, () => 0.999999)]).toEqual([500, 1000, 1500]);
    expect(backoffMs({ initial: 0, factor: 2, max: 100, jitter: 0 }, 3)).toBe(0);
  });
});

describe("retry mode 'requeue' (fake clock)", () => {
  it('redelivers after 1000 then 2000 ms (not a ms before), others flow meanwhile, then dead-letters with last-error', async () => {
    // deliveryLimit 10 on the queue (so counts are tracked), attempts 3: 'bad' at +0, +1000, +3000 with deliveryCount 1,2,3; ok1/ok2 published after it are handled at +0; the DLQ copy has x-death reason 'rejected' and 'last-error' 'boom bad'.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await setup(b, { deliveryLimit: 10, deadLetterExchange: 'dlx' });
    const f = failing();
    for (const body of ['bad', 'ok1', 'ok2']) await b.publish('ex', 'order.created', body);
    await b.consume('work', f.handler(clock), { group: 'g', retry: { attempts: 3, backoff: BACKOFF } });
    await waitFor(() => f.attempts.length === 3, 'bad once, ok1, ok2');
    expect(f.attempts.map((a) => a.body)).toEqual(['bad', 'ok1', 'ok2']);
    for (const [t, n] of [[999, 1], [1000, 2], [2999, 2], [3000, 3]] as const) {
      await at(b, clock, T0 + t);
      if (f.of('bad').length < n) await waitFor(() => f.of('bad').length >= n, `attempt ${n} at +${t}`, 1000);
      await sleep(15);
      expect(f.of('bad').length, `attempts by +${t}`).toBe(n);
    }
    expect(f.of('bad').map((a) => [a.count, a.at - T0])).toEqual([[1, 0], [2, 1000], [3, 3000]]);
    await waitFor(() => b.queueStats('dlq').endOffset === 1, 'dead-lettered after the 3rd attempt');
    const dead = new Inbox();
    await b.consume('dlq', dead.handler(), { group: 'audit' });
    await dead.waitForCount(1);
    expect(xDeath(dead.messages[0]!)).toEqual([{ reason: 'rejected', queue: 'work', exchange: 'ex', 'routing-keys': ['order.created'], count: 1, time: T0 + 3000, 'last-error': 'boom bad' }]);
    await at(b, clock, T0 + 60_000);
    await sleep(20);
    expect(f.of('bad').length).toBe(3);
  });

  // Regression test (report: "requeue retries never give up without a deliveryLimit", fixed in src while this suite was written): ConsumerGroup.redeliverOffset takes the
  // count from acks.state.counts, which is only kept with a deliveryLimit, so every retry arrives with deliveryCount 2
  // and Consumer.finish's `tries < attempts` stays true forever for attempts >= 3.
  it('gives up after `attempts` also on a queue without a deliveryLimit', async () => {
    // Same as above without deliveryLimit: after +3000 there must be 3 attempts (counts 1,2,3) and the DLQ copy; a jump to +60 s adds none.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await setup(b, { deadLetterExchange: 'dlx' });
    const f = failing();
    await b.publish('ex', 'order.created', 'bad');
    await b.consume('work', f.handler(clock), { group: 'g', retry: { attempts: 3, backoff: BACKOFF } });
    for (const t of [0, 1000, 3000, 7000, 15_000, 25_000, 35_000]) {
      await at(b, clock, T0 + t);
      await sleep(15);
    }
    expect(f.of('bad').map((a) => a.count)).toEqual([1, 2, 3]);
    expect(b.queueStats('dlq').endOffset).toBe(1);
  });

  it('a pending retry survives close/reopen: redelivered at its due time, not before', async () => {
    // deliveryLimit 10, attempts 3: attempt 1 fails at +0; close at +500; reopen with a fresh consumer: nothing at +999, attempt 2 (deliveryCount 2) at +1000.
    const clock = fakeClock(T0);
    let { b } = await openFake(h, clock);
    await setup(b, { deliveryLimit: 10, deadLetterExchange: 'dlx' });
    let f = failing();
    await b.publish('ex', 'order.created', 'bad');
    await b.consume('work', f.handler(clock), { group: 'g', retry: { attempts: 3, backoff: BACKOFF } });
    await waitFor(() => f.attempts.length === 1, 'attempt 1');
    await sleep(20); // the retry's due time is persisted
    await at(b, clock, T0 + 500);
    await h.close(b);
    ({ b } = await openFake(h, clock, { dataDir: b.dataDir }));
    f = failing();
    await b.consume('work', f.handler(clock), { group: 'g', retry: { attempts: 3, backoff: BACKOFF } });
    await sleep(30);
    expect(f.attempts.length, 'redelivered at once after reopen').toBe(0);
    await at(b, clock, T0 + 999);
    await sleep(20);
    expect(f.attempts.length).toBe(0);
    await at(b, clock, T0 + 1000);
    await waitFor(() => f.attempts.length === 1, 'attempt 2 after reopen');
    expect(f.attempts[0]).toMatchObject({ body: 'bad', count: 2, at: T0 + 1000 });
  });

  it('no DLX: the last failure is republished to the errorExchange with x-exception and x-original headers', async () => {
    // attempts 2 (backoff 1000), errorExchange 'errors' (fanout → 'errq'): after attempts at +0 and +1000 errq holds the message with x-exception-message 'boom bad', a stack, x-original-queue 'work', x-original-routing-key 'order.created'; a 'deadLetter' event names 'errors'.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await setup(b, {});
    await b.assertExchange('errors', 'fanout');
    await b.assertQueue('errq');
    await b.bindQueue('errq', 'errors');
    const ev = recordEvents(b);
    const f = failing();
    const { id } = await b.publish('ex', 'order.created', 'bad', { headers: { keep: 1 } });
    await b.consume('work', f.handler(clock), { group: 'g', retry: { attempts: 2, backoff: BACKOFF }, errorExchange: 'errors' });
    await waitFor(() => f.attempts.length === 1, 'attempt 1');
    await at(b, clock, T0 + 1000);
    await waitFor(() => b.queueStats('errq').endOffset === 1, 'republished to the error exchange');
    const inbox = new Inbox();
    await b.consume('errq', inbox.handler(), { group: 'ops' });
    await inbox.waitForCount(1);
    const m = inbox.messages[0]!;
    expect(m.id).toBe(id);
    expect(m.headers).toMatchObject({ keep: 1, 'x-exception-message': 'boom bad', 'x-original-queue': 'work', 'x-original-routing-key': 'order.created' });
    expect(String(m.headers['x-exception-stack'])).toMatch(/^Error: boom bad\n\s+at /);
    expect(ev.deadLetters).toEqual([expect.objectContaining({ queue: 'work', id, reason: 'rejected', exchange: 'errors', queues: ['errq'] })]);
    expect(b.queueStats('work').groups.g!.lag).toBe(0);
  });

  it("no DLX and no errorExchange: the last failure raises 'drop' (reason 'rejected')", async () => {
    // attempts 1: the first failure gives up at once; one 'drop' event, stats().dropped 1.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await setup(b, {});
    const ev = recordEvents(b);
    const f = failing();
    await b.publish('ex', 'order.created', 'bad');
    await b.consume('work', f.handler(clock), { group: 'g', retry: { attempts: 1, backoff: BACKOFF } });
    await waitFor(() => ev.drops.length === 1, "a 'drop' event");
    expect(ev.drops[0]).toMatchObject({ queue: 'work', reason: 'rejected' });
    expect(b.stats().dropped).toBe(1);
  });

  // Regression test (report: "an errorExchange that routes nowhere loses the message", fixed in src while this suite was written): Broker.deadLetter's error-exchange branch
  // appends to zero queues (appendTo → 'unroutable'), then counts it as dead-lettered and acks it.
  it("an errorExchange that routes nowhere: 'drop', not a 'deadLetter' to no queue", async () => {
    // errorExchange 'errors' exists with nothing bound; attempts 1: the loss must show as a 'drop' / dropped counter.
    const { b, clock } = await openFake(h, fakeClock(T0));
    await setup(b, {});
    await b.assertExchange('errors', 'fanout');
    const ev = recordEvents(b);
    const f = failing();
    await b.publish('ex', 'order.created', 'bad');
    await b.consume('work', f.handler(clock), { group: 'g', retry: { attempts: 1, backoff: BACKOFF }, errorExchange: 'errors' });
    await waitFor(() => ev.drops.length + ev.deadLetters.length === 1, 'an event');
    expect({ drops: ev.drops.length, dropped: b.stats().dropped, deadLetters: ev.deadLetters.map((e) => e.queues) }).toEqual({ drops: 1, dropped: 1, deadLetters: [] });
  });
});

describe("retry mode 'local' (real clock)", () => {
  it('re-runs the handler in process after 30 then 60 ms, deliveryCount stays 1, the queue is untouched, then dead-letters', async () => {
    // attempts 3, backoff 30 ms ×2, jitter 0: three runs with gaps >= 30 and >= 60 ms, each deliveryCount 1, no retry state in the queue; the DLQ copy has last-error; a message that succeeds on attempt 2 is acked.
    const b = await h.openBroker();
    await setup(b, { deadLetterExchange: 'dlx' });
    const f = failing();
    let flaky = 0;
    const handler = f.handler({ now: () => performance.now() });
    await b.publish('ex', 'order.created', 'bad');
    await b.publish('ex', 'order.created', 'flaky');
    await b.consume(
      'work',
      (m) => {
        if (m.body.toString() === 'flaky' && ++flaky === 1) throw new Error('once');
        return handler(m);
      },
      { group: 'g', concurrency: 2, retry: { attempts: 3, mode: 'local', backoff: { initial: 30, factor: 2, max: 1000, jitter: 0 } } },
    );
    await waitFor(() => b.queueStats('dlq').endOffset === 1, 'dead-lettered after 3 local attempts', 3000);
    const runs = f.of('bad');
    expect(runs.map((r) => r.count)).toEqual([1, 1, 1]);
    const gaps = [runs[1]!.at - runs[0]!.at, runs[2]!.at - runs[1]!.at];
    expect(gaps[0], `gaps ${gaps.join(', ')} ms`).toBeGreaterThanOrEqual(29);
    expect(gaps[1], `gaps ${gaps.join(', ')} ms`).toBeGreaterThanOrEqual(59);
    expect(f.of('flaky').map((r) => r.count)).toEqual([1]);
    await waitFor(() => b.queueStats('work').groups.g!.lag === 0, 'both settled');
    const dead = new Inbox();
    await b.consume('dlq', dead.handler(), { group: 'audit' });
    await dead.waitForCount(1);
    expect(xDeath(dead.messages[0]!)[0]).toMatchObject({ reason: 'rejected', queue: 'work', count: 1, 'last-error': 'boom bad' });
    expect(dead.bodies()).toEqual(['bad']);
  });
});
