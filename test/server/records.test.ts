// Proves RECORDS and DONE_RUNS (docs/protocol.md §3): a delivery carrying the stored record gives the client exactly the fields the embedded Message has (and the DELIVERY frame gave), runs of deliveries split and merge correctly, malformed frames are refused before any handler runs, DONE_RUNS settles exactly the tags it names in the order the handlers ended, and both features are negotiated so that old clients and old servers keep working.
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Message } from '../../src/broker/delivery.js';
import { Log } from '../../src/log/index.js';
import { RemoteMessage, type RemoteSettler } from '../../src/client/remote-message.js';
import { isSpoolError } from '../../src/errors.js';
import * as codec from '../../src/server/wire/codec.js';
import { FEATURE_CONFIRMS, FEATURE_DONE_RUNS, FEATURE_NEW_IDS, FEATURE_RECORDS, FrameType, RECORDS_ENTRY_FIXED_BYTES, TAG_MAX } from '../../src/server/wire/constants.js';
import { FrameReader, frameViews } from '../../src/server/wire/frame-reader.js';
import { FrameWriter, ZERO_COPY_BODY_BYTES } from '../../src/server/wire/frame-writer.js';
import { seededRandom } from '../support/faulty-storage.js';
import { RawClient, ServerHarness, frame, helloFrame, sleep, waitFor } from './helpers.js';

const h = new ServerHarness();
const fakes: net.Server[] = [];
afterEach(async () => {
  for (const f of fakes.splice(0)) f.close();
  await h.cleanup();
});

type Frame = { type: number; requestId: number; payload: Buffer };

/** Encodes with `encode` through a FrameWriter on a socket stand-in, then cuts the bytes back into frames. */
function frames(encode: (w: FrameWriter) => void): Frame[] {
  const writes: Buffer[] = [];
  const socket = { destroyed: false, writableLength: 0, write: (b: Buffer) => (writes.push(Buffer.from(b)), true), cork() {}, uncork() {} };
  const w = new FrameWriter(socket as unknown as net.Socket);
  encode(w);
  w.flush();
  const out: Frame[] = [];
  const r = new FrameReader(1 << 26, frameViews((type, requestId, payload) => out.push({ type, requestId, payload: Buffer.from(payload) })));
  for (const b of writes) r.push(b);
  expect(r.midFrame).toBe(false);
  return out;
}

const settler: RemoteSettler = { settle: () => Promise.resolve('unknown') };

/** The deliveries of a RECORDS payload as the client sees them: consumer id, and one RemoteMessage each. */
function readRecords(payload: Buffer): { consumerId: number; msgs: RemoteMessage[] } {
  const count = codec.recordsCount(payload, 0, payload.length);
  const layout = codec.newDeliveryLayout();
  const msgs: RemoteMessage[] = [];
  let rec = 8 + count * RECORDS_ENTRY_FIXED_BYTES;
  for (let i = 0; i < count; i++) {
    rec = codec.scanRecordEntry(payload, layout, 0, count, i, rec, payload.length);
    msgs.push(new RemoteMessage(payload, layout, 'q', 1, false, settler));
  }
  return { consumerId: payload.readUInt32LE(0), msgs };
}

/** What a handler can read of a delivered message, embedded or remote. */
function fieldsOf(m: Message | RemoteMessage, tag?: number) {
  return {
    id: m.id,
    exchange: m.exchange,
    routingKey: m.routingKey,
    headers: m.headers,
    body: m.body.toString('hex'),
    offset: m.offset,
    timestamp: m.timestamp,
    deliveryId: m.deliveryId,
    deliveryCount: m.deliveryCount,
    ...(tag !== undefined ? { tag } : {}),
  };
}

/** Publishes a varied set of messages embedded and returns their deliveries (manual, unsettled). */
async function storedMessages(): Promise<Message[]> {
  const b = await h.broker();
  await b.assertExchange('ex', 'topic');
  await b.assertQueue('q');
  await b.bindQueue('q', 'ex', '#');
  await b.publish('ex', 'a.b', 'body', { id: 'm-1', headers: { h: [1], ü: '✓', nested: { x: null } } });
  await b.sendToQueue('q', ''); // generated id, empty body, no headers
  await b.publish('ex', 'order.créé', Buffer.from([0, 1, 2, 255]), { id: 'ид-2' });
  await b.publish('ex', 'big', Buffer.alloc(ZERO_COPY_BODY_BYTES + 5, 0xab), { id: 'big' });
  // Headers shaped like the wire JSON's markers stay plain objects, as embedded.
  await b.publish('ex', 'ttl', 'expires later', { id: 'ttl', ttl: 3_600_000, headers: { k: 'v', when: { $date: 5 }, gone: { $undefined: true } } });
  await b.publishBatch('ex', [
    { routingKey: 'batch', body: 'b1' },
    { routingKey: 'batch', body: 'b2', headers: { n: 2 } },
    { routingKey: 'batch', body: 'b3', id: 'caller' },
  ]);
  const got: Message[] = [];
  await b.consume('q', (m) => void got.push(m), { ack: 'manual', prefetch: 100 });
  await waitFor(() => got.length === 8, 'eight deliveries');
  return got;
}

