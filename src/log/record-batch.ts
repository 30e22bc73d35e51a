/**
 * Encoding and decoding of record batches (docs/format.md "Record batch" and "Record").
 * The encoder writes many records into one buffer and seals it with a header and CRC; the
 * decoder checks the CRC before it looks at a single record, then checks the structure again.
 */
import assert from 'node:assert/strict';
import {
  BATCH_CRC_START,
  BATCH_HEADER_BYTES,
  BATCH_OFF_BASE_OFFSET,
  BATCH_OFF_COUNT,
  BATCH_OFF_CRC,
  BATCH_OFF_FIRST_TS,
  BATCH_OFF_LENGTH,
  BATCH_OFF_MAGIC,
  BATCH_OFF_MAX_TS,
  BATCH_OFF_TYPE,
  BATCH_TYPE_RECORDS,
  BATCH_TYPE_SAFE_TO_IGNORE,
  FORMAT_VERSION,
  HEADER_COUNT_MAX,
  HEADER_KEY_BYTES_MAX,
  RECORD_FIXED_BYTES,
  RECORD_TAIL_FIXED_BYTES,
  crc32,
  readI64,
  readU64,
  writeI64,
  writeU64,
} from './format.js';

/** What a caller appends. Strings are stored as UTF-8. */
export interface RecordInput {
  value: Buffer | Uint8Array | string;
  key?: Buffer | Uint8Array | string | null;
  headers?: Readonly<Record<string, Buffer | Uint8Array | string>>;
  /** Milliseconds since the epoch; defaults to the log's clock. */
  timestamp?: number;
}

/**
 * What a reader gets back. The record's fields are positions in the read buffer: the value, key
 * and headers are made (as views, or decoded) on first access, so a reader that only wants some of
 * them allocates nothing for the others. Their structure was already checked when the record was
 * decoded.
 */
export class LogRecord {
  private valueCache: Buffer | undefined;
  private keyCache: Buffer | null | undefined;
  private headersCache: Readonly<Record<string, Buffer>> | undefined;

  constructor(
    readonly offset: number,
    readonly timestamp: number,
    private readonly buf: Buffer,
    /** -1 when the key is null. */
    private readonly keyStart: number,
    private readonly keyEnd: number,
    /** Position of the first header (after the count). */
    private readonly headersStart: number,
    private readonly headerCount: number,
    /** The value's bytes; it ends the record. */
    private readonly valueStart: number,
    private readonly valueEnd: number,
    /** `metaBit` of every two-byte header name that starts with NUL (the broker's names): a clear bit means no such header. */
    private readonly metaNames: number,
  ) {}

  /** The value, a view into the read buffer (the same one on every access). */
  get value(): Buffer {
    if (this.valueCache === undefined) this.valueCache = this.buf.subarray(this.valueStart, this.valueEnd);
    return this.valueCache;
  }

  get key(): Buffer | null {
    if (this.keyCache === undefined) this.keyCache = this.keyStart < 0 ? null : this.buf.subarray(this.keyStart, this.keyEnd);
    return this.keyCache;
  }

  /** The key as UTF-8 text ('' when null), without making a view first. */
  keyText(): string {
    return this.keyStart < 0 ? '' : this.buf.toString('utf8', this.keyStart, this.keyEnd);
  }

  get headers(): Readonly<Record<string, Buffer>> {
    if (this.headersCache === undefined) {
      if (this.headerCount === 0) {
        this.headersCache = EMPTY_HEADERS;
      } else {
        const h: Record<string, Buffer> = {};
        const buf = this.buf;
        let q = this.headersStart;
        for (let j = 0; j < this.headerCount; j++) {
          const nameEnd = q + 2 + u16At(buf, q);
          const valueEnd = nameEnd + 4 + u32At(buf, nameEnd);
          h[buf.toString('utf8', q + 2, nameEnd)] = buf.subarray(nameEnd + 4, valueEnd);
          q = valueEnd;
        }
        this.headersCache = h;
      }
    }
    return this.headersCache;
  }

