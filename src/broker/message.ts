/**
 * How a message is stored as a log record (docs/format.md "Messages"): the key is the message
 * id, the value is the body, and broker metadata rides in record headers whose names start with
 * a NUL byte, a prefix user headers may not use.
 */
import { monotonicFactory } from 'ulid';
import type { LogRecord, RecordInput } from '../log/index.js';
import { SpoolError } from '../errors.js';

export const META_EXCHANGE = '\0e';
export const META_ROUTING_KEY = '\0k';
/** Present (empty) when the publisher chose the id; only such ids enter the dedupe window. */
export const META_CALLER_ID = '\0u';
/** JSON of the user's headers. */
export const META_HEADERS = '\0h';
/** Absolute expiry time in ms, as decimal text. */
export const META_EXPIRES_AT = '\0x';

export type HeaderValue = string | number | boolean | null;
export type Headers = Record<string, HeaderValue>;
export type Body = Buffer | Uint8Array | string;

const nextUlid = monotonicFactory();

/** A unique, time-sortable id (a monotonic ULID). */
export function generateId(): string {
  return nextUlid();
}

export function checkHeaders(headers: unknown): Headers | undefined {
  if (headers === undefined) return undefined;
  if (headers === null || typeof headers !== 'object' || Array.isArray(headers)) {
    throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'headers must be an object of string, number, boolean or null values');
  }
  for (const [k, v] of Object.entries(headers as Record<string, unknown>)) {
    if (k.startsWith('\0')) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `header name ${JSON.stringify(k)} is reserved`);
    if (v !== null && typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') {
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `header ${k} must be a string, number, boolean or null`);
    }
  }
  return headers as Headers;
}

export interface StoredMessage {
  id: string;
  callerId: boolean;
  exchange: string;
  routingKey: string;
  headers: Headers | undefined;
  body: Body;
  expiresAt: number | undefined;
}

export function toRecord(m: StoredMessage): RecordInput {
  const h: Record<string, string> = { [META_EXCHANGE]: m.exchange, [META_ROUTING_KEY]: m.routingKey };
  if (m.callerId) h[META_CALLER_ID] = '';
  if (m.headers !== undefined) h[META_HEADERS] = JSON.stringify(m.headers);
  if (m.expiresAt !== undefined) h[META_EXPIRES_AT] = String(m.expiresAt);
  return { key: m.id, value: m.body, headers: h };
}

/** The parts of a stored record a consumer needs, decoded once. */
export interface DecodedRecord {
  offset: number;
  timestamp: number;
  id: string;
  callerId: boolean;
  exchange: string;
  routingKey: string;
  headersJson: Buffer | undefined;
  body: Buffer;
  expiresAt: number | undefined;
}

export function fromRecord(r: LogRecord): DecodedRecord {
  const h = r.headers;
  const exp = h[META_EXPIRES_AT];
  return {
    offset: r.offset,
    timestamp: r.timestamp,
    id: r.key === null ? '' : r.key.toString('utf8'),
    callerId: h[META_CALLER_ID] !== undefined,
    exchange: h[META_EXCHANGE]?.toString('utf8') ?? '',
    routingKey: h[META_ROUTING_KEY]?.toString('utf8') ?? '',
    headersJson: h[META_HEADERS],
    body: r.value,
    expiresAt: exp === undefined ? undefined : Number(exp.toString('latin1')),
  };
}
