/**
 * The idempotency store's on-disk format: constants, the record codec shared by journals and
 * tables, and the file headers. Every layout here is a section of `docs/idempotency.md`
 * ("On-disk format"); the section names appear beside the constants that implement them.
 *
 * All integers are little-endian. Times are milliseconds since the epoch, stored as two u32 halves
 * (low word first) so that no BigInt is needed on the hot path.
 */
import assert from 'node:assert/strict';
import os from 'node:os';
import { crc32 } from 'node:zlib';
import { SpoolError } from '../errors.js';

// Filters and entry blocks are read straight into Uint32Arrays; that reads little-endian words only
// on a little-endian machine. Every platform Node ships for is one; fail loudly if that changes.
assert.equal(os.endianness(), 'LE', 'the idempotency store assumes a little-endian machine');

export { crc32 };

// ---- "Record" -------------------------------------------------------------------------------

/** Bytes before the key in every record. */
export const RECORD_HEADER_BYTES = 40;
export const REC_OFF_CRC = 0;
export const REC_OFF_LENGTH = 4;
export const REC_OFF_TYPE = 8;
export const REC_OFF_ENCODING = 9;
export const REC_OFF_KEY_BYTES = 10;
export const REC_OFF_HASH_LO = 12;
export const REC_OFF_HASH_HI = 16;
// 20..23 reserved, written as zero.
export const REC_OFF_TIME1 = 24;
export const REC_OFF_TIME2 = 32;
/** The CRC covers everything after itself: length, type, key, result. */
export const REC_CRC_START = 4;

/** Record types. 0 is reserved: zero-filled (preallocated or torn) space never parses as a record. */
export const RecordType = {
  /** A claim that acquired a lease. time1 = lease expiry, time2 = claim time. */
  LEASE: 1,
  /** A completed key. time1 = completion time, time2 = expiry (completion + window). */
  DONE: 2,
  /** A lease given back. time1 = release time. */
  RELEASE: 3,
} as const;
export type RecordTypeCode = (typeof RecordType)[keyof typeof RecordType];
/** A record type with this bit set may be skipped by a reader that does not know it. */
export const RECORD_TYPE_SAFE_TO_IGNORE = 0x80;

/** How a DONE record's result bytes are to be read back. */
export const ResultEncoding = { NONE: 0, BYTES: 1, UTF8: 2, JSON: 3 } as const;

export const KEY_BYTES_MAX = 1024;

export interface DecodedRecord {
  type: number;
  hashHi: number;
  hashLo: number;
  time1: number;
  time2: number;
  key: Buffer;
  encoding: number;
  resultBytes: Buffer;
  recordBytes: number;
}

export function writeTime(buf: Buffer, off: number, t: number): void {
  assert(Number.isSafeInteger(t) && t >= 0, `time ${t} must be a non-negative safe integer`);
  buf.writeUInt32LE(t % 0x1_0000_0000, off);
  buf.writeUInt32LE(Math.floor(t / 0x1_0000_0000), off + 4);
}

export function readTime(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * 0x1_0000_0000;
}

/** Encodes one record; `result` is already encoded (see `encodeResult`). */
export function encodeRecord(
  type: RecordTypeCode,
  hashHi: number,
  hashLo: number,
  time1: number,
  time2: number,
  key: Buffer,
  result: { encoding: number; bytes: Buffer } | null,
): Buffer {
  assert(key.length >= 1 && key.length <= KEY_BYTES_MAX, 'key length checked by the caller');
  const resultLen = result === null ? 0 : result.bytes.length;
  const total = RECORD_HEADER_BYTES + key.length + resultLen;
  const buf = Buffer.allocUnsafe(total);
  buf.writeUInt32LE(total, REC_OFF_LENGTH);
  buf.writeUInt8(type, REC_OFF_TYPE);
  buf.writeUInt8(result === null ? ResultEncoding.NONE : result.encoding, REC_OFF_ENCODING);
  buf.writeUInt16LE(key.length, REC_OFF_KEY_BYTES);
  buf.writeUInt32LE(hashLo >>> 0, REC_OFF_HASH_LO);
  buf.writeUInt32LE(hashHi >>> 0, REC_OFF_HASH_HI);
  buf.writeUInt32LE(0, 20);
  writeTime(buf, REC_OFF_TIME1, time1);
  writeTime(buf, REC_OFF_TIME2, time2);
  key.copy(buf, RECORD_HEADER_BYTES);
  if (result !== null) result.bytes.copy(buf, RECORD_HEADER_BYTES + key.length);
  buf.writeUInt32LE(crc32(buf.subarray(REC_CRC_START)), REC_OFF_CRC);
  return buf;
}