  /** One header's value as text (UTF-8), or undefined; does not build the header map. */
  headerText(name: string): string | undefined {
    const at = this.headerValueAt(name);
    if (at < 0) return undefined;
    const buf = this.buf;
    return buf.toString('utf8', at + 4, at + 4 + u32At(buf, at));
  }

  get headerNames(): number {
    return this.headerCount;
  }

  /**
   * One header's value as a view (no text decoding), or undefined; `name` must be ASCII. For
   * copying a record onward byte for byte (the server's DELIVERY frames, src/server).
   */
  headerBytes(name: string): Buffer | undefined {
    const at = this.headerValueAt(name);
    if (at < 0) return undefined;
    const buf = this.buf;
    return buf.subarray(at + 4, at + 4 + u32At(buf, at));
  }

  /**
   * Where the first header called `name` has its value (its u32 length), or -1. An ASCII name (all
   * of the broker's) is compared byte by byte, without measuring it or decoding a string per header.
   */
  private headerValueAt(name: string): number {
    const count = this.headerCount;
    if (count === 0) return -1;
    // A broker header the record lacks (most lack `\0x`, expiry) is known absent without a scan.
    if (name.length === 2 && name.charCodeAt(0) === 0 && name.charCodeAt(1) < 0x80 && (this.metaNames & metaBit(name.charCodeAt(1))) === 0) return -1;
    const buf = this.buf;
    let ascii = true;
    for (let i = 0; i < name.length; i++) {
      if (name.charCodeAt(i) >= 0x80) {
        ascii = false;
        break;
      }
    }
    const nameBytes = ascii ? name.length : Buffer.byteLength(name);
    let q = this.headersStart;
    for (let j = 0; j < count; j++) {
      const nameLength = u16At(buf, q);
      const nameEnd = q + 2 + nameLength;
      if (nameLength === nameBytes && (ascii ? asciiEquals(buf, q + 2, name) : buf.toString('utf8', q + 2, nameEnd) === name)) return nameEnd;
      q = nameEnd + 4 + u32At(buf, nameEnd);
    }
    return -1;
  }

  /**
   * The buffer the record was read into, and where the record lies in it as stored: from its length
   * prefix to the end of its value (docs/format.md "Record"). For sending records on byte for byte,
   * consecutive ones in one copy, without a view per field (the server's RECORDS frames,
   * src/server). The batch's CRC was checked when it was read; the bytes never change.
   */
  get storedBuffer(): Buffer {
    return this.buf;
  }

  get storedStart(): number {
    // A null key adds no bytes (keyEnd − keyStart is 0 then).
    return this.headersStart - 2 - (this.keyEnd - this.keyStart) - RECORD_FIXED_BYTES;
  }

  get storedEnd(): number {
    return this.valueEnd;
  }
}

/** One bit per second byte of a NUL-led two-byte header name, shared modulo 32 (a set bit only means "maybe"). */
function metaBit(code: number): number {
  return 1 << (code & 31);
}

/** Unchecked little-endian reads: every caller has checked the bounds (decodeRecords did, for a LogRecord's). */
function u16At(buf: Buffer, at: number): number {
  return (buf[at] as number) | ((buf[at + 1] as number) << 8);
}

function u32At(buf: Buffer, at: number): number {
  return ((buf[at] as number) | ((buf[at + 1] as number) << 8) | ((buf[at + 2] as number) << 16)) + (buf[at + 3] as number) * 0x100_0000;
}

/** True when `buf` holds the ASCII `s` at `at` (the caller checked the length). */
function asciiEquals(buf: Buffer, at: number, s: string): boolean {
  for (let i = 0; i < s.length; i++) if (buf[at + i] !== s.charCodeAt(i)) return false;
  return true;
}

const EMPTY_HEADERS: Readonly<Record<string, Buffer>> = Object.freeze({});
const I32_MAX = 0x7fffffff;

function byteLengthOf(v: Buffer | Uint8Array | string): number {
  return typeof v === 'string' ? Buffer.byteLength(v) : v.byteLength;
}

/** Strings of up to this many UTF-16 units are sized by a bound instead of measured (see `recordBytesBound`). */
const MEASURE_STRINGS_OVER = 64;

