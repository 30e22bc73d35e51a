// Log API behaviour on real temp dirs and FaultyStorage: rolls, reads, limits, time lookup, retention, recovery paths, errors, group commit.
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Log, type LogOptions, type LogRecord, type ReadOptions, type RecordInput } from '../../src/log/index.js';
import { SpoolError, type SpoolErrorCode } from '../../src/errors.js';
import { BATCH_HEADER_BYTES, CHECKPOINT_FILE, SEGMENT_HEADER_BYTES, crc32, parseSegmentFileName } from '../../src/log/format.js';
import { encodedRecordBytes, recordBytesBound } from '../../src/log/record-batch.js';
import { SegmentIndex } from '../../src/log/segment-index.js';
import { FaultyStorage, seededRandom } from '../support/faulty-storage.js';

const roots: string[] = [];
function tmpDir(): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-behaviour-'));
  roots.push(root);
  return path.join(root, 'q');
}
afterAll(() => {
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});

async function expectCode(p: Promise<unknown> | (() => unknown), code: SpoolErrorCode): Promise<SpoolError> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(SpoolError);
  expect((err as SpoolError).code).toBe(code);
  return err as SpoolError;
}

/** Base offsets of the segment files in `dir`, sorted. */
function segmentBases(dir: string): number[] {
  return fs
    .readdirSync(dir)
    .map((n) => parseSegmentFileName(n, '.log'))
    .filter((b): b is number => b !== null)
    .sort((a, b) => a - b);
}

function segFile(dir: string, base: number, suffix = '.log'): string {
  return path.join(dir, String(base).padStart(20, '0') + suffix);
}

async function readAll(log: Log, from = log.startOffset, opts?: ReadOptions): Promise<LogRecord[]> {
  const out: LogRecord[] = [];
  let next = from;
  for (;;) {
    const recs = await log.read(next, opts);
    if (recs.length === 0) break;
    expect(recs[0]?.offset, 'a read starts exactly at the offset asked for').toBe(next);
    out.push(...recs);
    next = (recs[recs.length - 1] as LogRecord).offset + 1;
  }
  return out;
}

function valueFor(i: number): string {
  return `value-${i}-` + 'x'.repeat((i * 37) % 150);
}

/** Appends `n` records in calls of 1..5 records (sequentially, so each call is one batch); returns the call sizes. */
async function fill(log: Log, n: number, first = 0, seed = 1): Promise<number[]> {
  const rng = seededRandom(seed);
  const calls: number[] = [];
  let i = first;
  while (i < first + n) {
    const k = Math.min(1 + Math.floor(rng() * 5), first + n - i);
    const recs: RecordInput[] = Array.from({ length: k }, (_, j) => ({ value: valueFor(i + j), key: (i + j) % 3 === 0 ? null : `k${i + j}` }));
    if (k === 1 && rng() < 0.5) await log.appendOne(recs[0] as RecordInput);
    else await log.append(recs);
    calls.push(k);
    i += k;
  }
  return calls;
}

function expectValues(recs: LogRecord[], from: number): void {
  recs.forEach((r, j) => {
    expect(r.offset).toBe(from + j);
    expect(r.value.toString()).toBe(valueFor(from + j));
    expect(r.key === null ? null : r.key.toString()).toBe((from + j) % 3 === 0 ? null : `k${from + j}`);
  });
}

describe('segments', () => {
  it('rolls before a flush would push the segment past segmentBytesMax', async () => {
    // Proves rolling: 300 single-record appends into 4 KiB segments; every sealed file stays within the limit and was full.
    const dir = tmpDir();
    const max = 4096;
    const { log } = await Log.open(dir, { segmentBytesMax: max });
    const batchBytes: number[] = [];
    for (let i = 0; i < 300; i++) {
      const rec = { value: valueFor(i), key: i % 3 === 0 ? null : `k${i}` };
      batchBytes.push(encodedRecordBytes(rec) + BATCH_HEADER_BYTES);
      await log.appendOne(rec);
    }
    const bases = segmentBases(dir);
    expect(bases.length).toBeGreaterThan(5);
    expect(log.stats().segments).toBe(bases.length);
    expect(bases[0]).toBe(0);
    for (let s = 0; s + 1 < bases.length; s++) {
      const size = fs.statSync(segFile(dir, bases[s] as number)).size;
      const expectedSize = SEGMENT_HEADER_BYTES + batchBytes.slice(bases[s], bases[s + 1]).reduce((a, b) => a + b, 0);
      expect(size, `segment ${bases[s]} holds exactly its records`).toBe(expectedSize);
      expect(size, `sealed segment ${bases[s]} exceeds segmentBytesMax`).toBeLessThanOrEqual(max);
      // It rolled only because the next batch would not fit.
      expect(size + (batchBytes[bases[s + 1] as number] as number), `segment ${bases[s]} rolled early`).toBeGreaterThan(max);
    }
    await log.close();
  });

  it('puts an append larger than a segment into a segment of its own', async () => {
    // Proves an oversize append is still accepted: it starts a fresh segment and the next append rolls again.
    const dir = tmpDir();
    const { log } = await Log.open(dir, { segmentBytesMax: 2048 });
    await log.appendOne({ value: 'small' });
    const big = await log.append(Array.from({ length: 10 }, (_, i) => ({ value: Buffer.alloc(300, i) })));
    await log.appendOne({ value: 'after' });
    expect(segmentBases(dir)).toEqual([0, 1, 11]);
    expect(big).toEqual({ baseOffset: 1, lastOffset: 10, count: 10 });
    const all = await readAll(log);
    expect(all.map((r) => r.value.length)).toEqual([5, ...Array(10).fill(300), 5]);
    await log.close();
  });
});