describe('LogRecord, as the server reads it', () => {
  it('finds every header by name, broker names included, and lies where it was stored', async () => {
    // Proves the record accessors RECORDS relies on: headerText/headerBytes agree with the header map for names that share the broker-name shortcut's bit (x and X), non-ASCII ones, and absent ones; the value is the same view on every access; storedStart/End span the record as stored, back to back.
    const dir = h.dir('spool-rec-');
    const { log } = await Log.open(dir);
    try {
      const headerSets: Record<string, string>[] = [
        { '\0m': 'ex\0rk', '\0x': '5' },
        { '\0m': 'ex\0rk', '\0X': 'upper' },
        { '\0é': 'two bytes', plain: 'p', '\0': 'short', '\0xx': 'long' },
        {},
        { '\0u': '' },
      ];
      await log.append(headerSets.map((headers, i) => ({ value: `v${i}`, key: i === 3 ? null : `k${i}`, headers })));
      const records = await log.read(0);
      expect(records.length).toBe(headerSets.length);
      const names = ['\0m', '\0x', '\0X', '\0é', '\0', '\0xx', '\0u', '\0h', 'plain', 'absent', '\0\u0078'];
      records.forEach((r, i) => {
        const stored = headerSets[i] as Record<string, string>;
        for (const name of names) {
          expect(r.headerText(name), `record ${i} ${JSON.stringify(name)}`).toBe(stored[name]);
          expect(r.headerBytes(name)?.toString(), `record ${i} ${JSON.stringify(name)}`).toBe(stored[name]);
          expect(r.headers[name]?.toString()).toBe(stored[name]);
        }
        expect(r.value).toBe(r.value);
        expect(r.value.toString()).toBe(`v${i}`);
        expect(r.keyText()).toBe(i === 3 ? '' : `k${i}`);
        if (i > 0) expect(r.storedStart).toBe((records[i - 1] as (typeof records)[number]).storedEnd);
        expect(r.storedBuffer.readUInt32LE(r.storedStart) + 4).toBe(r.storedEnd - r.storedStart);
      });
    } finally {
      await log.close();
    }
  });
});

