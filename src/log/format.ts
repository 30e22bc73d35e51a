/**
 * The on-disk format of a log. Every constant here implements a section of docs/format.md,
 * named in its comment. All integers are little-endian.
 */
import { crc32 as zlibCrc32 } from 'node:zlib';
import assert from 'node:assert/strict';

/**
 * CRC-32 (IEEE 802.3, the polynomial of zlib, crc-32 and Kafka's v0/v1 messages).
 * Node's zlib.crc32 computes the same value as the crc-32 package and is ~2.5-3x faster on
 * batch-sized buffers (bench/crc.bench.ts measures both).
 */
export function crc32(data: Uint8Array): number {
  return zlibCrc32(data) >>> 0;
}

/** docs/format.md "Versions": the one format version this build reads and writes. */
export const FORMAT_VERSION = 1;

// --- docs/format.md "Segment file header" ---
export const SEGMENT_MAGIC = 0x474c5053; // "SPLG" read as a little-endian u32
export const SEGMENT_HEADER_BYTES = 16;

// --- docs/format.md "Record batch" ---
export const BATCH_HEADER_BYTES = 40;
export const BATCH_OFF_LENGTH = 0;
export const BATCH_OFF_CRC = 4;
/** The CRC covers every byte from here to the end of the batch. */
export const BATCH_CRC_START = 8;
export const BATCH_OFF_MAGIC = 8;
export const BATCH_OFF_TYPE = 9;
export const BATCH_OFF_COUNT = 12;
export const BATCH_OFF_BASE_OFFSET = 16;
export const BATCH_OFF_FIRST_TS = 24;
export const BATCH_OFF_MAX_TS = 32;
/** Type 0 is never written: zeroed or preallocated space reads as length 0 / type 0. */
export const BATCH_TYPE_RECORDS = 1;
/** A reader that does not know a batch type with this bit set may skip the batch. */
export const BATCH_TYPE_SAFE_TO_IGNORE = 0x80;

// --- docs/format.md "Record" ---
/** recordLength, offsetDelta, timestampDelta, keyLength. */
export const RECORD_FIXED_BYTES = 16;
/** headerCount (u16) and valueLength (u32) follow the key. */
export const RECORD_TAIL_FIXED_BYTES = 6;
export const HEADER_COUNT_MAX = 0xffff;
export const HEADER_KEY_BYTES_MAX = 0xffff;

// --- docs/format.md "Index files" ---
export const INDEX_MAGIC = 0x58494c53; // "SLIX"
export const INDEX_HEADER_BYTES = 32;
export const INDEX_KIND_OFFSET = 1;
export const INDEX_KIND_TIME = 2;
export const OFFSET_INDEX_ENTRY_BYTES = 8;
export const TIME_INDEX_ENTRY_BYTES = 12;

// --- docs/format.md "Checkpoint file" ---
export const CHECKPOINT_MAGIC = 0x4b434c53; // "SLCK"
export const CHECKPOINT_BYTES = 48;

// --- docs/format.md "Directory" ---
export const SEGMENT_SUFFIX = '.log';
export const OFFSET_INDEX_SUFFIX = '.index';
export const TIME_INDEX_SUFFIX = '.timeindex';
export const CHECKPOINT_FILE = 'checkpoint';
const BASE_OFFSET_DIGITS = 20;

export function segmentFileName(baseOffset: number, suffix: string): string {
  assert(Number.isSafeInteger(baseOffset) && baseOffset >= 0);
  return String(baseOffset).padStart(BASE_OFFSET_DIGITS, '0') + suffix;
}

/** Returns the base offset a file name encodes, or null when the name is not `<20 digits><suffix>`. */
export function parseSegmentFileName(name: string, suffix: string): number | null {
  if (name.length !== BASE_OFFSET_DIGITS + suffix.length || !name.endsWith(suffix)) return null;
  const digits = name.slice(0, BASE_OFFSET_DIGITS);
  if (!/^\d+$/.test(digits)) return null;
  const value = Number(digits);
  return Number.isSafeInteger(value) ? value : null;
}

// --- 64-bit helpers. Offsets and timestamps are JS numbers, so they must stay below 2^53. ---
const TWO_32 = 0x1_0000_0000;

export function writeU64(buf: Buffer, value: number, pos: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, 'u64 value must be a safe non-negative integer');
  buf.writeUInt32LE(value >>> 0, pos);
  buf.writeUInt32LE(Math.floor(value / TWO_32), pos + 4);
}

/** Returns NaN when the value is not a safe integer, so callers treat it as corruption. */
export function readU64(buf: Buffer, pos: number): number {
  const hi = buf.readUInt32LE(pos + 4);
  if (hi > 0x1fffff) return Number.NaN;
  return hi * TWO_32 + buf.readUInt32LE(pos);
}

export function writeI64(buf: Buffer, value: number, pos: number): void {
  assert(Number.isSafeInteger(value), 'i64 value must be a safe integer');
  const lo = value >>> 0; // low 32 bits in two's complement, also for negative values
  buf.writeUInt32LE(lo, pos);
  buf.writeInt32LE(Math.floor((value - lo) / TWO_32), pos + 4);
}

export function readI64(buf: Buffer, pos: number): number {
  return buf.readInt32LE(pos + 4) * TWO_32 + buf.readUInt32LE(pos);
}

export function encodeSegmentHeader(baseOffset: number): Buffer {
  const buf = Buffer.alloc(SEGMENT_HEADER_BYTES);
  buf.writeUInt32LE(SEGMENT_MAGIC, 0);
  buf.writeUInt8(FORMAT_VERSION, 4);
  writeU64(buf, baseOffset, 8);
  return buf;
}
