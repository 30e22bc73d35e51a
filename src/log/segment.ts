/**
 * One segment: a records file plus its sparse offset and time index, named by base offset.
 * A segment is either the active one (the log appends to it) or sealed (immutable, fully synced).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { CorruptError } from '../errors.js';
import {
  OFFSET_INDEX_SUFFIX,
  SEGMENT_HEADER_BYTES,
  SEGMENT_MAGIC,
  FORMAT_VERSION,
  SEGMENT_SUFFIX,
  TIME_INDEX_SUFFIX,
  readU64,
  segmentFileName,
} from './format.js';
import { scanBatches } from './scan.js';
import { SegmentIndex } from './segment-index.js';
import { type Storage, type StorageFile, readWholeFile, writeFileAtomic } from './storage.js';

export const SCAN_CHUNK_BYTES = 4 * 1024 * 1024;

export interface IndexedScan {
  index: SegmentIndex;
  /** Position after the last valid batch. */
  end: number;
  nextOffset: number;
  maxTimestamp: number;
  problem: { position: number; kind: string } | null;
}

export class Segment {
  readonly logPath: string;
  readonly indexPath: string;
  readonly timeIndexPath: string;
  /** Open handle: read-write for the active segment, read-only (opened on demand) for sealed ones. */
  file: StorageFile | null = null;
  /** Valid bytes: for the active segment the durable end, for a sealed one the file size. */
  size = -1;
  /**
   * The active segment's file size as the writer last set it: at least `size`. The bytes from the
   * end of the last write to here are preallocated zeros (docs/format.md "Preallocation").
   * -1 for a sealed segment, whose file ends at `size`.
   */
  fileBytes = -1;
  /** The offset after this segment's last record. */
  nextOffset: number;
  /** Largest record timestamp; Number.MIN_SAFE_INTEGER while unknown or empty. */
  maxTimestamp = Number.MIN_SAFE_INTEGER;
  index: SegmentIndex | null = null;
  /**
   * Set when a sealed segment let go of its index (it is on disk, and `nextOffset` and
   * `maxTimestamp` stay known): at its roll, or when newer lookups needed room (log.ts `indexOf`).
   * Kept in memory, the indexes of every sealed segment would grow with the log (16 B per 4 KiB
   * written). A lookup loads it again.
   */
  indexReleased = false;
  /** Reads in flight; a deleted segment closes its handle once this drops to zero. */
  readers = 0;
  deleted = false;

  constructor(
    readonly dir: string,
    readonly baseOffset: number,
    private readonly storage: Storage,
  ) {
    this.logPath = path.join(dir, segmentFileName(baseOffset, SEGMENT_SUFFIX));
    this.indexPath = path.join(dir, segmentFileName(baseOffset, OFFSET_INDEX_SUFFIX));
    this.timeIndexPath = path.join(dir, segmentFileName(baseOffset, TIME_INDEX_SUFFIX));
    this.nextOffset = baseOffset;
  }

  /** Opens the read handle of a sealed segment and learns its size. */
  async openForRead(): Promise<StorageFile> {
    if (this.file === null) {
      const file = await this.storage.open(this.logPath, 'read');
      if (this.file === null) {
        this.file = file;
        this.size = await file.size();
      } else {
        await file.close();
      }
    }
    return this.file;
  }

  /** Checks the 16-byte header; throws CorruptError when it does not belong to this segment. */
  async checkHeader(file: StorageFile): Promise<void> {
    const buf = Buffer.alloc(SEGMENT_HEADER_BYTES);
    const n = await file.read(buf, 0, SEGMENT_HEADER_BYTES, 0);
    if (n < SEGMENT_HEADER_BYTES) throw new CorruptError(this.logPath, 0, 'segment header is truncated');
    if (buf.readUInt32LE(0) !== SEGMENT_MAGIC) throw new CorruptError(this.logPath, 0, 'bad segment magic');
    if (buf[4] !== FORMAT_VERSION) throw new CorruptError(this.logPath, 4, `unknown segment version ${buf[4]}`);
    if (readU64(buf, 8) !== this.baseOffset) throw new CorruptError(this.logPath, 8, 'base offset does not match the file name');
  }

