// Proves pipelining and flow control over a real unix socket: thousands of concurrent publishes confirm in order, prefetch is a credit the server honours per ack mode, and remote consumers in one group share the work.
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import type { Broker, PublishResult } from '../../src/broker/broker.js';
import type { RemoteMessage } from '../../src/client/index.js';
import { FrameType, SERVER_INFLIGHT_MAX } from '../../src/server/wire/constants.js';
import { RawClient, ServerHarness, frame, helloFrame, sleep, waitFor } from './helpers.js';

const h = new ServerHarness();
afterEach(() => h.cleanup());

describe('pipelining', () => {
  it('5,000 concurrent publishes on one connection all confirm, with unique ids, stored in call order', async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    const c = await h.client(server.url);
    const n = 5000;
    const results = await Promise.all(Array.from({ length: n }, (_, i) => c.sendToQueue('q', `m${i}`)));
    expect(results.every((r) => r.status === 'confirmed')).toBe(true);
    expect(new Set(results.map((r) => r.id)).size).toBe(n);
    expect(broker.queueStats('q').endOffset).toBe(n);
    // Frames are handled in arrival order, so the queue holds them in the order they were called.
    const bodies: string[] = [];
    const cons = await broker.consume('q', (m) => void bodies.push(m.body.toString()), { group: 'check', prefetch: 1000 });
    await waitFor(() => bodies.length === n, 'all messages read back');
    await cons.close();
    expect(bodies).toEqual(Array.from({ length: n }, (_, i) => `m${i}`));
  });

  it('a small in-flight window queues the rest in order and loses nothing', async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    const c = await h.client(server.url, { maxInFlight: 8 });
    const results = await Promise.all(Array.from({ length: 500 }, (_, i) => c.sendToQueue('q', `m${i}`, { id: `id-${i}` })));
    expect(results.map((r) => r.id)).toEqual(Array.from({ length: 500 }, (_, i) => `id-${i}`));
    expect(broker.queueStats('q').endOffset).toBe(500);
  });

  it('mixes requests and publishes in flight, each answered by its own request id', async () => {
    const { server } = await h.served();
    const c = await h.client(server.url);
    const ops = await Promise.all([c.assertQueue('a'), c.assertQueue('b'), c.listQueues(), c.stats(), c.assertExchange('x', 'fanout')]);
    expect(ops[0].queue).toBe('a');
    expect(ops[4]).toEqual({ exchange: 'x' });
    const mixed = await Promise.all([c.sendToQueue('a', '1'), c.queueStats('a'), c.sendToQueue('b', '2'), c.bindQueue('a', 'x'), c.listBindings()]);
    expect(mixed[0].queues).toEqual(['a']);
    expect(mixed[2].queues).toEqual(['b']);
    expect(mixed[4]).toEqual([{ exchange: 'x', queue: 'a', pattern: '' }]); // topology changes apply in arrival order
    expect((await c.publish('x', '', '3')).queues).toEqual(['a']);
  });

  it('carries large bodies intact, and refuses a body over the server frame limit before sending', async () => {
    const { broker, server } = await h.served({ maxMessageBytes: 8 * 1024 * 1024 }, { maxFrameBytes: 2 * 1024 * 1024 });
    await broker.assertQueue('big');
    const c = await h.client(server.url);
    const body = Buffer.alloc(1024 * 1024 + 3);
    for (let i = 0; i < body.length; i++) body[i] = (i * 31) & 0xff;
    await c.sendToQueue('big', body, { id: 'big-1' });
    const got: Buffer[] = [];
    const cons = await c.consume('big', (m) => void got.push(m.body), { group: 'g' });
    await waitFor(() => got.length === 1, 'the big message');
    await cons.close();
    expect(got[0]?.equals(body)).toBe(true);
    await expect(c.sendToQueue('big', Buffer.alloc(3 * 1024 * 1024))).rejects.toMatchObject({ code: 'SPOOL_ERR_MESSAGE_TOO_LARGE' });
    expect((await c.queueStats('big')).endOffset).toBe(1);
  });
});

