/**
 * `verify()`: walks every segment and index, checking each batch's CRC, each record's structure
 * and the density of offsets, and reports every bad range instead of stopping at the first.
 */
import path from 'node:path';
import { SEGMENT_HEADER_BYTES } from './format.js';
import { type LogRecord, decodeRecords } from './record-batch.js';
import { findNextValidBatch } from './recovery.js';
import { scanBatches } from './scan.js';
import type { Segment } from './segment.js';
import { SCAN_CHUNK_BYTES } from './segment.js';

export interface BadRange {
  file: string;
  /** First bad byte. */
  start: number;
  /** First byte after the bad range: the next valid batch, or the end of the file. */
  end: number;
  reason: string;
}

export interface VerifyReport {
  ok: boolean;
  segments: number;
  batches: number;
  records: number;
  bytes: number;
  badRanges: BadRange[];
  /** Index files that are missing or fail their checks (they are rebuildable; `repair` rewrites them). */
  badIndexes: string[];
}

export async function verifyLog(segments: readonly Segment[], active: Segment): Promise<VerifyReport> {
  const report: VerifyReport = { ok: true, segments: segments.length, batches: 0, records: 0, bytes: 0, badRanges: [], badIndexes: [] };
  const scratch: LogRecord[] = [];
  for (const segment of segments) {
    const file = segment === active ? segment.file : await segment.openForRead();
    if (file === null) continue;
    const end = segment.size;
    report.bytes += end;
    try {
      await segment.checkHeader(file);
    } catch (err) {
      report.badRanges.push({ file: segment.logPath, start: 0, end: SEGMENT_HEADER_BYTES, reason: (err as Error).message });
    }
    let expected = segment.baseOffset;
    let position = SEGMENT_HEADER_BYTES;
    while (position < end) {
      let fault: { position: number; reason: string } | null = null;
      const result = await scanBatches(file, position, end, SCAN_CHUNK_BYTES, (buf, pos, header, filePosition) => {
        if (header.baseOffset !== expected) {
          fault = { position: filePosition, reason: `batch starts at offset ${header.baseOffset}, expected ${expected}` };
          return false;
        }
        scratch.length = 0;
        const problem = decodeRecords(buf, pos, header, 0, scratch, Number.MAX_SAFE_INTEGER);
        if (problem !== null) {
          fault = { position: filePosition, reason: problem };
          return false;
        }
        report.batches++;
        report.records += header.recordCount;
        expected += header.recordCount;
        return true;
      });
      const bad = (fault as { position: number; reason: string } | null) ?? (result.problem && { position: result.problem.position, reason: `invalid batch: ${result.problem.kind}` });
      if (bad === null) break;
      const next = await findNextValidBatch(file, bad.position + 1, end, expected);
      report.badRanges.push({ file: segment.logPath, start: bad.position, end: next?.position ?? end, reason: bad.reason });
      if (next === null) break;
      // Resume at the next valid batch; the offsets in between are lost.
      position = next.position;
      expected = await baseOffsetAt(file, next.position);
    }
    if (segment !== active && expected !== segment.nextOffset && report.badRanges.every((r) => r.file !== segment.logPath)) {
      report.badRanges.push({ file: segment.logPath, start: end, end, reason: `segment ends at offset ${expected}, expected ${segment.nextOffset}` });
    }
    if (segment !== active) {
      const loaded = await segment.readIndexFiles();
      if (loaded === null || loaded.nextOffset !== segment.nextOffset) {
        report.badIndexes.push(path.basename(segment.indexPath), path.basename(segment.timeIndexPath));
      }
    }
  }
  report.ok = report.badRanges.length === 0 && report.badIndexes.length === 0;
  return report;
}

async function baseOffsetAt(file: NonNullable<Segment['file']>, position: number): Promise<number> {
  const b = Buffer.alloc(8);
  await file.read(b, 0, 8, position + 16);
  return b.readUInt32LE(4) * 0x1_0000_0000 + b.readUInt32LE(0);
}
