/**
 * The sparse offset and time index of one segment (docs/format.md "Index files").
 *
 * One entry is kept for a batch whenever `indexIntervalBytes` have been written since the last
 * entry. An entry says: the batch holding `baseOffset + relOffset` starts at `position`, and every
 * record before that batch has a timestamp of at most `maxTimestampBefore`.
 *
 * Index files are derived data: they are written whole (temp file, fsync, rename) when a segment
 * is sealed or the log closes, and rebuilt from the segment whenever they are missing or damaged.
 */
import assert from 'node:assert/strict';
import {
  FORMAT_VERSION,
  INDEX_HEADER_BYTES,
  INDEX_KIND_OFFSET,
  INDEX_KIND_TIME,
  INDEX_MAGIC,
  OFFSET_INDEX_ENTRY_BYTES,
  TIME_INDEX_ENTRY_BYTES,
  crc32,
  readI64,
  readU64,
  writeI64,
  writeU64,
} from './format.js';

const NO_TIMESTAMP = Number.MIN_SAFE_INTEGER;

export class SegmentIndex {
  private relOffsets: Uint32Array;
  private positions: Uint32Array;
  private maxTsBefore: Float64Array;
  private count = 0;

  constructor(capacity = 64) {
    this.relOffsets = new Uint32Array(capacity);
    this.positions = new Uint32Array(capacity);
    this.maxTsBefore = new Float64Array(capacity);
  }

  get length(): number {
    return this.count;
  }

  add(relOffset: number, position: number, maxTimestampBefore: number): void {
    if (this.count > 0) {
      assert(relOffset > (this.relOffsets[this.count - 1] as number), 'index offsets must increase');
      assert(position > (this.positions[this.count - 1] as number), 'index positions must increase');
    }
    if (this.count === this.relOffsets.length) this.grow();
    this.relOffsets[this.count] = relOffset;
    this.positions[this.count] = position;
    this.maxTsBefore[this.count] = maxTimestampBefore;
    this.count++;
  }

  /** Drops entries at or past `position` (after a truncation). */
  truncateToPosition(position: number): void {
    while (this.count > 0 && (this.positions[this.count - 1] as number) >= position) this.count--;
  }

