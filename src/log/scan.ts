/**
 * Walks the batches of a file range in large chunks, checking each batch (length, CRC, version)
 * before the visitor sees it. Recovery, index rebuilds, verify and reads all use it, so there is
 * exactly one place that decides whether bytes on disk are a batch.
 */
import { BATCH_HEADER_BYTES, BATCH_OFF_LENGTH } from './format.js';
import { type BatchHeader, type BatchProblem, checkBatch } from './record-batch.js';
import type { StorageFile } from './storage.js';

/** The largest batch any configuration may write; larger lengths are corrupt on sight. */
export const BATCH_BYTES_LIMIT = 64 * 1024 * 1024 + 4096;

/** Called for each valid batch: `buf[pos .. pos+header.length)` is the batch, found at `filePosition`. Return false to stop. */
export type BatchVisitor = (buf: Buffer, pos: number, header: BatchHeader, filePosition: number) => boolean;

export interface ScanResult {
  /** File position after the last batch the visitor accepted. */
  end: number;
  /** Set when the scan stopped at bytes that are not a valid batch (before `endPosition`). */
  problem: { position: number; kind: BatchProblem } | null;
}

export async function readFully(file: StorageFile, buf: Buffer, length: number, position: number): Promise<number> {
  let got = 0;
  while (got < length) {
    const n = await file.read(buf, got, length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/**
 * The position after the last non-zero byte in `[from, end)`, or `from` when every byte there is
 * zero. A segment's active tail may be preallocated (docs/format.md "Preallocation"): zeros after
 * the last valid batch are unused space, anything else is a torn write or damage. Reads backwards
 * in chunks, so garbage just before a long zero tail costs one pass over the zeros.
 */
export async function dataEndBefore(file: StorageFile, from: number, end: number): Promise<number> {
  const chunk = 1024 * 1024;
  const buf = Buffer.allocUnsafe(Math.min(chunk, Math.max(end - from, 1)));
  let hi = end;
  while (hi > from) {
    const lo = Math.max(from, hi - buf.length);
    const got = await readFully(file, buf, hi - lo, lo);
    // Bytes the file no longer has (it shrank meanwhile) count as zeros.
    for (let i = got - 1; i >= 0; i--) if (buf[i] !== 0) return lo + i + 1;
    hi = lo;
  }
  return from;
}

export async function scanBatches(
  file: StorageFile,
  startPosition: number,
  endPosition: number,
  chunkBytes: number,
  visit: BatchVisitor,
): Promise<ScanResult> {
  let position = startPosition;
  let buf = Buffer.allocUnsafe(Math.min(chunkBytes, Math.max(endPosition - startPosition, BATCH_HEADER_BYTES)));
  while (position < endPosition) {
    const want = Math.min(buf.length, endPosition - position);
    const got = await readFully(file, buf, want, position);
    let pos = 0;
    for (;;) {
      if (position + pos >= endPosition) break;
      const check = checkBatch(buf, pos, got, BATCH_BYTES_LIMIT);
      if (check.ok) {
        if (!visit(buf, pos, check.header, position + pos)) return { end: position + pos + check.header.length, problem: null };
        pos += check.header.length;
        continue;
      }
      const needMore = check.problem === 'truncated' || check.problem === 'short-header' || check.problem === 'zeroed';
      const fileHasMore = got === want && position + got < endPosition;
      if (needMore && fileHasMore) {
        if (pos === 0) {
          // One batch is larger than the buffer: grow to fit it (bounded by BATCH_BYTES_LIMIT).
          const length = got >= BATCH_HEADER_BYTES ? buf.readUInt32LE(BATCH_OFF_LENGTH) : 0;
          buf = Buffer.allocUnsafe(Math.max(buf.length * 2, Math.min(length, BATCH_BYTES_LIMIT)));
        }
        break; // refill from the start of this batch
      }
      return { end: position + pos, problem: { position: position + pos, kind: check.problem } };
    }
    position += pos;
    // A fresh buffer per chunk: visitors may keep views (records) into the previous one.
    if (pos > 0) buf = Buffer.allocUnsafe(buf.length);
  }
  return { end: position, problem: null };
}
