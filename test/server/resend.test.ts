// Proves the client's behaviour across lost connections, deterministically, with a proxy the test can blackhole and cut: a publish stored but unconfirmed is resent with its id and stored once, calls wait for the reconnect up to their deadline, unsafe requests fail DISCONNECTED, and consumers come back.
import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import path from 'node:path';
import type { RemoteMessage } from '../../src/client/index.js';
import { isSpoolError } from '../../src/errors.js';
import { ServerHarness, sleep, waitFor } from './helpers.js';

const h = new ServerHarness();
const proxies: Proxy[] = [];
afterEach(async () => {
  for (const p of proxies.splice(0)) await p.close();
  await h.cleanup();
});

/** A unix-socket proxy in front of the server: can swallow the server's replies, and cut every connection. */
class Proxy {
  /** While true, bytes from the server are dropped (the client never hears back). */
  blackhole = false;
  /** While true, new connections are refused (the server looks down). */
  refusing = false;
  connections = 0;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private readonly server: net.Server;

  private constructor(
    readonly path: string,
    upstream: string,
  ) {
    this.server = net.createServer((down) => {
      down.on('error', () => {});
      if (this.refusing) {
        down.destroy();
        return;
      }
      this.connections++;
      const up = net.connect({ path: upstream });
      up.on('error', () => down.destroy());
      down.on('close', () => up.destroy());
      up.on('close', () => down.destroy());
      down.on('data', (b: Buffer) => up.write(b));
      up.on('data', (b: Buffer) => {
        if (!this.blackhole) down.write(b);
      });
      this.pairs.add([down, up]);
    });
  }

  static async start(dir: string, upstream: string): Promise<Proxy> {
    const p = new Proxy(path.join(dir, 'proxy.sock'), upstream);
    await new Promise<void>((resolve) => p.server.listen(p.path, resolve));
    proxies.push(p);
    return p;
  }