function boundOf(v: Buffer | Uint8Array | string): number {
  if (typeof v !== 'string') return v.byteLength;
  return v.length <= MEASURE_STRINGS_OVER ? v.length * 3 : Buffer.byteLength(v);
}

/**
 * At least the bytes a record takes inside a batch, including its length prefix: exact, except
 * that a short string key or value counts 3 bytes per UTF-16 unit (the most UTF-8 needs).
 * Measuring a short string is a native call that costs as much as writing it (~80 ns for a
 * message id, measured), so the encoder learns the real size by writing.
 */
export function recordBytesBound(record: RecordInput): number {
  let bytes = RECORD_FIXED_BYTES + RECORD_TAIL_FIXED_BYTES + boundOf(record.value);
  if (record.key != null) bytes += boundOf(record.key);
  const headers = record.headers;
  if (headers !== undefined) bytes += headersBytes(headers);
  return bytes;
}

/** The bytes a record takes inside a batch, including its length prefix. */
export function encodedRecordBytes(record: RecordInput): number {
  let bytes = RECORD_FIXED_BYTES + RECORD_TAIL_FIXED_BYTES + byteLengthOf(record.value);
  if (record.key != null) bytes += byteLengthOf(record.key);
  const headers = record.headers;
  if (headers !== undefined) bytes += headersBytes(headers);
  return bytes;
}

/** Sizes of frozen header maps, which the broker shares across many records. */
const frozenHeaderBytes = new WeakMap<object, number>();
/**
 * The frozen map sized last, and its size: the records of one append mostly share one map (the
 * broker's route header), and a compare is cheaper than a WeakMap lookup per record.
 */
let lastSized: object | null = null;
let lastSizedBytes = 0;

function headersBytes(headers: NonNullable<RecordInput['headers']>): number {
  if (headers === lastSized) return lastSizedBytes;
  const known = frozenHeaderBytes.get(headers);
  if (known !== undefined) {
    lastSized = headers;
    lastSizedBytes = known;
    return known;
  }
  let bytes = 0;
  for (const name in headers) bytes += 6 + Buffer.byteLength(name) + byteLengthOf(headers[name] as Buffer | string);
  if (Object.isFrozen(headers)) frozenHeaderBytes.set(headers, bytes);
  return bytes;
}

/** Writes a record's header count and headers at `pos`; returns the position after them. */
function encodeHeaders(buf: Buffer, headers: RecordInput['headers'], pos: number): number {
  let headerCount = 0;
  const countPos = pos;
  let p = pos + 2;
  if (headers !== undefined) {
    for (const name in headers) {
      const keyPos = p;
      p = buf.write(name, p + 2) + p + 2;
      buf.writeUInt16LE(p - keyPos - 2, keyPos);
      const valuePos = p;
      p = put(buf, headers[name] as Buffer | string, p + 4);
      buf.writeUInt32LE(p - valuePos - 4, valuePos);
      headerCount++;
    }
  }
  buf.writeUInt16LE(headerCount, countPos);
  return p;
}

/**
 * Encoded header blocks (count and headers) of frozen maps whose values are all strings, made
 * once: such a map cannot change. (A Buffer value can, so maps holding one are encoded each time.)
 */
const frozenHeaderBlocks = new WeakMap<object, Buffer | null>();
/** The map encoded last and its block (see `lastSized`). */
let lastBlockOf: object | null = null;
let lastBlock: Buffer | null = null;

function frozenHeaderBlock(headers: NonNullable<RecordInput['headers']>): Buffer | null {
  if (headers === lastBlockOf) return lastBlock;
  let block = frozenHeaderBlocks.get(headers);
  if (block === undefined) {
    block = null;
    if (Object.values(headers).every((v) => typeof v === 'string')) {
      block = Buffer.alloc(2 + headersBytes(headers));
      const end = encodeHeaders(block, headers, 0);
      assert.equal(end, block.length, 'a header block fills its precomputed size');
    }
    frozenHeaderBlocks.set(headers, block);
  }
  lastBlockOf = headers;
  lastBlock = block;
  return block;
}

/** Strings up to this long are tried as ASCII, byte by byte, before the native UTF-8 encoder. */
const SHORT_TEXT = 48;

