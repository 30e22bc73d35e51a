/**
 * Opening a log: classify the directory, trust the checkpoint only as far as it proves itself,
 * scan the active segment after it, and truncate a torn tail. docs/recovery.md is the decision
 * table this file implements; every row names the branch below that handles it.
 */
import path from 'node:path';
import { CorruptError, SpoolError, ioError } from '../errors.js';
import { decodeCheckpoint, encodeCheckpoint } from './checkpoint.js';
import {
  BATCH_HEADER_BYTES,
  BATCH_OFF_BASE_OFFSET,
  BATCH_OFF_COUNT,
  BATCH_OFF_MAGIC,
  BATCH_OFF_TYPE,
  BATCH_TYPE_RECORDS,
  CHECKPOINT_FILE,
  FORMAT_VERSION,
  OFFSET_INDEX_SUFFIX,
  SEGMENT_HEADER_BYTES,
  SEGMENT_MAGIC,
  SEGMENT_SUFFIX,
  TIME_INDEX_SUFFIX,
  RECORD_FIXED_BYTES,
  encodeSegmentHeader,
  parseSegmentFileName,
  readU64,
} from './format.js';
import type { ResolvedLogOptions } from './log.js';
import { checkBatch } from './record-batch.js';
import { BATCH_BYTES_LIMIT, dataEndBefore, readFully, scanBatches } from './scan.js';
import { Segment, emptySeed, type IndexedScanSeed } from './segment.js';
import { SegmentIndex } from './segment-index.js';
import { type Storage, type StorageFile, readWholeFile, writeFileAtomic } from './storage.js';

/** What opening the log did. Everything that changed bytes on disk is counted here. */
export interface RecoveryReport {
  /** The directory was empty or missing and a new log was created. */
  created: boolean;
  segments: number;
  /** Recovery started at the checkpoint rather than at the active segment's start. */
  checkpointUsed: boolean;
  /** Why the checkpoint was not used, when one existed. */
  checkpointIgnored: string | null;
  /** Bytes of the active segment that were CRC-checked. */
  scannedBytes: number;
  /**
   * Bytes cut from the active segment's tail (a torn write, or with `repair`, corruption), up to
   * the last non-zero byte. Zeros after that are counted in `zeroTailBytes`, whether cut or kept.
   */
  truncatedBytes: number;
  truncatedAt: { file: string; position: number; reason: string } | null;
  /**
   * Zero bytes at the end of the active segment: preallocated space, the end of the log and not
   * damage. Kept when they directly follow the last valid batch; cut with the tail otherwise.
   */
  zeroTailBytes: number;
  /** With `repair`: offsets of valid records that were cut because bad bytes came before them. */
  lostRange: { fromOffset: number; toOffset: number } | null;
  /** Index files that were missing and rebuilt from their segments. */
  rebuiltIndexes: string[];
  /** Leftover temp files and indexes without a segment. */
  removedFiles: string[];
}

interface Classified {
  segmentBases: number[];
  indexNames: Map<string, number>;
  tmp: string[];
  checkpoint: boolean;
  foreign: string[];
}

function classify(names: string[]): Classified {
  const out: Classified = { segmentBases: [], indexNames: new Map(), tmp: [], checkpoint: false, foreign: [] };
  for (const name of names) {
    const base = parseSegmentFileName(name, SEGMENT_SUFFIX);
    if (base !== null) {
      out.segmentBases.push(base);
      continue;
    }
    const indexBase = parseSegmentFileName(name, OFFSET_INDEX_SUFFIX) ?? parseSegmentFileName(name, TIME_INDEX_SUFFIX);
    if (indexBase !== null) out.indexNames.set(name, indexBase);
    else if (name === CHECKPOINT_FILE) out.checkpoint = true;
    else if (name.endsWith('.tmp')) out.tmp.push(name);
    else out.foreign.push(name);
  }
  out.segmentBases.sort((a, b) => a - b);
  return out;
}

export async function recoverLog(
  dir: string,
  opts: ResolvedLogOptions,
): Promise<{ segments: Segment[]; report: RecoveryReport; bytesSinceIndex: number }> {
  try {
    return await recoverLogUnchecked(dir, opts);
  } catch (err) {
    if (err instanceof SpoolError) throw err;
    throw ioError(err, `opening log ${dir}`);
  }
}