describe('RECORDS codec', () => {
  it('gives the client every field of the embedded Message, the same as a DELIVERY frame does', async () => {
    // Proves the record layout is read right: id, route halves, headers JSON, body, offset, timestamp, delivery id and count, tag, for ids and keys in UTF-8, empty and zero-copy bodies, and records with dedupe and expiry headers.
    const msgs = await storedMessages();
    const tags = msgs.map((_, i) => 100 + i);
    const fs = frames((w) => {
      for (let i = 0; i < msgs.length; ) i = codec.encodeRecords(w, 64 * 1024, msgs.map(() => 7), msgs, tags, i, msgs.length);
    });
    // The big record goes alone (by reference): the frames before and after it hold the rest.
    expect(fs.map((f) => f.type)).toEqual([FrameType.RECORDS, FrameType.RECORDS, FrameType.RECORDS]);
    const remote = fs.flatMap((f) => readRecords(f.payload).msgs);
    expect(remote.map((m) => fieldsOf(m, m.tag))).toEqual(msgs.map((m, i) => fieldsOf(m, tags[i])));
    // The same message through the old DELIVERY frame decodes to the same fields.
    for (const m of msgs) {
      const r = m.record;
      const f = frames((w) =>
        codec.encodeDeliveryBytes(w, 7, 9, r.offset, r.timestamp, m.deliveryId, m.deliveryCount, r.key, r.headerBytes('\0m'), r.headerNames < 2 ? undefined : r.headerBytes('\0h'), r.value),
      )[0] as Frame;
      const viaDelivery = new RemoteMessage(f.payload, codec.scanDelivery(f.payload, codec.newDeliveryLayout()), 'q', 1, false, settler);
      expect(fieldsOf(viaDelivery)).toEqual(fieldsOf(m));
    }
  });

  it('splits runs by consumer, by size and at big records, and keeps any order of records', async () => {
    // Proves encodeRecords: each frame holds one consumer's deliveries in a row, within bytesMax (one at least), and records that are not back to back (out of order, a gap) are copied each from their place.
    const msgs = await storedMessages();
    const small = msgs.filter((m) => m.body.length < ZERO_COPY_BODY_BYTES);
    const order = [0, 1, 2, 6, 5, 3, 4, 6, 0].map((i) => small[i % small.length] as Message);
    const consumers = [1, 1, 1, 2, 2, 1, 1, 1, 1];
    const tags = order.map((_, i) => i + 1);
    for (const bytesMax of [1, 200, 400, 64 * 1024]) {
      const fs = frames((w) => {
        for (let i = 0; i < order.length; ) i = codec.encodeRecords(w, bytesMax, consumers, order, tags, i, order.length);
      });
      const got: { consumer: number; tag: number; id: string; body: string }[] = [];
      for (const f of fs) {
        expect(f.type).toBe(FrameType.RECORDS);
        const { consumerId, msgs: ms } = readRecords(f.payload);
        if (ms.length > 1) expect(f.payload.length, `bytesMax ${bytesMax}`).toBeLessThanOrEqual(bytesMax);
        for (const m of ms) got.push({ consumer: consumerId, tag: m.tag, id: m.id, body: m.body.toString('hex') });
      }
      expect(got, `bytesMax ${bytesMax}`).toEqual(order.map((m, i) => ({ consumer: consumers[i], tag: tags[i], id: m.id, body: m.body.toString('hex') })));
      if (bytesMax === 1) expect(fs.length).toBe(order.length);
      if (bytesMax === 64 * 1024) expect(fs.length).toBe(3); // consumer 1, 2, 1
    }
  });

  it('refuses malformed frames with SPOOL_ERR_PROTOCOL', async () => {
    // Proves the client-side checks: every length in an entry and its record is bounded by the frame, the value must end the record, the headers JSON must be an object, and nothing may follow the last record.
    const msgs = await storedMessages();
    const m = msgs[0] as Message; // key m-1, headers \0m \0u \0h
    const good = (frames((w) => codec.encodeRecords(w, 64 * 1024, [3], [m], [1], 0, 1))[0] as Frame).payload;
    expect(readRecords(good).msgs[0]?.id).toBe('m-1');
    const rec = 8 + RECORDS_ENTRY_FIXED_BYTES;
    const mutate = (f: (b: Buffer) => Buffer | void) => {
      const b = Buffer.from(good);
      return f(b) ?? b;
    };
    const headersJson = Buffer.from(JSON.stringify(m.headers));
    const headerJsonAt = good.indexOf(headersJson);
    expect(headerJsonAt).toBeGreaterThan(0);
    const cases: [string, Buffer][] = [
      ['truncated before the count', good.subarray(0, 6)],
      ['count 0', mutate((b) => void b.writeUInt32LE(0, 4))],
      ['count past the payload', mutate((b) => void b.writeUInt32LE(2, 4))],
      ['a huge count', mutate((b) => void b.writeUInt32LE(0xffffffff, 4))],
      ['a u64 offset past 2^53', mutate((b) => void b.writeUInt32LE(0x0020_0000, 8 + 8))],
      ['cut inside the record', good.subarray(0, good.length - 1)],
      ['trailing bytes', Buffer.concat([good, Buffer.from([0])])],
      ['record length past the frame', mutate((b) => void b.writeUInt32LE(b.readUInt32LE(rec) + 1, rec))],
      ['record length below the minimum', mutate((b) => void b.writeUInt32LE(3, rec))],
      ['key length past the record', mutate((b) => void b.writeInt32LE(10_000, rec + 12))],
      ['negative key length other than -1', mutate((b) => void b.writeInt32LE(-2, rec + 12))],
      ['a header length past the record', mutate((b) => void b.writeUInt32LE(10_000, rec + 16 + 3 + 2 + 2 + 2))],
      ['more headers than there are', mutate((b) => void b.writeUInt16LE(9, rec + 16 + 3))],
      ['fewer headers than there are (the value then does not end the record)', mutate((b) => void b.writeUInt16LE(1, rec + 16 + 3))],
      ['headers JSON that is not JSON', mutate((b) => void b.write('[', headerJsonAt))],
      ['headers JSON that is not an object', mutate((b) => void b.write(`[${' '.repeat(headersJson.length - 2)}]`, headerJsonAt))],
    ];
    for (const [name, payload] of cases) {
      expect(() => readRecords(payload), name).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
    }
  });
});