describe('credit (prefetch) over the socket', () => {
  it("'manual': the server sends at most prefetch unacked deliveries; each ack returns one credit", async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    for (let i = 0; i < 20; i++) await broker.sendToQueue('q', `m${i}`);
    const c = await h.client(server.url);
    const held: RemoteMessage[] = [];
    const cons = await c.consume('q', (m) => void held.push(m), { group: 'g', ack: 'manual', prefetch: 5 });
    await waitFor(() => held.length === 5, '5 deliveries');
    await sleep(100);
    expect(held.length).toBe(5);
    expect(broker.queueStats('q').groups.g?.inFlight).toBe(5);
    expect(await held[0]?.ack()).toBe('acked');
    await waitFor(() => held.length === 6, 'one more after one ack');
    await sleep(50);
    expect(held.length).toBe(6);
    expect(await held[1]?.nack()).toBe('nacked');
    await waitFor(() => held.length === 7, 'the nacked message again');
    expect(held[6]?.body.toString()).toBe('m1');
    expect(held[6]?.redelivered).toBe(true);
    await cons.close();
    // Closing gave the unacked ones back.
    expect(broker.queueStats('q').groups.g).toMatchObject({ inFlight: 0, committed: 1 });
  });

  it("'auto' and 'none': prefetch bounds what is in flight and concurrency bounds the handlers", async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    for (let i = 0; i < 40; i++) await broker.sendToQueue('q', `m${i}`);
    const c = await h.client(server.url);
    for (const ack of ['auto', 'none'] as const) {
      let running = 0;
      let runningMax = 0;
      let done = 0;
      let inFlightMax = 0;
      const gate: (() => void)[] = [];
      const cons = await c.consume(
        'q',
        async () => {
          running++;
          runningMax = Math.max(runningMax, running);
          inFlightMax = Math.max(inFlightMax, broker.queueStats('q').groups[ack]?.inFlight ?? 0);
          await new Promise<void>((resolve) => gate.push(resolve));
          running--;
          done++;
        },
        { group: ack, ack, prefetch: 6, concurrency: 2 },
      );
      await waitFor(() => running === 2, `${ack}: two handlers running`);
      await sleep(100);
      // 'none' acks at delivery, so its in-flight count stays 0; 'auto' holds up to prefetch.
      expect(broker.queueStats('q').groups[ack]?.inFlight).toBe(ack === 'auto' ? 6 : 0);
      while (done < 40) {
        gate.shift()?.();
        await sleep(1);
      }
      await cons.close();
      expect(runningMax, ack).toBe(2);
      expect(inFlightMax, ack).toBeLessThanOrEqual(6);
      expect(broker.queueStats('q').groups[ack]?.committed, ack).toBe(40);
    }
  });

  it("'auto': a handler that throws gets the message again; one that resolves acks it", async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    await broker.sendToQueue('q', 'flaky');
    const c = await h.client(server.url);
    const counts: number[] = [];
    const cons = await c.consume('q', (m) => {
      counts.push(m.deliveryCount);
      if (m.deliveryCount < 3) throw new Error('not yet');
    });
    await waitFor(() => counts.length === 3, 'three attempts');
    await waitFor(() => broker.queueStats('q').groups.default?.committed === 1, 'the ack');
    await cons.close();
    expect(counts).toEqual([1, 2, 3]);
  });
});

