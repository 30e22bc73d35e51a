// Proves the client's reads into a slab (src/client/read-slab.ts): windows are lent one after another and never over bytes already read, a nearly used slab is replaced, and over a real socket messages from many reads keep their bodies intact while sharing slabs.
import { afterEach, describe, expect, it } from 'vitest';
import type { RemoteMessage } from '../../src/client/index.js';
import { ReadSlab } from '../../src/client/read-slab.js';
import { ServerHarness, waitFor } from './helpers.js';

const h = new ServerHarness();
afterEach(() => h.cleanup());

describe('ReadSlab', () => {
  it('lends consecutive windows of one slab, keeps what was read, and takes a fresh slab when under 16 KiB is left', () => {
    // Proves the lending arithmetic: 64 KiB windows from 0, each after the bytes kept before it; a short read keeps only its bytes; a tail of < 16 KiB is never lent.
    const s = new ReadSlab();
    const w1 = s.next();
    expect(w1.length).toBe(64 * 1024);
    const got1 = s.take(w1, 1000);
    expect(got1.length).toBe(1000);
    const w2 = s.next();
    expect(w2.buffer).toBe(w1.buffer);
    expect(w2.byteOffset).toBe(w1.byteOffset + 1000);
    s.take(w2, 64 * 1024);
    const w3 = s.next();
    s.take(w3, 64 * 1024);
    const w4 = s.next(); // 256 KiB - 1000 - 128 KiB left: a full window
    expect(w4.length).toBe(64 * 1024);
    s.take(w4, 64 * 1024 - 2000); // 256 KiB - 1000 - 192 KiB + 2000 = 65,536 + 1,000 left
    const w5 = s.next();
    expect(w5.buffer).toBe(w1.buffer);
    expect(w5.length).toBe(64 * 1024);
    s.take(w5, 64 * 1024 - 100); // 1,100 bytes left: too few
    const w6 = s.next();
    expect(w6.buffer).not.toBe(w1.buffer);
    expect(w6.byteOffset).toBe(0);
    expect(() => s.take(w6, 64 * 1024 + 1)).toThrow(/window/);
  });
});

describe('client reads over a socket', () => {
  it('keeps every body intact across many reads, and bodies of different reads share a slab', async () => {
    // Proves the slab is only appended to: 3,000 held (unacked) deliveries of distinct 1,000-byte bodies, ~3.7 MB over many reads, all read back intact; and one slab holds more bodies than one 64 KiB read could (per-read buffers never did).
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    const n = 3000;
    for (let i = 0; i < n; i += 500) {
      await Promise.all(Array.from({ length: 500 }, (_, k) => broker.sendToQueue('q', Buffer.alloc(1000, (i + k) % 251), { id: `m-${i + k}` })));
    }
    const client = await h.client(server.url);
    const held: RemoteMessage[] = [];
    await client.consume('q', (m) => void held.push(m), { group: 'g', ack: 'manual', prefetch: n });
    await waitFor(() => held.length === n, 'every delivery', 10_000);
    const byId = new Map(held.map((m) => [m.id, m]));
    for (let i = 0; i < n; i++) {
      const body = (byId.get(`m-${i}`) as RemoteMessage).body;
      expect(body.equals(Buffer.alloc(1000, i % 251)), `body of m-${i}`).toBe(true);
    }
    const perBuffer = new Map<ArrayBufferLike, number>();
    for (const m of held) perBuffer.set(m.body.buffer, (perBuffer.get(m.body.buffer) ?? 0) + 1);
    expect(Math.max(...perBuffer.values())).toBeGreaterThan(Math.ceil((64 * 1024) / 1000));
  });
});
