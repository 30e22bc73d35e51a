/**
 * Write-path failures, injected with FaultyStorage: EIO on write and fsync, ENOSPC, a rollback that
 * itself fails (read-only log), failures while rolling to a new segment, and an append the encoder
 * cannot encode. Each test states the promise it checks; all of them also check that the records
 * acknowledged before (and after) the failure are intact, dense and verified, also across a
 * power cut and reopen.
 */
import { describe, it, expect } from 'vitest';
import { Log } from '../../src/log/log.js';
import { SpoolError } from '../../src/errors.js';
import { SEGMENT_SUFFIX, segmentFileName } from '../../src/log/format.js';
import { type RecordInput, encodedRecordBytes } from '../../src/log/record-batch.js';
import { FaultyStorage, seededRandom } from '../support/faulty-storage.js';
import { TEST_CLOCK, idsOf, readWholeLog, recordFor } from '../support/log-oracle.js';

const DIR = '/data/q';

interface Setup {
  storage: FaultyStorage;
  log: Log;
}

async function openLog(storage: FaultyStorage, segmentBytesMax = 64 * 1024): Promise<Log> {
  const { log } = await Log.open(DIR, { storage, clock: TEST_CLOCK, segmentBytesMax, indexIntervalBytes: 256 });
  return log;
}

async function setup(segmentBytesMax?: number): Promise<Setup> {
  const storage = new FaultyStorage();
  storage.mkdirRaw('/data');
  return { storage, log: await openLog(storage, segmentBytesMax) };
}

/** Appends ids one by one, checking each gets the next offset. */
async function confirm(log: Log, ids: number[]): Promise<void> {
  for (const id of ids) {
    const expected = log.endOffset;
    expect(await log.appendOne(recordFor(id))).toBe(expected);
  }
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

/** The ids in the log, in offset order; readWholeLog checks density, idsOf checks every byte. */
async function contents(log: Log): Promise<number[]> {
  return idsOf(await readWholeLog(log, seededRandom(7)));
}

async function rejection(p: Promise<unknown>): Promise<SpoolError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  if (err === null) throw new Error('expected the append to reject, it resolved');
  expect(err).toBeInstanceOf(SpoolError);
  return err as SpoolError;
}

async function expectRetriable(p: Promise<unknown>, code: 'SPOOL_ERR_IO' | 'SPOOL_ERR_DISK_FULL'): Promise<void> {
  const err = await rejection(p);
  expect(err.code, err.message).toBe(code);
  expect(err.retriable).toBe(true);
}

async function expectVerified(log: Log): Promise<void> {
  const v = await log.verify();
  expect(v.badRanges).toEqual([]);
  expect(v.badIndexes).toEqual([]);
  expect(v.ok).toBe(true);
  expect(v.records).toBe(log.endOffset - log.startOffset);
}

/**
 * A segment's bytes up to its last non-zero byte: what was written, without the zero tail the log
 * may have preallocated (docs/format.md "Preallocation"), so "nothing partial is left" is checked
 * whether the rollback cut the file to its durable end or left preallocated zeros behind it.
 */
function writtenBytes(file: Buffer): Buffer {
  let end = file.length;
  while (end > 0 && file[end - 1] === 0) end--;
  return file.subarray(0, end);
}

function segmentPaths(storage: FaultyStorage): string[] {
  return storage.listFiles().filter((f) => f.endsWith(SEGMENT_SUFFIX));
}

function activeSegment(storage: FaultyStorage): string {
  return segmentPaths(storage).pop() as string;
}

/** Power cut (tearing whatever is unsynced), then reopen: the log must hold exactly `expected` and verify. */
async function crashAndReopen(storage: FaultyStorage, expected: number[], seed = 1, segmentBytesMax?: number): Promise<Log> {
  storage.clearFaults();
  storage.crash(seededRandom(seed));
  const log = await openLog(storage, segmentBytesMax);
  expect(await contents(log)).toEqual(expected);
  await expectVerified(log);
  return log;
}

/** Records (ids from `firstId`) that together are bigger than `bytes`: appending them forces a roll. */
function recordsOver(bytes: number, firstId: number): { records: RecordInput[]; ids: number[] } {
  const records: RecordInput[] = [];
  const ids: number[] = [];
  let total = 0;
  for (let id = firstId; total <= bytes; id++) {
    const r = recordFor(id);
    records.push(r);
    ids.push(id);
    total += encodedRecordBytes(r);
  }
  return { records, ids };
}

