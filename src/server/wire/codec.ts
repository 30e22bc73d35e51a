/**
 * Payload layouts of every frame type (docs/protocol.md §3): one encoder and one decoder each,
 * side by side so they stay mirror images. Encoders write through a FrameWriter; decoders read a
 * payload view with bounds checks and throw SPOOL_ERR_PROTOCOL on anything malformed.
 */
import assert from 'node:assert/strict';
import { SpoolError } from '../../errors.js';
import { META_HEADERS, META_ROUTE } from '../../broker/message.js';
import {
  CONFIRM_STATUSES,
  DONE_RUN_BYTES,
  FrameType,
  HELLO_MAGIC,
  NACK_REQUEUE,
  PROTOCOL_VERSION,
  PUBLISH_MANDATORY,
  PUBLISH_NEW_ID,
  PUBLISH_TO_QUEUE,
  RECORDS_ENTRY_FIXED_BYTES,
  STR16_MAX,
  TAG_MAX,
} from './constants.js';
import { TextCache, r16, r32, readLatin1, readText, w16, w32, writeText } from './bytes.js';
import { type FrameWriter, ZERO_COPY_BODY_BYTES } from './frame-writer.js';
import { fromWireJson, toWireJson } from './wire-json.js';

export type ConfirmStatus = (typeof CONFIRM_STATUSES)[number];

function protocolError(what: string): SpoolError {
  return new SpoolError('SPOOL_ERR_PROTOCOL', what);
}

/**
 * Reads fields from a payload in order, failing on any read past its end. Decoding is synchronous
 * and never nested, so one shared cursor serves every decoder (no allocation per frame).
 */
export class PayloadCursor {
  private pos = 0;
  private start = 0;
  private limit = 0;
  private buf: Buffer = Buffer.alloc(0);
  private what = '';

  /** Reads `buf[start, end)` (by default all of it): a payload in place, without a view. */
  reset(buf: Buffer, what: string, start = 0, end = buf.length): this {
    this.buf = buf;
    this.what = what;
    this.pos = start;
    this.start = start;
    this.limit = end;
    return this;
  }

  private need(n: number): number {
    const at = this.pos;
    if (at + n > this.limit) throw protocolError(`${this.what} payload is truncated (needs ${at - this.start + n} bytes, has ${this.limit - this.start})`);
    this.pos = at + n;
    return at;
  }

  u8(): number {
    return this.buf[this.need(1)] as number;
  }
  u16(): number {
    return r16(this.buf, this.need(2));
  }
  u32(): number {
    return r32(this.buf, this.need(4));
  }
  /** u64 restricted to safe integers (§ intro). */
  u64(): number {
    const at = this.need(8);
    const lo = r32(this.buf, at);
    const hi = r32(this.buf, at + 4);
    if (hi > 0x1f_ffff) throw protocolError(`${this.what}: a u64 field exceeds 2^53`);
    return hi * 0x1_0000_0000 + lo;
  }
  str16(): string {
    const n = this.u16();
    const at = this.need(n);
    return readText(this.buf, at, at + n);
  }
  str32(): string {
    const n = this.u32();
    const at = this.need(n);
    return readText(this.buf, at, at + n);
  }
  /** A str16 that usually repeats (a name): decoded through `cache`. */
  str16Cached(cache: TextCache): string {
    const n = this.u16();
    const at = this.need(n);
    return cache.read(this.buf, at, at + n);
  }
  str32Cached(cache: TextCache): string {
    const n = this.u32();
    const at = this.need(n);
    return cache.read(this.buf, at, at + n);
  }
  /** Length of the field `skip16`/`skip32` passed last. */
  lastLength = 0;
  /** Where the next field starts (an index into the buffer given to `reset`). */
  get position(): number {
    return this.pos;
  }
  /** Passes over a str16 without decoding it; returns where its bytes start (length in `lastLength`). */
  skip16(): number {
    const n = this.u16();
    this.lastLength = n;
    return this.need(n);
  }
  skip32(): number {
    const n = this.u32();
    this.lastLength = n;
    return this.need(n);
  }
  /** A u32-prefixed wire JSON value (`plain`: plain JSON, no wire conventions), or undefined when the length is 0. */
  json32(plain = false): unknown {
    const n = this.u32();
    if (n === 0) return undefined;
    const at = this.need(n);
    return parseJson(this.buf.toString('utf8', at, at + n), this.what, plain);
  }
  /** The rest of the payload, as a view. */
  rest(): Buffer {
    const at = this.pos;
    this.pos = this.limit;
    return this.buf.subarray(at, this.limit);
  }
  restText(): string {
    return this.rest().toString('utf8');
  }
  /** Asserts the payload was consumed exactly (fixed-size frames). */
  end(): void {
    if (this.pos !== this.limit) throw protocolError(`${this.what} payload has ${this.limit - this.pos} trailing bytes`);
  }
}

const shared = new PayloadCursor();

/** The shared cursor, positioned at the start of `payload` (or of `payload[start, end)`). */
export function cursor(payload: Buffer, what: string, start?: number, end?: number): PayloadCursor {
  return shared.reset(payload, what, start, end);
}

/**
 * `plain`: the text is JSON the broker stored (a message's user headers), parsed as the embedded
 * broker parses it: a header that happens to look like {"$date": n} stays an object, as it does
 * embedded, instead of becoming a Date.
 */
function parseJson(text: string, what: string, plain = false): unknown {
  try {
    return plain ? JSON.parse(text) : fromWireJson(text);
  } catch {
    throw protocolError(`${what} carries malformed JSON`);
  }
}

/** `v` is a safe non-negative integer: `>>> 0` takes it modulo 2^32 (no division for the low word). */
function writeU64(buf: Buffer, at: number, v: number): void {
  w32(buf, at, v >>> 0);
  w32(buf, at + 4, (v / 0x1_0000_0000) >>> 0);
}

/** Writes a str16/str32 body whose byte length the caller measured; returns the next offset. */
function writeStr(buf: Buffer, at: number, s: string, bytes: number, prefix: 2 | 4): number {
  if (prefix === 2) w16(buf, at, bytes);
  else w32(buf, at, bytes);
  at += prefix;
  writeText(buf, at, s, bytes);
  return at + bytes;
}

