/**
 * Key hashing. A key's 64-bit hash (the first 8 bytes of its SHA-1) places it in a table's
 * directory (the high word's top bits) and in the Bloom filters (both words). SHA-1 rather than
 * a fast non-cryptographic hash because keys often come from outside (HTTP idempotency keys): a
 * caller must not be able to pile many keys onto one directory slot. Collisions are harmless for
 * correctness: every match is confirmed by comparing the full key.
 */
import crypto from 'node:crypto';
import { KEY_BYTES_MAX } from './format.js';
import { SpoolError } from '../errors.js';

export interface KeyHash {
  /** The key as stored (UTF-8). */
  bytes: Buffer;
  hi: number;
  lo: number;
}

/** Validates and hashes a key: a non-empty string of at most 1024 UTF-8 bytes. */
export function hashKey(key: string): KeyHash {
  if (typeof key !== 'string' || key.length === 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'an idempotency key must be a non-empty string');
  const bytes = Buffer.from(key, 'utf8');
  if (bytes.length > KEY_BYTES_MAX) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `an idempotency key is at most ${KEY_BYTES_MAX} UTF-8 bytes (got ${bytes.length})`);
  return hashKeyBytes(bytes);
}

/**
 * `crypto.hash` (Node >= 20.12) as hex is about 2.5x faster than a Buffer digest for short keys:
 * a Buffer result costs an ArrayBuffer per call, which also drives V8 into frequent full GCs.
 */
const oneShot = (crypto as { hash?: (alg: string, data: Buffer, enc: 'hex') => string }).hash;
const sha1Hex: (b: Buffer) => string = oneShot !== undefined ? (b) => oneShot('sha1', b, 'hex') : (b) => crypto.createHash('sha1').update(b).digest('hex');

export function hashKeyBytes(bytes: Buffer): KeyHash {
  const hex = sha1Hex(bytes);
  return { bytes, hi: Number.parseInt(hex.slice(0, 8), 16), lo: Number.parseInt(hex.slice(8, 16), 16) };
}

/** Unsigned comparison of two 64-bit hashes given as (hi, lo) words. */
export function compareHash(aHi: number, aLo: number, bHi: number, bLo: number): number {
  if (aHi !== bHi) return aHi >>> 0 < bHi >>> 0 ? -1 : 1;
  if (aLo !== bLo) return aLo >>> 0 < bLo >>> 0 ? -1 : 1;
  return 0;
}