  /**
   * Rebuilds the index by scanning [SEGMENT_HEADER_BYTES, endPosition), checking every batch.
   * Stops at the first invalid batch and reports it in `problem`.
   */
  async scanIndex(file: StorageFile, startPosition: number, endPosition: number, seed: IndexedScanSeed, indexIntervalBytes: number): Promise<IndexedScan> {
    const index = seed.index;
    let nextOffset = seed.nextOffset;
    let maxTimestamp = seed.maxTimestamp;
    let sinceIndex = seed.bytesSinceIndex;
    let discontinuity: { position: number; kind: string } | null = null;
    const result = await scanBatches(file, startPosition, endPosition, SCAN_CHUNK_BYTES, (_buf, _pos, header, filePosition) => {
      if (header.baseOffset !== nextOffset) {
        discontinuity = { position: filePosition, kind: `base offset ${header.baseOffset}, expected ${nextOffset}` };
        return false;
      }
      if (sinceIndex >= indexIntervalBytes && header.recordCount > 0) {
        index.add(nextOffset - this.baseOffset, filePosition, maxTimestamp);
        sinceIndex = 0;
      }
      sinceIndex += header.length;
      nextOffset += header.recordCount;
      if (header.maxTimestamp > maxTimestamp) maxTimestamp = header.maxTimestamp;
      return true;
    });
    if (discontinuity !== null) {
      const d = discontinuity as { position: number; kind: string };
      return { index, end: d.position, nextOffset, maxTimestamp, problem: d };
    }
    return { index, end: result.end, nextOffset, maxTimestamp, problem: result.problem };
  }

  /** Whether `maxTimestamp` is known without loading the index (it is for the active segment, always). */
  get timestampKnown(): boolean {
    return this.index !== null || this.indexReleased;
  }

  /** Sealed, with its index files written: lets go of the in-memory index (see `indexReleased`). */
  releaseIndex(): void {
    assert(this.index !== null, 'only a segment holding its index lets go of it');
    this.index = null;
    this.indexReleased = true;
  }

  /**
   * Loads the index of a sealed segment from its files, rebuilding (and rewriting) it when the
   * files are missing or damaged. Returns true when it had to rebuild.
   */
  async loadIndex(indexIntervalBytes: number): Promise<boolean> {
    if (this.index !== null) return false;
    const file = await this.openForRead();
    const loaded = await this.readIndexFiles();
    if (loaded !== null && loaded.nextOffset === this.nextOffset) {
      this.index = loaded.index;
      this.maxTimestamp = loaded.maxTimestamp;
      return false;
    }
    await this.checkHeader(file);
    const scan = await this.scanIndex(file, SEGMENT_HEADER_BYTES, this.size, emptySeed(this.baseOffset), indexIntervalBytes);
    if (scan.problem !== null || scan.nextOffset !== this.nextOffset) {
      // A sealed segment was fully synced before the roll, so anything wrong here is corruption.
      const position = scan.problem?.position ?? scan.end;
      const reason = scan.problem?.kind ?? `segment ends at offset ${scan.nextOffset}, expected ${this.nextOffset}`;
      throw new CorruptError(this.logPath, position, reason);
    }
    this.index = scan.index;
    this.maxTimestamp = scan.maxTimestamp;
    await this.writeIndexFiles();
    return true;
  }

  async readIndexFiles(): Promise<{ index: SegmentIndex; nextOffset: number; maxTimestamp: number } | null> {
    try {
      const [offsets, times] = await Promise.all([
        readWholeFile(this.storage, this.indexPath),
        readWholeFile(this.storage, this.timeIndexPath),
      ]);
      const size = this.size >= 0 ? this.size : Number.MAX_SAFE_INTEGER;
      return SegmentIndex.decode(offsets, times, this.baseOffset, size);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /** Writes both index files atomically (each: temp file, fsync, rename, fsync dir). */
  async writeIndexFiles(): Promise<void> {
    const index = this.index;
    if (index === null) return;
    await writeFileAtomic(this.storage, this.indexPath, index.encodeOffsetIndex(this.baseOffset, this.nextOffset));
    await writeFileAtomic(this.storage, this.timeIndexPath, index.encodeTimeIndex(this.baseOffset, this.maxTimestamp));
  }

  async closeHandle(): Promise<void> {
    const file = this.file;
    this.file = null;
    if (file !== null) await file.close();
  }
}

export interface IndexedScanSeed {
  index: SegmentIndex;
  nextOffset: number;
  maxTimestamp: number;
  bytesSinceIndex: number;
}

export function emptySeed(baseOffset: number): IndexedScanSeed {
  // bytesSinceIndex starts at zero: the first batch needs no entry, a scan starts at the header anyway.
  return { index: new SegmentIndex(), nextOffset: baseOffset, maxTimestamp: Number.MIN_SAFE_INTEGER, bytesSinceIndex: 0 };
}