describe('DONE_RUNS codec', () => {
  /** Encodes the outcomes with encodeDoneRuns, then reads the frames back in order: one [tag, failure] per delivery. */
  function roundTrip(tags: number[], failures: Map<number, string>): { outcomes: [number, string | null][]; frames: Frame[] } {
    const fs = frames((w) => codec.encodeDoneRuns(w, tags, tags.length, failures));
    const outcomes: [number, string | null][] = [];
    for (const f of fs) {
      if (f.type === FrameType.DONE) codec.decodeDone(f.payload, (tag, failure) => void outcomes.push([tag, failure]));
      else if (f.type === FrameType.DONE_RUNS) {
        codec.decodeDoneRuns(f.payload, 0, f.payload.length, (first, count) => {
          for (let t = first; t < first + count; t++) outcomes.push([t, null]);
        });
      } else throw new Error(`unexpected frame ${f.type}`);
    }
    return { outcomes, frames: fs };
  }

  it('carries each outcome exactly once, in order, for any mix of runs, gaps, wraps and failures', () => {
    // Proves exactness against a model: a run that named one tag too many or too few, or a failure out of its place, would change the decoded sequence.
    const rnd = seededRandom(11);
    for (let round = 0; round < 300; round++) {
      const n = 1 + Math.floor(rnd() * 200);
      let tag = rnd() < 0.2 ? TAG_MAX - Math.floor(rnd() * 20) : 1 + Math.floor(rnd() * 1000);
      const tags: number[] = [];
      const failures = new Map<number, string>();
      for (let i = 0; i < n; i++) {
        tags.push(tag);
        if (rnd() < 0.05) failures.set(i, rnd() < 0.5 ? '' : `failed ${i} ✗`);
        const r = rnd();
        tag = r < 0.85 ? tag + 1 : r < 0.95 ? tag + 2 + Math.floor(rnd() * 5) : 1 + Math.floor(rnd() * 50);
        if (tag > TAG_MAX) tag = 1;
      }
      const { outcomes } = roundTrip(tags, failures);
      expect(outcomes, `round ${round}`).toEqual(tags.map((t, i) => [t, failures.get(i) ?? null]));
    }
  });

  it('sends a drain in order as one run of 8 bytes, and splits at a wrap and around failures', () => {
    // Proves the encoding's shape: consecutive successes are one run; a failure goes in a DONE between the runs before and after it.
    const seq = Array.from({ length: 1000 }, (_, i) => i + 1);
    const one = roundTrip(seq, new Map());
    expect(one.frames.map((f) => [f.type, f.payload.length])).toEqual([[FrameType.DONE_RUNS, 8]]);
    const wrap = roundTrip([TAG_MAX - 1, TAG_MAX, 1, 2], new Map());
    expect(wrap.frames.map((f) => [f.type, f.payload.length])).toEqual([[FrameType.DONE_RUNS, 16]]);
    const mixed = roundTrip(seq.slice(0, 10), new Map([[4, 'bad'], [5, 'worse']]));
    expect(mixed.frames.map((f) => f.type)).toEqual([FrameType.DONE_RUNS, FrameType.DONE, FrameType.DONE_RUNS]);
  });

  it('refuses malformed runs with SPOOL_ERR_PROTOCOL and acts on none of a bad frame', () => {
    // Proves the validation: empty, partial, 0 tags, from tag 0, past TAG_MAX; the good run before a bad one is not reported.
    const runs = (...r: number[]) => {
      const b = Buffer.alloc(r.length * 4);
      r.forEach((v, i) => b.writeUInt32LE(v, i * 4));
      return b;
    };
    const seen: number[] = [];
    const each = (first: number) => void seen.push(first);
    for (const bad of [Buffer.alloc(0), Buffer.alloc(7), Buffer.alloc(12), runs(1, 0), runs(0, 5), runs(TAG_MAX, 2), runs(2, 0xffffffff), runs(1, 5, 9, 0)]) {
      expect(() => codec.decodeDoneRuns(bad, 0, bad.length, each), bad.toString('hex')).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
    }
    expect(seen).toEqual([]);
    codec.decodeDoneRuns(runs(TAG_MAX, 1, 1, TAG_MAX), 0, 16, each);
    expect(seen).toEqual([TAG_MAX, 1]);
  });
});

/** A raw connection that said HELLO with `features`, and what WELCOME answered. */
async function rawSession(socketPath: string, features: string[] | undefined): Promise<{ raw: RawClient; welcome: Record<string, unknown> }> {
  const raw = await RawClient.open({ path: socketPath });
  h.track(raw.socket);
  raw.send(helloFrame(features === undefined ? {} : { features }));
  await waitFor(() => raw.ofType(FrameType.WELCOME).length === 1, 'WELCOME');
  const welcome = JSON.parse((raw.ofType(FrameType.WELCOME)[0] as Frame).payload.toString('utf8', 1)) as Record<string, unknown>;
  return { raw, welcome };
}

function consumeFrame(rid: number, consumer: number, options: Record<string, unknown>): Buffer {
  return frame(FrameType.REQUEST, rid, JSON.stringify({ op: 'consume', args: ['q', options], consumer }));
}