describe('EIO on write (a)', () => {
  it('rejects every append of the failing flush, leaves no gap, keeps earlier data', async () => {
    // Proves: one failed writev rejects all appends sharing that flush with retriable SPOOL_ERR_IO,
    // cuts nothing durable, and the next appends reuse the offsets the failed ones never got.
    const { storage, log } = await setup();
    await confirm(log, range(1, 5));
    const seg = activeSegment(storage);
    const dataBefore = writtenBytes(storage.readFileSync(seg));
    storage.failNext('write', 'EIO');
    // Issued in one tick, so they share one flush.
    const failed = [log.appendOne(recordFor(6)), log.append([recordFor(7), recordFor(8)]), log.appendOne(recordFor(9))];
    for (const p of failed) await expectRetriable(p, 'SPOOL_ERR_IO');
    expect(log.endOffset).toBe(5);
    expect(writtenBytes(storage.readFileSync(seg))).toEqual(dataBefore);
    expect(writtenBytes(storage.readDurableSync(seg))).toEqual(dataBefore);

    expect(await log.append([recordFor(10), recordFor(11)])).toEqual({ baseOffset: 5, lastOffset: 6, count: 2 });
    expect(await log.appendOne(recordFor(12))).toBe(7);
    const expected = [1, 2, 3, 4, 5, 10, 11, 12];
    expect(await contents(log)).toEqual(expected);
    await expectVerified(log);
    await log.close();
    const again = await crashAndReopen(storage, expected);
    expect(await again.appendOne(recordFor(13))).toBe(8);
    await again.close();
  });

  it('does not drag down appends that queued behind the failing flush', async () => {
    // Proves: an append made while a failing flush is in flight joins the next flush and succeeds,
    // at the offset the failed flush would have used (no gap).
    const { storage, log } = await setup();
    await confirm(log, range(1, 3));
    let late: Promise<number> | null = null;
    storage.setFailPredicate((op, p) => {
      if (op !== 'write' || !p.endsWith(SEGMENT_SUFFIX) || late !== null) return null;
      late = log.appendOne(recordFor(5));
      return 'EIO';
    });
    await expectRetriable(log.appendOne(recordFor(4)), 'SPOOL_ERR_IO');
    expect(late).not.toBeNull();
    expect(await late!).toBe(3);
    storage.setFailPredicate(null);
    expect(await contents(log)).toEqual([1, 2, 3, 5]);
    await expectVerified(log);
    await log.close();
  });
});

describe('EIO on fsync (b)', () => {
  it('rejects the flush, truncates back, never retries the fsync, and the records never come back', async () => {
    // Proves: after a failed fdatasync the log cuts the file back to its durable end and syncs
    // that (write, failed sync, truncate, sync: no second sync of the failed bytes), rejects every
    // append of the flush, and those records are unreadable before and after a power cut.
    for (let seed = 1; seed <= 12; seed++) {
      const { storage, log } = await setup();
      await confirm(log, range(1, 5));
      const seg = activeSegment(storage);
      const dataBefore = writtenBytes(storage.readFileSync(seg));
      const ops: string[] = [];
      let failedOnce = false;
      storage.setFailPredicate((op, p) => {
        if (p !== seg) return null;
        ops.push(op);
        if (op === 'sync' && !failedOnce) {
          failedOnce = true;
          return 'EIO';
        }
        return null;
      });
      const failed = [log.appendOne(recordFor(6)), log.append([recordFor(7), recordFor(8)])];
      const outcomes = await Promise.allSettled(failed);
      const opsAtRejection = ops.slice();
      for (const p of failed) await expectRetriable(p, 'SPOOL_ERR_IO');
      expect(outcomes.every((o) => o.status === 'rejected')).toBe(true);
      expect(opsAtRejection).toEqual(['write', 'sync', 'truncate', 'sync']);
      expect(writtenBytes(storage.readFileSync(seg))).toEqual(dataBefore);
      expect(writtenBytes(storage.readDurableSync(seg))).toEqual(dataBefore);
      expect(log.endOffset).toBe(5);
      expect(await contents(log)).toEqual([1, 2, 3, 4, 5]);
      storage.setFailPredicate(null);

      if (seed % 2 === 0) {
        // The power goes right after the rollback: the failed records must not be resurrected.
        const again = await crashAndReopen(storage, [1, 2, 3, 4, 5], seed);
        expect(await again.appendOne(recordFor(9))).toBe(5);
        await again.close();
      } else {
        // The next append takes the offset the failed flush never got, and survives a power cut.
        expect(await log.appendOne(recordFor(9))).toBe(5);
        const again = await crashAndReopen(storage, [1, 2, 3, 4, 5, 9], seed);
        await again.close();
      }
    }
  });
});

