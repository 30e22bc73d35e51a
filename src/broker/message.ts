/**
 * How a message is stored as a log record (docs/format.md "Messages"): the key is the message
 * id, the value is the body, and broker metadata rides in record headers whose names start with
 * a NUL byte, a prefix user headers may not use. Nothing is decoded until a consumer asks.
 */
import crypto from 'node:crypto';
import type { LogRecord, RecordInput } from '../log/index.js';
import { SpoolError } from '../errors.js';

/** `<exchange>\0<routing key>`: exchange names never hold a NUL. */
export const META_ROUTE = '\0m';
/**
 * Present when the message takes part in the dedupe window: empty when the key is the id the
 * publisher chose, else the dedupe key itself (dead-lettering and replay use keys that differ
 * from the id, so a moved message is never mistaken for a retried publish of the original).
 */
export const META_CALLER_ID = '\0u';
/** A delayed message's due time in ms, as decimal text (delay store only). */
export const META_DELIVER_AT = '\0d';
/** A delayed message's time to live in ms once routed, as decimal text (delay store only). */
export const META_TTL = '\0t';
/** JSON of the user's headers. */
export const META_HEADERS = '\0h';
/** Absolute expiry time in ms, as decimal text. */
export const META_EXPIRES_AT = '\0x';

export type HeaderValue = string | number | boolean | null | HeaderValue[] | { [key: string]: HeaderValue };
export type Headers = Record<string, HeaderValue>;
export type Body = Buffer | Uint8Array | string;

const idRandom = crypto.randomBytes(5).readUIntBE(0, 5).toString(32).padStart(8, '0');
let idTimeMs = -1;
let idTimePrefix = '';
let idCounter = 0;

/**
 * A unique, time-sortable id: 10 base32hex characters of milliseconds, 8 random characters
 * fixed per process, and an 8-character counter, 26 in all (ULID's length). base32hex
 * (0-9a-v) sorts the same as the numbers it encodes. Hand-written because the `ulid` package's
 * monotonic factory cost ~8% of a publish (370 ns per id, measured with bench/). A batch passes
 * one `now` (real time, ms) for all its ids; ids stay unique and ordered if it is behind.
 */
export function generateId(now: number = Date.now()): string {
  if (now > idTimeMs) {
    idTimeMs = now;
    idTimePrefix = now.toString(32).padStart(10, '0') + idRandom;
    idHead = '';
  }
  idCounter = (idCounter + 1) % 0x100_0000_0000; // 32^8
  // The counter's last two digits change every id, the six before them every 1,024 ids: keep
  // the 24 characters before the last pair, so most ids cost one concatenation.
  const low = idCounter & 1023;
  if (low === 0 || idHead === '') {
    const hi = Math.floor(idCounter / 0x10_0000);
    const mid = (idCounter % 0x10_0000) >> 10;
    idHead = idTimePrefix + (BASE32_PAIRS[hi >> 10] as string) + (BASE32_PAIRS[hi & 1023] as string) + (BASE32_PAIRS[mid] as string);
  }
  return idHead + (BASE32_PAIRS[low] as string);
}

let idHead = '';

/**
 * `count` consecutive ids, the ones `generateId(now)` would return one by one, made at once:
 * their characters go into one buffer, decoded as one string, and each id is a slice of it.
 * V8 keeps a slice as a view of its parent, so the log writes it as it is, where an id made by
 * concatenation must be flattened first (bulk ids cost ~75 ns a message less, measured).
 */
