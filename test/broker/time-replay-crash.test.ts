// Proves a replay SIGKILLed mid-way loses nothing and doubles nothing: 1,500 dead-lettered messages are replayed to a queue by four child brokers (compiled dist/) each SIGKILLed 0–3 ms after its 200th message was handed to replay; a reopened broker replays the rest, and the target then holds every id exactly once (the replay dedupe key absorbs a kill between append and DLQ ack).
import { afterEach, describe, expect, it } from 'vitest';
import { BrokerHarness, assertDistFresh, waitFor } from '../support/broker-helpers.js';
import { killChildren, readAll, runChild } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(async () => {
  killChildren();
  await h.cleanup();
});

const N = 1500;

describe('replay: SIGKILL mid-way', () => {
  it(`${N} messages, four kills during replay, then a full replay: each id exactly once at the target, none left in the DLQ`, async () => {
    // Parent: work (DLX → dlq) gets N ids r-0..r-N-1, all nacked without requeue, closes. Children 1–4 each replay dlq → target and are killed 0–3 ms after their 200th filter call; the parent replays the rest and reads target from earliest.
    assertDistFresh();
    const dataDir = h.dir('spool-time-replay-');
    let b = await h.openBroker({ dataDir });
    await b.assertExchange('dlx', 'fanout');
    await b.assertQueue('dlq');
    await b.bindQueue('dlq', 'dlx');
    await b.assertQueue('work', { deadLetterExchange: 'dlx' });
    await b.assertQueue('target');
    await Promise.all(Array.from({ length: N }, (_, i) => b.sendToQueue('work', `body-${i}`, { id: `r-${i}` })));
    await b.consume('work', (m) => void m.nack({ requeue: false }), { group: 'g', ack: 'manual', prefetch: 1000, concurrency: 100 });
    await waitFor(() => b.queueStats('dlq').endOffset === N && b.queueStats('work').groups.g!.lag === 0, `${N} in the DLQ`, 20_000);
    await h.close(b);

    // Each child is killed 0–3 ms after its 200th filter call, so some kills land between a message's
    // append at the target and its ack in the DLQ; the parent counts those from the files after each kill.
    let window = 0;
    for (const child of [1, 2, 3, 4]) {
      let seen = 0;
      const res = await runChild({ mode: 'replay', dataDir }, (line) => line.startsWith('F ') && ++seen >= 200 && Math.random() * 3, 30_000);
      expect(res.stderr, `child ${child} stderr`).toBe('');
      expect(res.killedByUs, `child ${child} was killed mid-replay (its lines end: ${res.lines.slice(-2).join(' | ')})`).toBe(true);
      b = await h.openBroker({ dataDir });
      window += b.queueStats('target').endOffset - b.queueStats('dlq').groups.replay!.committed;
      await h.close(b);
    }

    b = await h.openBroker({ dataDir });
    const rest = await b.replay('dlq', { to: { queue: 'target' } });
    expect(rest.remaining).toBe(0);
    // The children finished (appended and acked) about 200 each before being killed; a loaded
    // machine delivers the SIGKILL later, so allow each up to 300.
    expect(rest.replayed).toBeGreaterThanOrEqual(N - 4 * 300);
    expect(await b.replay('dlq', { to: { queue: 'target' } })).toEqual({ replayed: 0, remaining: 0 });
    const got = await readAll(b, 'target', 'audit', N, 10_000);
    const counts = new Map<string, number>();
    for (const m of got) counts.set(m.id, (counts.get(m.id) ?? 0) + 1);
    const missing = Array.from({ length: N }, (_, i) => `r-${i}`).filter((id) => !counts.has(id));
    const doubled = [...counts].filter(([, n]) => n > 1).map(([id]) => id);
    expect({ total: got.length, missing: missing.slice(0, 5), doubled: doubled.slice(0, 5) }, `appended but not acked at the kills: ${window}`).toEqual({ total: N, missing: [], doubled: [] });
    for (const m of got) expect(m.body.toString()).toBe(`body-${m.id.slice(2)}`);
  });
});
