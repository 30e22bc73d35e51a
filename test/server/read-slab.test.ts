// Proves the client's reads into a slab (src/client/read-slab.ts): windows are lent one after another and never over bytes already read, a nearly used slab is replaced, and over a real socket messages from many reads keep their bodies intact while sharing slabs.
import { afterEach, describe, expect, it } from 'vitest';
import type { RemoteMessage } from '../../src/client/index.js';
import { READ_BYTES_MAX, READ_BYTES_MIN, ReadSlab, SLAB_BYTES } from '../../src/client/read-slab.js';
import { ServerHarness, waitFor } from './helpers.js';

const h = new ServerHarness();
afterEach(() => h.cleanup());

describe('ReadSlab', () => {
  it('lends consecutive windows of one slab, keeps what was read, and takes a fresh slab when too little is left', () => {
    // Proves the lending arithmetic: windows of READ_BYTES_MAX from 0, each after the bytes kept before it; a short read keeps only its bytes; a tail under READ_BYTES_MIN is never lent.
    expect(SLAB_BYTES).toBe(2 * READ_BYTES_MAX);
    const s = new ReadSlab();
    const w1 = s.next();
    expect(w1.length).toBe(READ_BYTES_MAX);
    expect(s.take(w1, 1000).length).toBe(1000);
    const w2 = s.next();
    expect(w2.buffer).toBe(w1.buffer);
    expect(w2.byteOffset).toBe(w1.byteOffset + 1000);
    expect(w2.length).toBe(READ_BYTES_MAX);
    s.take(w2, READ_BYTES_MAX);
    const w3 = s.next(); // what is left: a window shorter than the most
    expect(w3.buffer).toBe(w1.buffer);
    expect(w3.length).toBe(READ_BYTES_MAX - 1000);
    s.take(w3, READ_BYTES_MAX - 1000 - READ_BYTES_MIN + 1); // READ_BYTES_MIN - 1 left: too few
    const w4 = s.next();
    expect(w4.buffer).not.toBe(w1.buffer);
    expect(w4.byteOffset).toBe(0);
    expect(() => s.take(w4, READ_BYTES_MAX + 1)).toThrow(/window/);
  });
});

describe('client reads over a socket', () => {
  it('keeps every body intact across many reads, and bodies of different reads share a slab', async () => {
    // Proves the slab is only appended to: 3,000 held (unacked) deliveries of distinct 1,000-byte bodies, ~3.7 MB over many reads, all read back intact; and one slab holds more bodies than one 64 KiB stream read could (per-read buffers never did).
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