  /** The entry with the largest relOffset <= `relOffset`, or null when none is. */
  lookupOffset(relOffset: number): { relOffset: number; position: number } | null {
    let lo = 0;
    let hi = this.count - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.relOffsets[mid] as number) <= relOffset) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    if (found < 0) return null;
    return { relOffset: this.relOffsets[found] as number, position: this.positions[found] as number };
  }

  /**
   * The latest entry before which no record has a timestamp >= `timestamp`: a scan for the first
   * record at or after `timestamp` may start there. Null means start at the segment's beginning.
   */
  lookupTime(timestamp: number): { relOffset: number; position: number } | null {
    // maxTsBefore never decreases, so binary search for the last entry with maxTsBefore < timestamp.
    let lo = 0;
    let hi = this.count - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.maxTsBefore[mid] as number) < timestamp) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    if (found < 0) return null;
    return { relOffset: this.relOffsets[found] as number, position: this.positions[found] as number };
  }

  private grow(): void {
    const capacity = this.relOffsets.length * 2;
    const r = new Uint32Array(capacity);
    r.set(this.relOffsets);
    const p = new Uint32Array(capacity);
    p.set(this.positions);
    const t = new Float64Array(capacity);
    t.set(this.maxTsBefore);
    this.relOffsets = r;
    this.positions = p;
    this.maxTsBefore = t;
  }

  /** Encodes the offset index file; `nextOffset` is the offset after the segment's last record. */
  encodeOffsetIndex(baseOffset: number, nextOffset: number): Buffer {
    const buf = Buffer.alloc(INDEX_HEADER_BYTES + this.count * OFFSET_INDEX_ENTRY_BYTES);
    writeHeader(buf, INDEX_KIND_OFFSET, this.count, baseOffset);
    writeU64(buf, nextOffset, 24);
    for (let i = 0; i < this.count; i++) {
      const p = INDEX_HEADER_BYTES + i * OFFSET_INDEX_ENTRY_BYTES;
      buf.writeUInt32LE(this.relOffsets[i] as number, p);
      buf.writeUInt32LE(this.positions[i] as number, p + 4);
    }
    sealCrc(buf);
    return buf;
  }

  /** Encodes the time index file; `maxTimestamp` is the largest timestamp in the segment. */
  encodeTimeIndex(baseOffset: number, maxTimestamp: number): Buffer {
    const buf = Buffer.alloc(INDEX_HEADER_BYTES + this.count * TIME_INDEX_ENTRY_BYTES);
    writeHeader(buf, INDEX_KIND_TIME, this.count, baseOffset);
    writeI64(buf, maxTimestamp, 24);
    for (let i = 0; i < this.count; i++) {
      const p = INDEX_HEADER_BYTES + i * TIME_INDEX_ENTRY_BYTES;
      writeI64(buf, this.maxTsBefore[i] as number, p);
      buf.writeUInt32LE(this.relOffsets[i] as number, p + 8);
    }
    sealCrc(buf);
    return buf;
  }

  /**
   * Decodes a pair of index files. Returns null when either is damaged, belongs to another
   * segment, or disagrees with the other or with the segment's size: the caller then rebuilds.
   */
  static decode(
    offsetFile: Buffer,
    timeFile: Buffer,
    baseOffset: number,
    segmentBytes: number,
  ): { index: SegmentIndex; nextOffset: number; maxTimestamp: number } | null {
    const count = checkHeader(offsetFile, INDEX_KIND_OFFSET, baseOffset, OFFSET_INDEX_ENTRY_BYTES);
    if (count === null || checkHeader(timeFile, INDEX_KIND_TIME, baseOffset, TIME_INDEX_ENTRY_BYTES) !== count) {
      return null;
    }
    const nextOffset = readU64(offsetFile, 24);
    const maxTimestamp = readI64(timeFile, 24);
    if (!Number.isSafeInteger(nextOffset) || nextOffset < baseOffset) return null;
    const index = new SegmentIndex(Math.max(count, 1));
    let prevRel = -1;
    let prevPos = -1;
    let prevTs = NO_TIMESTAMP;
    for (let i = 0; i < count; i++) {
      const rel = offsetFile.readUInt32LE(INDEX_HEADER_BYTES + i * OFFSET_INDEX_ENTRY_BYTES);
      const pos = offsetFile.readUInt32LE(INDEX_HEADER_BYTES + i * OFFSET_INDEX_ENTRY_BYTES + 4);
      const ts = readI64(timeFile, INDEX_HEADER_BYTES + i * TIME_INDEX_ENTRY_BYTES);
      const relT = timeFile.readUInt32LE(INDEX_HEADER_BYTES + i * TIME_INDEX_ENTRY_BYTES + 8);
      if (rel !== relT || rel <= prevRel || pos <= prevPos || pos >= segmentBytes || ts < prevTs) return null;
      if (baseOffset + rel >= nextOffset) return null;
      index.add(rel, pos, ts);
      prevRel = rel;
      prevPos = pos;
      prevTs = ts;
    }
    return { index, nextOffset, maxTimestamp };
  }
}

function writeHeader(buf: Buffer, kind: number, count: number, baseOffset: number): void {
  buf.writeUInt32LE(INDEX_MAGIC, 0);
  buf.writeUInt8(FORMAT_VERSION, 8);
  buf.writeUInt8(kind, 9);
  buf.writeUInt32LE(count, 12);
  writeU64(buf, baseOffset, 16);
}

function sealCrc(buf: Buffer): void {
  buf.writeUInt32LE(crc32(buf.subarray(8)), 4);
}

function checkHeader(buf: Buffer, kind: number, baseOffset: number, entryBytes: number): number | null {
  if (buf.length < INDEX_HEADER_BYTES) return null;
  if (buf.readUInt32LE(0) !== INDEX_MAGIC) return null;
  if (crc32(buf.subarray(8)) !== buf.readUInt32LE(4)) return null;
  if (buf[8] !== FORMAT_VERSION || buf[9] !== kind) return null;
  if (readU64(buf, 16) !== baseOffset) return null;
  const count = buf.readUInt32LE(12);
  if (buf.length !== INDEX_HEADER_BYTES + count * entryBytes) return null;
  return count;
}
