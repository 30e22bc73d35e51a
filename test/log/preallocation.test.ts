// Proves preallocation of the active segment (docs/format.md "Preallocation", docs/recovery.md row
// "preallocated tail"): the writer extends the active segment ahead of its writes, every reader
// stops at the logical end rather than the file size, a zero tail is the end of the log and never
// records or corruption, and sealed or closed segments carry no zero tail.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Log, type LogOptions } from '../../src/log/index.js';
import { CorruptError } from '../../src/errors.js';
import { SEGMENT_HEADER_BYTES } from '../../src/log/format.js';
import { scanBatches } from '../../src/log/scan.js';
import { LogTail, verifyLogDirReadOnly } from '../../src/log/tail.js';
import { FaultyStorage, seededRandom } from '../support/faulty-storage.js';
import { TEST_CLOCK, idsOf, readWholeLog, recordFor } from '../support/log-oracle.js';

const roots: string[] = [];
afterAll(() => {
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});
function tmpDir(): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-prealloc-'));
  roots.push(root);
  return path.join(root, 'log');
}
function segments(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((n) => n.endsWith('.log'))
    .sort()
    .map((n) => path.join(dir, n));
}
const values = (rs: { value: Buffer }[]) => rs.map((r) => r.value.toString());

/** Where the valid batches of a segment file end, and whether anything but batches follows them. */
async function batchesEnd(storage: FaultyStorage | null, file: string): Promise<{ end: number; size: number; problem: string | null }> {
  const handle = storage === null ? await (await import('../../src/log/storage.js')).nodeStorage.open(file, 'read') : await storage.open(file, 'read');
  try {
    const size = await handle.size();
    const r = await scanBatches(handle, SEGMENT_HEADER_BYTES, size, 1 << 20, () => true);
    return { end: r.end, size, problem: r.problem?.kind ?? null };
  } finally {
    await handle.close();
  }
}

describe('the writer preallocates the active segment', () => {
  it('extends the active file past its logical end, and cuts the zeros at roll and close', async () => {
    // Fails if preallocation is dropped (file size == logical end while open), or if a sealed or
    // closed segment keeps its zero tail (the roll and close() must truncate to the last batch).
    const dir = tmpDir();
    const { log } = await Log.open(dir, { segmentBytesMax: 64 * 1024 });
    await log.appendOne({ value: 'first' });
    const active = segments(dir)[0] as string;
    expect(fs.statSync(active).size, 'the active segment is preallocated up to segmentBytesMax').toBe(64 * 1024);
    expect(log.stats().activeSegmentBytes).toBeLessThan(200);
    for (let i = 0; log.stats().segments < 3; i++) await log.append([{ value: `r${i}-`.padEnd(2000, 'x') }]);
    const [first, second, last] = segments(dir) as [string, string, string];
    for (const sealed of [first, second]) {
      const b = await batchesEnd(null, sealed);
      expect(b, `${path.basename(sealed)} is sealed: it must end at its last batch`).toEqual({ end: b.size, size: b.size, problem: null });
    }
    expect(fs.statSync(last).size).toBeGreaterThan(log.stats().activeSegmentBytes);
    const endOffset = log.endOffset;
    await log.close();
    const closed = await batchesEnd(null, last);
    expect(closed, 'close() cuts the active segment to its last batch').toEqual({ end: closed.size, size: closed.size, problem: null });
    const again = await Log.open(dir, { segmentBytesMax: 64 * 1024 });
    expect(again.recovery).toMatchObject({ checkpointUsed: true, scannedBytes: 0, truncatedBytes: 0, zeroTailBytes: 0 });
    expect(again.log.endOffset).toBe(endOffset);
    await again.log.close();
  });

  it('with preallocateBytes: 0 the file never runs ahead of the data (control)', async () => {
    // Fails if the option is ignored; shows the size checks above measure preallocation itself.
    const dir = tmpDir();
    const { log } = await Log.open(dir, { segmentBytesMax: 64 * 1024, preallocateBytes: 0 });
    await log.appendOne({ value: 'first' });
    expect(fs.statSync(segments(dir)[0] as string).size).toBe(log.stats().activeSegmentBytes);
    await log.close();
  });
});

