// Served 'auto' consumers without retry hand their deliveries to the connection's sink
// (src/broker/group.ts DeliverySink): no Message or handler call per delivery. These prove that
// path keeps the embedded rules: a tag settles only its own delivery, explicit acks and nacks
// answer as embedded, and a consumer that goes away while starting loses and holds nothing.
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { RemoteMessage } from '../../src/client/index.js';
import { REPO_ROOT, assertDistFresh, spawnChild } from './children.js';
import { ServerHarness, sleep, waitFor } from './helpers.js';

const h = new ServerHarness();
afterEach(() => h.cleanup());

describe("a served 'auto' consumer (deliveries taken by the sink)", () => {
  it("a late DONE for a delivery the lock timeout took back does not settle its redelivery", async () => {
    // Attempt 1 holds the message until its lock (200 ms) has expired and the redelivery, attempt
    // 2, has arrived; then it succeeds. Attempt 2 fails, within its own lock, after attempt 1 ended
    // (the DONEs reach the server in that order, on one connection). Attempt 1's DONE names a
    // delivery that is gone, so it must not ack attempt 2's: the failure requeues the message and
    // attempt 3 acks it. Acking by the stale tag would end at attempt 2.
    const { broker, server } = await h.served({ sweepIntervalMs: 20 });
    await broker.assertQueue('q');
    await broker.sendToQueue('q', 'slow');
    const c = await h.client(server.url);
    const counts: number[] = [];
    let firstEnded!: () => void;
    const firstDone = new Promise<void>((r) => (firstEnded = r));
    await c.consume(
      'q',
      async (m: RemoteMessage) => {
        counts.push(m.deliveryCount);
        if (m.deliveryCount === 1) {
          await waitFor(() => counts.includes(2), 'the redelivery after the lock timeout', 5000);
          firstEnded();
        }
        if (m.deliveryCount === 2) {
          await firstDone;
          await sleep(20);
          throw new Error('attempt 2 fails');
        }
      },
      { group: 'g', ack: 'auto', prefetch: 5, concurrency: 5, lockTimeoutMs: 200 },
    );
    await waitFor(() => broker.queueStats('q').groups.g?.committed === 1, 'the message acked', 5000);
    expect(counts).toEqual([1, 2, 3]);
    await sleep(100);
    expect(counts).toEqual([1, 2, 3]);
    expect(broker.queueStats('q').groups.g).toMatchObject({ committed: 1, inFlight: 0 });
  });

  it('explicit acks and nacks inside an auto handler answer as embedded, and a second settle is unknown', async () => {
    const { broker, server } = await h.served();
    await broker.assertExchange('dlx', 'fanout');
    await broker.assertQueue('dead');
    await broker.bindQueue('dead', 'dlx');
    await broker.assertQueue('q', { deadLetterExchange: 'dlx' });
    for (const body of ['ack', 'reject', 'requeue']) await broker.sendToQueue('q', body);
    const c = await h.client(server.url);
    const answers: string[] = [];
    await c.consume(
      'q',
      async (m: RemoteMessage) => {
        const body = m.body.toString();
        if (body === 'ack') answers.push(`ack ${await m.ack()}`, `again ${await m.ack()}`);
        if (body === 'reject') answers.push(`reject ${await m.nack({ requeue: false })}`);
        if (body === 'requeue' && m.deliveryCount === 1) answers.push(`requeue ${await m.nack({ requeue: true })}`);
      },
      { group: 'g', ack: 'auto', prefetch: 10 },
    );
    await waitFor(() => broker.queueStats('q').groups.g?.committed === 3, 'all three settled', 5000);
    expect(answers.sort()).toEqual(['ack acked', 'again unknown', 'reject nacked', 'requeue nacked']);
    const dead: string[] = [];
    const d = await broker.consume('dead', (m) => void dead.push(m.body.toString()), { group: 'check' });
    await waitFor(() => dead.length === 1, 'the rejected message dead-lettered');
    await d.close();
    expect(dead).toEqual(['reject']);
  });

  it('closing one consumer of a connection gives its deliveries to the other and keeps no tags', async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    for (let i = 0; i < 20; i++) await broker.sendToQueue('q', `m${i}`);
    const c = await h.client(server.url);
    const held: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const a = await c.consume('q', async (m: RemoteMessage) => { held.push(m.body.toString()); await gate; }, { group: 'g', prefetch: 5, concurrency: 5 });
    await waitFor(() => held.length === 5, 'the first consumer holds its prefetch');
    const got: string[] = [];
    await c.consume('q', (m: RemoteMessage) => void got.push(m.body.toString()), { group: 'g', prefetch: 50 });
    const closing = a.close();
    release();
    await closing;
    await waitFor(() => broker.queueStats('q').groups.g?.committed === 20, 'all twenty acked', 5000);
    // Whatever the closed consumer had not finished went to the other one; nothing is held.
    expect(new Set([...held, ...got]).size).toBe(20);
    expect(broker.queueStats('q').groups.g).toMatchObject({ inFlight: 0, lag: 0 });
  });

  it.each([
    ['without retry (the sink)', []],
    ['with retry (a handler call per delivery)', ['retry']],
  ])('a consumer whose connection goes away while it starts loses nothing, holds nothing and does not spin: %s', async (_name, extra) => {
    // Without retry the server used to offer the buffered message to the closing consumer again
    // and again, in one synchronous loop; with a retry policy of one attempt, it gave up (dropped)
    // messages the client never saw.
    assertDistFresh();
    const child = spawnChild(path.join(REPO_ROOT, 'test/server/fixtures/close-while-starting.mjs'), [path.join(REPO_ROOT, 'dist'), ...extra]);
    const line = await child.line(/^\{/, 10_000);
    const out = JSON.parse(line) as { opened: string; got: string[]; stats: { committed: number; inFlight: number } };
    expect(out.opened).toBe('SPOOL_ERR_CLOSED');
    expect(out.got).toEqual(['m1', 'm2']);
    expect(out.stats).toMatchObject({ committed: 3, inFlight: 0 });
    expect(await child.exited).toBe(0);
  });
});