export function generateIds(count: number, now: number = Date.now()): string[] {
  const ids = new Array<string>(count);
  if (count === 0) return ids;
  if (count === 1) {
    ids[0] = generateId(now);
    return ids;
  }
  generateId(now); // moves the clock prefix on, as one by one would, and takes the first counter value
  const first = idCounter;
  idCounter = (first + count - 1) % 0x100_0000_0000;
  idHead = ''; // the counter jumped: the next generateId rebuilds its cached head
  const chars = Buffer.allocUnsafe(count * ID_LENGTH);
  for (let i = 0; i < ID_PREFIX_LENGTH; i++) chars[i] = idTimePrefix.charCodeAt(i);
  // The 40-bit counter as two small integers (10 high bits, 30 low), so the digit loop stays in
  // integer arithmetic.
  let hi = Math.floor(first / LOW_SPAN);
  let lo = first % LOW_SPAN;
  for (let j = 0; j < count; j++) {
    const at = j * ID_LENGTH;
    if (j > 0) for (let k = 0; k < ID_PREFIX_LENGTH; k++) chars[at + k] = chars[k] as number;
    chars[at + 18] = BASE32_CODES[hi >>> 5] as number;
    chars[at + 19] = BASE32_CODES[hi & 31] as number;
    for (let k = 25, c = lo; k >= 20; k--, c >>>= 5) chars[at + k] = BASE32_CODES[c & 31] as number;
    if (++lo === LOW_SPAN) {
      lo = 0;
      hi = (hi + 1) & 1023;
    }
  }
  const all = chars.toString('latin1');
  for (let j = 0; j < count; j++) ids[j] = all.slice(j * ID_LENGTH, (j + 1) * ID_LENGTH);
  return ids;
}

const ID_LENGTH = 26;
/** The counter's low six digits: 2^30. */
const LOW_SPAN = 0x4000_0000;
/** The milliseconds and the random part; the counter's 8 digits follow. */
const ID_PREFIX_LENGTH = 18;
/** The base32hex digits 0-9a-v as character codes. */
const BASE32_CODES: readonly number[] = Array.from({ length: 32 }, (_, i) => i.toString(32).charCodeAt(0));

/** Every 10-bit value as two base32hex digits. */
const BASE32_PAIRS: readonly string[] = Array.from({ length: 1024 }, (_, i) => (i >> 5).toString(32) + (i & 31).toString(32));

/** The most messages one `publishBatch` call takes (embedded or remote). */
export const BATCH_MESSAGES_MAX = 100_000;

export function checkHeaders(headers: unknown): Headers | undefined {
  if (headers === undefined) return undefined;
  if (headers === null || typeof headers !== 'object' || Array.isArray(headers)) {
    throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'headers must be an object of JSON values');
  }
  for (const [k, v] of Object.entries(headers as Record<string, unknown>)) {
    if (k.startsWith('\0')) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `header name ${JSON.stringify(k)} is reserved`);
    if (!isJsonValue(v, 0)) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `header ${k} must be a JSON value (string, number, boolean, null, array or object)`);
  }
  return headers as Headers;
}

function isJsonValue(v: unknown, depth: number): boolean {
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return true;
  if (typeof v === 'number') return Number.isFinite(v);
  if (depth > 32 || typeof v !== 'object') return false;
  if (Array.isArray(v)) return v.every((x) => isJsonValue(x, depth + 1));
  if (Object.getPrototypeOf(v) !== Object.prototype) return false;
  return Object.values(v as Record<string, unknown>).every((x) => isJsonValue(x, depth + 1));
}

/**
 * Marks a publish's options (internal): its id was made by a served client for this publish and
 * is sent for the first time, so no queue can hold it yet and the dedupe window records it without
 * a lookup (DedupeWindow.claimNew; docs/protocol.md, PUBLISH flag NEW_ID). A symbol, so options
 * from JSON or a user's object literal never carry it by accident. @internal
 */
export const NEW_ID: unique symbol = Symbol('spool.newId');

export interface StoredMessage {
  id: string;
  callerId: boolean;
  /** The caller's id is new (see NEW_ID): claimed in the dedupe window without a lookup. */
  newId: boolean;
  /** The dedupe key when it is not the id itself (dead-letter and replay copies). */
  dedupeKey?: string;
  exchange: string;
  routingKey: string;
  headers: Headers | undefined;
  body: Body;
  expiresAt: number | undefined;
}