function put(buf: Buffer, v: Buffer | Uint8Array | string, pos: number): number {
  if (typeof v === 'string') {
    // Short ASCII (message ids, routes) is copied in JS: cheaper than a native call per string.
    const n = v.length;
    if (n <= SHORT_TEXT) {
      let i = 0;
      for (; i < n; i++) {
        const c = v.charCodeAt(i);
        if (c >= 0x80) break;
        buf[pos + i] = c;
      }
      if (i === n) return pos + n;
    }
    return pos + buf.write(v, pos);
  }
  buf.set(v, pos);
  return pos + v.byteLength;
}

/** Unchecked little-endian store: the caller reserved the bytes; `v` is any 32-bit integer (signed or not). */
function u32(buf: Buffer, at: number, v: number): void {
  buf[at] = v;
  buf[at + 1] = v >>> 8;
  buf[at + 2] = v >>> 16;
  buf[at + 3] = v >>> 24;
}

/**
 * Builds one batch in a caller-supplied buffer. Usage: `begin`, `add` for each record, `seal`.
 * The caller reserves room: `recordBytesBound` for every record plus BATCH_HEADER_BYTES.
 */
export class BatchEncoder {
  private buf: Buffer = Buffer.alloc(0);
  private start = 0;
  private pos = 0;
  private count = 0;
  private baseOffset = 0;
  private firstTimestamp = 0;
  private maxTimestamp = 0;

  begin(buf: Buffer, start: number, baseOffset: number): void {
    this.buf = buf;
    this.start = start;
    this.pos = start + BATCH_HEADER_BYTES;
    this.count = 0;
    this.baseOffset = baseOffset;
  }

  get recordCount(): number {
    return this.count;
  }

  /** False when `timestamp` is too far from the batch's first to store as a 32-bit delta: start a new batch. */
  accepts(timestamp: number): boolean {
    return this.count === 0 || Math.abs(timestamp - this.firstTimestamp) <= I32_MAX;
  }

  /**
   * Appends one record, which must fit in `bound` bytes (`recordBytesBound(record)` does): the
   * buffer's room is checked against the bound, not per string. Returns the bytes it took.
   */
  add(record: RecordInput, timestamp: number, bound: number): number {
    const buf = this.buf;
    if (this.count === 0) {
      this.firstTimestamp = timestamp;
      this.maxTimestamp = timestamp;
    } else if (timestamp > this.maxTimestamp) {
      this.maxTimestamp = timestamp;
    }
    const delta = timestamp - this.firstTimestamp;
    assert(delta >= -I32_MAX && delta <= I32_MAX, 'timestamps in one batch must lie within 24 days');
    const begin = this.pos;
    assert(begin + bound <= buf.length, 'the caller reserved room for the record');
    let p = begin;
    u32(buf, p + 4, this.count);
    u32(buf, p + 8, delta);
    const key = record.key;
    if (key == null) {
      u32(buf, p + 12, -1);
      p += RECORD_FIXED_BYTES;
    } else {
      p = put(buf, key, p + RECORD_FIXED_BYTES);
      u32(buf, begin + 12, p - begin - RECORD_FIXED_BYTES);
    }
    const headers = record.headers;
    // The map of the record before is the usual case: no isFrozen call for it.
    const block = headers === lastBlockOf ? lastBlock : headers !== undefined && Object.isFrozen(headers) ? frozenHeaderBlock(headers) : null;
    if (block !== null) {
      // A shared frozen map (the broker's route header): copy its encoding made once.
      buf.set(block, p);
      p += block.length;
    } else {
      p = encodeHeaders(buf, headers, p);
    }
    const valuePos = p;
    p = put(buf, record.value, p + 4);
    u32(buf, valuePos, p - valuePos - 4);
    const bytes = p - begin;
    if (bytes > bound) assert.fail(`record size ${bytes} exceeds its bound ${bound}`);
    u32(buf, begin, bytes - 4);
    this.pos = p;
    this.count++;
    return bytes;
  }