describe('ENOSPC (c)', () => {
  it('rejects with SPOOL_ERR_DISK_FULL, leaves nothing partial, and works again once space is freed', async () => {
    // Proves: a full disk (diskLimitBytes) rejects with retriable SPOOL_ERR_DISK_FULL, the segment
    // stays at its durable size and verifies, and after the limit is raised appends resume densely.
    const { storage, log } = await setup();
    await confirm(log, range(1, 5));
    const seg = activeSegment(storage);
    const dataBefore = writtenBytes(storage.readFileSync(seg));
    storage.diskLimitBytes = storage.totalBytes + 10;
    await expectRetriable(log.appendOne(recordFor(6)), 'SPOOL_ERR_DISK_FULL');
    await expectRetriable(log.append([recordFor(7), recordFor(8)]), 'SPOOL_ERR_DISK_FULL');
    expect(writtenBytes(storage.readFileSync(seg))).toEqual(dataBefore);
    expect(writtenBytes(storage.readDurableSync(seg))).toEqual(dataBefore);
    expect(log.endOffset).toBe(5);
    expect(await contents(log)).toEqual([1, 2, 3, 4, 5]);
    await expectVerified(log);

    storage.diskLimitBytes = Infinity;
    expect(await log.append([recordFor(9), recordFor(10)])).toEqual({ baseOffset: 5, lastOffset: 6, count: 2 });
    const expected = [1, 2, 3, 4, 5, 9, 10];
    expect(await contents(log)).toEqual(expected);
    await expectVerified(log);
    await log.close();
    await (await crashAndReopen(storage, expected)).close();
  });

  it('rejects a roll that runs out of space and rolls fine once space is freed', async () => {
    // Proves: ENOSPC anywhere in a roll (index files, new segment header) rejects the appends with
    // SPOOL_ERR_DISK_FULL, leaves no new segment behind, and the roll succeeds later.
    const { storage, log } = await setup(4096);
    let id = 1;
    while (log.stats().activeSegmentBytes < 3000) await confirm(log, [id++]);
    const confirmed = range(1, id - 1);
    const segmentsBefore = segmentPaths(storage);
    const big = recordsOver(4096, 1000);
    storage.diskLimitBytes = storage.totalBytes + 20;
    await expectRetriable(log.append(big.records), 'SPOOL_ERR_DISK_FULL');
    expect(segmentPaths(storage)).toEqual(segmentsBefore);
    expect(log.stats().segments).toBe(1);
    expect(await contents(log)).toEqual(confirmed);
    await expectVerified(log);

    storage.diskLimitBytes = Infinity;
    const res = await log.append(big.records);
    expect(res.baseOffset).toBe(confirmed.length);
    expect(log.stats().segments).toBe(2);
    const expected = [...confirmed, ...big.ids];
    expect(await contents(log)).toEqual(expected);
    await expectVerified(log);
    await log.close();
    await (await crashAndReopen(storage, expected, 3, 4096)).close();
  });
});