describe('groups across connections', () => {
  it('two remote consumers in one group share the messages, each delivered once', async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('jobs');
    const a = await h.client(server.url);
    const b = await h.client(server.url);
    const got = new Map<string, string[]>([
      ['a', []],
      ['b', []],
    ]);
    const slow = (who: string) => async (m: RemoteMessage) => {
      got.get(who)?.push(m.body.toString());
      await sleep(1);
    };
    const ca = await a.consume('jobs', slow('a'), { group: 'workers', prefetch: 5 });
    const cb = await b.consume('jobs', slow('b'), { group: 'workers', prefetch: 5 });
    const publisher = await h.client(server.url);
    await Promise.all(Array.from({ length: 300 }, (_, i) => publisher.sendToQueue('jobs', `j${i}`)));
    await waitFor(() => (got.get('a')?.length ?? 0) + (got.get('b')?.length ?? 0) >= 300, 'all 300 jobs');
    await waitFor(() => broker.queueStats('jobs').groups.workers?.committed === 300, 'all acked');
    await ca.close();
    await cb.close();
    const all = [...(got.get('a') ?? []), ...(got.get('b') ?? [])];
    expect(all.length).toBe(300);
    expect(new Set(all).size).toBe(300);
    expect(got.get('a')?.length).toBeGreaterThan(50);
    expect(got.get('b')?.length).toBeGreaterThan(50);
  });

  it("closing one remote consumer hands its unacked messages to the group's other consumer", async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('jobs');
    const a = await h.client(server.url);
    const b = await h.client(server.url);
    const heldByA: RemoteMessage[] = [];
    const ca = await a.consume('jobs', (m) => void heldByA.push(m), { group: 'w', ack: 'manual', prefetch: 10 });
    for (let i = 0; i < 5; i++) await broker.sendToQueue('jobs', `j${i}`);
    await waitFor(() => heldByA.length === 5, 'a holds all five');
    const gotB: string[] = [];
    const cb = await b.consume('jobs', (m) => void gotB.push(m.body.toString()), { group: 'w' });
    await sleep(50);
    expect(gotB).toEqual([]);
    await ca.close();
    await waitFor(() => gotB.length === 5, 'b gets them after a closes');
    expect(await heldByA[0]?.ack()).toBe('unknown');
    await cb.close();
  });

  it('subscribe: an async iterator; breaking out gives back what was not acked', async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    for (let i = 0; i < 10; i++) await broker.sendToQueue('q', `m${i}`);
    const c = await h.client(server.url);
    const seen: string[] = [];
    for await (const m of c.subscribe('q', { group: 'g', prefetch: 4 })) {
      seen.push(m.body.toString());
      if (seen.length <= 3) await m.ack();
      if (seen.length === 4) break;
    }
    expect(seen).toEqual(['m0', 'm1', 'm2', 'm3']);
    await waitFor(() => broker.queueStats('q').groups.g?.inFlight === 0, 'the subscription to give back its deliveries');
    expect(broker.queueStats('q').groups.g?.committed).toBe(3);
    const auto: string[] = [];
    for await (const m of c.subscribe('q', { group: 'g', ack: 'auto' })) {
      auto.push(m.body.toString());
      if (auto.length === 7) break;
    }
    expect(auto).toEqual(['m3', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9']);
    // 'auto' acked each one when the loop asked for the next; the last one was given back.
    await waitFor(() => broker.queueStats('q').groups.g?.committed === 9, 'auto acks');
  });
});

describe('backpressure', () => {
  it('stops reading a connection whose requests the broker has not answered, without taking it for dead, and resumes', async () => {
    // A broker stand-in whose publishes stay pending until the test lets them go.
    const pending: (() => void)[] = [];
    const slow = {
      dataDir: h.dir(),
      publish: () => new Promise<PublishResult>((resolve) => pending.push(() => resolve({ id: 'x', status: 'confirmed', queues: ['q'] }))),
    } as unknown as Broker;
    const server = await h.serve(slow, { heartbeatMs: 50 });
    const raw = await RawClient.open({ path: server.socketPath as string });
    h.track(raw.socket);
    raw.send(helloFrame());
    const total = SERVER_INFLIGHT_MAX + 5000;
    const publish = (rid: number) => frame(FrameType.PUBLISH, rid, Buffer.from([0, 0, 0, 0, 0, 0, 0, 1, 0, 0x69, 0, 0, 0, 0]));
    const all: Buffer[] = [];
    for (let rid = 1; rid <= total; rid++) all.push(publish(rid));
    raw.send(Buffer.concat(all));
    // A live client heartbeats; while the server does not read, these wait behind the publishes.
    const beat = setInterval(() => raw.send(frame(FrameType.HEARTBEAT, 0)), 20);
    onTestFinished(() => clearInterval(beat));
    await waitFor(() => pending.length >= SERVER_INFLIGHT_MAX, 'the server to take in its maximum');
    await sleep(400); // eight heartbeat intervals with the client's bytes unread
    expect(pending.length).toBeLessThan(total);
    expect(raw.closed).toBe(false);
    expect(server.connectionCount).toBe(1);
    // Let the broker catch up: reading resumes and every publish is answered.
    await waitFor(
      () => {
        for (const release of pending.splice(0)) release();
        return raw.ofType(FrameType.CONFIRM).length === total || raw.closed;
      },
      'every publish answered',
      20_000,
    );
    expect(raw.ofType(FrameType.CONFIRM).length).toBe(total);
    expect(raw.closed).toBe(false);
  });
});
