// Proves the wire layer by itself: every frame encodes and decodes to the same fields, frames split at any byte boundary reassemble, bad lengths are refused early, writes are batched per tick, and URLs parse.
import { describe, expect, it } from 'vitest';
import type { Socket } from 'node:net';
import { parseBrokerUrl } from '../../src/client/url.js';
import { isSpoolError } from '../../src/errors.js';
import * as codec from '../../src/server/wire/codec.js';
import { FrameType, MAX_FRAME_BYTES_DEFAULT } from '../../src/server/wire/constants.js';
import { FrameReader, frameViews } from '../../src/server/wire/frame-reader.js';
import { FrameWriter, ZERO_COPY_BODY_BYTES } from '../../src/server/wire/frame-writer.js';
import { fromWireJson, toWireJson, trimArgs } from '../../src/server/wire/wire-json.js';

/** A socket stand-in that records what is written to it. */
function fakeSocket() {
  const writes: Buffer[] = [];
  let corks = 0;
  const s = {
    destroyed: false,
    writableLength: 0,
    write(b: Buffer) {
      writes.push(Buffer.from(b));
      return true;
    },
    cork() {
      corks++;
    },
    uncork() {},
  };
  return { socket: s as unknown as Socket, writes, corks: () => corks };
}

/** Encodes with `encode`, then parses the bytes back into frames. */
function roundTrip(encode: (w: FrameWriter) => void): { type: number; requestId: number; payload: Buffer }[] {
  const { socket, writes } = fakeSocket();
  const w = new FrameWriter(socket);
  encode(w);
  w.flush();
  const frames: { type: number; requestId: number; payload: Buffer }[] = [];
  const r = new FrameReader(MAX_FRAME_BYTES_DEFAULT, frameViews((type, requestId, payload) => frames.push({ type, requestId, payload: Buffer.from(payload) })));
  for (const b of writes) r.push(b);
  expect(r.midFrame).toBe(false);
  return frames;
}

function one(encode: (w: FrameWriter) => void) {
  const frames = roundTrip(encode);
  expect(frames.length).toBe(1);
  return frames[0] as { type: number; requestId: number; payload: Buffer };
}