/**
 * What a record at `pos` looks like: 'ok' with its length, 'short' when fewer bytes than its
 * header or its declared length are available, or 'bad' (zeroes, impossible length, wrong CRC).
 */
export type RecordCheck = { status: 'ok'; recordBytes: number } | { status: 'short'; need: number } | { status: 'bad'; reason: string };

export function checkRecord(buf: Buffer, pos: number, end: number, recordBytesMax: number): RecordCheck {
  if (end - pos < RECORD_HEADER_BYTES) return { status: 'short', need: RECORD_HEADER_BYTES };
  const len = buf.readUInt32LE(pos + REC_OFF_LENGTH);
  if (len < RECORD_HEADER_BYTES || len > recordBytesMax) return { status: 'bad', reason: `record length ${len} out of range` };
  const keyBytes = buf.readUInt16LE(pos + REC_OFF_KEY_BYTES);
  if (keyBytes < 1 || keyBytes > KEY_BYTES_MAX || RECORD_HEADER_BYTES + keyBytes > len) return { status: 'bad', reason: `key length ${keyBytes} out of range` };
  if (end - pos < len) return { status: 'short', need: len };
  if (crc32(buf.subarray(pos + REC_CRC_START, pos + len)) !== buf.readUInt32LE(pos + REC_OFF_CRC)) return { status: 'bad', reason: 'record CRC mismatch' };
  const type = buf.readUInt8(pos + REC_OFF_TYPE);
  if (type === 0) return { status: 'bad', reason: 'record type 0 (reserved)' };
  return { status: 'ok', recordBytes: len };
}

/** Decodes a record that `checkRecord` accepted (the views share `buf`). */
export function decodeRecord(buf: Buffer, pos: number): DecodedRecord {
  const len = buf.readUInt32LE(pos + REC_OFF_LENGTH);
  const keyBytes = buf.readUInt16LE(pos + REC_OFF_KEY_BYTES);
  return {
    type: buf.readUInt8(pos + REC_OFF_TYPE),
    encoding: buf.readUInt8(pos + REC_OFF_ENCODING),
    hashLo: buf.readUInt32LE(pos + REC_OFF_HASH_LO),
    hashHi: buf.readUInt32LE(pos + REC_OFF_HASH_HI),
    time1: readTime(buf, pos + REC_OFF_TIME1),
    time2: readTime(buf, pos + REC_OFF_TIME2),
    key: buf.subarray(pos + RECORD_HEADER_BYTES, pos + RECORD_HEADER_BYTES + keyBytes),
    resultBytes: buf.subarray(pos + RECORD_HEADER_BYTES + keyBytes, pos + len),
    recordBytes: len,
  };
}

/** Turns a caller's result into stored bytes: Buffer/Uint8Array as bytes, string as UTF-8, anything else as JSON. */
export function encodeResult(result: unknown): { encoding: number; bytes: Buffer } | null {
  if (result === undefined) return null;
  if (Buffer.isBuffer(result)) return { encoding: ResultEncoding.BYTES, bytes: result };
  if (result instanceof Uint8Array) return { encoding: ResultEncoding.BYTES, bytes: Buffer.from(result.buffer, result.byteOffset, result.byteLength) };
  if (typeof result === 'string') return { encoding: ResultEncoding.UTF8, bytes: Buffer.from(result, 'utf8') };
  let json: string | undefined;
  try {
    json = JSON.stringify(result);
  } catch (err) {
    throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'result must be bytes, a string or a JSON-serializable value', { cause: err });
  }
  if (json === undefined) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'result must be bytes, a string or a JSON-serializable value');
  return { encoding: ResultEncoding.JSON, bytes: Buffer.from(json, 'utf8') };
}

