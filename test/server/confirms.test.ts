// Proves CONFIRMS (docs/protocol.md §3): a client that announces the feature in HELLO gets one frame for a run of pipelined publishes with the same answer, a client that does not (an older one) gets one CONFIRM each, the last confirms go out before the server's CLOSE, and the client resolves every publish of a CONFIRMS, refusing one that names a request that is not a publish.
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { connect } from '../../src/client/index.js';
import { isSpoolError } from '../../src/errors.js';
import * as codec from '../../src/server/wire/codec.js';
import { FEATURE_CONFIRMS, FrameType, PUBLISH_TO_QUEUE } from '../../src/server/wire/constants.js';
import { FrameReader, frameViews } from '../../src/server/wire/frame-reader.js';
import { FrameWriter } from '../../src/server/wire/frame-writer.js';
import { RawClient, ServerHarness, frame, helloFrame, waitFor } from './helpers.js';

const h = new ServerHarness();
const fakes: net.Server[] = [];
afterEach(async () => {
  for (const f of fakes.splice(0)) f.close();
  await h.cleanup();
});

/** `n` PUBLISH frames to queue `q`, request ids from `first` up, in one buffer (one write). */
function publishes(first: number, n: number): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const q = Buffer.from('q');
    const id = Buffer.from(`id-${first + i}`);
    const payload = Buffer.alloc(1 + 2 + q.length + 4 + 2 + id.length + 4 + 1);
    let p = 0;
    payload[p++] = PUBLISH_TO_QUEUE;
    p = payload.writeUInt16LE(q.length, p);
    p += q.copy(payload, p);
    p = payload.writeUInt32LE(0, p);
    p = payload.writeUInt16LE(id.length, p);
    p += id.copy(payload, p);
    p = payload.writeUInt32LE(0, p);
    payload[p] = 0x61;
    parts.push(frame(FrameType.PUBLISH, first + i, payload));
  }
  return Buffer.concat(parts);
}

/** The request ids a raw client's CONFIRM and CONFIRMS frames answer, in order. */
function confirmedIds(raw: RawClient): number[] {
  const ids: number[] = [];
  for (const f of raw.frames) {
    if (f.type === FrameType.CONFIRM) ids.push(f.requestId);
    if (f.type === FrameType.CONFIRMS) {
      const { count, status, queues } = codec.decodeConfirms(f.payload);
      expect({ status, queues }).toEqual({ status: 'confirmed', queues: ['q'] });
      for (let k = 0; k < count; k++) ids.push(f.requestId + k);
    }
  }
  return ids;
}

async function rawSession(features: string[] | undefined): Promise<{ raw: RawClient; close: () => Promise<void> }> {
  const { broker, server } = await h.served();
  await broker.assertQueue('q');
  const raw = await RawClient.open({ path: path.join(broker.dataDir, 'spool.sock') });
  h.track(raw.socket);
  raw.send(helloFrame(features === undefined ? {} : { features }));
  await waitFor(() => raw.ofType(FrameType.WELCOME).length === 1, 'WELCOME');
  return { raw, close: () => server.close() };
}