  /** Writes the header and CRC; returns the finished batch (a view of the caller's buffer). */
  seal(): Buffer {
    assert(this.count > 0, 'an empty batch is never written');
    const buf = this.buf;
    const s = this.start;
    const length = this.pos - s;
    buf.writeUInt32LE(length, s + BATCH_OFF_LENGTH);
    buf.writeUInt8(FORMAT_VERSION, s + BATCH_OFF_MAGIC);
    buf.writeUInt8(BATCH_TYPE_RECORDS, s + BATCH_OFF_TYPE);
    buf.writeUInt16LE(0, s + BATCH_OFF_TYPE + 1);
    buf.writeUInt32LE(this.count, s + BATCH_OFF_COUNT);
    writeU64(buf, this.baseOffset, s + BATCH_OFF_BASE_OFFSET);
    writeI64(buf, this.firstTimestamp, s + BATCH_OFF_FIRST_TS);
    writeI64(buf, this.maxTimestamp, s + BATCH_OFF_MAX_TS);
    const batch = buf.subarray(s, this.pos);
    buf.writeUInt32LE(crc32(batch.subarray(BATCH_CRC_START)), s + BATCH_OFF_CRC);
    return batch;
  }

  get maxTimestampValue(): number {
    return this.maxTimestamp;
  }
}

/** The header of a batch whose length, magic and CRC have been checked. */
export interface BatchHeader {
  length: number;
  type: number;
  recordCount: number;
  baseOffset: number;
  firstTimestamp: number;
  maxTimestamp: number;
}

/** Why bytes at a position are not a valid batch; `zeroed` means unused (never written) space. */
export type BatchProblem =
  | 'zeroed'
  | 'short-header'
  | 'bad-length'
  | 'truncated'
  | 'bad-crc'
  | 'unknown-version'
  | 'unknown-type'
  | 'bad-header';

export type BatchCheck = { ok: true; header: BatchHeader } | { ok: false; problem: BatchProblem };

/**
 * Checks the batch starting at `pos` in `buf` (of which `end` bytes are valid). Verifies the
 * length bounds, the CRC and then the version; a batch is never trusted before its CRC is.
 */
export function checkBatch(buf: Buffer, pos: number, end: number, batchBytesMax: number): BatchCheck {
  if (end - pos < BATCH_HEADER_BYTES) {
    for (let i = pos; i < end; i++) if (buf[i] !== 0) return { ok: false, problem: 'short-header' };
    return { ok: false, problem: 'zeroed' };
  }
  const length = buf.readUInt32LE(pos + BATCH_OFF_LENGTH);
  if (length === 0 && buf.readUInt32LE(pos + BATCH_OFF_CRC) === 0 && buf[pos + BATCH_OFF_MAGIC] === 0) {
    return { ok: false, problem: 'zeroed' };
  }
  if (length < BATCH_HEADER_BYTES || length > batchBytesMax) return { ok: false, problem: 'bad-length' };
  if (end - pos < length) return { ok: false, problem: 'truncated' };
  const crc = buf.readUInt32LE(pos + BATCH_OFF_CRC);
  if (crc32(buf.subarray(pos + BATCH_CRC_START, pos + length)) !== crc) return { ok: false, problem: 'bad-crc' };
  if (buf[pos + BATCH_OFF_MAGIC] !== FORMAT_VERSION) return { ok: false, problem: 'unknown-version' };
  const type = buf[pos + BATCH_OFF_TYPE] as number;
  if (type !== BATCH_TYPE_RECORDS && (type & BATCH_TYPE_SAFE_TO_IGNORE) === 0) {
    return { ok: false, problem: 'unknown-type' };
  }
  const recordCount = buf.readUInt32LE(pos + BATCH_OFF_COUNT);
  const baseOffset = readU64(buf, pos + BATCH_OFF_BASE_OFFSET);
  if (Number.isNaN(baseOffset)) return { ok: false, problem: 'bad-header' };
  if (type === BATCH_TYPE_RECORDS && recordCount === 0) return { ok: false, problem: 'bad-header' };
  const firstTimestamp = readI64(buf, pos + BATCH_OFF_FIRST_TS);
  const maxTimestamp = readI64(buf, pos + BATCH_OFF_MAX_TS);
  return { ok: true, header: { length, type, recordCount, baseOffset, firstTimestamp, maxTimestamp } };
}