/** The inverse of `encodeResult`. Bytes are copied so they do not pin a read buffer. */
export function decodeResult(encoding: number, bytes: Buffer, where: () => SpoolError): unknown {
  switch (encoding) {
    case ResultEncoding.NONE:
      return undefined;
    case ResultEncoding.BYTES:
      return Buffer.from(bytes);
    case ResultEncoding.UTF8:
      return bytes.toString('utf8');
    case ResultEncoding.JSON:
      try {
        return JSON.parse(bytes.toString('utf8')) as unknown;
      } catch {
        // The CRC matched, so the writer stored this: it is not damage but a format bug.
        throw where();
      }
    default:
      throw where();
  }
}

// ---- "Journal file" ---------------------------------------------------------------------------

export const JOURNAL_MAGIC = Buffer.from('SPLIDJNL', 'latin1');
export const TABLE_MAGIC = Buffer.from('SPLIDTBL', 'latin1');
export const FORMAT_VERSION = 1;
export const JOURNAL_HEADER_BYTES = 32;

/** magic(8) version u16, flags u16, reserved u32, seq u64, reserved u32, crc u32 of bytes 0..27. */
export function encodeJournalHeader(seq: number): Buffer {
  const b = Buffer.alloc(JOURNAL_HEADER_BYTES);
  JOURNAL_MAGIC.copy(b, 0);
  b.writeUInt16LE(FORMAT_VERSION, 8);
  writeTime(b, 16, seq);
  b.writeUInt32LE(crc32(b.subarray(0, 28)), 28);
  return b;
}

export type HeaderCheck = { ok: true; seq: number } | { ok: false; reason: string; version?: number };

export function checkJournalHeader(b: Buffer): HeaderCheck {
  if (b.length < JOURNAL_HEADER_BYTES) return { ok: false, reason: 'file shorter than its header' };
  if (!b.subarray(0, 8).equals(JOURNAL_MAGIC)) return { ok: false, reason: 'bad magic' };
  if (crc32(b.subarray(0, 28)) !== b.readUInt32LE(28)) return { ok: false, reason: 'header CRC mismatch' };
  const version = b.readUInt16LE(8);
  if (version !== FORMAT_VERSION) return { ok: false, reason: `format version ${version}`, version };
  return { ok: true, seq: readTime(b, 16) };
}

// ---- "Table file" -----------------------------------------------------------------------------

export const TABLE_HEADER_BYTES = 128;
/** One entry: hashHi u32, hashLo u32, value position low u32, value position high u16 | length hint u16. */
export const ENTRY_BYTES = 16;
export const ENTRY_WORDS = 4;
/** Directory slots aim for this many entries, so one slot read is about 4 KiB. */
export const DIR_ENTRIES_PER_SLOT = 256;
export const DIR_BITS_MAX = 22;
/** Filters are sized in multiples of this many bits, so they can be halved (folded) 9 times. */
export const FILTER_BITS_QUANTUM = 16384;
/** A length hint of this value means "at least this long: read the record header first". */
export const LENGTH_HINT_MAX = 0xffff;

export interface TableHeader {
  seq: number;
  level: number;
  entryCount: number;
  filterBits: number;
  filterHashes: number;
  dirBits: number;
  minCompletedAt: number;
  maxCompletedAt: number;
  maxExpiresAt: number;
  valuesBytes: number;
  sourceCount: number;
  sourcesCrc: number;
  directoryCrc: number;
  filterCrc: number;
}

export interface TableLayout {
  sourcesOff: number;
  directoryOff: number;
  directoryBytes: number;
  filterOff: number;
  filterBytes: number;
  entriesOff: number;
  valuesOff: number;
  end: number;
}

export function tableLayout(h: Pick<TableHeader, 'sourceCount' | 'dirBits' | 'filterBits' | 'entryCount' | 'valuesBytes'>): TableLayout {
  const slots = 2 ** h.dirBits;
  const sourcesOff = TABLE_HEADER_BYTES;
  const directoryOff = sourcesOff + 8 * h.sourceCount;
  // starts[slots + 1] then crcs[slots], all u32.
  const directoryBytes = 4 * (slots + 1) + 4 * slots;
  const filterOff = directoryOff + directoryBytes;
  const filterBytes = h.filterBits / 8;
  const entriesOff = filterOff + filterBytes;
  const valuesOff = entriesOff + ENTRY_BYTES * h.entryCount;
  return { sourcesOff, directoryOff, directoryBytes, filterOff, filterBytes, entriesOff, valuesOff, end: valuesOff + h.valuesBytes };
}