function byteLength16(s: string, what: string): number {
  const n = Buffer.byteLength(s);
  if (n > STR16_MAX) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${what} is ${n} bytes; the protocol carries at most ${STR16_MAX}`);
  return n;
}

// --- HELLO / WELCOME ---

export interface Hello {
  token?: string;
  client?: string;
  /** Optional frames this client understands (FEATURE_*); a server uses none of them otherwise. */
  features?: string[];
}

export function encodeHello(w: FrameWriter, hello: Hello): void {
  const json = Buffer.from(toWireJson(hello));
  const at = w.begin(FrameType.HELLO, 0, 5 + json.length);
  w.buf.write(HELLO_MAGIC, at, 4, 'latin1');
  w.buf[at + 4] = PROTOCOL_VERSION;
  json.copy(w.buf, at + 5);
}

export function decodeHello(payload: Buffer): Hello {
  if (payload.length < 5 || payload.toString('latin1', 0, 4) !== HELLO_MAGIC) throw protocolError('not a Spool client (bad HELLO magic)');
  const version = payload[4] as number;
  if (version !== PROTOCOL_VERSION) throw protocolError(`protocol version ${version} is not supported (this server speaks ${PROTOCOL_VERSION})`);
  const body = payload.length > 5 ? parseJson(payload.toString('utf8', 5), 'HELLO') : {};
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw protocolError('HELLO options must be an object');
  const o = body as Record<string, unknown>;
  if (o.token !== undefined && typeof o.token !== 'string') throw protocolError('HELLO token must be a string');
  // Unknown feature names (from a newer client) are kept and simply never matched.
  const features = Array.isArray(o.features) ? o.features.filter((f): f is string => typeof f === 'string') : undefined;
  return {
    ...(typeof o.token === 'string' ? { token: o.token } : {}),
    ...(typeof o.client === 'string' ? { client: o.client } : {}),
    ...(features !== undefined ? { features } : {}),
  };
}

export interface Welcome {
  heartbeatMs: number;
  maxFrameBytes: number;
  /** The HELLO features this server takes up (§3 WELCOME); absent when none, and from an older server. */
  features?: string[];
}

export function encodeWelcome(w: FrameWriter, welcome: Welcome): void {
  const json = Buffer.from(JSON.stringify(welcome));
  const at = w.begin(FrameType.WELCOME, 0, 1 + json.length);
  w.buf[at] = PROTOCOL_VERSION;
  json.copy(w.buf, at + 1);
}

export function decodeWelcome(payload: Buffer): Welcome {
  const c = cursor(payload, 'WELCOME');
  const version = c.u8();
  if (version !== PROTOCOL_VERSION) throw protocolError(`server speaks protocol version ${version}, this client ${PROTOCOL_VERSION}`);
  const o = parseJson(c.restText(), 'WELCOME') as Partial<Welcome> | null;
  const hb = o?.heartbeatMs;
  const max = o?.maxFrameBytes;
  if (typeof hb !== 'number' || !(hb > 0) || typeof max !== 'number' || !(max > 0)) throw protocolError('WELCOME lacks heartbeatMs or maxFrameBytes');
  // As in HELLO: names this client does not know (a newer server's) are kept and never matched.
  const features = Array.isArray(o?.features) ? o.features.filter((f): f is string => typeof f === 'string') : undefined;
  return { heartbeatMs: hb, maxFrameBytes: max, ...(features !== undefined ? { features } : {}) };
}

// --- REQUEST / RESPONSE / ERROR ---

export interface Request {
  op: string;
  args: unknown[];
  consumer?: number;
}

/** The wire JSON text of a REQUEST. Throws SPOOL_ERR_INVALID_ARGUMENT for arguments wire JSON cannot carry. */
export function requestJson(req: Request): string {
  return toWireJson(req);
}

/** Writes a REQUEST whose JSON `requestJson` made (encoded once, written again on a resend). */
export function encodeRequest(w: FrameWriter, requestId: number, json: string): void {
  const bytes = Buffer.byteLength(json);
  const at = w.begin(FrameType.REQUEST, requestId, bytes);
  w.buf.write(json, at, bytes, 'utf8');
}

export function decodeRequest(payload: Buffer): Request {
  const o = parseJson(payload.toString('utf8'), 'REQUEST') as Partial<Request> | null;
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw protocolError('REQUEST must be a JSON object');
  if (typeof o.op !== 'string') throw protocolError('REQUEST lacks a string op');
  if (!Array.isArray(o.args)) throw protocolError('REQUEST args must be an array');
  if (o.consumer !== undefined && (typeof o.consumer !== 'number' || !Number.isInteger(o.consumer) || o.consumer < 0 || o.consumer > 0xffff_ffff)) {
    throw protocolError('REQUEST consumer must be a u32');
  }
  return o as Request;
}

export function encodeResponse(w: FrameWriter, requestId: number, result: unknown): void {
  if (result === undefined) {
    w.begin(FrameType.RESPONSE, requestId, 0);
    return;
  }
  const json = toWireJson(result);
  const bytes = Buffer.byteLength(json);
  const at = w.begin(FrameType.RESPONSE, requestId, bytes);
  w.buf.write(json, at, bytes, 'utf8');
}

export function decodeResponse(payload: Buffer): unknown {
  return payload.length === 0 ? undefined : parseJson(payload.toString('utf8'), 'RESPONSE');
}

export interface WireError {
  /** A SPOOL_ERR_* code, or '' for an unexpected error. */
  code: string;
  message: string;
}

export function encodeError(w: FrameWriter, requestId: number, err: WireError): void {
  const codeBytes = Math.min(Buffer.byteLength(err.code), 255);
  const msgBytes = Buffer.byteLength(err.message);
  const at = w.begin(FrameType.ERROR, requestId, 2 + codeBytes + msgBytes);
  w.buf.writeUInt16LE(codeBytes, at);
  w.buf.write(err.code, at + 2, codeBytes, 'latin1');
  w.buf.write(err.message, at + 2 + codeBytes, msgBytes, 'utf8');
}

export function decodeError(payload: Buffer): WireError {
  const c = cursor(payload, 'ERROR');
  const code = c.str16();
  return { code, message: c.restText() };
}

// --- PUBLISH / CONFIRM ---

export interface PublishFrame {
  toQueue: boolean;
  mandatory: boolean;
  /** The client made the id and sends it for the first time (flag NEW_ID). */
  newId: boolean;
  /** The exchange, or the queue when `toQueue`. */
  target: string;
  routingKey: string;
  id: string;
  /** The remaining publish options (headers, delay, deliverAt, ttl, …), or undefined. */
  options: Record<string, unknown> | undefined;
  body: Buffer;
}

/**
 * Encodes a PUBLISH. `optionsJson` is the wire JSON of the remaining options, or '' for none.
 * Throws SPOOL_ERR_INVALID_ARGUMENT (nothing written) when a string does not fit its field.
 */
export function encodePublish(
  w: FrameWriter,
  requestId: number,
  flags: number,
  target: string,
  routingKey: string,
  id: string,
  optionsJson: string,
  body: string | Uint8Array,
): void {
  const route = routeBytes(flags, target, routingKey);
  const idBytes = asciiLength(id) ?? byteLength16(id, 'id');
  const optBytes = optionsJson.length === 0 ? 0 : Buffer.byteLength(optionsJson);
  const head = 1 + route.length + 2 + idBytes + 4 + optBytes;
  let at: number;
  if (typeof body === 'string') {
    const bodyBytes = Buffer.byteLength(body);
    at = w.begin(FrameType.PUBLISH, requestId, head + bodyBytes);
    if (bodyBytes > 0) w.buf.write(body, at + head, bodyBytes, 'utf8');
  } else {
    at = w.beginWithBody(FrameType.PUBLISH, requestId, head, body);
  }
  const b = w.buf;
  b[at] = flags;
  copyBytes(route, 0, route.length, b, at + 1);
  const p = writeStr(b, at + 1 + route.length, id, idBytes, 2);
  writeStr(b, p, optionsJson, optBytes, 4);
}

/** The length of `s` when it is short ASCII (its UTF-8 length then), else undefined. */
function asciiLength(s: string): number | undefined {
  const n = s.length;
  if (n > 64) return undefined;
  for (let i = 0; i < n; i++) if (s.charCodeAt(i) >= 0x80) return undefined;
  return n;
}

/**
 * A PUBLISH's target (str16) and routing key (str32), encoded: publishes mostly repeat the
 * previous one's, so the bytes are kept for the last pair (measuring and encoding both strings
 * was a fifth of a publish's cost on the client). Throws, as `byteLength16`, for a target too long.
 */
let routeFlags = -1;
let routeTarget = '';
let routeKey = '';
let routeCached: Buffer = Buffer.alloc(0);

function routeBytes(flags: number, target: string, routingKey: string): Buffer {
  const toQueue = flags & PUBLISH_TO_QUEUE;
  if (toQueue === routeFlags && target === routeTarget && routingKey === routeKey) return routeCached;
  const targetBytes = byteLength16(target, toQueue ? 'queue name' : 'exchange name');
  const keyBytes = Buffer.byteLength(routingKey);
  const b = Buffer.allocUnsafe(2 + targetBytes + 4 + keyBytes);
  writeStr(b, writeStr(b, 0, target, targetBytes, 2), routingKey, keyBytes, 4);
  routeFlags = toQueue;
  routeTarget = target;
  routeKey = routingKey;
  routeCached = b;
  return b;
}

const publishTargets = new TextCache();
const publishKeys = new TextCache();

/**
 * Decodes a PUBLISH whose payload is `buf[start, end)` (all of `buf` by default), into `into`
 * when given: the server reuses one object, since it reads the fields at once, and decodes the
 * payload where it lies in the chunk read (no allocation per publish besides the strings and the
 * body view).
 */
export function decodePublish(buf: Buffer, into?: PublishFrame, start?: number, end?: number): PublishFrame {
  const c = cursor(buf, 'PUBLISH', start, end);
  const flags = c.u8();
  if ((flags & ~(PUBLISH_TO_QUEUE | PUBLISH_MANDATORY | PUBLISH_NEW_ID)) !== 0) throw protocolError(`PUBLISH has unknown flags ${flags}`);
  const target = c.str16Cached(publishTargets);
  const routingKey = c.str32Cached(publishKeys);
  const id = c.str16();
  if (id.length === 0) throw protocolError('PUBLISH has an empty id');
  const options = c.json32();
  if (options !== undefined && (options === null || typeof options !== 'object' || Array.isArray(options))) throw protocolError('PUBLISH options must be an object');
  const f = into ?? ({} as PublishFrame);
  f.toQueue = (flags & PUBLISH_TO_QUEUE) !== 0;
  f.mandatory = (flags & PUBLISH_MANDATORY) !== 0;
  f.newId = (flags & PUBLISH_NEW_ID) !== 0;
  f.target = target;
  f.routingKey = routingKey;
  f.id = id;
  f.options = options as Record<string, unknown> | undefined;
  f.body = c.rest();
  return f;
}

/**
 * The queue list of the previous CONFIRM, encoded. The broker hands out the same route array for
 * every publish with the same route, so consecutive confirms usually repeat it: it is encoded once.
 */
let confirmQueues: readonly string[] = [];
let confirmQueueNames: string[] = [];
let confirmQueueBytes: Buffer = Buffer.alloc(0);

/** The encoded queue list (u16 count, then str16 names), from the cache when `queues` holds the same names. */
function queueListBytes(queues: readonly string[]): Buffer {
  if (queues === confirmQueues && sameNames(queues, confirmQueueNames)) return confirmQueueBytes;
  let bytes = 2;
  for (const q of queues) bytes += 2 + byteLength16(q, 'queue name');
  const b = Buffer.allocUnsafe(bytes);
  w16(b, 0, queues.length);
  let p = 2;
  for (const q of queues) p = writeStr(b, p, q, Buffer.byteLength(q), 2);
  confirmQueues = queues;
  confirmQueueNames = [...queues];
  confirmQueueBytes = b;
  return b;
}

/** True when `a` still holds the names `b` recorded (an array may change after it was cached). */
function sameNames(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** `extraJson`: wire JSON of the result's fields besides id, status and queues (e.g. `deliverAt`), or '' for none. */
export function encodeConfirm(w: FrameWriter, requestId: number, status: ConfirmStatus, queues: readonly string[], extraJson: string): void {
  const list = queueListBytes(queues);
  const extraBytes = extraJson.length === 0 ? 0 : Buffer.byteLength(extraJson);
  const at = w.begin(FrameType.CONFIRM, requestId, 1 + list.length + 4 + extraBytes);
  const b = w.buf;
  b[at] = CONFIRM_STATUSES.indexOf(status);
  copyBytes(list, 0, list.length, b, at + 1);
  writeStr(b, at + 1 + list.length, extraJson, extraBytes, 4);
}

/**
 * Encodes a CONFIRMS: the same answer for `count` publishes whose request ids run from
 * `firstRequestId` up by one (the frame's request id is the first).
 */
export function encodeConfirms(w: FrameWriter, firstRequestId: number, count: number, status: ConfirmStatus, queues: readonly string[]): void {
  const list = queueListBytes(queues);
  const at = w.begin(FrameType.CONFIRMS, firstRequestId, 4 + 1 + list.length + 4);
  const b = w.buf;
  w32(b, at, count);
  b[at + 4] = CONFIRM_STATUSES.indexOf(status);
  copyBytes(list, 0, list.length, b, at + 5);
  w32(b, at + 5 + list.length, 0);
}

/** A CONFIRMS: how many publishes it answers (from its request id up), and their common answer. */
export function decodeConfirms(payload: Buffer): { count: number; status: ConfirmStatus; queues: string[]; extra: Record<string, unknown> | undefined } {
  if (payload.length < 4) throw protocolError('CONFIRMS payload is truncated');
  const count = r32(payload, 0);
  if (count === 0) throw protocolError('CONFIRMS answers no publish');
  return { count, ...decodeConfirm(payload.subarray(4)) };
}

/**
 * The queue arrays of recent CONFIRMs, by their bytes. As the embedded broker does, publishes with
 * the same route share one array (callers must not change it), so a confirm allocates nothing
 * for its queues in the common case.
 */
const confirmQueueArrays = new Map<string, string[]>();
const CONFIRM_QUEUE_ARRAYS_MAX = 1024;
/** The previous confirm's queue list bytes and array: compared first, byte for byte. */
let lastQueueList: Buffer = Buffer.alloc(0);
let lastQueueArray: string[] = [];

export function decodeConfirm(payload: Buffer): { status: ConfirmStatus; queues: string[]; extra: Record<string, unknown> | undefined } {
  const c = cursor(payload, 'CONFIRM');
  const status = CONFIRM_STATUSES[c.u8()];
  if (status === undefined) throw protocolError('CONFIRM has an unknown status');
  const listStart = c.position;
  const n = c.u16();
  for (let i = 0; i < n; i++) c.skip16();
  const listEnd = c.position;
  const extra = c.json32();
  c.end();
  if (extra !== undefined && (extra === null || typeof extra !== 'object' || Array.isArray(extra))) throw protocolError('CONFIRM extra fields must be an object');
  return { status, queues: queueArrayOf(payload, listStart, listEnd, n), extra: extra as Record<string, unknown> | undefined };
}

/** The queue names of a checked queue list `payload[start, end)` holding `n` names. */
function queueArrayOf(payload: Buffer, start: number, end: number, n: number): string[] {
  if (n === 0) return [];
  const last = lastQueueList;
  if (end - start === last.length) {
    let same = true;
    for (let i = 0; i < last.length; i++) {
      if (last[i] !== payload[start + i]) {
        same = false;
        break;
      }
    }
    if (same) return lastQueueArray;
  }
  // latin1 keeps every byte, so equal keys mean equal bytes.
  const key = readLatin1(payload, start, end);
  let queues = confirmQueueArrays.get(key);
  if (queues === undefined) {
    queues = new Array<string>(n);
    const c = new PayloadCursor().reset(payload.subarray(start + 2, end), 'CONFIRM');
    for (let i = 0; i < n; i++) queues[i] = c.str16();
    if (confirmQueueArrays.size >= CONFIRM_QUEUE_ARRAYS_MAX) confirmQueueArrays.clear();
    confirmQueueArrays.set(key, queues);
  }
  lastQueueList = Buffer.from(payload.subarray(start, end));
  lastQueueArray = queues;
  return queues;
}

// --- DELIVERY ---

/**
 * Encodes a DELIVERY from decoded fields (fields as arguments: no object per message).
 * `headersJson` is '' when the message has no user headers. The server sends stored messages
 * with `encodeDeliveryBytes`, which must produce the same bytes (test/server/wire.test.ts).
 */
export function encodeDelivery(
  w: FrameWriter,
  consumerId: number,
  tag: number,
  offset: number,
  timestamp: number,
  deliveryId: number,
  deliveryCount: number,
  id: string,
  exchange: string,
  routingKey: string,
  headersJson: string,
  body: Buffer,
): void {
  const idBytes = byteLength16(id, 'id');
  const exBytes = byteLength16(exchange, 'exchange name');
  const keyBytes = Buffer.byteLength(routingKey);
  const hBytes = headersJson.length === 0 ? 0 : Buffer.byteLength(headersJson);
  const head = 36 + 2 + idBytes + 2 + exBytes + 4 + keyBytes + 4 + hBytes;
  const at = beginDelivery(w, head, body, consumerId, tag, offset, timestamp, deliveryId, deliveryCount);
  const b = w.buf;
  let p = writeStr(b, at + 36, id, idBytes, 2);
  p = writeStr(b, p, exchange, exBytes, 2);
  p = writeStr(b, p, routingKey, keyBytes, 4);
  writeStr(b, p, headersJson, hBytes, 4);
}

/** Starts a DELIVERY frame of `head` bytes before `body` and writes its fixed 36 bytes; returns where they start. */
function beginDelivery(w: FrameWriter, head: number, body: Buffer, consumerId: number, tag: number, offset: number, timestamp: number, deliveryId: number, deliveryCount: number): number {
  const at = w.beginWithBody(FrameType.DELIVERY, 0, head, body);
  const b = w.buf;
  w32(b, at, consumerId);
  w32(b, at + 4, tag);
  writeU64(b, at + 8, offset);
  writeU64(b, at + 16, timestamp);
  writeU64(b, at + 24, deliveryId);
  w32(b, at + 32, deliveryCount);
  return at;
}

/**
 * Encodes a DELIVERY from a stored record's bytes, the layout of `encodeDelivery`: the id, the
 * route and the headers are copied as they lie in the log, never decoded to text and encoded
 * again (that decoding was most of a delivery's cost on the server). `route` is the broker's
 * stored `exchange NUL routingKey` (undefined: both empty); `headersJson` the stored JSON text of
 * the user headers, or undefined.
 */
export function encodeDeliveryBytes(
  w: FrameWriter,
  consumerId: number,
  tag: number,
  offset: number,
  timestamp: number,
  deliveryId: number,
  deliveryCount: number,
  id: Buffer | null,
  route: Buffer | undefined,
  headersJson: Buffer | undefined,
  body: Buffer,
): void {
  const idBytes = id === null ? 0 : id.length;
  let exBytes = 0;
  let keyStart = 0;
  if (route !== undefined) {
    exBytes = route.length;
    for (let i = 0; i < route.length; i++) {
      if (route[i] === 0) {
        exBytes = i;
        keyStart = i + 1;
        break;
      }
    }
    if (keyStart === 0) keyStart = route.length;
  }
  const keyBytes = route === undefined ? 0 : route.length - keyStart;
  const hBytes = headersJson === undefined ? 0 : headersJson.length;
  assert(idBytes <= STR16_MAX && exBytes <= STR16_MAX, 'a stored id and exchange name fit their str16 fields');
  const head = 36 + 2 + idBytes + 2 + exBytes + 4 + keyBytes + 4 + hBytes;
  const at = beginDelivery(w, head, body, consumerId, tag, offset, timestamp, deliveryId, deliveryCount);
  const b = w.buf;
  let p = at + 36;
  w16(b, p, idBytes);
  if (id !== null) copyBytes(id, 0, idBytes, b, p + 2);
  p += 2 + idBytes;
  w16(b, p, exBytes);
  if (route !== undefined) copyBytes(route, 0, exBytes, b, p + 2);
  p += 2 + exBytes;
  w32(b, p, keyBytes);
  if (route !== undefined) copyBytes(route, keyStart, keyBytes, b, p + 4);
  p += 4 + keyBytes;
  w32(b, p, hBytes);
  if (headersJson !== undefined) copyBytes(headersJson, 0, hBytes, b, p + 4);
}

/** Copies `n` bytes; a loop for the short fields frames mostly carry (cheaper than a native call). */
function copyBytes(src: Buffer, from: number, n: number, dst: Buffer, at: number): void {
  if (n > 64) {
    src.copy(dst, at, from, from + n);
    return;
  }
  for (let i = 0; i < n; i++) dst[at + i] = src[from + i] as number;
}

/** The consumer a DELIVERY is for, read before decoding the rest (the consumer decides what to build). */
export function deliveryConsumerId(payload: Buffer, start = 0, end = payload.length): number {
  if (end - start < 4) throw protocolError('DELIVERY payload is truncated');
  return r32(payload, start);
}

/**
 * Where the fields of a DELIVERY lie in its payload: found (and every length checked) when the
 * frame arrives; the text fields are decoded only when asked for (`deliveryText`).
 */
export interface DeliveryLayout {
  tag: number;
  offset: number;
  timestamp: number;
  deliveryId: number;
  deliveryCount: number;
  idStart: number;
  idEnd: number;
  exchangeStart: number;
  exchangeEnd: number;
  keyStart: number;
  keyEnd: number;
  /** Parsed at once, so malformed JSON fails the frame; undefined when the message has none. */
  headers: Record<string, unknown> | undefined;
  bodyStart: number;
  /** The end of the payload (the body runs to it). */
  bodyEnd: number;
}

/**
 * Checks a DELIVERY payload, `buf[start, end)` (all of `buf` by default), and fills `out` with
 * its layout, as indexes into `buf` (`out` is reused by the caller: no allocation).
 */
export function scanDelivery(buf: Buffer, out: DeliveryLayout, start?: number, end?: number): DeliveryLayout {
  const c = cursor(buf, 'DELIVERY', start, end);
  c.u32(); // consumer id: deliveryConsumerId
  out.tag = c.u32();
  out.offset = c.u64();
  out.timestamp = c.u64();
  out.deliveryId = c.u64();
  out.deliveryCount = c.u32();
  out.idEnd = (out.idStart = c.skip16()) + c.lastLength;
  out.exchangeEnd = (out.exchangeStart = c.skip16()) + c.lastLength;
  out.keyEnd = (out.keyStart = c.skip32()) + c.lastLength;
  const headers = c.json32(true);
  if (headers !== undefined && (headers === null || typeof headers !== 'object' || Array.isArray(headers))) throw protocolError('DELIVERY headers must be an object');
  out.headers = headers as Record<string, unknown> | undefined;
  out.bodyStart = c.position;
  out.bodyEnd = end ?? buf.length;
  return out;
}

export type DeliveryBuilder<T> = (
  tag: number,
  offset: number,
  timestamp: number,
  deliveryId: number,
  deliveryCount: number,
  id: string,
  exchange: string,
  routingKey: string,
  headers: Record<string, unknown> | undefined,
  body: Buffer,
) => T;

const deliveryExchanges = new TextCache();
const deliveryKeys = new TextCache();

/** The exchange of a scanned DELIVERY (usually the previous one's: decoded through a cache). */
export function deliveryExchange(payload: Buffer, start: number, end: number): string {
  return deliveryExchanges.read(payload, start, end);
}

/** The routing key of a scanned DELIVERY, through a cache likewise. */
export function deliveryRoutingKey(payload: Buffer, start: number, end: number): string {
  return deliveryKeys.read(payload, start, end);
}

/** An empty layout for `scanDelivery` to fill (one per reader, reused for every frame). */
export function newDeliveryLayout(): DeliveryLayout {
  return { tag: 0, offset: 0, timestamp: 0, deliveryId: 0, deliveryCount: 0, idStart: 0, idEnd: 0, exchangeStart: 0, exchangeEnd: 0, keyStart: 0, keyEnd: 0, headers: undefined, bodyStart: 0, bodyEnd: 0 };
}

const scratch = newDeliveryLayout();

/** Decodes a DELIVERY straight into what `build` makes of its fields (every field decoded now). */
export function decodeDelivery<T>(payload: Buffer, build: DeliveryBuilder<T>): T {
  const l = scanDelivery(payload, scratch);
  return build(
    l.tag,
    l.offset,
    l.timestamp,
    l.deliveryId,
    l.deliveryCount,
    readText(payload, l.idStart, l.idEnd),
    deliveryExchange(payload, l.exchangeStart, l.exchangeEnd),
    deliveryRoutingKey(payload, l.keyStart, l.keyEnd),
    l.headers,
    payload.subarray(l.bodyStart, l.bodyEnd),
  );
}

// --- RECORDS ---

/** What a RECORDS entry carries from the log: a stored record (src/log `LogRecord`), copied as it lies. */
export interface StoredRecord {
  readonly offset: number;
  readonly timestamp: number;
  readonly storedBuffer: Buffer;
  readonly storedStart: number;
  readonly storedEnd: number;
}

/** One delivery of a stored record (the broker's `Message` is one). */
export interface RecordDelivery {
  readonly record: StoredRecord;
  readonly deliveryId: number;
  readonly deliveryCount: number;
}

/**
 * Writes one RECORDS frame for the deliveries `ds[from, to)` with their `tags`, as many of them as
 * go to the consumer of `ds[from]` in a row and fit in `bytesMax` payload bytes (always at least
 * one); returns the index after the last one written. The records are copied as stored, and
 * records that lie back to back in one read buffer (consecutive offsets, the usual case) in one
 * copy. A record of ZERO_COPY_BODY_BYTES or more goes in a frame of its own, by reference.
 */
export function encodeRecords(
  w: FrameWriter,
  bytesMax: number,
  consumers: readonly number[],
  ds: readonly RecordDelivery[],
  tags: readonly number[],
  from: number,
  to: number,
): number {
  const consumerId = consumers[from] as number;
  const first = (ds[from] as RecordDelivery).record;
  if (first.storedEnd - first.storedStart >= ZERO_COPY_BODY_BYTES) {
    const at = w.beginWithBody(FrameType.RECORDS, 0, 8 + RECORDS_ENTRY_FIXED_BYTES, first.storedBuffer.subarray(first.storedStart, first.storedEnd));
    w32(w.buf, at, consumerId);
    w32(w.buf, at + 4, 1);
    writeRecordHead(w.buf, at + 8, tags[from] as number, ds[from] as RecordDelivery);
    return from + 1;
  }
  let bytes = 8;
  let end = from;
  while (end < to && consumers[end] === consumerId) {
    const r = (ds[end] as RecordDelivery).record;
    const n = r.storedEnd - r.storedStart;
    if (n >= ZERO_COPY_BODY_BYTES || (end > from && bytes + RECORDS_ENTRY_FIXED_BYTES + n > bytesMax)) break;
    bytes += RECORDS_ENTRY_FIXED_BYTES + n;
    end++;
  }
  const count = end - from;
  const at = w.begin(FrameType.RECORDS, 0, bytes);
  const b = w.buf;
  w32(b, at, consumerId);
  w32(b, at + 4, count);
  let p = at + 8;
  for (let i = from; i < end; i++, p += RECORDS_ENTRY_FIXED_BYTES) writeRecordHead(b, p, tags[i] as number, ds[i] as RecordDelivery);
  for (let i = from; i < end; ) {
    const r = (ds[i++] as RecordDelivery).record;
    const src = r.storedBuffer;
    const start = r.storedStart;
    let stop = r.storedEnd;
    for (; i < end; i++) {
      const next = (ds[i] as RecordDelivery).record;
      if (next.storedBuffer !== src || next.storedStart !== stop) break;
      stop = next.storedEnd;
    }
    src.copy(b, p, start, stop);
    p += stop - start;
  }
  assert.equal(p, at + bytes, 'a RECORDS frame is filled to the size it was begun with');
  return end;
}

function writeRecordHead(b: Buffer, at: number, tag: number, d: RecordDelivery): void {
  w32(b, at, tag);
  writeU64(b, at + 4, d.record.offset);
  writeU64(b, at + 12, d.record.timestamp);
  writeU64(b, at + 20, d.deliveryId);
  w32(b, at + 28, d.deliveryCount);
}

/** A u64 restricted to safe integers (as PayloadCursor.u64), from bytes the caller bounds-checked. */
function safeU64(buf: Buffer, at: number): number {
  const hi = r32(buf, at + 4);
  if (hi > 0x1f_ffff) throw protocolError('RECORDS: a u64 field exceeds 2^53');
  return hi * 0x1_0000_0000 + r32(buf, at);
}

/** docs/format.md "Record": offsetDelta, timestampDelta, keyLength, headerCount and valueLength after the length prefix. */
const RECORD_BYTES_MIN = 4 + 4 + 4 + 2 + 4;

/** The second byte of the broker's `\0m` (route) and `\0h` (user headers) header names: NUL and one letter each. */
const META_ROUTE_CODE = META_ROUTE.charCodeAt(1);
const META_HEADERS_CODE = META_HEADERS.charCodeAt(1);
assert(META_ROUTE.length === 2 && META_ROUTE.charCodeAt(0) === 0 && META_HEADERS.length === 2 && META_HEADERS.charCodeAt(0) === 0, 'the broker header names are NUL and one ASCII letter');

/**
 * Checks a RECORDS payload `buf[start, end)` as far as its entry heads: returns how many
 * deliveries it carries (the consumer id is its first u32, as a DELIVERY's).
 */
export function recordsCount(buf: Buffer, start: number, end: number): number {
  if (end - start < 8) throw protocolError('RECORDS payload is truncated');
  const count = r32(buf, start + 4);
  if (count === 0) throw protocolError('RECORDS carries no delivery');
  if (8 + count * (RECORDS_ENTRY_FIXED_BYTES + 4 + RECORD_BYTES_MIN) > end - start) throw protocolError(`RECORDS payload is too short for ${count} deliveries`);
  return count;
}

/**
 * Checks entry `i` of the `count` of a RECORDS payload starting at `start` whose record starts at
 * `rec` (the frame ends at `end`; the last record must end it), and fills `out` with its layout, the same fields as a DELIVERY's: the id is
 * the record's key, the exchange and routing key the two halves of its route header (`\0m`), the
 * headers the JSON of `\0h` (parsed now, so bad JSON fails the frame), the body its value
 * (src/broker/message.ts). The record's structure is checked as the log checks it (decodeRecords).
 * Returns where the next record starts.
 */
export function scanRecordEntry(buf: Buffer, out: DeliveryLayout, start: number, count: number, i: number, rec: number, end: number): number {
  // The entry heads lie within the frame (recordsCount checked room for `count` of them), so
  // they are read without a cursor's check per field.
  const h = start + 8 + i * RECORDS_ENTRY_FIXED_BYTES;
  assert(i < count && h + RECORDS_ENTRY_FIXED_BYTES <= end, 'a RECORDS entry head lies within the frame');
  out.tag = r32(buf, h);
  out.offset = safeU64(buf, h + 4);
  out.timestamp = safeU64(buf, h + 12);
  out.deliveryId = safeU64(buf, h + 20);
  out.deliveryCount = r32(buf, h + 28);
  if (end - rec < 4 + RECORD_BYTES_MIN) throw protocolError('RECORDS payload is truncated');
  const recEnd = rec + 4 + r32(buf, rec);
  if (recEnd - rec < 4 + RECORD_BYTES_MIN || recEnd > end) throw protocolError('RECORDS has a record whose length is out of bounds');
  if (i === count - 1 && recEnd !== end) throw protocolError(`RECORDS has ${end - recEnd} bytes after its last record`);
  const keyLength = r32(buf, rec + 12) | 0;
  let q = rec + 16;
  if (keyLength === -1) {
    out.idStart = out.idEnd = q;
  } else if (keyLength < 0 || q + keyLength + 6 > recEnd) {
    throw protocolError('RECORDS has a record whose key is out of bounds');
  } else {
    out.idStart = q;
    q += keyLength;
    out.idEnd = q;
  }
  const headerCount = r16(buf, q);
  q += 2;
  let routeStart = -1;
  let routeEnd = -1;
  let headersStart = -1;
  let headersEnd = -1;
  for (let j = 0; j < headerCount; j++) {
    if (q + 2 > recEnd) throw protocolError('RECORDS has a record header past its end');
    const nameLength = r16(buf, q);
    const nameEnd = q + 2 + nameLength;
    if (nameEnd + 4 > recEnd) throw protocolError('RECORDS has a record header past its end');
    const valueEnd = nameEnd + 4 + r32(buf, nameEnd);
    if (valueEnd > recEnd) throw protocolError('RECORDS has a record header past its end');
    // The broker's names (src/broker/message.ts): the first of each counts, as when the log reads them.
    if (nameLength === 2 && buf[q + 2] === 0) {
      const kind = buf[q + 3];
      if (kind === META_ROUTE_CODE && routeStart < 0) {
        routeStart = nameEnd + 4;
        routeEnd = valueEnd;
      } else if (kind === META_HEADERS_CODE && headersStart < 0) {
        headersStart = nameEnd + 4;
        headersEnd = valueEnd;
      }
    }
    q = valueEnd;
  }
  if (q + 4 > recEnd || q + 4 + r32(buf, q) !== recEnd) throw protocolError('RECORDS has a record whose value does not end it');
  out.bodyStart = q + 4;
  out.bodyEnd = recEnd;
  // `exchange NUL routingKey`; without a NUL all of it is the exchange, without a route both are empty (as encodeDeliveryBytes).
  out.exchangeStart = out.exchangeEnd = out.keyStart = out.keyEnd = routeEnd < 0 ? out.bodyStart : routeEnd;
  if (routeStart >= 0) {
    out.exchangeStart = routeStart;
    for (let k = routeStart; k < routeEnd; k++) {
      if (buf[k] === 0) {
        out.exchangeEnd = k;
        out.keyStart = k + 1;
        break;
      }
    }
  }
  out.headers = undefined;
  if (headersEnd > headersStart) {
    const headers = parseJson(buf.toString('utf8', headersStart, headersEnd), 'RECORDS', true);
    if (headers === null || typeof headers !== 'object' || Array.isArray(headers)) throw protocolError('RECORDS headers must be an object');
    out.headers = headers as Record<string, unknown>;
  }
  return recEnd;
}

// --- ACK / NACK / DONE / CREDIT ---

export function encodeAck(w: FrameWriter, requestId: number, tag: number): void {
  const at = w.begin(FrameType.ACK, requestId, 4);
  w.buf.writeUInt32LE(tag, at);
}

export function decodeAck(payload: Buffer): number {
  const c = cursor(payload, 'ACK');
  const tag = c.u32();
  c.end();
  return tag;
}

export function encodeNack(w: FrameWriter, requestId: number, tag: number, requeue: boolean): void {
  const at = w.begin(FrameType.NACK, requestId, 5);
  w.buf.writeUInt32LE(tag, at);
  w.buf[at + 4] = requeue ? NACK_REQUEUE : 0;
}

export function decodeNack(payload: Buffer): { tag: number; requeue: boolean } {
  const c = cursor(payload, 'NACK');
  const tag = c.u32();
  const flags = c.u8();
  c.end();
  if ((flags & ~NACK_REQUEUE) !== 0) throw protocolError(`NACK has unknown flags ${flags}`);
  return { tag, requeue: (flags & NACK_REQUEUE) !== 0 };
}

/** One DONE entry: a handler's outcome (failure text, or null on success). */
export interface DoneEntry {
  tag: number;
  failure: string | null;
}

/** §3 DONE: the failure text is cut to fit its u16 length. */
const DONE_TEXT_BYTES_MAX = 1024;

/** Encodes one DONE frame carrying every entry gathered during an event-loop turn. */
export function encodeDone(w: FrameWriter, entries: readonly DoneEntry[]): void {
  const tags = entries.map((e) => e.tag);
  const failures = new Map<number, string>();
  entries.forEach((e, i) => {
    if (e.failure !== null) failures.set(i, e.failure);
  });
  encodeDoneTags(w, tags, tags.length, failures);
}

/**
 * `encodeDone` for entries kept as the first `count` of `tags`, with the failures (by index into
 * `tags`) on the side, usually none: the client gathers thousands of successes per second and
 * makes no object for each.
 */
export function encodeDoneTags(w: FrameWriter, tags: readonly number[], count: number, failures: ReadonlyMap<number, string>): void {
  encodeDoneSpan(w, tags, 0, count, failures);
}

/** One DONE frame for the entries `tags[from, to)`; `failures` is by index into `tags`. */
function encodeDoneSpan(w: FrameWriter, tags: readonly number[], from: number, to: number, failures: ReadonlyMap<number, string>): void {
  let bytes = 7 * (to - from);
  const texts = new Map<number, Buffer>();
  for (const [i, f] of failures) {
    if (i < from || i >= to) continue;
    const t = Buffer.from(f).subarray(0, DONE_TEXT_BYTES_MAX);
    texts.set(i, t);
    bytes += t.length;
  }
  const at = w.begin(FrameType.DONE, 0, bytes);
  const b = w.buf;
  let p = at;
  for (let i = from; i < to; i++) {
    const t = texts.size === 0 ? undefined : texts.get(i);
    w32(b, p, tags[i] as number);
    b[p + 4] = t === undefined ? 0 : 1;
    w16(b, p + 5, t === undefined ? 0 : t.length);
    p += 7;
    if (t !== undefined) {
      t.copy(b, p);
      p += t.length;
    }
  }
}

/** Calls `each` for every entry of a DONE frame, in order (validating the whole frame first). */
export function decodeDone(payload: Buffer, each: (tag: number, failure: string | null) => void): void {
  const end = payload.length;
  for (let p = 0; p < end; ) {
    if (p + 7 > end) throw protocolError('DONE payload is truncated');
    const outcome = payload[p + 4] as number;
    const n = r16(payload, p + 5);
    if (outcome > 1 || (outcome === 0 && n !== 0)) throw protocolError(`DONE has a bad entry (outcome ${outcome}, ${n} bytes of text)`);
    p += 7 + n;
    if (p > end) throw protocolError('DONE payload is truncated');
  }
  for (let p = 0; p < end; ) {
    const tag = r32(payload, p);
    const n = r16(payload, p + 5);
    each(tag, payload[p + 4] === 0 ? null : payload.toString('utf8', p + 7, p + 7 + n));
    p += 7 + n;
  }
}

/**
 * `encodeDoneTags` for a server that takes DONE_RUNS (WELCOME `features`): each run of consecutive
 * successful tags is one 8-byte DONE_RUNS entry; failures go in DONE frames between them, so the
 * server still reads the outcomes in the order the handlers ended.
 */
export function encodeDoneRuns(w: FrameWriter, tags: readonly number[], count: number, failures: ReadonlyMap<number, string>): void {
  let i = 0;
  while (i < count) {
    let j = i;
    if (failures.size > 0 && failures.has(i)) {
      while (j < count && failures.has(j)) j++;
      encodeDoneSpan(w, tags, i, j, failures);
      i = j;
      continue;
    }
    j = i + 1;
    let runs = 1;
    for (; j < count && (failures.size === 0 || !failures.has(j)); j++) if (tags[j] !== (tags[j - 1] as number) + 1) runs++;
    const at = w.begin(FrameType.DONE_RUNS, 0, runs * DONE_RUN_BYTES);
    const b = w.buf;
    let p = at;
    let first = tags[i] as number;
    let n = 1;
    for (let k = i + 1; k < j; k++) {
      const t = tags[k] as number;
      if (t === first + n) {
        n++;
        continue;
      }
      w32(b, p, first);
      w32(b, p + 4, n);
      p += DONE_RUN_BYTES;
      first = t;
      n = 1;
    }
    w32(b, p, first);
    w32(b, p + 4, n);
    assert.equal(p + DONE_RUN_BYTES, at + runs * DONE_RUN_BYTES, 'DONE_RUNS fills the runs it counted');
    i = j;
  }
}

/**
 * Calls `each(first, count)` for every run of a DONE_RUNS payload `buf[start, end)`, in order,
 * after validating the whole frame: at least one run, each of at least one tag, from tag 1 up to
 * TAG_MAX without wrapping.
 */
export function decodeDoneRuns(buf: Buffer, start: number, end: number, each: (first: number, count: number) => void): void {
  if (end === start || (end - start) % DONE_RUN_BYTES !== 0) throw protocolError(`DONE_RUNS payload of ${end - start} bytes is not a whole number of runs`);
  for (let p = start; p < end; p += DONE_RUN_BYTES) {
    const first = r32(buf, p);
    const count = r32(buf, p + 4);
    if (first === 0 || count === 0 || first + count - 1 > TAG_MAX) throw protocolError(`DONE_RUNS has a bad run (${count} tags from ${first})`);
  }
  for (let p = start; p < end; p += DONE_RUN_BYTES) each(r32(buf, p), r32(buf, p + 4));
}

export function encodeCredit(w: FrameWriter, consumerId: number, count: number): void {
  const at = w.begin(FrameType.CREDIT, 0, 8);
  w.buf.writeUInt32LE(consumerId, at);
  w.buf.writeUInt32LE(count, at + 4);
}

export function decodeCredit(payload: Buffer): { consumerId: number; count: number } {
  const c = cursor(payload, 'CREDIT');
  const consumerId = c.u32();
  const count = c.u32();
  c.end();
  return { consumerId, count };
}

// --- HEARTBEAT / CLOSE ---

export function encodeHeartbeat(w: FrameWriter): void {
  w.begin(FrameType.HEARTBEAT, 0, 0);
}

export function encodeClose(w: FrameWriter, reason: string): void {
  const bytes = Buffer.byteLength(reason);
  const at = w.begin(FrameType.CLOSE, 0, bytes);
  w.buf.write(reason, at, bytes, 'utf8');
}

/** The name of a frame type, for messages. */
export function frameTypeName(type: number): string {
  for (const [name, code] of Object.entries(FrameType)) if (code === type) return name;
  return `0x${type.toString(16).padStart(2, '0')}`;
}
