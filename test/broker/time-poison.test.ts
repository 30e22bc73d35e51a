// Proves a poison message that SIGKILLs its whole process ends in the DLQ after deliveryLimit deliveries instead of looping forever: child brokers (compiled dist/) consume a queue with deliveryLimit 3 and kill themselves on 'poison'; restarted until it is dead-lettered, with the persisted deliveryCount seen as 1, 2, 3 and every other message processed once.
import { afterEach, describe, expect, it } from 'vitest';
import { BrokerHarness, assertDistFresh, sleep, waitFor } from '../support/broker-helpers.js';
import { killChildren, runChild } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(async () => {
  killChildren();
  await h.cleanup();
});

const LIMIT = 3;

describe('poison message', () => {
  it(`a handler that kills the process is dead-lettered after deliveryLimit ${LIMIT} deliveries, across restarts`, async () => {
    // The parent publishes m0..m4, poison, m6..m9 to 'work' (deliveryLimit 3, DLX → dlq) and closes; children (prefetch 1) are started until one reports the poison from the DLQ; that one is then killed by the test and the parent reopens to check the queue drained.
    assertDistFresh();
    const dataDir = h.dir('spool-time-poison-');
    let b = await h.openBroker({ dataDir });
    await b.assertExchange('dlx', 'fanout');
    await b.assertQueue('dlq');
    await b.bindQueue('dlq', 'dlx');
    await b.assertQueue('work', { deliveryLimit: LIMIT, deadLetterExchange: 'dlx' });
    const bodies = ['m0', 'm1', 'm2', 'm3', 'm4', 'poison', 'm6', 'm7', 'm8', 'm9'];
    const ids = new Map<string, string>();
    for (const body of bodies) ids.set(body, (await b.sendToQueue('work', body)).id);
    await h.close(b);

    const deliveries: { body: string; count: number; child: number }[] = [];
    let deadLettered: { id: string; deaths: unknown } | null = null;
    const ends: string[] = [];
    for (let child = 1; child <= LIMIT + 3 && deadLettered === null; child++) {
      const res = await runChild({ mode: 'poison', dataDir }, (line) => {
        const [kind, id, body, rest] = line.split(' ');
        if (kind === 'D') deliveries.push({ body: body!, count: Number(rest), child });
        if (kind === 'L' && body === 'poison') deadLettered = { id: id!, deaths: JSON.parse(line.split(' ').slice(3).join(' ')) };
        const goodDone = bodies.filter((x) => x !== 'poison').every((x) => deliveries.some((d) => d.body === x));
        return deadLettered !== null && goodDone;
      });
      expect(res.stderr, `child ${child} stderr`).toBe('');
      expect(res.ended, `child ${child} ended by SIGKILL`).toBe('SIGKILL');
      ends.push(res.killedByUs ? 'killed by test' : 'killed itself');
    }
    expect(ends, 'how each child ended').toEqual([...Array<string>(LIMIT).fill('killed itself'), 'killed by test']);
    const poison = deliveries.filter((d) => d.body === 'poison');
    expect(poison.map((d) => [d.child, d.count])).toEqual(Array.from({ length: LIMIT }, (_, i) => [i + 1, i + 1]));
    expect(deadLettered).not.toBeNull();
    const dl = deadLettered as unknown as { id: string; deaths: Record<string, unknown>[] };
    expect(dl.id).toBe(ids.get('poison'));
    expect(dl.deaths[0]).toMatchObject({ reason: 'delivery_limit', queue: 'work', count: 1 });
    const good = deliveries.filter((d) => d.body !== 'poison');
    expect(good.map((d) => d.body).sort()).toEqual(bodies.filter((x) => x !== 'poison').sort());

    // Reopen: whatever the last kill caught in flight (its ack not yet durable) comes again, but never the poison,
    // and a poison re-dead-lettered because its ack was not durable lands in the DLQ once (dedupe key).
    b = await h.openBroker({ dataDir });
    const after: string[] = [];
    await b.consume('work', (m) => void after.push(m.body.toString()), { group: 'workers' });
    await waitFor(() => b.queueStats('work').groups.workers!.lag === 0, 'work drained after reopen');
    await sleep(50);
    expect(after.filter((x) => x === 'poison')).toEqual([]);
    expect(after.length, `redelivered after reopen: ${after.join(',')}`).toBeLessThanOrEqual(1);
    expect(b.queueStats('dlq').endOffset).toBe(1);
  });
});