describe('a failed rollback makes the log read-only (d)', () => {
  for (const variant of ['truncate fails', 'sync after truncate fails'] as const) {
    it(`${variant}: appends reject until reopened, then everything confirmed is intact`, async () => {
      // Proves: when the cut back to the durable end cannot be completed the log refuses appends
      // (SPOOL_ERR_IO, without touching the disk) but still serves reads; reopening, with or
      // without a power cut, recovers every acknowledged record and appends work again.
      for (const crash of [false, true]) {
        const { storage, log } = await setup();
        await confirm(log, range(1, 5));
        const seg = activeSegment(storage);
        let syncs = 0;
        storage.setFailPredicate((op, p) => {
          if (p !== seg) return null;
          if (op === 'sync') {
            syncs++;
            // The flush's fsync fails; in the second variant so does the rollback's.
            if (syncs === 1 || (variant === 'sync after truncate fails' && syncs === 2)) return 'EIO';
          }
          if (op === 'truncate' && variant === 'truncate fails') return 'EIO';
          return null;
        });
        // The rollback failed, so the outcome is unknown: not retriable, not "rolled back".
        const failed = await rejection(log.append([recordFor(6), recordFor(7)]));
        expect(failed.code).toBe('SPOOL_ERR_READ_ONLY');
        expect(failed.retriable).toBe(false);
        storage.setFailPredicate(null);

        const writes = storage.writeCount;
        const rejected = await rejection(log.appendOne(recordFor(8)));
        expect(rejected.code).toBe('SPOOL_ERR_READ_ONLY');
        expect(rejected.message).toMatch(/read-only/);
        await expect(log.append([recordFor(9)])).rejects.toMatchObject({ code: 'SPOOL_ERR_READ_ONLY' });
        expect(storage.writeCount).toBe(writes);
        expect(log.endOffset).toBe(5);
        expect((await log.read(0)).map((r) => r.offset)).toEqual([0, 1, 2, 3, 4]);
        await log.close();

        if (crash) storage.crash(seededRandom(11));
        const again = await openLog(storage);
        const ids = await contents(again);
        expect(ids.slice(0, 5)).toEqual([1, 2, 3, 4, 5]);
        // Whatever else survived can only be the flush whose rollback failed, whole.
        expect([[], [6, 7]]).toContainEqual(ids.slice(5));
        await expectVerified(again);
        const next = again.endOffset;
        expect(await again.appendOne(recordFor(10))).toBe(next);
        await again.close();
      }
    });
  }

  it('what the reopen serves after a failed rollback survives a later power cut', async () => {
    // Proves recovery makes what it serves durable: the failed flush's bytes are still unsynced in
    // the page cache when the read-only log is reopened (the documented remedy); if recovery keeps
    // them it must fsync them, or a power cut takes back offsets readers have seen.
    const { storage, log } = await setup();
    await confirm(log, range(1, 5));
    const seg = activeSegment(storage);
    storage.setFailPredicate((op, p) => (p === seg && (op === 'sync' || op === 'truncate') ? 'EIO' : null));
    expect((await rejection(log.append([recordFor(6), recordFor(7)]))).code).toBe('SPOOL_ERR_READ_ONLY');
    storage.setFailPredicate(null);
    await log.close();
    const again = await openLog(storage);
    const served = await contents(again);
    expect(served.slice(0, 5)).toEqual([1, 2, 3, 4, 5]);
    await again.close();
    storage.crashClean();
    const third = await openLog(storage);
    expect(await contents(third), `served ${JSON.stringify(served)} before the power cut`).toEqual(served);
    await third.close();
  });

  it('does not report a retriable, rolled-back failure for records that are still in the log', async () => {
    // Proves (or refutes) the SPOOL_ERR_IO contract, "the append was rolled back" + retriable:
    // when the rollback itself failed, a caller that retries must not end up with the records
    // twice. Either the records are gone after reopen, or the rejection was not retriable.
    const { storage, log } = await setup();
    await confirm(log, range(1, 5));
    const seg = activeSegment(storage);
    storage.setFailPredicate((op, p) => (p === seg && (op === 'sync' || op === 'truncate') ? 'EIO' : null));
    const err = await rejection(log.append([recordFor(6), recordFor(7)]));
    storage.setFailPredicate(null);
    await log.close();
    const again = await openLog(storage);
    const ids = await contents(again);
    await again.close();
    const resurfaced = ids.includes(6);
    expect(
      resurfaced && err.retriable,
      `append rejected with ${err.code} (retriable: ${err.retriable}, "${err.message}") yet its records are at offsets 5..6 after reopen: ${JSON.stringify(ids)}`,
    ).toBe(false);
  });
});