function runs(...r: number[]): Buffer {
  const b = Buffer.alloc(r.length * 4);
  r.forEach((v, i) => b.writeUInt32LE(v, i * 4));
  return frame(FrameType.DONE_RUNS, 0, b);
}

/** The deliveries a raw client got in RECORDS frames: tag and id each. */
function recordsOf(raw: RawClient): { tag: number; id: string }[] {
  return raw.ofType(FrameType.RECORDS).flatMap((f) => readRecords(f.payload).msgs.map((m) => ({ tag: m.tag, id: m.id })));
}

describe('RECORDS frame size', () => {
  it('a run of deliveries goes in frames of at most 16 KiB of payload, so a 64 KiB socket read holds whole frames', async () => {
    // Proves the server cuts a run to a quarter of a socket read: 400 deliveries of ~200 B (~80 KB) arrive in several frames, none over 16 KiB, in order (at 64 KiB they came in two, each straddling reads).
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    for (let i = 0; i < 400; i++) await broker.sendToQueue('q', Buffer.alloc(100, i), { id: `id-${i}` });
    const { raw } = await rawSession(server.socketPath as string, [FEATURE_CONFIRMS, FEATURE_RECORDS, FEATURE_DONE_RUNS]);
    raw.send(consumeFrame(1, 1, { group: 'g', ack: 'manual', prefetch: 1000 }));
    await waitFor(() => recordsOf(raw).length === 400, '400 deliveries');
    const sizes = raw.ofType(FrameType.RECORDS).map((f) => f.payload.length);
    expect(sizes.length).toBeGreaterThan(3);
    for (const n of sizes) expect(n).toBeLessThanOrEqual(16 * 1024);
    expect(recordsOf(raw).map((d) => d.id)).toEqual(Array.from({ length: 400 }, (_, i) => `id-${i}`));
  });

  it('a big delivery task is written as its records pass 32 KiB, not all at its end', async () => {
    // Proves the early write (RECORDS_EARLY_WRITE_BYTES): 2,000 deliveries of ~170 B (~340 KB)
    // to one consumer with the credit for all of them. Written only at the end of each task they
    // left in 2-4 socket writes (one per pump task); now the server writes every ~32 KiB.
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    await broker.publishBatch('', Array.from({ length: 2000 }, (_, i) => ({ routingKey: 'q', body: Buffer.alloc(100, i), id: `id-${i}` })));
    const { raw } = await rawSession(server.socketPath as string, [FEATURE_CONFIRMS, FEATURE_RECORDS, FEATURE_DONE_RUNS]);
    const serverWrites: number[] = [];
    const write = net.Socket.prototype.write;
    net.Socket.prototype.write = function (this: net.Socket, ...args: Parameters<net.Socket['write']>) {
      if (this !== raw.socket && Buffer.isBuffer(args[0])) serverWrites.push(args[0].length);
      return write.apply(this, args);
    } as net.Socket['write'];
    try {
      raw.send(consumeFrame(1, 1, { group: 'g', ack: 'none', prefetch: 2000 }));
      await waitFor(() => recordsOf(raw).length === 2000, '2,000 deliveries');
    } finally {
      net.Socket.prototype.write = write;
    }
    expect(recordsOf(raw).map((d) => d.id)).toEqual(Array.from({ length: 2000 }, (_, i) => `id-${i}`));
    expect(serverWrites.length).toBeGreaterThanOrEqual(8);
    // Each write ends about when 32 KiB of records is reached (plus the frame headers and one record).
    for (const n of serverWrites) expect(n).toBeLessThan(48 * 1024);
  });
});