async function recoverLogUnchecked(
  dir: string,
  opts: ResolvedLogOptions,
): Promise<{ segments: Segment[]; report: RecoveryReport; bytesSinceIndex: number }> {
  const storage = opts.storage;
  const report: RecoveryReport = {
    created: false,
    segments: 0,
    checkpointUsed: false,
    checkpointIgnored: null,
    scannedBytes: 0,
    truncatedBytes: 0,
    truncatedAt: null,
    zeroTailBytes: 0,
    lostRange: null,
    rebuiltIndexes: [],
    removedFiles: [],
  };
  let names: string[];
  try {
    names = await storage.readdir(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR') throw new SpoolError('SPOOL_ERR_NOT_A_LOG', `${dir} is not a directory`);
    if (code !== 'ENOENT') throw ioError(err, `listing ${dir}`);
    if (!opts.create) throw new SpoolError('SPOOL_ERR_NOT_A_LOG', `${dir} does not exist`);
    await storage.mkdir(dir);
    await storage.syncDir(path.dirname(dir));
    names = [];
  }
  const found = classify(names);

  // Row "checkpoint": it identifies the directory as a log; a damaged one is ignored, never trusted.
  let checkpoint = null;
  if (found.checkpoint) {
    const read = decodeCheckpoint(await readWholeFile(storage, path.join(dir, CHECKPOINT_FILE)));
    if (read.kind === 'not-a-log' && found.segmentBases.length === 0) {
      throw new SpoolError('SPOOL_ERR_NOT_A_LOG', `${dir} is not a Spool log (bad checkpoint magic)`);
    }
    if (read.kind === 'not-a-log') report.checkpointIgnored = 'checkpoint has a bad magic number';
    if (read.kind === 'unknown-version') {
      throw new SpoolError('SPOOL_ERR_UNKNOWN_VERSION', `${dir} was written by format version ${read.version}; this build reads version ${FORMAT_VERSION}`);
    }
    if (read.kind === 'damaged') report.checkpointIgnored = 'checkpoint fails its CRC or has the wrong size';
    else if (read.kind === 'ok') checkpoint = read.checkpoint;
  }

  if (found.segmentBases.length === 0) {
    // Row "no segments": a fresh directory becomes a log; anything else is not ours to touch.
    if (found.foreign.length > 0 || found.indexNames.size > 0) {
      throw new SpoolError('SPOOL_ERR_NOT_A_LOG', `${dir} is not a Spool log (it holds ${[...found.foreign, ...found.indexNames.keys()].slice(0, 3).join(', ')})`);
    }
    if (found.checkpoint) throw new CorruptError(path.join(dir, CHECKPOINT_FILE), 0, 'a checkpoint exists but no segment does');
    const segment = await createFirstSegment(storage, dir);
    report.created = true;
    report.segments = 1;
    return { segments: [segment], report, bytesSinceIndex: 0 };
  }

  // Row "leftovers": temp files of an interrupted atomic write, and indexes of deleted segments.
  const bases = new Set(found.segmentBases);
  const leftovers = [...found.tmp, ...[...found.indexNames].filter(([, b]) => !bases.has(b)).map(([n]) => n)];
  for (const name of leftovers) {
    await storage.unlink(path.join(dir, name));
    report.removedFiles.push(name);
  }
  if (leftovers.length > 0) await storage.syncDir(dir);

  const segments = found.segmentBases.map((base) => new Segment(dir, base, storage));
  for (let i = 0; i + 1 < segments.length; i++) {
    const s = segments[i] as Segment;
    s.nextOffset = (segments[i + 1] as Segment).baseOffset;
    // Row "sealed segment without index": rebuild it now, so the report is complete.
    const hasIndexes = found.indexNames.has(path.basename(s.indexPath)) && found.indexNames.has(path.basename(s.timeIndexPath));
    if (!hasIndexes) {
      await s.loadIndex(opts.indexIntervalBytes);
      report.rebuiltIndexes.push(path.basename(s.indexPath), path.basename(s.timeIndexPath));
    }
  }
  const active = segments[segments.length - 1] as Segment;
  const bytesSinceIndex = await recoverActive(active, segments.length === 1 && !found.checkpoint, checkpoint, opts, report);
  // The names found may not be durable yet (a crash right after a roll's create): make them so
  // before anything is appended to them.
  await storage.syncDir(dir);
  report.segments = segments.length;
  return { segments, report, bytesSinceIndex };
}

async function createFirstSegment(storage: Storage, dir: string): Promise<Segment> {
  const segment = new Segment(dir, 0, storage);
  const file = await storage.open(segment.logPath, 'create');
  await file.writev([encodeSegmentHeader(0)], 0);
  await file.sync();
  // The checkpoint's rename and directory fsync also make the segment's name durable.
  await writeFileAtomic(
    storage,
    path.join(dir, CHECKPOINT_FILE),
    encodeCheckpoint({ segmentBase: 0, position: SEGMENT_HEADER_BYTES, nextOffset: 0, maxTimestamp: Number.MIN_SAFE_INTEGER }),
  );
  segment.file = file;
  segment.size = SEGMENT_HEADER_BYTES;
  segment.fileBytes = SEGMENT_HEADER_BYTES;
  segment.index = new SegmentIndex();
  return segment;
}

/** Recovers the active segment; returns the bytes written since its last index entry. */
async function recoverActive(
  active: Segment,
  mayBeForeign: boolean,
  checkpoint: { segmentBase: number; position: number; nextOffset: number; maxTimestamp: number } | null,
  opts: ResolvedLogOptions,
  report: RecoveryReport,
): Promise<number> {
  const storage = opts.storage;
  const file = await storage.open(active.logPath, 'write');
  active.file = file;
  const fileSize = await file.size();
  const header = Buffer.alloc(SEGMENT_HEADER_BYTES);
  const got = await readFully(file, header, SEGMENT_HEADER_BYTES, 0);
  if (got < SEGMENT_HEADER_BYTES || header.every((b) => b === 0)) {
    // Row "torn segment header": a roll or create that crashed before its header was synced.
    // Such a segment never held a synced batch, so a valid batch after the header means damage.
    const next = fileSize > SEGMENT_HEADER_BYTES ? await findNextValidBatch(file, SEGMENT_HEADER_BYTES, fileSize, active.baseOffset) : null;
    if (next !== null && !opts.repair) {
      throw new CorruptError(active.logPath, 0, 'segment header is zeroed but valid batches follow; open with repair to truncate');
    }
    if (next !== null) report.lostRange = { fromOffset: active.baseOffset, toOffset: await lastOffsetFrom(file, next.position, fileSize, next.lastOffset) };
    await file.truncate(0);
    await file.writev([encodeSegmentHeader(active.baseOffset)], 0);
    await file.sync();
    report.truncatedBytes += fileSize;
    report.truncatedAt = { file: active.logPath, position: 0, reason: 'segment header was never written' };
    active.size = SEGMENT_HEADER_BYTES;
    active.fileBytes = SEGMENT_HEADER_BYTES;
    active.index = new SegmentIndex();
    return 0;
  }
  if (header.readUInt32LE(0) !== SEGMENT_MAGIC && mayBeForeign) {
    throw new SpoolError('SPOOL_ERR_NOT_A_LOG', `${active.dir} is not a Spool log (bad segment magic)`);
  }
  if (header.readUInt32LE(0) === SEGMENT_MAGIC && header[4] !== FORMAT_VERSION) {
    throw new SpoolError('SPOOL_ERR_UNKNOWN_VERSION', `${active.logPath} has format version ${header[4]}; this build reads ${FORMAT_VERSION}`);
  }
  await active.checkHeader(file);

  // Row "checkpoint in the active segment": start after it when its index files agree with it.
  let seed: IndexedScanSeed = emptySeed(active.baseOffset);
  let start = SEGMENT_HEADER_BYTES;
  if (checkpoint !== null) {
    if (checkpoint.segmentBase !== active.baseOffset) {
      report.checkpointIgnored = 'checkpoint names an older segment';
    } else if (checkpoint.position > fileSize || checkpoint.position < SEGMENT_HEADER_BYTES) {
      report.checkpointIgnored = 'checkpoint position lies outside the segment';
    } else {
      active.size = fileSize;
      const loaded =
        checkpoint.position === SEGMENT_HEADER_BYTES && checkpoint.nextOffset === active.baseOffset
          ? { index: new SegmentIndex(), nextOffset: active.baseOffset }
          : await active.readIndexFiles();
      if (loaded === null || loaded.nextOffset !== checkpoint.nextOffset) {
        report.checkpointIgnored = 'index files do not match the checkpoint';
      } else {
        seed = { index: loaded.index, nextOffset: checkpoint.nextOffset, maxTimestamp: checkpoint.maxTimestamp, bytesSinceIndex: opts.indexIntervalBytes };
        start = checkpoint.position;
        report.checkpointUsed = true;
      }
    }
  }

  const scan = await active.scanIndex(file, start, fileSize, seed, opts.indexIntervalBytes);
  report.scannedBytes = scan.end - start;
  active.index = scan.index;
  active.nextOffset = scan.nextOffset;
  active.maxTimestamp = scan.maxTimestamp;
  active.size = scan.end;
  active.fileBytes = fileSize;
  if (scan.problem !== null) {
    // Rows "preallocated tail", "torn tail" and "corruption before valid data".
    const dataEnd = await dataEndBefore(file, scan.end, fileSize);
    if (dataEnd === scan.end) {
      // Only zeros after the last valid batch: space the writer preallocated (or that a crash left
      // zero-filled). It is the end of the log, and the next append overwrites it.
      report.zeroTailBytes = fileSize - scan.end;
    } else {
      await cutTail(active, file, fileSize, dataEnd, scan.problem, opts, report);
      active.fileBytes = scan.end;
    }
  }
  // After a process crash the tail may sit in the page cache without ever having been synced:
  // sync it before serving it, or a later power cut could take back what readers already saw.
  await file.sync();
  // Index entries are added when this many bytes were written since the last one.
  return scan.problem === null && start === SEGMENT_HEADER_BYTES && scan.end === SEGMENT_HEADER_BYTES ? 0 : opts.indexIntervalBytes;
}

/**
 * Rows "torn tail" and "corruption before valid data". The last two flushes (the pipeline) write
 * at most flushBytesMax, and everything before them was fsynced, so bad bytes within that
 * distance of the end of the data are a torn write. Further back they are a torn write only if no
 * valid batch follows them. The end of the data (`dataEnd`, after the last non-zero byte) rather
 * than the file size: a preallocated zero tail was never written, so it does not widen the window.
 */
async function cutTail(
  active: Segment,
  file: StorageFile,
  fileSize: number,
  dataEnd: number,
  problem: { position: number; kind: string },
  opts: ResolvedLogOptions,
  report: RecoveryReport,
): Promise<void> {
  const position = problem.position;
  if (dataEnd - position > opts.flushBytesMax) {
    const next = await findNextValidBatch(file, position + 1, fileSize, active.nextOffset);
    if (next !== null) {
      if (!opts.repair) {
        throw new CorruptError(
          active.logPath,
          position,
          `${problem.kind}, yet a valid batch follows at byte ${next.position}; open with repair to truncate (losing offsets from ${active.nextOffset})`,
        );
      }
      report.lostRange = { fromOffset: active.nextOffset, toOffset: await lastOffsetFrom(file, next.position, fileSize, next.lastOffset) };
    }
  }
  await file.truncate(position);
  await file.sync();
  // The zeros after the data were never written (preallocated): counted apart from the cut data.
  report.truncatedBytes += dataEnd - position;
  report.zeroTailBytes = fileSize - dataEnd;
  report.truncatedAt = { file: active.logPath, position, reason: problem.kind };
}

/** The last offset of the valid batches that follow each other from `position`. */
async function lastOffsetFrom(file: StorageFile, position: number, end: number, fallback: number): Promise<number> {
  let last = fallback;
  await scanBatches(file, position, end, 4 * 1024 * 1024, (_b, _p, header) => {
    if (header.baseOffset + header.recordCount - 1 < last) return false;
    last = header.baseOffset + header.recordCount - 1;
    return true;
  });
  return last;
}

/**
 * Searches forward for the start of a valid batch whose base offset is at least `minOffset`.
 * Returns its position and the last offset of that batch, or null. Byte-by-byte with cheap
 * filters first; it runs only on the rare path of corruption.
 */
export async function findNextValidBatch(
  file: StorageFile,
  from: number,
  end: number,
  minOffset: number,
): Promise<{ position: number; lastOffset: number } | null> {
  const chunk = 4 * 1024 * 1024;
  const buf = Buffer.allocUnsafe(chunk + BATCH_HEADER_BYTES);
  for (let base = from; base < end; base += chunk) {
    const got = await readFully(file, buf, Math.min(buf.length, end - base), base);
    const scanEnd = Math.min(got - BATCH_HEADER_BYTES + 1, chunk);
    const view = buf.subarray(0, got);
    // Jump from one version byte to the next (memchr speed), so long zeroed or preallocated
    // stretches cost almost nothing.
    for (let m = view.indexOf(FORMAT_VERSION, BATCH_OFF_MAGIC); m !== -1 && m - BATCH_OFF_MAGIC < scanEnd; m = view.indexOf(FORMAT_VERSION, m + 1)) {
      const i = m - BATCH_OFF_MAGIC;
      if (buf[i + BATCH_OFF_TYPE] !== BATCH_TYPE_RECORDS) continue;
      const length = buf.readUInt32LE(i);
      if (length < BATCH_HEADER_BYTES || length > BATCH_BYTES_LIMIT || base + i + length > end) continue;
      // Cheap plausibility before reading and CRC-checking a whole candidate batch.
      const count = buf.readUInt32LE(i + BATCH_OFF_COUNT);
      const baseOffset = readU64(buf, i + BATCH_OFF_BASE_OFFSET);
      if (count === 0 || count > length / RECORD_FIXED_BYTES || !(baseOffset >= minOffset)) continue;
      const whole = Buffer.allocUnsafe(length);
      await readFully(file, whole, length, base + i);
      const check = checkBatch(whole, 0, length, BATCH_BYTES_LIMIT);
      if (check.ok && check.header.baseOffset >= minOffset) {
        return { position: base + i, lastOffset: check.header.baseOffset + check.header.recordCount - 1 };
      }
    }
  }
  return null;
}