describe('a zero tail is the end of the log', () => {
  it('after a crash, recovery keeps the zeros as preallocated space and reads every record', async () => {
    // Fails if zeros after the last batch are read as records, reported as corruption, or cut as a torn tail.
    const dir = tmpDir();
    const opts: LogOptions = { segmentBytesMax: 1024 * 1024 };
    const first = await Log.open(dir, opts);
    for (let i = 0; i < 50; i++) await first.log.appendOne({ value: `v${i}` });
    const logical = first.log.stats().activeSegmentBytes;
    const fileSize = fs.statSync(segments(dir)[0] as string).size;
    expect(fileSize).toBeGreaterThan(logical);
    // `first` is abandoned (a crash): the zero tail stays on disk.
    const { log, recovery } = await Log.open(dir, opts);
    expect(recovery).toMatchObject({ truncatedBytes: 0, truncatedAt: null, zeroTailBytes: fileSize - logical, lostRange: null });
    expect(values(await log.read(0, { maxRecords: 1000 }))).toEqual(Array.from({ length: 50 }, (_, i) => `v${i}`));
    expect(log.endOffset).toBe(50);
    const v = await log.verify();
    expect(v).toMatchObject({ ok: true, records: 50, badRanges: [] });
    // The next append overwrites the zeros right after the last batch.
    expect(await log.appendOne({ value: 'after' })).toBe(50);
    await log.close();
    const again = await Log.open(dir, opts);
    expect(values(await again.log.read(49))).toEqual(['v49', 'after']);
    await again.log.close();
  });

  it('a zero tail longer than the torn-write window is still the end, not something to cut', async () => {
    // Fails if the torn-tail window is measured to the file size: 48 MiB of zeros is beyond
    // flushBytesMax (36 MiB), which used to send recovery down the corruption path and cut them.
    const storage = new FaultyStorage();
    storage.mkdirRaw('/data');
    const opts: LogOptions = { storage, clock: TEST_CLOCK, segmentBytesMax: 128 * 1024 * 1024 };
    const { log } = await Log.open('/data/q', opts);
    for (let id = 1; id <= 20; id++) await log.appendOne(recordFor(id));
    const logical = log.stats().activeSegmentBytes;
    await log.close();
    const seg = '/data/q/00000000000000000000.log';
    const data = storage.readFileSync(seg);
    storage.writeFileRaw(seg, Buffer.concat([data, Buffer.alloc(48 * 1024 * 1024)]));
    const { log: again, recovery } = await Log.open('/data/q', opts);
    expect(recovery).toMatchObject({ truncatedBytes: 0, truncatedAt: null, zeroTailBytes: 48 * 1024 * 1024 });
    expect(again.stats().activeSegmentBytes).toBe(logical);
    expect(idsOf(await readWholeLog(again))).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect((await again.verify()).ok).toBe(true);
    await again.close();
  });

  it('garbage before the zeros is still a torn tail: cut, and counted apart from the zeros', async () => {
    // Fails if a non-zero tail were taken for preallocated space (kept), or the zeros were counted as cut data.
    const storage = new FaultyStorage();
    storage.mkdirRaw('/data');
    const opts: LogOptions = { storage, clock: TEST_CLOCK };
    const { log } = await Log.open('/data/q', opts);
    for (let id = 1; id <= 5; id++) await log.appendOne(recordFor(id));
    const logical = log.stats().activeSegmentBytes;
    await log.close();
    const seg = '/data/q/00000000000000000000.log';
    const garbage = Buffer.from([0x70, 0, 0, 0, 1, 2, 3, 4, 1, 1, 0, 0, 9, 9, 9]);
    storage.writeFileRaw(seg, Buffer.concat([storage.readFileSync(seg), garbage, Buffer.alloc(4096)]));
    const { log: again, recovery } = await Log.open('/data/q', opts);
    expect(recovery).toMatchObject({ truncatedBytes: garbage.length, zeroTailBytes: 4096, truncatedAt: { position: logical } });
    expect(storage.readFileSync(seg).length).toBe(logical);
    expect(idsOf(await readWholeLog(again))).toEqual([1, 2, 3, 4, 5]);
    await again.close();
  });

  it('the torn-write window ends at the last non-zero byte, not at the end of a long zero tail', async () => {
    // Fails if the window is measured to the file size: a torn flush followed by one more valid
    // (unacknowledged) batch is a torn tail, but 40 MiB of zeros after it would push it out of the
    // 36 MiB window and make recovery refuse to open as if acknowledged data were damaged.
    const storage = new FaultyStorage();
    storage.mkdirRaw('/data');
    const opts: LogOptions = { storage, clock: TEST_CLOCK, preallocateBytes: 0 };
    const { log } = await Log.open('/data/q', opts);
    const ends: number[] = [];
    for (let id = 1; id <= 7; id++) {
      await log.appendOne(recordFor(id));
      ends.push(log.stats().activeSegmentBytes);
    }
    storage.crashClean(); // no close: no checkpoint past the header, so the whole segment is scanned
    const seg = '/data/q/00000000000000000000.log';
    const file = storage.readFileSync(seg);
    const end5 = ends[4] as number;
    file[end5 + 30] = (file[end5 + 30] as number) ^ 0x10; // batch 6 torn; batch 7 intact after it
    storage.writeFileRaw(seg, Buffer.concat([file, Buffer.alloc(40 * 1024 * 1024)]));
    const { log: again, recovery } = await Log.open('/data/q', opts);
    expect(recovery).toMatchObject({ truncatedAt: { position: end5 }, truncatedBytes: (ends[6] as number) - end5, zeroTailBytes: 40 * 1024 * 1024, lostRange: null });
    expect(idsOf(await readWholeLog(again))).toEqual([1, 2, 3, 4, 5]);
    await again.close();
  });

  it('zeros over acknowledged data with valid batches behind them are still corruption', async () => {
    // Fails if "zeros" were accepted as the end when non-zero, valid data follows beyond the window.
    const storage = new FaultyStorage();
    storage.mkdirRaw('/data');
    const opts: LogOptions = { storage, clock: TEST_CLOCK, segmentBytesMax: 512 * 1024 * 1024, recordBytesMax: 64 * 1024, batchBytesMax: 2 * 1024 * 1024 };
    const { log } = await Log.open('/data/q', opts);
    for (let a = 0; a < 24; a++) await log.append(Array.from({ length: 100 }, () => ({ value: Buffer.alloc(10_000, 7) })));
    // A crash, not a close: no close-time checkpoint, so recovery scans the whole active segment.
    storage.crashClean();
    const seg = '/data/q/00000000000000000000.log';
    const file = storage.readFileSync(seg);
    expect(file.length, 'the writer left a preallocated zero tail').toBeGreaterThan(24 * 1_000_000 + 1024 * 1024);
    // Zero the header of batch 2 of 24 (each ~1 MB): ~22 MB of valid batches follow, beyond the 20 MiB window.
    const batch1 = file.readUInt32LE(SEGMENT_HEADER_BYTES);
    const at = SEGMENT_HEADER_BYTES + 2 * batch1;
    file.fill(0, at, at + 4096);
    storage.writeFileRaw(seg, file);
    let outcome: string;
    try {
      const opened = await Log.open('/data/q', opts);
      outcome = `opened: ${JSON.stringify(opened.recovery)}`;
    } catch (err) {
      outcome = err instanceof CorruptError ? `CorruptError at ${err.position}` : String(err);
    }
    expect(outcome).toBe(`CorruptError at ${at}`);
  });
});