describe('DONE_RUNS on the server', () => {
  async function tenInFlight() {
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    for (let i = 0; i < 10; i++) await broker.sendToQueue('q', `m${i}`, { id: `id-${i}` });
    const { raw, welcome } = await rawSession(server.socketPath as string, [FEATURE_CONFIRMS, FEATURE_RECORDS, FEATURE_DONE_RUNS]);
    expect(welcome.features).toEqual([FEATURE_CONFIRMS, FEATURE_RECORDS, FEATURE_DONE_RUNS]);
    raw.send(consumeFrame(1, 1, { group: 'g', ack: 'auto', prefetch: 100 }));
    await waitFor(() => recordsOf(raw).length === 10, 'ten deliveries');
    expect(raw.ofType(FrameType.DELIVERY)).toEqual([]);
    expect(recordsOf(raw)).toEqual(Array.from({ length: 10 }, (_, i) => ({ tag: i + 1, id: `id-${i}` })));
    const stats = () => broker.queueStats('q').groups.g as { committed: number; inFlight: number };
    return { broker, raw, stats };
  }

  it('acks exactly the tags a run names, not one more or one less', async () => {
    // Proves the server side of a run: tags 1-4 acked (committed 4, six still in flight), then 5-10; tags it never issued are ignored.
    const { raw, stats } = await tenInFlight();
    raw.send(runs(1, 4));
    await waitFor(() => stats().committed >= 4, 'the first run acked');
    await sleep(30);
    expect(stats()).toMatchObject({ committed: 4, inFlight: 6 });
    raw.send(runs(5, 1, 7, 4, 500, 3)); // 5, then 7-10; 500-502 were never issued
    await waitFor(() => stats().inFlight === 1, 'the second frame acked');
    await sleep(30);
    expect(stats()).toMatchObject({ committed: 5, inFlight: 1 }); // 6 is still out
    raw.send(runs(6, 1));
    await waitFor(() => stats().committed === 10, 'all acked');
    expect(raw.closed).toBe(false);
  });

  it('a run longer than the live tags settles just those in its range, without walking the whole range', async () => {
    // Proves the walk through the table a long run takes: a run of 7 tags over 3 live ones acks those 3, not the live tag after the range nor the one before; a run of nearly 2^32 tags is settled at once.
    const { raw, stats } = await tenInFlight();
    raw.send(runs(5, 4)); // live: 1-4, 9, 10
    await waitFor(() => stats().inFlight === 6, 'tags 5-8 acked');
    raw.send(runs(2, 7)); // 2 … 8: more tags than are live
    await waitFor(() => stats().inFlight === 3, 'tags 2-4 acked');
    await sleep(30);
    expect(stats()).toMatchObject({ committed: 0, inFlight: 3 }); // 1, 9 and 10 are still out
    raw.send(runs(9, TAG_MAX - 8)); // 9 … TAG_MAX
    await waitFor(() => stats().inFlight === 1, 'tags 9 and 10 acked');
    await sleep(30);
    expect(stats()).toMatchObject({ committed: 0, inFlight: 1 });
    raw.send(runs(1, 1));
    await waitFor(() => stats().committed === 10, 'all acked');
  });
});