describe('codec', () => {
  it('PUBLISH carries every field, for string, small and large (zero-copy) bodies', () => {
    const bodies: (string | Buffer)[] = ['héllo ✓', Buffer.from([0, 1, 2, 255]), Buffer.alloc(ZERO_COPY_BODY_BYTES + 7, 0xab), ''];
    for (const body of bodies) {
      const f = one((w) => codec.encodePublish(w, 42, 0x02, 'orders', 'order.créé', 'id-1', toWireJson({ headers: { a: 1 }, deliverAt: new Date(5) }), body));
      expect(f.type).toBe(FrameType.PUBLISH);
      expect(f.requestId).toBe(42);
      const p = codec.decodePublish(f.payload);
      expect(p).toMatchObject({ toQueue: false, mandatory: true, target: 'orders', routingKey: 'order.créé', id: 'id-1' });
      expect(p.options).toEqual({ headers: { a: 1 }, deliverAt: new Date(5) });
      expect(p.body.equals(Buffer.from(body))).toBe(true);
    }
    const noOpts = codec.decodePublish(one((w) => codec.encodePublish(w, 1, 0x01, 'q', '', 'x', '', 'b')).payload);
    expect(noOpts).toMatchObject({ toQueue: true, mandatory: false, options: undefined });
  });

  it('PUBLISH decodes in place from a chunk (no payload view), with truncation checked against the frame, not the chunk', () => {
    // Proves the range decoding the server uses: a frame between other bytes decodes alike, and a payload cut short fails even when the chunk goes on.
    const payload = one((w) => codec.encodePublish(w, 3, 0, 'ex', 'rk', 'the-id', '', Buffer.from('body'))).payload;
    const chunk = Buffer.concat([Buffer.from('xxxx'), payload, Buffer.from('yyyyyy')]);
    const p = codec.decodePublish(chunk, undefined, 4, 4 + payload.length);
    expect(p).toMatchObject({ target: 'ex', routingKey: 'rk', id: 'the-id' });
    expect(p.body.toString()).toBe('body');
    expect(() => codec.decodePublish(chunk, undefined, 4, 4 + 9)).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
    // The encoder keeps the last target and key encoded: a different pair after it is encoded afresh.
    const other = codec.decodePublish(one((w) => codec.encodePublish(w, 4, 1, 'q2', '', 'i', '', 'b')).payload);
    expect(other).toMatchObject({ toQueue: true, target: 'q2', routingKey: '' });
  });

  it('CONFIRMS carries a count and one answer', () => {
    // Proves the CONFIRMS layout: count, then a CONFIRM payload; a count of 0 is refused.
    const f = one((w) => codec.encodeConfirms(w, 10, 250, 'duplicate', ['a']));
    expect(f.type).toBe(FrameType.CONFIRMS);
    expect(f.requestId).toBe(10);
    expect(codec.decodeConfirms(f.payload)).toEqual({ count: 250, status: 'duplicate', queues: ['a'], extra: undefined });
    const zero = Buffer.from(f.payload);
    zero.writeUInt32LE(0, 0);
    expect(() => codec.decodeConfirms(zero)).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
    expect(() => codec.decodeConfirms(f.payload.subarray(0, 3))).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
  });

  it('DELIVERY, CONFIRM, ERROR, ACK, NACK, DONE, CREDIT, HELLO, WELCOME, REQUEST and RESPONSE round-trip', () => {
    const meta = { consumerId: 7, tag: 0xfffffffe, offset: 2 ** 40 + 3, timestamp: 1_700_000_000_123, deliveryId: 99, deliveryCount: 3, id: 'm', exchange: 'ex', routingKey: 'a.b' };
    const encodeMeta = (w: FrameWriter, headersJson: string, body: Buffer) =>
      codec.encodeDelivery(w, meta.consumerId, meta.tag, meta.offset, meta.timestamp, meta.deliveryId, meta.deliveryCount, meta.id, meta.exchange, meta.routingKey, headersJson, body);
    const asObject: codec.DeliveryBuilder<Record<string, unknown>> = (tag, offset, timestamp, deliveryId, deliveryCount, id, exchange, routingKey, headers, body) => ({
      tag,
      offset,
      timestamp,
      deliveryId,
      deliveryCount,
      id,
      exchange,
      routingKey,
      headers,
      body: body.toString(),
    });
    const payload = one((w) => encodeMeta(w, '{"h":[1]}', Buffer.from('body'))).payload;
    expect(codec.deliveryConsumerId(payload)).toBe(7);
    const { consumerId: _c, ...fields } = meta;
    expect(codec.decodeDelivery(payload, asObject)).toEqual({ ...fields, headers: { h: [1] }, body: 'body' });
    expect(codec.decodeDelivery(one((w) => encodeMeta(w, '', Buffer.alloc(0))).payload, asObject).headers).toBeUndefined();

    expect(codec.decodeConfirm(one((w) => codec.encodeConfirm(w, 5, 'duplicate', ['a', 'b'], '')).payload)).toEqual({ status: 'duplicate', queues: ['a', 'b'], extra: undefined });
    expect(codec.decodeConfirm(one((w) => codec.encodeConfirm(w, 5, 'confirmed', [], '{"deliverAt":5}')).payload).extra).toEqual({ deliverAt: 5 });
    expect(codec.decodeError(one((w) => codec.encodeError(w, 9, { code: 'SPOOL_ERR_NOT_FOUND', message: 'no queue ü' })).payload)).toEqual({ code: 'SPOOL_ERR_NOT_FOUND', message: 'no queue ü' });
    expect(codec.decodeAck(one((w) => codec.encodeAck(w, 3, 77)).payload)).toBe(77);
    expect(codec.decodeNack(one((w) => codec.encodeNack(w, 0, 78, true)).payload)).toEqual({ tag: 78, requeue: true });
    const done: [number, string | null][] = [];
    codec.decodeDone(
      one((w) => codec.encodeDone(w, [{ tag: 79, failure: null }, { tag: 80, failure: 'bad ✗' }, { tag: 81, failure: '' }])).payload,
      (tag, failure) => done.push([tag, failure]),
    );
    expect(done).toEqual([
      [79, null],
      [80, 'bad ✗'],
      [81, ''],
    ]);
    expect(codec.decodeCredit(one((w) => codec.encodeCredit(w, 4, 10)).payload)).toEqual({ consumerId: 4, count: 10 });
    expect(codec.decodeHello(one((w) => codec.encodeHello(w, { token: 't', client: 'c' })).payload)).toEqual({ token: 't', client: 'c' });
    expect(codec.decodeWelcome(one((w) => codec.encodeWelcome(w, { heartbeatMs: 100, maxFrameBytes: 1 << 20 })).payload)).toEqual({ heartbeatMs: 100, maxFrameBytes: 1 << 20 });
    // WELCOME's features: names a newer server adds pass through; junk is dropped; an older server sends none.
    const welcome = one((w) => codec.encodeWelcome(w, { heartbeatMs: 100, maxFrameBytes: 1 << 20, features: ['records', 'later'] })).payload;
    expect(codec.decodeWelcome(welcome).features).toEqual(['records', 'later']);
    expect(codec.decodeWelcome(Buffer.from('\u0001{"heartbeatMs":1,"maxFrameBytes":9,"features":["a",3]}')).features).toEqual(['a']);
    expect(codec.decodeWelcome(Buffer.from('\u0001{"heartbeatMs":1,"maxFrameBytes":9}')).features).toBeUndefined();
    const runs: [number, number][] = [];
    const doneRuns = one((w) => codec.encodeDoneRuns(w, [5, 6, 7, 9], 4, new Map())).payload;
    codec.decodeDoneRuns(doneRuns, 0, doneRuns.length, (first, count) => void runs.push([first, count]));
    expect(runs).toEqual([
      [5, 3],
      [9, 1],
    ]);
    const json = codec.requestJson({ op: 'bindQueue', args: trimArgs(['q', undefined, 'p', undefined]) });
    expect(codec.decodeRequest(one((w) => codec.encodeRequest(w, 8, json)).payload)).toEqual({ op: 'bindQueue', args: ['q', undefined, 'p'] });
    expect(codec.decodeResponse(one((w) => codec.encodeResponse(w, 8, { at: new Date(3) })).payload)).toEqual({ at: new Date(3) });
    expect(one((w) => codec.encodeResponse(w, 8, undefined)).payload.length).toBe(0);
  });

  it('decoders refuse truncated or malformed payloads with SPOOL_ERR_PROTOCOL', () => {
    const publish = one((w) => codec.encodePublish(w, 1, 0, 'ex', 'rk', 'id', '{"a":1}', 'body')).payload;
    for (let cut = 0; cut < publish.length - 4; cut++) {
      // Every cut before the body loses a field; cuts inside the body are just a shorter body.
      expect(() => codec.decodePublish(publish.subarray(0, cut)), `cut at ${cut}`).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
    }
    const bad = [
      () => codec.decodeRequest(Buffer.from('{not json')),
      () => codec.decodeRequest(Buffer.from('[1,2]')),
      () => codec.decodeRequest(Buffer.from('{"op":1,"args":[]}')),
      () => codec.decodeRequest(Buffer.from('{"op":"x","args":{}}')),
      () => codec.decodeHello(Buffer.from('XXXX\u0001{}')),
      () => codec.decodeHello(Buffer.from('SPMQ\u0009{}')),
      () => codec.decodeHello(Buffer.from('SPMQ\u0001{"token":5}')),
      () => codec.decodeAck(Buffer.alloc(3)),
      () => codec.decodeAck(Buffer.alloc(5)),
      () => codec.decodeNack(Buffer.from([1, 0, 0, 0, 0x80])),
      () => codec.decodeConfirm(Buffer.from([9, 0, 0, 0, 0, 0, 0])),
      () => codec.decodePublish(Buffer.from([0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
    ];
    for (const f of bad) expect(f).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
    const noop = () => {};
    expect(() => codec.decodeDone(Buffer.from([1, 0, 0, 0, 0, 1, 0]), noop)).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
    expect(() => codec.decodeDone(Buffer.from([1, 0, 0, 0, 1, 9, 0, 0x61]), noop)).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
    for (const runs of [[], [1, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0], [0xfe, 0xff, 0xff, 0xff, 2, 0, 0, 0]]) {
      const b = Buffer.from(runs);
      expect(() => codec.decodeDoneRuns(b, 0, b.length, noop), b.toString('hex')).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
    }
    // RECORDS: the count must be at least 1 and fit the payload (records.test.ts checks the records themselves).
    for (const records of [Buffer.alloc(7), Buffer.alloc(60), Buffer.from([1, 0, 0, 0, 9, 0, 0, 0, ...Array(60).fill(0)])]) {
      expect(() => codec.recordsCount(records, 0, records.length)).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
    }
    // A u64 beyond 2^53 is refused rather than rounded.
    const d = Buffer.from(one((w) => codec.encodeDelivery(w, 1, 1, 1, 1, 1, 1, 'i', '', '', '', Buffer.alloc(0))).payload);
    d.writeUInt32LE(0x0020_0000, 12);
    expect(() => codec.decodeDelivery(d, () => null)).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
  });
});

describe('codec: hot paths', () => {
  it('DELIVERY from stored bytes is byte for byte the DELIVERY from decoded fields', () => {
    const cases = [
      { id: 'm-1', exchange: 'orders', routingKey: 'order.créé', headers: '{"h":[1],"ü":"✓"}', body: Buffer.from('body') },
      { id: '', exchange: '', routingKey: 'q', headers: '', body: Buffer.alloc(0) },
      { id: 'x'.repeat(100), exchange: 'e'.repeat(80), routingKey: 'k'.repeat(90), headers: '', body: Buffer.alloc(ZERO_COPY_BODY_BYTES + 3, 9) },
    ];
    for (const c of cases) {
      const fromText = one((w) => codec.encodeDelivery(w, 7, 9, 2 ** 40 + 3, 1_700_000_000_123, 99, 2, c.id, c.exchange, c.routingKey, c.headers, c.body));
      const route = Buffer.from(`${c.exchange}\0${c.routingKey}`);
      const fromBytes = one((w) =>
        codec.encodeDeliveryBytes(w, 7, 9, 2 ** 40 + 3, 1_700_000_000_123, 99, 2, c.id === '' ? null : Buffer.from(c.id), route, c.headers === '' ? undefined : Buffer.from(c.headers), c.body),
      );
      expect(fromBytes.payload.equals(fromText.payload), c.id).toBe(true);
    }
    // No stored route: both names empty.
    const bare = one((w) => codec.encodeDeliveryBytes(w, 1, 1, 0, 0, 1, 1, Buffer.from('i'), undefined, undefined, Buffer.from('b')));
    expect(codec.decodeDelivery(bare.payload, (_t, _o, _ts, _d, _c, id, exchange, routingKey) => [id, exchange, routingKey])).toEqual(['i', '', '']);
  });

  it('CONFIRM queue lists stay right when the same array changes and when lists alternate', () => {
    const queues = ['a', 'b'];
    const decode = (qs: readonly string[]) => codec.decodeConfirm(one((w) => codec.encodeConfirm(w, 1, 'confirmed', qs, '')).payload).queues;
    expect(decode(queues)).toEqual(['a', 'b']);
    queues[1] = 'c'; // same array, new contents: the encoder must not reuse its bytes
    expect(decode(queues)).toEqual(['a', 'c']);
    queues.push('dé');
    expect(decode(queues)).toEqual(['a', 'c', 'dé']);
    for (const qs of [['x'], ['y'], ['x'], [], ['x', 'y']]) expect(decode(qs)).toEqual(qs);
    // Publishes with the same route share one array, as embedded (the broker's route cache).
    expect(decode(['s'])).toBe(decode(['s']));
  });
});

describe('FrameReader', () => {
  it('reassembles frames split at every byte boundary, and in one chunk', () => {
    const { socket, writes } = fakeSocket();
    const w = new FrameWriter(socket);
    for (let i = 0; i < 5; i++) codec.encodePublish(w, i + 1, 0, 'ex', `k${i}`, `id${i}`, '', Buffer.alloc(i * 300, i));
    codec.encodeHeartbeat(w);
    w.flush();
    const bytes = Buffer.concat(writes);
    const expected: string[] = [];
    new FrameReader(1 << 20, frameViews((t, r, p) => expected.push(`${t}/${r}/${p.toString('hex')}`))).push(bytes);
    expect(expected.length).toBe(6);
    for (let cut = 1; cut < bytes.length; cut += 7) {
      const got: string[] = [];
      const reader = new FrameReader(1 << 20, frameViews((t, r, p) => got.push(`${t}/${r}/${p.toString('hex')}`)));
      reader.push(bytes.subarray(0, cut));
      reader.push(bytes.subarray(cut));
      expect(got, `cut at ${cut}`).toEqual(expected);
      expect(reader.midFrame).toBe(false);
    }
    // Byte by byte.
    const got: string[] = [];
    const reader = new FrameReader(1 << 20, frameViews((t, r, p) => got.push(`${t}/${r}/${p.toString('hex')}`)));
    for (const byte of bytes) reader.push(Buffer.from([byte]));
    expect(got).toEqual(expected);
  });

  it('joins a frame split across chunks with only its own bytes: the frames after it in the chunk are read in place', () => {
    // Proves the split frame is copied alone: the next frames' buffer is the chunk itself (a copy of the whole chunk per read cost the client ~64 KiB a read).
    const { socket, writes } = fakeSocket();
    const w = new FrameWriter(socket);
    for (let i = 0; i < 4; i++) codec.encodePublish(w, i + 1, 0, 'ex', `k${i}`, `id${i}`, '', Buffer.alloc(500, i));
    w.flush();
    const bytes = Buffer.concat(writes);
    const frameBytes = bytes.length / 4;
    const seen: { requestId: number; buf: Buffer; start: number }[] = [];
    const reader = new FrameReader(1 << 20, (_t, requestId, buf, start) => seen.push({ requestId, buf, start }));
    // Chunk 1 ends inside frame 1's length prefix; chunk 2 holds the rest of it and frames 2 and
    // 3 and half of 4; chunk 3 ends frame 4.
    const second = Buffer.from(bytes.subarray(2, 3 * frameBytes + frameBytes / 2));
    reader.push(bytes.subarray(0, 2));
    reader.push(second);
    reader.push(bytes.subarray(3 * frameBytes + frameBytes / 2));
    expect(seen.map((f) => f.requestId)).toEqual([1, 2, 3, 4]);
    expect(seen[1]?.buf.buffer).toBe(second.buffer);
    expect(seen[2]?.buf.buffer).toBe(second.buffer);
    expect((seen[1]?.buf.byteOffset ?? 0) + (seen[1]?.start ?? 0)).toBe(second.byteOffset + frameBytes - 2 + 9);
    expect(reader.midFrame).toBe(false);
  });

  it('reassembles frames cut at any two points, whichever piece the cuts fall in', () => {
    // Proves the join of a pending piece (a length prefix or a frame) and the in-place parse of the rest agree with one whole chunk, for cuts inside prefixes, headers and payloads.
    const { socket, writes } = fakeSocket();
    const w = new FrameWriter(socket);
    for (let i = 0; i < 3; i++) codec.encodePublish(w, i + 1, 0, 'ex', `k${i}`, `id${i}`, '', Buffer.alloc(i * 40, i));
    codec.encodeHeartbeat(w);
    w.flush();
    const bytes = Buffer.concat(writes);
    const expected: string[] = [];
    new FrameReader(1 << 20, frameViews((t, r, p) => expected.push(`${t}/${r}/${p.toString('hex')}`))).push(bytes);
    for (let a = 1; a < bytes.length; a += 3) {
      for (let b = a; b < bytes.length; b += 5) {
        const got: string[] = [];
        const reader = new FrameReader(1 << 20, frameViews((t, r, p) => got.push(`${t}/${r}/${p.toString('hex')}`)));
        reader.push(bytes.subarray(0, a));
        reader.push(bytes.subarray(a, b));
        reader.push(bytes.subarray(b));
        expect(got, `cuts at ${a} and ${b}`).toEqual(expected);
        expect(reader.midFrame).toBe(false);
      }
    }
  });

  it('refuses a length prefix out of range as soon as its four bytes arrive', () => {
    const frames: number[] = [];
    const r = new FrameReader(1000, (t) => frames.push(t));
    const err = (() => {
      try {
        r.push(Buffer.from([0xe9, 0x03, 0, 0])); // 1001
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(isSpoolError(err, 'SPOOL_ERR_PROTOCOL')).toBe(true);
    // Dead afterwards: nothing more is parsed.
    r.push(Buffer.from([5, 0, 0, 0, 13, 0, 0, 0, 0]));
    expect(frames).toEqual([]);
    expect(() => new FrameReader(1000, () => {}).push(Buffer.from([4, 0, 0, 0, 1]))).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_PROTOCOL' }));
  });
});

describe('FrameWriter', () => {
  it('gathers the frames of one tick into one write, and queues large bodies without copying', async () => {
    const { socket, writes, corks } = fakeSocket();
    const w = new FrameWriter(socket);
    for (let i = 0; i < 1000; i++) codec.encodeConfirm(w, i + 1, 'confirmed', ['q'], '');
    expect(writes.length).toBe(0);
    await new Promise((r) => setImmediate(r));
    expect(writes.length).toBe(1);
    const big = Buffer.alloc(ZERO_COPY_BODY_BYTES * 2, 7);
    codec.encodeAck(w, 0, 1);
    codec.encodePublish(w, 2, 0, 'e', 'k', 'i', '', big);
    codec.encodeAck(w, 0, 2);
    w.flush();
    expect(corks()).toBe(1);
    expect(writes.length).toBe(4); // head bytes, the body itself, the rest
    expect(writes[2]?.length).toBe(big.length);
  });
});

describe('FrameWriter timing', () => {
  it('writes the frames of one task together, at the end of that task, not a loop turn later', async () => {
    const { socket, writes } = fakeSocket();
    const w = new FrameWriter(socket);
    codec.encodeAck(w, 0, 1);
    codec.encodeAck(w, 0, 2);
    expect(writes.length).toBe(0); // nothing while the task runs
    await Promise.resolve();
    expect(writes.length).toBe(1); // flushed as a microtask: a lone publish does not wait for setImmediate
    expect(writes[0]?.length).toBe(2 * 13);
  });
});

describe('FrameWriter chunk reuse', () => {
  /** A socket that keeps the views it is given (as a real one does while bytes wait in its buffer). */
  function holdingSocket(pending: () => number) {
    const held: Buffer[] = [];
    const s = {
      destroyed: false,
      get writableLength() {
        return pending();
      },
      write(b: Buffer) {
        held.push(b);
        return true;
      },
      cork() {},
      uncork() {},
    };
    return { socket: s as unknown as Socket, held };
  }

  it('never writes over bytes the socket still holds, and reuses the chunk once it took them', () => {
    let pending = 1; // the kernel has not taken the first write yet
    const { socket, held } = holdingSocket(() => pending);
    const w = new FrameWriter(socket);
    codec.encodeAck(w, 0, 1);
    w.flush();
    const first = Buffer.from(held[0] as Buffer);
    codec.encodeAck(w, 0, 2);
    w.flush();
    expect((held[0] as Buffer).equals(first)).toBe(true);
    expect(held[1]?.buffer).toBe(held[0]?.buffer); // appended after it in the same chunk
    expect(held[1]?.byteOffset).toBe((held[0]?.byteOffset ?? 0) + first.length);
    pending = 0; // everything taken: the next frames start the chunk again
    codec.encodeAck(w, 0, 3);
    w.flush();
    codec.encodeAck(w, 0, 4);
    w.flush();
    expect(held[3]?.buffer).toBe(held[2]?.buffer);
    expect(held[3]?.byteOffset).toBe(0);
    expect(codec.decodeAck((held[3] as Buffer).subarray(9))).toBe(4);
  });

  it('grows its chunk for a big turn, so the next one is a single write', () => {
    const { socket, held } = holdingSocket(() => 0);
    const w = new FrameWriter(socket);
    const turn = () => {
      for (let i = 0; i < 1500; i++) codec.encodeDelivery(w, 1, i + 1, i, 0, i, 1, `id-${i}`, 'ex', 'rk', '', Buffer.alloc(100));
      w.flush();
    };
    turn();
    const writesFirst = held.length;
    expect(writesFirst).toBeGreaterThan(1); // 1500 x ~170 B spans several 64 KiB chunks
    turn();
    expect(held.length - writesFirst).toBe(1);
    const frames: number[] = [];
    const r = new FrameReader(MAX_FRAME_BYTES_DEFAULT, (t) => frames.push(t));
    r.push(held[held.length - 1] as Buffer);
    expect(frames.length).toBe(1500);
  });
});

describe('wire JSON', () => {
  it('keeps Dates and positional undefineds, refuses functions', () => {
    expect(fromWireJson(toWireJson({ at: new Date(12), list: [1, undefined, 2] }))).toEqual({ at: new Date(12), list: [1, undefined, 2] });
    expect(() => toWireJson({ filter: () => true })).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_INVALID_ARGUMENT' }));
    expect(() => toWireJson({ at: new Date(Number.NaN) })).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_INVALID_ARGUMENT' }));
    expect(trimArgs(['a', undefined, undefined])).toEqual(['a']);
  });

  it('carries plain objects that look like its markers as they were', () => {
    const v = { when: { $date: 5 }, gone: { $undefined: true }, esc: { $escape: [[1]] }, deep: { $date: { $undefined: true } }, two: { $date: 1, x: 2 }, list: [{ $date: 3 }], at: new Date(9) };
    expect(fromWireJson(toWireJson(v))).toEqual(v);
    expect(() => fromWireJson('{"$escape":[1]}')).toThrow(); // not entries: the caller maps it to a protocol error
  });
});

describe('broker URLs', () => {
  it('parses unix, tcp and plain paths', () => {
    expect(parseBrokerUrl('unix:///tmp/x/spool.sock')).toEqual({ kind: 'unix', path: '/tmp/x/spool.sock' });
    expect(parseBrokerUrl('tcp://127.0.0.1:5679?token=s3cret')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 5679, token: 's3cret' });
    expect(parseBrokerUrl('tcp://[::1]:80')).toEqual({ kind: 'tcp', host: '::1', port: 80 });
    expect(parseBrokerUrl('/tmp/none/spool.sock')).toEqual({ kind: 'unix', path: '/tmp/none/spool.sock' });
    // A directory means the socket inside it (a data dir).
    expect(parseBrokerUrl('/tmp')).toEqual({ kind: 'unix', path: '/tmp/spool.sock' });
    for (const bad of ['', 'http://x', 'tcp://host', 'tcp://:80', 'unix://']) expect(() => parseBrokerUrl(bad), bad).toThrow(expect.objectContaining({ code: 'SPOOL_ERR_INVALID_ARGUMENT' }));
  });
});