describe('failures while rolling to a new segment (e)', () => {
  type Fault = { name: string; fail: (op: string, p: string, newSeg: string, state: { opened: boolean }) => boolean };
  const faults: Fault[] = [
    { name: 'creating the new segment', fail: (op, p, s) => op === 'open' && p === s },
    { name: 'writing its header', fail: (op, p, s) => op === 'write' && p === s },
    { name: 'fsyncing its header', fail: (op, p, s) => op === 'sync' && p === s },
    { name: 'fsyncing the directory after creating it', fail: (op, _p, _s, st) => op === 'syncDir' && st.opened },
    { name: 'renaming the sealed segment index into place', fail: (op, p) => op === 'rename' && p.endsWith('.index.tmp') },
    { name: 'writing the sealed segment time index', fail: (op, p) => op === 'write' && p.endsWith('.timeindex.tmp') },
  ];
  for (const fault of faults) {
    it(`EIO while ${fault.name} rejects those appends and the log keeps working`, async () => {
      // Proves: a roll that fails part-way rejects the flush with retriable SPOOL_ERR_IO, leaves no
      // half-made segment, keeps the active segment appendable, and the next roll succeeds densely.
      const { storage, log } = await setup(4096);
      let id = 1;
      while (log.stats().activeSegmentBytes < 3000) await confirm(log, [id++]);
      const confirmed = range(1, id - 1);
      const segmentsBefore = segmentPaths(storage);
      const newSeg = `${DIR}/${segmentFileName(log.endOffset, SEGMENT_SUFFIX)}`;
      const state = { opened: false };
      let injected = 0;
      storage.setFailPredicate((op, p) => {
        if (op === 'open' && p === newSeg) state.opened = true;
        if (injected === 0 && fault.fail(op, p, newSeg, state)) {
          injected++;
          return 'EIO';
        }
        return null;
      });
      const big = recordsOver(4096, 1000);
      await expectRetriable(log.append(big.records), 'SPOOL_ERR_IO');
      expect(injected).toBe(1);
      storage.setFailPredicate(null);
      expect(log.stats().segments).toBe(1);
      expect(segmentPaths(storage)).toEqual(segmentsBefore);
      expect(log.endOffset).toBe(confirmed.length);
      expect(await contents(log)).toEqual(confirmed);
      await expectVerified(log);

      const res = await log.append(big.records);
      expect(res.baseOffset).toBe(confirmed.length);
      expect(log.stats().segments).toBe(2);
      expect(await log.appendOne(recordFor(2000))).toBe(res.lastOffset + 1);
      const expected = [...confirmed, ...big.ids, 2000];
      expect(await contents(log)).toEqual(expected);
      await expectVerified(log);
      await log.close();
      const reopened = await openLog(storage, 4096);
      expect(await contents(reopened)).toEqual(expected);
      await reopened.close();
      await (await crashAndReopen(storage, expected, 5, 4096)).close();
    });
  }

  it('a checkpoint that cannot be written after a successful roll does not fail the append', async () => {
    // Proves: the checkpoint only shortens recovery, so failing to write it is not an append error.
    const { storage, log } = await setup(4096);
    let id = 1;
    while (log.stats().activeSegmentBytes < 3000) await confirm(log, [id++]);
    const confirmed = range(1, id - 1);
    storage.setFailPredicate((op, p) => (op === 'rename' && p.endsWith('checkpoint.tmp') ? 'EIO' : null));
    const big = recordsOver(4096, 1000);
    expect((await log.append(big.records)).baseOffset).toBe(confirmed.length);
    storage.setFailPredicate(null);
    expect(log.stats().segments).toBe(2);
    const expected = [...confirmed, ...big.ids];
    await (await crashAndReopen(storage, expected, 9, 4096)).close();
  });
});

describe('an append the encoder cannot encode (f)', () => {
  it('settles every append of the flush and keeps the log usable', async () => {
    // Proves: an exception while encoding a flush (here: timestamps over 24 days apart in one
    // batch, which validation accepts) rejects the appends instead of leaving them pending forever.
    const { log } = await setup();
    await confirm(log, [1]);
    const day = 24 * 3600 * 1000;
    const spread = log.append([
      { value: 'id:100:', timestamp: TEST_CLOCK.now() - 30 * day },
      { value: 'id:101:', timestamp: TEST_CLOCK.now() },
    ]);
    const bystander = log.appendOne(recordFor(102));
    const outcome = await Promise.race([
      Promise.allSettled([spread, bystander]).then((s) => s.map((x) => x.status)),
      new Promise<string>((resolve) => setTimeout(() => resolve('still pending after 2 s'), 2000)),
    ]);
    expect(outcome, 'appends of a flush whose encoding threw were never settled').not.toBe('still pending after 2 s');
    const next = log.endOffset;
    expect(await log.appendOne(recordFor(103))).toBe(next);
    await expectVerified(log);
    await log.close();
  });
});