describe('CONFIRMS', () => {
  it('answers a run of pipelined publishes with one frame when the client announced the feature', async () => {
    // Proves the server side: 200 publishes in one write come back as far fewer frames than publishes, each request id answered once, in order.
    const { raw } = await rawSession([FEATURE_CONFIRMS]);
    raw.send(publishes(1, 200));
    await waitFor(() => confirmedIds(raw).length === 200, '200 confirmations');
    expect(confirmedIds(raw)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(raw.ofType(FrameType.CONFIRMS).length).toBeGreaterThan(0);
    expect(raw.ofType(FrameType.CONFIRMS).length + raw.ofType(FrameType.CONFIRM).length).toBeLessThan(20);
  });

  it('sends one CONFIRM per publish to a client that did not announce it (an older client)', async () => {
    // Proves compatibility: without `features` in HELLO no CONFIRMS is ever sent.
    const { raw } = await rawSession(undefined);
    raw.send(publishes(1, 200));
    await waitFor(() => raw.ofType(FrameType.CONFIRM).length === 200, '200 CONFIRM frames');
    expect(raw.ofType(FrameType.CONFIRMS)).toEqual([]);
  });

  it('writes the confirms of a run before CLOSE when the server shuts down', async () => {
    // Proves ordering at shutdown: every publish in flight is answered, and CLOSE is the last frame.
    const { raw, close } = await rawSession([FEATURE_CONFIRMS]);
    raw.send(publishes(1, 300));
    await waitFor(() => confirmedIds(raw).length > 0, 'the first confirmations');
    await close();
    await raw.waitClosed();
    expect(confirmedIds(raw)).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
    expect(raw.frames[raw.frames.length - 1]?.type).toBe(FrameType.CLOSE);
  });

  it('HELLO carries the features a client takes; unknown names and non-strings are ignored', () => {
    // Proves the codec: a newer client's feature names pass through, junk does not.
    const frames: Buffer[] = [];
    const r = new FrameReader(1 << 20, frameViews((_t, _r, p) => frames.push(Buffer.from(p))));
    const socket = { destroyed: false, writableLength: 0, write: (b: Buffer) => (r.push(Buffer.from(b)), true), cork() {}, uncork() {} };
    const w = new FrameWriter(socket as unknown as net.Socket);
    codec.encodeHello(w, { features: [FEATURE_CONFIRMS, 'from-the-future'] });
    w.flush();
    expect(codec.decodeHello(frames[0] as Buffer).features).toEqual([FEATURE_CONFIRMS, 'from-the-future']);
    const junk = Buffer.concat([Buffer.from('SPMQ\x01', 'latin1'), Buffer.from(JSON.stringify({ features: ['a', 7, null] }))]);
    expect(codec.decodeHello(junk).features).toEqual(['a']);
    expect(codec.decodeHello(Buffer.from('SPMQ\x01{}', 'latin1')).features).toBeUndefined();
  });
});

/** A fake server on a unix socket: WELCOME, then `answer` for the PUBLISH frames of each read. */
async function fakeServer(answer: (w: FrameWriter, publishIds: number[]) => void): Promise<{ url: string; hellos: Record<string, unknown>[]; writers: FrameWriter[] }> {
  const dir = h.dir('spool-fake-');
  const sock = path.join(dir, 'fake.sock');
  const hellos: Record<string, unknown>[] = [];
  const writers: FrameWriter[] = [];
  const srv = net.createServer((s) => {
    h.track(s);
    const w = new FrameWriter(s);
    writers.push(w);
    let ids: number[] = [];
    const reader = new FrameReader(1 << 24, (type, requestId, buf, start, end) => {
      if (type === FrameType.HELLO) {
        hellos.push(JSON.parse(buf.toString('utf8', start + 5, end)) as Record<string, unknown>);
        codec.encodeWelcome(w, { heartbeatMs: 60_000, maxFrameBytes: 1 << 24 });
      } else if (type === FrameType.PUBLISH) {
        ids.push(requestId);
      }
    });
    s.on('data', (c: Buffer) => {
      reader.push(c);
      if (ids.length > 0) {
        answer(w, ids);
        ids = [];
      }
    });
    s.on('error', () => {});
  });
  await new Promise<void>((resolve) => srv.listen(sock, resolve));
  fakes.push(srv);
  return { url: `unix://${sock}`, hellos, writers };
}

describe('the client and CONFIRMS', () => {
  it('announces the feature and resolves every publish a CONFIRMS answers', async () => {
    // Proves the client side: one CONFIRMS for all publishes of a write resolves each with its own id and the common status and queues.
    const fake = await fakeServer((w, ids) => codec.encodeConfirms(w, ids[0] as number, ids.length, 'confirmed', ['a', 'b']));
    const c = await connect(fake.url, { reconnect: false });
    try {
      const results = await Promise.all(Array.from({ length: 50 }, (_, i) => c.publish('x', 'k', `m${i}`, { id: `id-${i}` })));
      expect(fake.hellos[0]?.features).toContain(FEATURE_CONFIRMS);
      results.forEach((r, i) => expect(r).toEqual({ id: `id-${i}`, status: 'confirmed', queues: ['a', 'b'] }));
    } finally {
      await c.close();
    }
  });

  it('fails the connection on a CONFIRMS that names a request which is not a publish', async () => {
    // Proves the guard: answering a REQUEST with CONFIRMS is a protocol error, as any malformed frame from the server.
    const fake = await fakeServer(() => {});
    const c = await connect(fake.url, { reconnect: false });
    c.on('error', () => {});
    // The fake never answers requests: answer this one with a CONFIRMS instead.
    const pending = c.queueStats('q').catch((err: unknown) => err);
    await waitFor(() => fake.writers.length === 1, 'the connection');
    await new Promise((r) => setTimeout(r, 20));
    const w = fake.writers[0] as FrameWriter;
    codec.encodeConfirms(w, 1, 1, 'confirmed', []);
    w.flush();
    const err = await pending;
    expect(isSpoolError(err, 'SPOOL_ERR_PROTOCOL'), String(err)).toBe(true);
    await c.close().catch(() => {});
  });
});
