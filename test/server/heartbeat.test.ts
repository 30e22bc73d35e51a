// Proves heartbeats detect a dead peer in both directions within a few intervals, also while the socket stays open: a silent client is dropped and its unacked messages go to another consumer; a silent server makes the client reconnect; an idle but live connection survives.
import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import path from 'node:path';
import { encodeWelcome } from '../../src/server/wire/codec.js';
import { FrameType } from '../../src/server/wire/constants.js';
import { FrameReader } from '../../src/server/wire/frame-reader.js';
import { FrameWriter } from '../../src/server/wire/frame-writer.js';
import { RawClient, ServerHarness, frame, helloFrame, sleep, waitFor } from './helpers.js';

const h = new ServerHarness();
afterEach(() => h.cleanup());

describe('heartbeats', () => {
  it('a client that goes silent is dropped within 3 intervals and its unacked messages are redelivered to another consumer', async () => {
    const heartbeatMs = 150;
    const { broker, server } = await h.served({}, { heartbeatMs });
    await broker.assertQueue('jobs');
    for (let i = 0; i < 5; i++) await broker.sendToQueue('jobs', `j${i}`);
    // A raw client that consumes, then stops reading and sending: a frozen process with its socket open.
    const frozen = await RawClient.open({ path: server.socketPath as string });
    h.track(frozen.socket);
    frozen.send(helloFrame());
    frozen.send(frame(FrameType.REQUEST, 1, JSON.stringify({ op: 'consume', args: ['jobs', { group: 'w', ack: 'manual', prefetch: 10 }], consumer: 1 })));
    await waitFor(() => frozen.ofType(FrameType.DELIVERY).length === 5, 'the frozen client to hold all five');
    frozen.socket.pause();
    const frozeAt = Date.now();

    const good = await h.client(server.url);
    const got: string[] = [];
    await good.consume('jobs', (m) => void got.push(m.body.toString()), { group: 'w' });
    await sleep(heartbeatMs);
    expect(got).toEqual([]); // still held by the frozen client
    await waitFor(() => got.length === 5, 'redelivery to the live consumer', 3000);
    const tookMs = Date.now() - frozeAt;
    expect(tookMs).toBeLessThan(3 * heartbeatMs + 1000);
    expect(got.sort()).toEqual(['j0', 'j1', 'j2', 'j3', 'j4']);
    expect(server.connectionCount).toBe(1);
    // The live client, which heartbeats, was never dropped.
    expect(good.connected).toBe(true);
  });

  it('a connection that never says HELLO is not served and does not count as alive by sending bytes', async () => {
    const { server } = await h.served({}, { heartbeatMs: 50 });
    const raw = await RawClient.open({ path: server.socketPath as string });
    h.track(raw.socket);
    raw.send(frame(FrameType.HEARTBEAT, 0));
    await raw.waitClosed();
    expect(raw.errors()[0]?.code).toBe('SPOOL_ERR_PROTOCOL');
  });

  it('a server that goes silent makes the client drop the connection and reconnect', async () => {
    const dir = h.dir();
    const sockPath = path.join(dir, 'silent.sock');
    let accepted = 0;
    const sockets: net.Socket[] = [];
    // Answers HELLO with WELCOME (heartbeat 50 ms), then never sends another byte.
    const fake = net.createServer((s) => {
      accepted++;
      sockets.push(s);
      s.on('error', () => {});
      const w = new FrameWriter(s);
      const r = new FrameReader(1 << 20, (type) => {
        if (type === FrameType.HELLO) encodeWelcome(w, { heartbeatMs: 50, maxFrameBytes: 1 << 20 });
      });
      s.on('data', (c: Buffer) => r.push(c));
    });
    await new Promise<void>((resolve) => fake.listen(sockPath, resolve));
    try {
      const c = await h.client(sockPath, { reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
      const t0 = Date.now();
      const down = new Promise<Error>((resolve) => c.once('disconnect', resolve));
      const err = await down;
      expect(err.message).toMatch(/no frame from the server/);
      expect(Date.now() - t0).toBeLessThan(1000);
      await waitFor(() => accepted >= 2, 'a reconnect attempt');
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => fake.close(() => resolve()));
    }
  });

  it('an idle connection stays up: both sides heartbeat', async () => {
    const { server } = await h.served({}, { heartbeatMs: 60 });
    const c = await h.client(server.url);
    let drops = 0;
    c.on('disconnect', () => drops++);
    await sleep(600);
    expect(drops).toBe(0);
    expect(c.connected).toBe(true);
    expect(await c.listQueues()).toEqual([]);
  });
});