/**
 * Decodes the records of a checked batch, skipping those below `fromOffset`, and pushes them to
 * `out` until `maxRecords` is reached. Returns null on success or a description of the
 * structural fault; a batch with a structural fault yields no records at all.
 */
export function decodeRecords(
  buf: Buffer,
  pos: number,
  header: BatchHeader,
  fromOffset: number,
  out: LogRecord[],
  maxRecords: number,
): string | null {
  // A future batch kind marked safe to ignore carries no records this build understands.
  if (header.type !== BATCH_TYPE_RECORDS) return null;
  const end = pos + header.length;
  const firstOutput = out.length;
  let p = pos + BATCH_HEADER_BYTES;
  for (let i = 0; i < header.recordCount; i++) {
    if (end - p < RECORD_FIXED_BYTES + RECORD_TAIL_FIXED_BYTES) return fault(out, firstOutput, 'record header past batch end');
    const recordEnd = p + 4 + u32At(buf, p);
    if (recordEnd > end || recordEnd - p < RECORD_FIXED_BYTES + RECORD_TAIL_FIXED_BYTES) {
      return fault(out, firstOutput, 'record length out of bounds');
    }
    if (u32At(buf, p + 4) !== i) return fault(out, firstOutput, 'offset delta out of sequence');
    const offset = header.baseOffset + i;
    if (offset < fromOffset) {
      p = recordEnd;
      continue;
    }
    const timestamp = header.firstTimestamp + (u32At(buf, p + 8) | 0);
    const keyLength = u32At(buf, p + 12) | 0;
    let q = p + RECORD_FIXED_BYTES;
    let keyStart = -1;
    if (keyLength >= 0) {
      if (q + keyLength + RECORD_TAIL_FIXED_BYTES > recordEnd) return fault(out, firstOutput, 'key past record end');
      keyStart = q;
      q += keyLength;
    } else if (keyLength !== -1) {
      return fault(out, firstOutput, 'negative key length');
    }
    const headerCount = u16At(buf, q);
    q += 2;
    const headersStart = q;
    let metaNames = 0;
    for (let j = 0; j < headerCount; j++) {
      if (q + 2 > recordEnd) return fault(out, firstOutput, 'header past record end');
      const nameLength = u16At(buf, q);
      const nameEnd = q + 2 + nameLength;
      if (nameEnd + 4 > recordEnd) return fault(out, firstOutput, 'header name past record end');
      const valueEnd = nameEnd + 4 + u32At(buf, nameEnd);
      if (valueEnd > recordEnd) return fault(out, firstOutput, 'header value past record end');
      if (nameLength === 2 && buf[q + 2] === 0) metaNames |= metaBit(buf[q + 3] as number);
      q = valueEnd;
    }
    if (q + 4 > recordEnd) return fault(out, firstOutput, 'value length past record end');
    const valueEnd = q + 4 + u32At(buf, q);
    if (valueEnd !== recordEnd) return fault(out, firstOutput, 'value does not end the record');
    out.push(new LogRecord(offset, timestamp, buf, keyStart, keyStart + Math.max(keyLength, 0), headersStart, headerCount, q + 4, valueEnd, metaNames));
    p = recordEnd;
    if (out.length - firstOutput >= maxRecords) return null;
  }
  if (p !== end) return fault(out, firstOutput, 'bytes left after the last record');
  return null;
}

function fault(out: LogRecord[], firstOutput: number, reason: string): string {
  out.length = firstOutput;
  return reason;
}

/** Checks a header map before anything is encoded, so a bad header fails the append up front. */
export function validateHeaders(headers: RecordInput['headers']): string | null {
  if (headers === undefined) return null;
  let count = 0;
  for (const name in headers) {
    count++;
    if (Buffer.byteLength(name) > HEADER_KEY_BYTES_MAX) return `header name longer than ${HEADER_KEY_BYTES_MAX} bytes`;
    const v = headers[name];
    if (typeof v !== 'string' && !(v instanceof Uint8Array)) return `header ${name} must be a string or bytes`;
  }
  if (count > HEADER_COUNT_MAX) return `more than ${HEADER_COUNT_MAX} headers`;
  return null;
}
