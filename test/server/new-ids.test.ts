// Proves the PUBLISH flag NEW_ID (docs/protocol.md §3): the server records such an id without a
// lookup only when the client negotiated FEATURE_NEW_IDS, a later publish of the id is still a
// duplicate, and the client sets the flag on a publish's first attempt of an id it made, never on a
// resend or a caller's id.
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import * as codec from '../../src/server/wire/codec.js';
import { FEATURE_NEW_IDS, FrameType, PUBLISH_NEW_ID, PUBLISH_TO_QUEUE } from '../../src/server/wire/constants.js';
import { FrameReader } from '../../src/server/wire/frame-reader.js';
import { FrameWriter } from '../../src/server/wire/frame-writer.js';
import { RawClient, ServerHarness, helloFrame, waitFor } from './helpers.js';

type Frame = RawClient['frames'][number];

const h = new ServerHarness();
const fakes: net.Server[] = [];
afterEach(async () => {
  for (const s of fakes.splice(0)) s.close();
  await h.cleanup();
});

async function rawSession(socketPath: string, features: string[]): Promise<{ raw: RawClient; w: FrameWriter; welcome: { features?: string[] } }> {
  const raw = await RawClient.open({ path: socketPath });
  h.track(raw.socket);
  raw.send(helloFrame({ features }));
  await waitFor(() => raw.ofType(FrameType.WELCOME).length === 1, 'WELCOME');
  const welcome = JSON.parse((raw.ofType(FrameType.WELCOME)[0] as Frame).payload.toString('utf8', 1)) as { features?: string[] };
  return { raw, w: new FrameWriter(raw.socket), welcome };
}

/** Publishes `id` to queue q with `flags` and waits for its CONFIRM's status. */
async function publish(raw: RawClient, w: FrameWriter, rid: number, id: string, flags: number): Promise<string> {
  codec.encodePublish(w, rid, PUBLISH_TO_QUEUE | flags, 'q', '', id, '', Buffer.from(id));
  w.flush();
  await waitFor(() => raw.frames.some((f) => f.requestId === rid && f.type === FrameType.CONFIRM), `confirm of ${rid}`);
  const f = raw.frames.find((x) => x.requestId === rid && x.type === FrameType.CONFIRM) as Frame;
  return codec.decodeConfirm(f.payload).status;
}

describe('PUBLISH flag NEW_ID on the server', () => {
  it('negotiated: the id is recorded without a lookup, and a later publish of it is a duplicate', async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    const { raw, w, welcome } = await rawSession(server.socketPath as string, [FEATURE_NEW_IDS]);
    expect(welcome.features).toEqual([FEATURE_NEW_IDS]);
    expect(await publish(raw, w, 1, 'n-1', PUBLISH_NEW_ID)).toBe('confirmed');
    // The resend of a client (no flag) finds it, as does an embedded publish of the same id.
    expect(await publish(raw, w, 2, 'n-1', 0)).toBe('duplicate');
    expect((await broker.sendToQueue('q', 'again', { id: 'n-1' })).status).toBe('duplicate');
    expect(broker.queueStats('q').endOffset).toBe(1);
  });

  it('not negotiated: the flag is ignored and every publish is looked up', async () => {
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    const { raw, w, welcome } = await rawSession(server.socketPath as string, []);
    expect(welcome.features).toBeUndefined();
    expect(await publish(raw, w, 1, 'o-1', PUBLISH_NEW_ID)).toBe('confirmed');
    // Taken at its word, this second NEW_ID would store the id twice.
    expect(await publish(raw, w, 2, 'o-1', PUBLISH_NEW_ID)).toBe('duplicate');
    expect(broker.queueStats('q').endOffset).toBe(1);
  });
});

describe('PUBLISH flag NEW_ID from the client', () => {
  /** A fake server that records each PUBLISH's id and flags. It answers none on the first connection and drops it after `dropAfter`; later connections get CONFIRMs. */
  async function fakeServer(features: string[], dropAfter: number) {
    const dir = h.dir('spool-fake-');
    const sock = path.join(dir, 'fake.sock');
    const publishes: { conn: number; id: string; newId: boolean }[] = [];
    let conns = 0;
    const srv = net.createServer((s) => {
      h.track(s);
      const conn = ++conns;
      const w = new FrameWriter(s);
      const reader = new FrameReader(1 << 24, (type, requestId, buf, start, end) => {
        if (type === FrameType.HELLO) {
          codec.encodeWelcome(w, { heartbeatMs: 60_000, maxFrameBytes: 1 << 24, features });
        } else if (type === FrameType.PUBLISH) {
          const f = codec.decodePublish(buf, undefined, start, end);
          publishes.push({ conn, id: f.id, newId: f.newId });
          if (conn === 1) {
            if (publishes.length >= dropAfter) s.destroy();
            return;
          }
          codec.encodeConfirm(w, requestId, 'confirmed', ['q'], '');
        }
        w.flush();
      });
      s.on('data', (c: Buffer) => reader.push(c));
      s.on('error', () => {});
    });
    await new Promise<void>((resolve) => srv.listen(sock, resolve));
    fakes.push(srv);
    return { url: `unix://${sock}`, publishes };
  }

  it('sets it on the first attempt of an id the client made, not on its resend nor on a caller id', async () => {
    const fake = await fakeServer([FEATURE_NEW_IDS], 2);
    const c = await h.client(fake.url, { reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
    // The first connection drops at the second publish, both unanswered: both are sent again on the next one.
    const results = await Promise.all([c.sendToQueue('q', 'a'), c.sendToQueue('q', 'b', { id: 'mine' })]);
    const made = (results[0] as { id: string }).id;
    expect(fake.publishes).toEqual([
      { conn: 1, id: made, newId: true },
      { conn: 1, id: 'mine', newId: false },
      { conn: 2, id: made, newId: false },
      { conn: 2, id: 'mine', newId: false },
    ]);
  });

  it('never sets it for a server that does not name the feature', async () => {
    const fake = await fakeServer([], 2);
    const c = await h.client(fake.url, { reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
    await Promise.all([c.sendToQueue('q', 'a'), c.publish('x', 'k', 'b')]);
    expect(fake.publishes.map((p) => [p.conn, p.newId])).toEqual([
      [1, false],
      [1, false],
      [2, false],
      [2, false],
    ]);
  });
});