describe('feature negotiation', () => {
  it('an older client (no features) gets DELIVERY frames and settles with DONE', async () => {
    // Proves compatibility of the new server with an old client: WELCOME names no features, deliveries are DELIVERY frames with every field, DONE acks.
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    await broker.sendToQueue('q', 'hello', { id: 'x-1', headers: { a: 1 } });
    const { raw, welcome } = await rawSession(server.socketPath as string, undefined);
    expect(welcome.features).toBeUndefined();
    raw.send(consumeFrame(1, 1, { group: 'g', ack: 'auto', prefetch: 10 }));
    await waitFor(() => raw.ofType(FrameType.DELIVERY).length === 1, 'a DELIVERY');
    expect(raw.ofType(FrameType.RECORDS)).toEqual([]);
    const d = raw.ofType(FrameType.DELIVERY)[0] as Frame;
    const m = new RemoteMessage(d.payload, codec.scanDelivery(d.payload, codec.newDeliveryLayout()), 'q', 1, false, settler);
    expect({ id: m.id, exchange: m.exchange, routingKey: m.routingKey, headers: m.headers, body: m.body.toString(), tag: m.tag }).toEqual({
      id: 'x-1',
      exchange: '',
      routingKey: 'q',
      headers: { a: 1 },
      body: 'hello',
      tag: 1,
    });
    raw.send(frame(FrameType.DONE, 0, Buffer.from([1, 0, 0, 0, 0, 0, 0])));
    await waitFor(() => broker.queueStats('q').groups.g?.committed === 1, 'the DONE acked');
  });

  it('a client that takes RECORDS but not DONE_RUNS gets RECORDS, and WELCOME names only what it asked for', async () => {
    // Proves the features are independent: WELCOME echoes the subset the server takes up.
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    await broker.sendToQueue('q', 'hello');
    const { raw, welcome } = await rawSession(server.socketPath as string, [FEATURE_RECORDS, 'from-the-future']);
    expect(welcome.features).toEqual([FEATURE_RECORDS]);
    raw.send(consumeFrame(1, 1, { group: 'g', ack: 'none', prefetch: 10 }));
    await waitFor(() => recordsOf(raw).length === 1, 'a RECORDS delivery');
    expect(recordsOf(raw)[0]?.tag).toBe(0); // ack 'none': nothing to settle
  });

  it('the client uses RECORDS and DONE_RUNS with this server: every delivery, retry and ack mode works', async () => {
    // Proves the new client end to end: announces both features, a failing handler's message comes back (DONE in between runs), manual acks and 'none' work.
    const { broker, server } = await h.served();
    await broker.assertQueue('q');
    const c = await h.client(server.url);
    for (let i = 0; i < 300; i++) await c.sendToQueue('q', `m${i}`, { id: `id-${i}`, headers: { i } });
    const seen = new Map<string, number>();
    let failed = false;
    const auto = await c.consume(
      'q',
      (m) => {
        expect(m.headers).toEqual({ i: Number(m.id.slice(3)) });
        seen.set(m.id, (seen.get(m.id) ?? 0) + 1);
        if (m.id === 'id-150' && !failed) {
          failed = true;
          throw new Error('once');
        }
      },
      { group: 'auto', ack: 'auto', prefetch: 50 },
    );
    await waitFor(() => broker.queueStats('q').groups.auto?.committed === 300, 'the auto group acked all');
    expect(seen.size).toBe(300);
    expect(seen.get('id-150')).toBe(2);
    expect([...seen.values()].filter((n) => n !== 1)).toEqual([2]);
    await auto.close();
    const manual: string[] = [];
    const mc = await c.consume('q', async (m) => void manual.push(await m.ack()), { group: 'manual', ack: 'manual', prefetch: 7 });
    await waitFor(() => manual.length === 300, 'manual acks');
    expect(new Set(manual)).toEqual(new Set(['acked']));
    await mc.close();
    let none = 0;
    await c.consume('q', () => void none++, { group: 'none', ack: 'none', prefetch: 13 });
    await waitFor(() => none === 300, "'none' deliveries");
  });

  it("retries ('local' and 'requeue') run a failing handler as often remotely as embedded", async () => {
    // Proves the served handler call keeps the embedded retry rules: the attempt count of 'local' retries (handler run again in place) and of 'requeue' retries (redelivered), then giving up.
    const { broker, server } = await h.served();
    const c = await h.client(server.url);
    const runOn = async (side: 'embedded' | 'remote', mode: 'local' | 'requeue') => {
      const q = `q-${side}-${mode}`;
      await broker.assertQueue(q);
      await broker.sendToQueue(q, 'x', { id: 'always' });
      await broker.sendToQueue(q, 'x', { id: 'once' });
      const calls: Record<string, number> = {};
      const handler = (m: { id: string }) => {
        calls[m.id] = (calls[m.id] ?? 0) + 1;
        if (m.id === 'always' || calls[m.id] === 1) throw new Error(`fail ${m.id}`);
      };
      const options = { ack: 'auto' as const, prefetch: 10, retry: { attempts: 3, mode, backoff: { initial: 5, factor: 1, max: 5, jitter: 0 } } };
      const consumer = side === 'embedded' ? await broker.consume(q, handler, options) : await c.consume(q, handler, options);
      await waitFor(() => broker.queueStats(q).groups.default?.committed === 2, `${side} ${mode}: both settled`);
      await consumer.close();
      return calls;
    };
    for (const mode of ['local', 'requeue'] as const) {
      const embedded = await runOn('embedded', mode);
      expect(embedded, mode).toEqual({ always: 3, once: 2 });
      expect(await runOn('remote', mode), mode).toEqual(embedded);
    }
  });

  /** A fake server that welcomes with `features`, starts consumers, and sends `deliveries` DELIVERY frames to each. */
  async function fakeOldServer(features: string[] | undefined, deliveries: number) {
    const dir = h.dir('spool-fake-');
    const sock = path.join(dir, 'fake.sock');
    const hellos: Record<string, unknown>[] = [];
    const settled: { type: number; payload: Buffer }[] = [];
    const srv = net.createServer((s) => {
      h.track(s);
      const w = new FrameWriter(s);
      const reader = new FrameReader(1 << 24, (type, requestId, buf, start, end) => {
        const payload = Buffer.from(buf.subarray(start, end));
        if (type === FrameType.HELLO) {
          hellos.push(JSON.parse(payload.toString('utf8', 5)) as Record<string, unknown>);
          codec.encodeWelcome(w, { heartbeatMs: 60_000, maxFrameBytes: 1 << 24, ...(features !== undefined ? { features } : {}) });
        } else if (type === FrameType.REQUEST) {
          const req = codec.decodeRequest(payload);
          codec.encodeResponse(w, requestId, req.op === 'consume' ? { group: 'g' } : null);
          if (req.op === 'consume') {
            for (let i = 1; i <= deliveries; i++) codec.encodeDelivery(w, req.consumer as number, i, i - 1, 1_700_000_000_000, i, 1, `id-${i}`, '', 'q', '', Buffer.from(`m${i}`));
          }
        } else if (type === FrameType.DONE || type === FrameType.DONE_RUNS) {
          settled.push({ type, payload });
        }
      });
      s.on('data', (c: Buffer) => reader.push(c));
      s.on('error', () => {});
    });
    await new Promise<void>((resolve) => srv.listen(sock, resolve));
    fakes.push(srv);
    /** The tags the client reported, in order, from DONE and DONE_RUNS alike. */
    const tags = () => {
      const out: [number, boolean][] = [];
      for (const f of settled) {
        if (f.type === FrameType.DONE) codec.decodeDone(f.payload, (tag, failure) => void out.push([tag, failure === null]));
        else codec.decodeDoneRuns(f.payload, 0, f.payload.length, (first, count) => {
          for (let t = first; t < first + count; t++) out.push([t, true]);
        });
      }
      return out;
    };
    return { url: `unix://${sock}`, hellos, settled, tags };
  }

  it('against an older server (no features in WELCOME) the client takes DELIVERY frames and sends only DONE', async () => {
    // Proves compatibility of the new client with an old server: it never sends a DONE_RUNS the server would refuse.
    const fake = await fakeOldServer(undefined, 40);
    const c = await h.client(fake.url, { reconnect: false });
    const got: string[] = [];
    await c.consume('q', (m) => {
      got.push(m.id);
      if (m.id === 'id-7') throw new Error('no');
    }, { ack: 'auto', prefetch: 100 });
    await waitFor(() => fake.tags().length === 40, 'forty outcomes');
    expect(fake.hellos[0]?.features).toEqual([FEATURE_CONFIRMS, FEATURE_RECORDS, FEATURE_DONE_RUNS, FEATURE_NEW_IDS]);
    expect(got).toEqual(Array.from({ length: 40 }, (_, i) => `id-${i + 1}`));
    expect(new Set(fake.settled.map((f) => f.type))).toEqual(new Set([FrameType.DONE]));
    expect(fake.tags()).toEqual(Array.from({ length: 40 }, (_, i) => [i + 1, i + 1 !== 7]));
  });

  it('against a server that names done-runs the client reports successes as runs', async () => {
    // Proves the client side of the negotiation: DONE_RUNS once WELCOME names it, with the same outcomes.
    const fake = await fakeOldServer([FEATURE_DONE_RUNS], 40);
    const c = await h.client(fake.url, { reconnect: false });
    await c.consume('q', (m) => {
      if (m.id === 'id-7') throw new Error('no');
    }, { ack: 'auto', prefetch: 100 });
    await waitFor(() => fake.tags().length === 40, 'forty outcomes');
    expect(fake.settled.some((f) => f.type === FrameType.DONE_RUNS)).toBe(true);
    expect(fake.tags()).toEqual(Array.from({ length: 40 }, (_, i) => [i + 1, i + 1 !== 7]));
  });

  it('a malformed RECORDS from the server ends the connection before any of its deliveries runs', async () => {
    // Proves the client validates the whole frame first: the good first delivery of a frame whose second is bad never reaches the handler.
    const msgs = await storedMessages();
    const two = msgs.slice(5, 7);
    const payload = Buffer.from((frames((w) => codec.encodeRecords(w, 64 * 1024, [1, 1], two, [1, 2], 0, 2))[0] as Frame).payload);
    const first = (two[0] as Message).record;
    payload.writeUInt32LE(payload.length, 8 + 2 * RECORDS_ENTRY_FIXED_BYTES + first.storedEnd - first.storedStart); // the second record's length runs past the frame
    const dir = h.dir('spool-fake-');
    const sock = path.join(dir, 'fake.sock');
    const srv = net.createServer((s) => {
      h.track(s);
      const w = new FrameWriter(s);
      const reader = new FrameReader(1 << 24, (type, requestId) => {
        if (type === FrameType.HELLO) codec.encodeWelcome(w, { heartbeatMs: 60_000, maxFrameBytes: 1 << 24, features: [FEATURE_RECORDS] });
        if (type === FrameType.REQUEST) {
          codec.encodeResponse(w, requestId, { group: 'g' });
          w.flush();
          s.write(frame(FrameType.RECORDS, 0, payload));
        }
      });
      s.on('data', (c: Buffer) => reader.push(c));
      s.on('error', () => {});
    });
    await new Promise<void>((resolve) => srv.listen(sock, resolve));
    fakes.push(srv);
    const c = await h.client(`unix://${sock}`, { reconnect: false });
    const errors: Error[] = [];
    c.on('error', (e) => void errors.push(e));
    const disconnected = new Promise<Error>((resolve) => c.once('disconnect', resolve));
    const got: string[] = [];
    await c.consume('q', (m) => void got.push(m.id), { ack: 'auto', prefetch: 10 }).catch(() => {});
    const err = await disconnected;
    expect(isSpoolError(err, 'SPOOL_ERR_PROTOCOL'), String(err)).toBe(true);
    expect(got).toEqual([]);
  });
});