describe('reads', () => {
  it('returns consecutive records across segment boundaries for many maxBytes/maxRecords', async () => {
    // Proves read paging: from every offset and for each limit combination, the result is non-empty, starts at
    // the asked offset, respects maxRecords, reads no batch past maxBytes, and stops early only at a segment end.
    const dir = tmpDir();
    const { log } = await Log.open(dir, { segmentBytesMax: 2048, indexIntervalBytes: 256 });
    const total = 250;
    const calls = await fill(log, total);
    // Batch layout: each append call is one batch.
    const batchOf: { base: number; count: number; bytes: number }[] = [];
    let o = 0;
    for (const k of calls) {
      let bytes = BATCH_HEADER_BYTES;
      for (let j = 0; j < k; j++) bytes += encodedRecordBytes({ value: valueFor(o + j), key: (o + j) % 3 === 0 ? null : `k${o + j}` });
      const b = { base: o, count: k, bytes };
      for (let j = 0; j < k; j++) batchOf[o + j] = b;
      o += k;
    }
    const bases = segmentBases(dir);
    expect(bases.length).toBeGreaterThan(4);
    const segmentEnd = (off: number) => [...bases, total].find((b) => b > off) as number;

    for (const maxBytes of [1, 60, 300, 1000, 100_000]) {
      for (const maxRecords of [1, 2, 7, undefined]) {
        const opts: ReadOptions = { maxBytes, ...(maxRecords === undefined ? {} : { maxRecords }) };
        const label = `maxBytes ${maxBytes} maxRecords ${maxRecords}`;
        for (let from = 0; from < total; from++) {
          const recs = await log.read(from, opts);
          expect(recs.length, `${label} from ${from}`).toBeGreaterThanOrEqual(1);
          expectValues(recs, from);
          if (maxRecords !== undefined) expect(recs.length).toBeLessThanOrEqual(maxRecords);
          const last = (recs[recs.length - 1] as LogRecord).offset;
          // Bytes of the batches touched before the last one must be below maxBytes (no extra batch was read).
          let before = 0;
          for (let b = batchOf[from]; b !== undefined && b !== batchOf[last]; b = batchOf[b.base + b.count]) before += b.bytes;
          expect(before, `${label} from ${from}: read past maxBytes`).toBeLessThan(maxBytes);
          // Stopped early only for a reason: maxRecords, maxBytes, or the end of the segment.
          const touched = before + (batchOf[last] as { bytes: number }).bytes;
          const stoppedOk = recs.length === maxRecords || touched >= maxBytes || last + 1 === segmentEnd(from);
          expect(stoppedOk, `${label} from ${from}: stopped early at ${last}`).toBe(true);
        }
        const all = await readAll(log, 0, opts);
        expect(all.length, label).toBe(total);
        expectValues(all, 0);
      }
    }
    await log.close();
  });

  it('returns [] at and past endOffset, and [] on an empty log', async () => {
    // Proves end-of-log reads are empty rather than errors.
    const dir = tmpDir();
    const { log } = await Log.open(dir, { segmentBytesMax: 1024 });
    expect(log.endOffset).toBe(0);
    expect(await log.read(0)).toEqual([]);
    await fill(log, 40);
    expect(log.endOffset).toBe(40);
    expect(await log.read(40)).toEqual([]);
    expect(await log.read(41)).toEqual([]);
    expect(await log.read(1e12)).toEqual([]);
    expect((await log.read(39)).map((r) => r.offset)).toEqual([39]);
    await log.close();
  });

  it('rejects reads below startOffset with SPOOL_ERR_OFFSET_OUT_OF_RANGE', async () => {
    // Proves offsets deleted by retention are reported as out of range, not silently skipped.
    const dir = tmpDir();
    const { log } = await Log.open(dir, { segmentBytesMax: 1024 });
    await fill(log, 100);
    expect(await log.deleteBefore(50)).toBeGreaterThan(0);
    const start = log.startOffset;
    expect(start).toBeGreaterThan(0);
    await expectCode(log.read(start - 1), 'SPOOL_ERR_OFFSET_OUT_OF_RANGE');
    await expectCode(log.read(0), 'SPOOL_ERR_OFFSET_OUT_OF_RANGE');
    expect((await log.read(start, { maxRecords: 1 }))[0]?.offset).toBe(start);
    await log.close();
  });

  it('rejects invalid arguments with SPOOL_ERR_INVALID_ARGUMENT', async () => {
    // Proves argument validation on read, append, appendOne and open options; nothing is written by a rejected call.
    const dir = tmpDir();
    const { log } = await Log.open(dir);
    for (const off of [-1, 1.5, Number.NaN, Infinity, 2 ** 53]) await expectCode(log.read(off), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(log.read(0, { maxBytes: 0 }), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(log.read(0, { maxRecords: 0 }), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(log.read(0, { maxRecords: -3 }), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(log.append([]), 'SPOOL_ERR_INVALID_ARGUMENT');
    await expectCode(log.append('x' as unknown as RecordInput[]), 'SPOOL_ERR_INVALID_ARGUMENT');
    const bad: unknown[] = [
      null,
      'str',
      { value: 5 },
      { value: undefined },
      { value: 'v', key: 5 },
      { value: 'v', timestamp: 1.5 },
      { value: 'v', timestamp: Number.NaN },
      { value: 'v', headers: { h: 5 } },
      { value: 'v', headers: { ['h'.repeat(70_000)]: 'x' } },
    ];
    for (const r of bad) {
      await expectCode(log.appendOne(r as RecordInput), 'SPOOL_ERR_INVALID_ARGUMENT');
      await expectCode(log.append([{ value: 'ok' }, r as RecordInput]), 'SPOOL_ERR_INVALID_ARGUMENT');
    }
    expect(log.endOffset).toBe(0);
    const badOptions: LogOptions[] = [
      { segmentBytesMax: 100 },
      { segmentBytesMax: 2 * 1024 ** 3 },
      { indexIntervalBytes: 0 },
      { recordBytesMax: 0 },
      { recordBytesMax: 1000, batchBytesMax: 1000 },
      { batchBytesMax: 65 * 1024 * 1024 },
    ];
    for (const o of badOptions) await expectCode(Log.open(tmpDir(), o), 'SPOOL_ERR_INVALID_ARGUMENT');
    await log.close();
  });
});

describe('size limits', () => {
  it('rejects an oversize record or batch and writes nothing', async () => {
    // Proves RECORD_TOO_LARGE / BATCH_TOO_LARGE are checked up front: endOffset and file size are unchanged, later appends get the next offset.
    const dir = tmpDir();
    const { log } = await Log.open(dir, { recordBytesMax: 1000, batchBytesMax: 5000 });
    await log.appendOne({ value: 'first' });
    const sizeBefore = fs.statSync(segFile(dir, 0)).size;
    const big = { value: 'x'.repeat(1000) };
    expect(encodedRecordBytes(big)).toBeGreaterThan(1000);
    const justFits = { value: 'y'.repeat(1000 - 22) };
    expect(encodedRecordBytes(justFits)).toBe(1000);
    await expectCode(log.appendOne(big), 'SPOOL_ERR_RECORD_TOO_LARGE');
    await expectCode(log.append([{ value: 'ok' }, big]), 'SPOOL_ERR_RECORD_TOO_LARGE');
    await expectCode(log.appendOne({ value: 'v', headers: { h: 'z'.repeat(1000) } }), 'SPOOL_ERR_RECORD_TOO_LARGE');
    await expectCode(log.append(Array.from({ length: 6 }, () => justFits)), 'SPOOL_ERR_BATCH_TOO_LARGE');
    expect(log.endOffset).toBe(1);
    expect(fs.statSync(segFile(dir, 0)).size).toBe(sizeBefore);
    expect(await log.appendOne(justFits)).toBe(1);
    expect(await log.append(Array.from({ length: 4 }, () => justFits))).toEqual({ baseOffset: 2, lastOffset: 5, count: 4 });
    const all = await readAll(log);
    expect(all.map((r) => r.value.length)).toEqual([5, 978, 978, 978, 978, 978]);
    await log.close();
  });
});

describe('size limits with short strings (sized by a bound, judged on the exact size)', () => {
  it('accepts a record or batch whose exact size fits though its bound does not, and refuses one byte more', async () => {
    // Proves the log's limits use the exact UTF-8 size: short string keys and values are first sized by a 3-bytes-a-unit bound, which must never refuse an append that fits.
    const dir = tmpDir();
    const { log } = await Log.open(dir, { recordBytesMax: 100, batchBytesMax: 1000 });
    const fits = { key: 'k'.repeat(30), value: 'v'.repeat(48) };
    expect(encodedRecordBytes(fits)).toBe(100);
    expect(recordBytesBound(fits)).toBeGreaterThan(100);
    expect(await log.appendOne(fits)).toBe(0);
    await expectCode(log.appendOne({ key: fits.key, value: 'v'.repeat(49) }), 'SPOOL_ERR_RECORD_TOO_LARGE');
    const n = Math.floor((1000 - BATCH_HEADER_BYTES) / 100);
    expect(n * recordBytesBound(fits) + BATCH_HEADER_BYTES).toBeGreaterThan(1000);
    expect(await log.append(Array.from({ length: n }, () => fits))).toEqual({ baseOffset: 1, lastOffset: n, count: n });
    await expectCode(log.append(Array.from({ length: n + 1 }, () => fits)), 'SPOOL_ERR_BATCH_TOO_LARGE');
    const all = await readAll(log);
    expect(all.length).toBe(n + 1);
    expect(all.every((r) => r.key?.toString() === fits.key && r.value.toString() === fits.value)).toBe(true);
    await log.close();
  });
});

describe('offsetForTime', () => {
  it('matches brute force with non-monotonic explicit timestamps, across segments, after reopen and retention', async () => {
    // Proves the time index answers "first offset with timestamp >= t": every timestamp ±1 is checked against a linear scan.
    const dir = tmpDir();
    const opts: LogOptions = { segmentBytesMax: 2048, indexIntervalBytes: 200 };
    let { log } = await Log.open(dir, opts);
    const rng = seededRandom(4242);
    const ts: number[] = [];
    const base = 1_700_000_000_000;
    while (ts.length < 400) {
      const k = 1 + Math.floor(rng() * 6);
      const recs = Array.from({ length: k }, () => {
        const t = base + ts.length * 10 + Math.floor(rng() * 600) - 300 + (rng() < 0.05 ? -5000 : 0);
        ts.push(t);
        return { value: `t${t}`, timestamp: t };
      });
      await log.append(recs);
    }
    expect(segmentBases(dir).length).toBeGreaterThan(4);
    const brute = (t: number, start: number) => {
      for (let i = start; i < ts.length; i++) if ((ts[i] as number) >= t) return i;
      return ts.length;
    };
    const probes = [...new Set(ts.flatMap((t) => [t - 1, t, t + 1]))].concat([base - 1e6, base + 1e7, Number.MIN_SAFE_INTEGER]);
    const check = async (label: string) => {
      const start = log.startOffset;
      for (const t of probes) expect(await log.offsetForTime(t), `${label}: offsetForTime(${t})`).toBe(brute(t, start));
      const all = await readAll(log);
      all.forEach((r) => expect(r.timestamp).toBe(ts[r.offset]));
    };
    await check('live');
    await log.close();
    ({ log } = await Log.open(dir, opts));
    await check('after reopen');
    const deleted = await log.deleteBefore(150);
    expect(deleted).toBeGreaterThan(0);
    await check('after retention');
    await log.close();
  });
});

describe('retention', () => {
  async function populated(options: LogOptions = {}) {
    const dir = tmpDir();
    const opts = { segmentBytesMax: 1024, ...options };
    const { log } = await Log.open(dir, opts);
    await fill(log, 200);
    const bases = segmentBases(dir);
    expect(bases.length).toBeGreaterThan(6);
    return { dir, opts, log, bases };
  }

  function expectFilesGone(dir: string, base: number): void {
    for (const suffix of ['.log', '.index', '.timeindex']) expect(fs.existsSync(segFile(dir, base, suffix)), `${base}${suffix}`).toBe(false);
  }

  async function expectReopens(dir: string, opts: LogOptions, start: number, end: number): Promise<void> {
    const { log } = await Log.open(dir, opts);
    expect(log.startOffset).toBe(start);
    expect(log.endOffset).toBe(end);
    const all = await readAll(log);
    expect(all.length).toBe(end - start);
    expectValues(all, start);
    expect((await log.verify()).ok).toBe(true);
    await log.close();
  }

  it('deleteBefore removes only whole sealed segments below the offset', async () => {
    // Proves deleteBefore: segments entirely below the offset go (files too), the one containing it stays, startOffset moves, reopen works.
    const { dir, opts, log, bases } = await populated();
    const target = (bases[3] as number) + 1; // inside segment 3
    expect(await log.deleteBefore(target)).toBe(3);
    expect(log.startOffset).toBe(bases[3]);
    for (const b of bases.slice(0, 3)) expectFilesGone(dir, b);
    expect(segmentBases(dir)).toEqual(bases.slice(3));
    expect(await log.deleteBefore(target)).toBe(0);
    expect(await log.deleteBefore(bases[4] as number)).toBe(1); // nextOffset == offset counts as below
    expectValues(await readAll(log), bases[4] as number);
    // Never the active segment, even when every offset is below the cut.
    const activeBase = bases[bases.length - 1] as number;
    expect(await log.deleteBefore(1e12)).toBe(bases.length - 5);
    expect(log.startOffset).toBe(activeBase);
    expect(log.endOffset).toBe(200);
    expect(segmentBases(dir)).toEqual([activeBase]);
    expect(await log.appendOne({ value: valueFor(200), key: `k200` })).toBe(200);
    await log.close();
    await expectReopens(dir, opts, activeBase, 201);
  });

  it('deleteOlderThan uses the clock and each segment’s newest timestamp', async () => {
    // Proves age retention with a fake clock: exactly the oldest prefix of sealed segments whose max timestamp < now - age goes.
    let t = 1_000_000;
    const clock = { now: () => t };
    const dir = tmpDir();
    const opts: LogOptions = { segmentBytesMax: 1024, clock };
    const { log } = await Log.open(dir, opts);
    const tsOf: number[] = [];
    for (let i = 0; i < 150; i++) {
      t += 10;
      tsOf.push(t);
      await log.appendOne({ value: valueFor(i), key: i % 3 === 0 ? null : `k${i}` });
    }
    const bases = segmentBases(dir);
    expect(bases.length).toBeGreaterThan(4);
    const all = await readAll(log);
    all.forEach((r) => expect(r.timestamp).toBe(tsOf[r.offset]));
    const maxTs = (s: number) => tsOf[(bases[s + 1] as number) - 1] as number;
    // Cut exactly at segment 2's newest record: segments 0 and 1 are older, segment 2 is not (strictly older only).
    t = 5_000_000;
    expect(await log.deleteOlderThan(t - maxTs(2))).toBe(2);
    expect(log.startOffset).toBe(bases[2]);
    expect(await log.deleteOlderThan(t - maxTs(2) - 1)).toBe(1);
    expect(log.startOffset).toBe(bases[3]);
    for (const b of bases.slice(0, 3)) expectFilesGone(dir, b);
    expect(await log.deleteOlderThan(1e12)).toBe(0);
    expect(await log.deleteOlderThan(0)).toBe(bases.length - 4);
    expect(log.stats().segments).toBe(1);
    expect(log.startOffset).toBe(bases[bases.length - 1]);
    await log.close();
    await expectReopens(dir, opts, bases[bases.length - 1] as number, 150);
  });

  it('deleteToSize deletes the fewest oldest segments that bring the log under the size', async () => {
    // Proves size retention against a model computed from the files' sizes; the active segment always stays.
    // The active segment counts with its logical size: its preallocated zero tail holds no records.
    const { dir, opts, log, bases } = await populated();
    const sizes = bases.map((b, i) => (i === bases.length - 1 ? log.stats().activeSegmentBytes : fs.statSync(segFile(dir, b)).size));
    const total = sizes.reduce((a, b) => a + b, 0);
    const limit = total - (sizes[0] as number) - (sizes[1] as number); // exactly two segments must go
    expect(await log.deleteToSize(limit)).toBe(2);
    expect(log.startOffset).toBe(bases[2]);
    expect(await log.deleteToSize(limit)).toBe(0);
    expect(await log.deleteToSize(limit - 1)).toBe(1);
    for (const b of bases.slice(0, 3)) expectFilesGone(dir, b);
    expect(await log.deleteToSize(0)).toBe(bases.length - 4);
    expect(segmentBases(dir)).toEqual([bases[bases.length - 1]]);
    expect(log.endOffset).toBe(200);
    await log.close();
    await expectReopens(dir, opts, bases[bases.length - 1] as number, 200);
  });
});

describe('recovery', () => {
  it('a clean close lets the next open start at the checkpoint (nothing rescanned)', async () => {
    // Proves the checkpoint fast path: after close(), open reports checkpointUsed and scans 0 bytes, and all data is there.
    const dir = tmpDir();
    const opts = { segmentBytesMax: 2048 };
    const first = await Log.open(dir, opts);
    expect(first.recovery.created).toBe(true);
    await fill(first.log, 120);
    await first.log.close();
    const { log, recovery } = await Log.open(dir, opts);
    expect(recovery.created).toBe(false);
    expect(recovery.checkpointUsed).toBe(true);
    expect(recovery.checkpointIgnored).toBeNull();
    expect(recovery.scannedBytes).toBe(0);
    expect(recovery.truncatedBytes).toBe(0);
    expect(recovery.rebuiltIndexes).toEqual([]);
    expect(recovery.segments).toBe(segmentBases(dir).length);
    expect(log.endOffset).toBe(120);
    expectValues(await readAll(log), 0);
    await log.close();
  });

  it('an unclean open (first instance abandoned) rescans only the active segment', async () => {
    // Proves crash recovery cost: without close(), reopening scans exactly the active segment's bytes, not the sealed ones.
    const dir = tmpDir();
    const opts = { segmentBytesMax: 2048 };
    const first = await Log.open(dir, opts);
    await fill(first.log, 150);
    const bases = segmentBases(dir);
    expect(bases.length).toBeGreaterThan(3);
    const activeSize = first.log.stats().activeSegmentBytes;
    const fileSize = fs.statSync(segFile(dir, bases[bases.length - 1] as number)).size;
    expect(activeSize).toBeGreaterThan(SEGMENT_HEADER_BYTES);
    // `first` is abandoned: never closed, so neither its checkpoint nor the active segment's indexes were written.
    const { log, recovery } = await Log.open(dir, opts);
    // The roll's checkpoint (at the active segment's header) may be used; either way the scan covers exactly the active segment.
    expect(recovery.scannedBytes).toBe(activeSize - SEGMENT_HEADER_BYTES);
    expect(recovery.truncatedBytes).toBe(0);
    // The preallocated zeros after the last batch are kept as the end of the log, not cut.
    expect(recovery.zeroTailBytes).toBe(fileSize - activeSize);
    expect(recovery.rebuiltIndexes).toEqual([]);
    expect(log.endOffset).toBe(150);
    expectValues(await readAll(log), 0);
    expect((await log.verify()).ok).toBe(true);
    await log.close();
  });

  it('a copy taken while open rescans only what was appended after the last checkpoint', async () => {
    // Proves the checkpoint bounds recovery: close, reopen, append more, copy the live dir; the copy scans just the new bytes.
    const dir = tmpDir();
    const opts = { segmentBytesMax: 1024 * 1024 };
    const a = await Log.open(dir, opts);
    await fill(a.log, 50);
    await a.log.close();
    const b = await Log.open(dir, opts);
    expect(b.recovery.checkpointUsed).toBe(true);
    const sizeAtCheckpoint = fs.statSync(segFile(dir, 0)).size;
    expect(sizeAtCheckpoint, 'close() cut the preallocated tail').toBe(b.log.stats().activeSegmentBytes);
    await fill(b.log, 30, 50);
    const copy = path.join(path.dirname(dir), 'copy');
    fs.cpSync(dir, copy, { recursive: true });
    const sizeNow = b.log.stats().activeSegmentBytes;
    const c = await Log.open(copy, opts);
    expect(c.recovery.checkpointUsed).toBe(true);
    expect(c.recovery.scannedBytes).toBe(sizeNow - sizeAtCheckpoint);
    expect(c.recovery.zeroTailBytes).toBe(fs.statSync(segFile(copy, 0)).size - sizeNow);
    expect(c.log.endOffset).toBe(80);
    expectValues(await readAll(c.log), 0);
    await c.log.close();
    await b.log.close();
  });

  it('rebuilds missing index files of sealed segments on open', async () => {
    // Proves derived data is regenerated: delete a sealed segment's index files, reopen, rebuiltIndexes names them and they exist again.
    const dir = tmpDir();
    const opts = { segmentBytesMax: 1024, indexIntervalBytes: 128 };
    const a = await Log.open(dir, opts);
    await fill(a.log, 120);
    await a.log.close();
    const bases = segmentBases(dir);
    const b1 = bases[1] as number;
    const b2 = bases[2] as number;
    const want = {
      off: fs.readFileSync(segFile(dir, b1, '.index')),
      time: fs.readFileSync(segFile(dir, b1, '.timeindex')),
    };
    fs.unlinkSync(segFile(dir, b1, '.index'));
    fs.unlinkSync(segFile(dir, b1, '.timeindex'));
    fs.unlinkSync(segFile(dir, b2, '.timeindex'));
    const { log, recovery } = await Log.open(dir, opts);
    const name = (b: number, s: string) => path.basename(segFile(dir, b, s));
    expect([...recovery.rebuiltIndexes].sort()).toEqual([name(b1, '.index'), name(b1, '.timeindex'), name(b2, '.index'), name(b2, '.timeindex')].sort());
    expect(fs.readFileSync(segFile(dir, b1, '.index'))).toEqual(want.off);
    expect(fs.readFileSync(segFile(dir, b1, '.timeindex'))).toEqual(want.time);
    expect(fs.existsSync(segFile(dir, b2, '.timeindex'))).toBe(true);
    expectValues(await readAll(log), 0);
    expect((await log.verify()).ok).toBe(true);
    await log.close();
  });

  it('rebuilds damaged (garbage) index files on first read of their segment', async () => {
    // Proves damaged indexes are never trusted: verify flags them, the first read rebuilds them (stats().indexesRebuilt), data stays correct.
    const dir = tmpDir();
    const opts = { segmentBytesMax: 1024, indexIntervalBytes: 128 };
    const a = await Log.open(dir, opts);
    await fill(a.log, 120);
    await a.log.close();
    const bases = segmentBases(dir);
    const b2 = bases[2] as number;
    const good = fs.readFileSync(segFile(dir, b2, '.index'));
    const g = seededRandom(77);
    fs.writeFileSync(segFile(dir, b2, '.index'), Buffer.from(Array.from({ length: good.length }, () => Math.floor(g() * 256))));
    const { log, recovery } = await Log.open(dir, opts);
    expect(recovery.rebuiltIndexes).toEqual([]);
    expect(log.stats().indexesRebuilt).toBe(0);
    const v = await log.verify();
    expect(v.ok).toBe(false);
    expect(v.badIndexes).toContain(path.basename(segFile(dir, b2, '.index')));
    expect(v.badRanges).toEqual([]);
    const from = b2 + 1;
    expectValues(await log.read(from), from);
    expect(log.stats().indexesRebuilt).toBe(1);
    expect(fs.readFileSync(segFile(dir, b2, '.index'))).toEqual(good);
    const size = fs.statSync(segFile(dir, b2)).size;
    expect(SegmentIndex.decode(fs.readFileSync(segFile(dir, b2, '.index')), fs.readFileSync(segFile(dir, b2, '.timeindex')), b2, size)).not.toBeNull();
    expect((await log.verify()).ok).toBe(true);
    expectValues(await readAll(log), 0);
    await log.close();
  });
});

describe('opening', () => {
  it('refuses a directory that is not a log with SPOOL_ERR_NOT_A_LOG and leaves it untouched', async () => {
    // Proves foreign directories are never adopted: unrelated files, a stray index, a bad checkpoint, a plain file.
    const dir = tmpDir();
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'hello');
    await expectCode(Log.open(dir), 'SPOOL_ERR_NOT_A_LOG');
    expect(fs.readdirSync(dir)).toEqual(['notes.txt']);

    const dir2 = tmpDir();
    fs.mkdirSync(dir2);
    fs.writeFileSync(path.join(dir2, '00000000000000000000.index'), 'x');
    await expectCode(Log.open(dir2), 'SPOOL_ERR_NOT_A_LOG');

    const dir3 = tmpDir();
    fs.mkdirSync(dir3);
    fs.writeFileSync(path.join(dir3, CHECKPOINT_FILE), Buffer.alloc(48, 7));
    await expectCode(Log.open(dir3), 'SPOOL_ERR_NOT_A_LOG');

    const dir4 = tmpDir();
    fs.mkdirSync(dir4);
    fs.writeFileSync(path.join(dir4, '00000000000000000000.log'), Buffer.alloc(64, 0x41));
    await expectCode(Log.open(dir4), 'SPOOL_ERR_NOT_A_LOG');
    expect(fs.readFileSync(path.join(dir4, '00000000000000000000.log'))).toEqual(Buffer.alloc(64, 0x41));

    const file = tmpDir();
    fs.writeFileSync(file, 'plain file');
    await expectCode(Log.open(file), 'SPOOL_ERR_NOT_A_LOG');
  });

  it('refuses an unknown format version with SPOOL_ERR_UNKNOWN_VERSION (checkpoint or segment header)', async () => {
    // Proves version gating: patch the checkpoint version byte (CRC recomputed) or the active segment's version byte.
    const dir = tmpDir();
    const a = await Log.open(dir);
    await a.log.appendOne({ value: 'v' });
    await a.log.close();
    const cpPath = path.join(dir, CHECKPOINT_FILE);
    const cp = fs.readFileSync(cpPath);
    const patched = Buffer.from(cp);
    patched[8] = 2;
    patched.writeUInt32LE(crc32(patched.subarray(8)), 4);
    fs.writeFileSync(cpPath, patched);
    const err = await expectCode(Log.open(dir), 'SPOOL_ERR_UNKNOWN_VERSION');
    expect(err.message).toMatch(/version 2/);
    fs.writeFileSync(cpPath, cp);
    const seg = segFile(dir, 0);
    const bytes = fs.readFileSync(seg);
    bytes[4] = 9;
    fs.writeFileSync(seg, bytes);
    await expectCode(Log.open(dir), 'SPOOL_ERR_UNKNOWN_VERSION');
  });

  it('`create: false` on a missing directory → SPOOL_ERR_NOT_A_LOG, nothing created', async () => {
    // Proves create:false never creates: the directory still does not exist afterwards.
    const dir = tmpDir();
    await expectCode(Log.open(dir, { create: false }), 'SPOOL_ERR_NOT_A_LOG');
    expect(fs.existsSync(dir)).toBe(false);
  });
});

describe('lifecycle', () => {
  it('rejects every call after close with SPOOL_ERR_CLOSED; appends in flight at close still land', async () => {
    // Proves close waits for pending appends, then append/appendOne/read/offsetForTime/verify/retention all fail CLOSED.
    const dir = tmpDir();
    const { log } = await Log.open(dir);
    const pending = Array.from({ length: 20 }, (_, i) => log.appendOne({ value: `p${i}` }));
    await log.close();
    expect((await Promise.all(pending)).sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    await expectCode(log.appendOne({ value: 'late' }), 'SPOOL_ERR_CLOSED');
    await expectCode(log.append([{ value: 'late' }]), 'SPOOL_ERR_CLOSED');
    await expectCode(log.read(0), 'SPOOL_ERR_CLOSED');
    await expectCode(log.offsetForTime(0), 'SPOOL_ERR_CLOSED');
    await expectCode(log.verify(), 'SPOOL_ERR_CLOSED');
    await expectCode(log.deleteBefore(10), 'SPOOL_ERR_CLOSED');
    await log.close(); // idempotent
    const again = await Log.open(dir);
    expect(again.log.endOffset).toBe(20);
    await again.log.close();
  });

  it('onAppend fires after each flush with the new endOffset; unsubscribe stops it', async () => {
    // Proves the listener contract: values are the durable endOffset at call time, increasing, ending at the final endOffset.
    const { log } = await Log.open(tmpDir());
    const seen: number[] = [];
    const off = log.onAppend((end) => {
      expect(end).toBe(log.endOffset);
      seen.push(end);
    });
    await log.appendOne({ value: 'a' });
    expect(seen).toEqual([1]);
    await log.append([{ value: 'b' }, { value: 'c' }]);
    expect(seen).toEqual([1, 3]);
    await Promise.all(Array.from({ length: 50 }, (_, i) => log.appendOne({ value: `m${i}` })));
    expect(seen[seen.length - 1]).toBe(53);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
    const count = seen.length;
    off();
    await log.appendOne({ value: 'z' });
    expect(seen.length).toBe(count);
    await log.close();
  });
});

describe('group commit', () => {
  it('1,000 concurrent appendOne get dense unique offsets and share a handful of fsyncs', async () => {
    // Proves group commit on FaultyStorage: offsets are exactly 0..999, each value lands at its offset, and syncCount grows far less than 1,000.
    const storage = new FaultyStorage();
    storage.mkdirRaw('/data');
    const { log } = await Log.open('/data/q', { storage });
    const syncsBefore = storage.syncCount;
    const offsets = await Promise.all(Array.from({ length: 1000 }, (_, i) => log.appendOne({ value: `m${i}` })));
    const syncs = storage.syncCount - syncsBefore;
    expect([...offsets].sort((a, b) => a - b)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(syncs, `${syncs} fsyncs for 1000 appends`).toBeLessThanOrEqual(10);
    expect(log.stats().flushes).toBeLessThanOrEqual(10);
    const all = await readAll(log);
    expect(all.length).toBe(1000);
    offsets.forEach((o, i) => expect(all[o]?.value.toString()).toBe(`m${i}`));
    await log.close();
  });

  it('appends arriving while a flush is in flight join the next one', async () => {
    // Proves batching under a steady trickle: 1,000 appends issued across microtask turns still need far fewer fsyncs than appends.
    const storage = new FaultyStorage();
    storage.mkdirRaw('/data');
    const { log } = await Log.open('/data/q', { storage });
    const syncsBefore = storage.syncCount;
    const promises: Promise<number>[] = [];
    for (let i = 0; i < 1000; i++) {
      promises.push(log.appendOne({ value: `t${i}` }));
      if (i % 10 === 0) await Promise.resolve();
    }
    const offsets = await Promise.all(promises);
    expect(new Set(offsets).size).toBe(1000);
    expect(Math.max(...offsets)).toBe(999);
    // Issued in order, so offsets are in issue order.
    expect(offsets).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    const syncs = storage.syncCount - syncsBefore;
    expect(syncs, `${syncs} fsyncs for 1000 appends`).toBeLessThan(100);
    await log.close();
  });
});