describe('readers outside the writer stop at the logical end', () => {
  it('read-only verify of a live, preallocated log reports no torn tail', async () => {
    // Fails if the zero tail is reported as a torn tail (it is preallocated space, not a write in flight).
    const dir = tmpDir();
    const { log } = await Log.open(dir, { segmentBytesMax: 1024 * 1024 });
    try {
      for (let i = 0; i < 20; i++) await log.append([{ value: `v${i}` }]);
      expect(fs.statSync(segments(dir)[0] as string).size).toBeGreaterThan(log.stats().activeSegmentBytes);
      const report = await verifyLogDirReadOnly(dir);
      expect(report).toMatchObject({ ok: true, records: 20, badRanges: [], tornTail: null });
    } finally {
      await log.close();
    }
  });

  it('tail stops at the first zero header, waits out a half-written batch, then reads it', async () => {
    // Fails if the follower reads zeros as records, reports them or a half-written batch as a
    // problem, skips the half-written batch, or misses batches that land later.
    const dir = tmpDir();
    const { log } = await Log.open(dir, { segmentBytesMax: 1024 * 1024, clock: TEST_CLOCK });
    // The next batch, built in a scratch log with the same clock and offsets.
    const scratchDir = tmpDir();
    const { log: scratch } = await Log.open(scratchDir, { preallocateBytes: 0, clock: TEST_CLOCK });
    try {
      for (let i = 0; i < 3; i++) {
        await log.appendOne({ value: `v${i}` });
        await scratch.appendOne({ value: `v${i}` });
      }
      const end = log.stats().activeSegmentBytes;
      await scratch.appendOne({ value: 'late-'.padEnd(3000, 'z') });
      const batch = fs.readFileSync(segments(scratchDir)[0] as string).subarray(end);
      expect(batch.length).toBeGreaterThan(3000);

      const tail = await LogTail.open(dir, 'earliest');
      tail.stuckLimitMs = 0; // no grace period: only the bytes decide
      const problems: unknown[] = [];
      const onProblem = (p: unknown) => void problems.push(p);
      expect(values(await tail.poll(10_000, onProblem))).toEqual(['v0', 'v1', 'v2']);
      expect(await tail.poll(10_000, onProblem)).toEqual([]);

      // A write the follower overtakes: the header and part of the body are there, the rest is still zeros.
      const seg = segments(dir)[0] as string;
      const fd = fs.openSync(seg, 'r+');
      try {
        fs.writeSync(fd, batch, 0, 1500, end);
        for (let i = 0; i < 3; i++) expect(await tail.poll(10_000, onProblem)).toEqual([]);
        fs.writeSync(fd, batch, 1500, batch.length - 1500, end + 1500);
      } finally {
        fs.closeSync(fd);
      }
      const got = await tail.poll(10_000, onProblem);
      expect(values(got).map((v) => v.slice(0, 5))).toEqual(['late-']);
      expect(tail.nextOffset).toBe(4);
      expect(problems).toEqual([]);
      await tail.close();
    } finally {
      await scratch.close();
      await log.close();
    }
  });

  it('tail follows a live log whose appends land in preallocated space', async () => {
    // Fails if the follower stops for good at the zero tail instead of picking up new batches.
    const dir = tmpDir();
    const { log } = await Log.open(dir, { segmentBytesMax: 1024 * 1024 });
    try {
      await log.appendOne({ value: 'a' });
      const tail = await LogTail.open(dir, 'earliest');
      const problems: unknown[] = [];
      expect(values(await tail.poll(10_000, (p) => problems.push(p)))).toEqual(['a']);
      for (const v of ['b', 'c', 'd']) {
        await log.appendOne({ value: v });
        expect(values(await tail.poll(10_000, (p) => problems.push(p)))).toEqual([v]);
      }
      expect(problems).toEqual([]);
      await tail.close();
    } finally {
      await log.close();
    }
  });
});