export function encodeTableHeader(h: TableHeader): Buffer {
  const b = Buffer.alloc(TABLE_HEADER_BYTES);
  TABLE_MAGIC.copy(b, 0);
  b.writeUInt16LE(FORMAT_VERSION, 8);
  b.writeUInt16LE(0, 10);
  b.writeUInt32LE(h.filterHashes, 12);
  writeTime(b, 16, h.seq);
  writeTime(b, 24, h.entryCount);
  writeTime(b, 32, h.filterBits);
  b.writeUInt32LE(h.dirBits, 40);
  b.writeUInt32LE(h.level, 44);
  writeTime(b, 48, h.minCompletedAt);
  writeTime(b, 56, h.maxCompletedAt);
  writeTime(b, 64, h.maxExpiresAt);
  writeTime(b, 72, h.valuesBytes);
  b.writeUInt32LE(h.sourceCount, 80);
  b.writeUInt32LE(h.sourcesCrc, 84);
  b.writeUInt32LE(h.filterCrc, 88);
  b.writeUInt32LE(h.directoryCrc, 92);
  b.writeUInt32LE(crc32(b.subarray(0, 124)), 124);
  return b;
}

export function decodeTableHeader(b: Buffer): { ok: true; header: TableHeader } | { ok: false; reason: string; version?: number } {
  if (b.length < TABLE_HEADER_BYTES) return { ok: false, reason: 'file shorter than its header' };
  if (!b.subarray(0, 8).equals(TABLE_MAGIC)) return { ok: false, reason: 'bad magic' };
  if (crc32(b.subarray(0, 124)) !== b.readUInt32LE(124)) return { ok: false, reason: 'header CRC mismatch' };
  const version = b.readUInt16LE(8);
  if (version !== FORMAT_VERSION) return { ok: false, reason: `format version ${version}`, version };
  const header: TableHeader = {
    filterHashes: b.readUInt32LE(12),
    seq: readTime(b, 16),
    entryCount: readTime(b, 24),
    filterBits: readTime(b, 32),
    dirBits: b.readUInt32LE(40),
    level: b.readUInt32LE(44),
    minCompletedAt: readTime(b, 48),
    maxCompletedAt: readTime(b, 56),
    maxExpiresAt: readTime(b, 64),
    valuesBytes: readTime(b, 72),
    sourceCount: b.readUInt32LE(80),
    sourcesCrc: b.readUInt32LE(84),
    filterCrc: b.readUInt32LE(88),
    directoryCrc: b.readUInt32LE(92),
  };
  if (header.dirBits > DIR_BITS_MAX) return { ok: false, reason: `directory bits ${header.dirBits} out of range` };
  if (header.filterBits === 0 || header.filterBits % 64 !== 0) return { ok: false, reason: `filter size ${header.filterBits} bits is not a multiple of 64` };
  if (header.filterHashes < 1 || header.filterHashes > 16) return { ok: false, reason: `filter hash count ${header.filterHashes} out of range` };
  if (header.entryCount > 0xffff_ffff) return { ok: false, reason: `entry count ${header.entryCount} out of range` };
  if (header.sourceCount > 1_000_000) return { ok: false, reason: `source count ${header.sourceCount} out of range` };
  return { ok: true, header };
}

// ---- "Directory" (file names) ------------------------------------------------------------------

/** 20-digit zero-padded sequence numbers, so `ls` lists files in order. */
export function seqName(seq: number, ext: 'jnl' | 'tbl'): string {
  assert(Number.isSafeInteger(seq) && seq >= 0);
  return `${String(seq).padStart(20, '0')}.${ext}`;
}

export const FILE_PATTERN = /^(\d{20})\.(jnl|tbl)$/;
export const TEMP_PATTERN = /^\d{20}\.(jnl|tbl)\.tmp$/;