  /** Drops every proxied connection, as a network failure would. */
  cut(): void {
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

async function setup(connectOptions: Parameters<ServerHarness['client']>[1] = {}) {
  const { broker, server } = await h.served({}, { heartbeatMs: 1000 });
  await broker.assertQueue('q');
  const proxy = await Proxy.start(h.dir(), server.socketPath as string);
  const client = await h.client(proxy.path, { reconnect: { initialDelayMs: 10, maxDelayMs: 50 }, ...connectOptions });
  return { broker, server, proxy, client };
}

describe('resending after a lost connection', () => {
  it('publishes the server stored but never confirmed are resent with the same ids and stored once', async () => {
    const { broker, proxy, client } = await setup();
    let reconnects = 0;
    client.on('reconnect', () => reconnects++);
    proxy.blackhole = true;
    const pending = Array.from({ length: 100 }, (_, i) => client.sendToQueue('q', `m${i}`, i % 2 === 0 ? { id: `caller-${i}` } : {}));
    // The server stores them all, but its confirmations are lost on the way back.
    await waitFor(() => broker.queueStats('q').endOffset === 100, 'the server to store all 100');
    await sleep(20);
    proxy.blackhole = false;
    proxy.cut();
    const results = await Promise.all(pending);
    expect(reconnects).toBe(1);
    // Each caller sees one confirmation; the broker found the resent ids in its dedupe window.
    expect(results.every((r) => r.status === 'confirmed')).toBe(true);
    expect(results.filter((_, i) => i % 2 === 0).map((r) => r.id)).toEqual(Array.from({ length: 50 }, (_, k) => `caller-${2 * k}`));
    expect(new Set(results.map((r) => r.id)).size).toBe(100);
    expect(broker.queueStats('q').endOffset).toBe(100);
    expect(broker.stats().duplicates).toBe(100);
  });

  it('calls made while disconnected wait for the reconnect, in order', async () => {
    const { broker, proxy, client } = await setup();
    proxy.refusing = true;
    proxy.cut();
    await waitFor(() => !client.connected, 'the client to notice');
    const later = [client.sendToQueue('q', 'a'), client.assertQueue('r'), client.sendToQueue('q', 'b'), client.listQueues()] as const;
    await sleep(100);
    expect(broker.queueStats('q').endOffset).toBe(0);
    proxy.refusing = false;
    const [a, r, b, queues] = await Promise.all(later);
    expect([a.status, b.status]).toEqual(['confirmed', 'confirmed']);
    expect(r.queue).toBe('r');
    expect(queues).toEqual(['q', 'r']);
  });

  it('a call not answered by its deadline fails with SPOOL_ERR_TIMEOUT and is not resent later', async () => {
    const { broker, proxy, client } = await setup({ timeoutMs: 300 });
    proxy.refusing = true;
    proxy.cut();
    const t0 = Date.now();
    const err = await client.sendToQueue('q', 'late', { id: 'late-1' }).catch((e: unknown) => e);
    expect(isSpoolError(err, 'SPOOL_ERR_TIMEOUT')).toBe(true);
    expect((err as Error).message).toMatch(/publish of id late-1 .*same id/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    const perCall = await client.sendToQueue('q', 'late', { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(isSpoolError(perCall, 'SPOOL_ERR_TIMEOUT')).toBe(true);
    expect(await client.listQueues().catch((e: unknown) => (isSpoolError(e) ? e.code : e))).toBe('SPOOL_ERR_TIMEOUT');
    proxy.refusing = false;
    await waitFor(() => client.connected, 'the reconnect');
    await sleep(50);
    expect(broker.queueStats('q').endOffset).toBe(0);
  });

  it('a request that is not safe to repeat fails SPOOL_ERR_DISCONNECTED when its connection drops', async () => {
    const { broker, proxy, client } = await setup();
    await broker.assertQueue('doomed');
    proxy.blackhole = true;
    const del = client.deleteQueue('doomed').catch((e: unknown) => e);
    const stats = client.queueStats('q');
    await waitFor(() => !broker.listQueues().includes('doomed'), 'the server to delete it');
    proxy.blackhole = false;
    proxy.cut();
    const err = await del;
    expect(isSpoolError(err, 'SPOOL_ERR_DISCONNECTED')).toBe(true);
    expect(isSpoolError(err) && err.retriable).toBe(true);
    // An idempotent one is simply answered after the reconnect.
    expect((await stats).queue).toBe('q');
  });

  it('with reconnect: false, a lost connection fails what is in flight and later calls', async () => {
    const { proxy, client } = await setup({ reconnect: false });
    proxy.blackhole = true;
    const p = client.sendToQueue('q', 'x').catch((e: unknown) => e);
    await sleep(20);
    proxy.cut();
    expect(isSpoolError(await p, 'SPOOL_ERR_DISCONNECTED')).toBe(true);
    // And at once for later calls: nothing will reconnect.
    expect(isSpoolError(await client.listQueues().catch((e: unknown) => e), 'SPOOL_ERR_DISCONNECTED')).toBe(true);
  });
});

describe('consumers across a lost connection', () => {
  it('are re-created after reconnecting; an ack for a delivery of the old connection is "unknown" and the message comes again', async () => {
    const { broker, proxy, client } = await setup();
    const held: RemoteMessage[] = [];
    await client.consume('q', (m) => void held.push(m), { group: 'g', ack: 'manual', prefetch: 10 });
    await broker.sendToQueue('q', 'first', { id: 'first' });
    await waitFor(() => held.length === 1, 'the first delivery');
    proxy.cut();
    await waitFor(() => held.length === 2, 'the redelivery after the consumer is re-created');
    expect(held[1]).toMatchObject({ id: 'first', redelivered: true });
    expect(await held[0]?.ack()).toBe('unknown');
    expect(await held[1]?.ack()).toBe('acked');
    await broker.sendToQueue('q', 'second', { id: 'second' });
    await waitFor(() => held.length === 3, 'new messages keep coming');
    expect(held[2]?.id).toBe('second');
    expect(broker.queueStats('q').groups.g?.consumers).toBe(1);
  });

  it('a consumer started while disconnected is created once, after the reconnect', async () => {
    const { broker, proxy, client } = await setup();
    const errors: Error[] = [];
    client.on('error', (e) => errors.push(e));
    proxy.refusing = true;
    proxy.cut();
    await waitFor(() => !client.connected, 'the client to notice');
    const got: string[] = [];
    const starting = client.consume('q', (m) => void got.push(m.body.toString()), { group: 'late' });
    await sleep(50);
    proxy.refusing = false;
    const consumer = await starting;
    await broker.sendToQueue('q', 'hello');
    await waitFor(() => got.length === 1, 'the delivery');
    expect(broker.queueStats('q').groups.late?.consumers).toBe(1);
    expect(errors).toEqual([]);
    await consumer.close();
    expect(broker.queueStats('q').groups.late?.consumers).toBe(0);
  });
});