describe('FaultyStorage models preallocation', () => {
  it('extends sparsely: zeros, no space used until written, and a crash may leave either size', async () => {
    // Fails if the model's extension takes space (a write into it could never hit ENOSPC) or if
    // an unsynced size change always survived or always vanished in a crash.
    const outcomes = new Set<number>();
    for (let seed = 1; seed <= 40; seed++) {
      const storage = new FaultyStorage();
      storage.mkdirRaw('/d');
      const f = await storage.open('/d/f', 'create');
      await f.writev([Buffer.from('abc')], 0);
      await f.sync();
      await storage.syncDir('/d');
      const used = storage.totalBytes;
      await f.truncate(1000);
      expect(storage.totalBytes, 'an extension is sparse').toBe(used);
      expect(storage.readFileSync('/d/f').subarray(3).every((b) => b === 0)).toBe(true);
      storage.diskLimitBytes = used + 10;
      await expect(f.writev([Buffer.alloc(20, 1)], 3)).rejects.toMatchObject({ code: 'ENOSPC' });
      storage.diskLimitBytes = Infinity;
      storage.crash(seededRandom(seed));
      outcomes.add(storage.readFileSync('/d/f').length);
    }
    expect([...outcomes].sort((a, b) => a - b)).toEqual([3, 1000]);
  });
});