/** Header maps for the common case (no user headers, no expiry), shared across messages: per exchange, per routing key. */
const routeHeaders = { generated: new Map<string, Map<string, Readonly<Record<string, string>>>>(), caller: new Map<string, Map<string, Readonly<Record<string, string>>>>() };
let routeHeadersSize = 0;
const ROUTE_CACHE_MAX = 10_000;

/** The route header map used last and what it was for: consecutive messages mostly share a route. */
let lastRoute: { exchange: string; routingKey: string; callerId: boolean; headers: Readonly<Record<string, string>> } | null = null;

export function toRecord(m: StoredMessage): RecordInput {
  if (m.headers === undefined && m.expiresAt === undefined && m.dedupeKey === undefined) {
    const last = lastRoute;
    if (last !== null && last.routingKey === m.routingKey && last.exchange === m.exchange && last.callerId === m.callerId) {
      return { key: m.id, value: m.body, headers: last.headers };
    }
    const byExchange = m.callerId ? routeHeaders.caller : routeHeaders.generated;
    let byKey = byExchange.get(m.exchange);
    let h = byKey?.get(m.routingKey);
    if (h === undefined) {
      // Frozen with string values, so the log checks, sizes and encodes it once, not per record.
      const route = m.exchange + '\0' + m.routingKey;
      const fresh: Record<string, string> = m.callerId ? { [META_ROUTE]: route, [META_CALLER_ID]: '' } : { [META_ROUTE]: route };
      h = Object.freeze(fresh);
      if (routeHeadersSize >= ROUTE_CACHE_MAX) {
        routeHeaders.generated.clear();
        routeHeaders.caller.clear();
        routeHeadersSize = 0;
        byKey = undefined;
      }
      if (byKey === undefined) byExchange.set(m.exchange, (byKey = new Map()));
      byKey.set(m.routingKey, h);
      routeHeadersSize++;
    }
    lastRoute = { exchange: m.exchange, routingKey: m.routingKey, callerId: m.callerId, headers: h };
    return { key: m.id, value: m.body, headers: h };
  }
  const route = m.exchange + '\0' + m.routingKey;
  const h: Record<string, string> = { [META_ROUTE]: route };
  if (m.dedupeKey !== undefined) h[META_CALLER_ID] = m.dedupeKey;
  else if (m.callerId) h[META_CALLER_ID] = '';
  if (m.headers !== undefined) h[META_HEADERS] = JSON.stringify(m.headers);
  if (m.expiresAt !== undefined) h[META_EXPIRES_AT] = String(m.expiresAt);
  return { key: m.id, value: m.body, headers: h };
}

/** The key a stored message holds in the dedupe window, or undefined when it holds none. */
export function dedupeKeyOf(r: LogRecord): string | undefined {
  if (r.headerNames < 2) return undefined;
  const k = r.headerText(META_CALLER_ID);
  if (k === undefined) return undefined;
  return k === '' ? r.keyText() : k;
}

/** Absolute expiry of a stored message from its own ttl, or undefined. */
export function expiresAtOf(r: LogRecord): number | undefined {
  if (r.headerNames < 2) return undefined;
  const x = r.headerText(META_EXPIRES_AT);
  return x === undefined ? undefined : Number(x);
}

export function routeOf(r: Pick<LogRecord, 'headerText'>): { exchange: string; routingKey: string } {
  const route = r.headerText(META_ROUTE) ?? '\0';
  const cut = route.indexOf('\0');
  return { exchange: route.slice(0, cut), routingKey: route.slice(cut + 1) };
}

export function userHeadersOf(r: LogRecord): Headers {
  if (r.headerNames < 2) return {};
  const raw = r.headerText(META_HEADERS);
  return raw === undefined ? {} : (JSON.parse(raw) as Headers);
}
