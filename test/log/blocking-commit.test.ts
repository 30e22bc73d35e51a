// Proves the log's blocking commit (LogOptions.blockingCommitBytes, docs/architecture.md "Blocking
// commit"): a short flush with nothing in flight is written and fdatasynced on the calling thread,
// an append still resolves only once its bytes are durable, a failed blocking write or sync is
// rolled back like any other, bigger or overlapping flushes go through the thread pool, and slow
// blocking syncs (a slow disk) turn the path off for a while.
import { describe, expect, it } from 'vitest';
import { Log, type LogOptions } from '../../src/log/index.js';
import type { Storage, StorageFile } from '../../src/log/storage.js';
import { FaultyStorage } from '../support/faulty-storage.js';
import { TEST_CLOCK } from '../support/log-oracle.js';

const DIR = '/data/q';

function fresh(): FaultyStorage {
  const storage = new FaultyStorage();
  storage.mkdirRaw('/data');
  return storage;
}

function options(storage: Storage, extra: Partial<LogOptions> = {}): LogOptions {
  return { storage, clock: TEST_CLOCK, segmentBytesMax: 1 << 20, blockingCommitBytes: 4096, ...extra };
}

const values = (rs: { value: Buffer }[]) => rs.map((r) => r.value.toString());

describe('blocking commit', () => {
  it('commits a lone short append through the blocking forms, durable when it resolves', async () => {
    // Fails if the blocking path resolves before its fdatasync: the power cut right after the
    // await would take the record back.
    const storage = fresh();
    const { log } = await Log.open(DIR, options(storage));
    const before = storage.blockingSyncCount;
    for (let i = 0; i < 20; i++) await log.appendOne({ value: `m${i}` });
    // The first flush of a new segment extends the file (preallocation), which is left to the pipeline.
    expect(log.stats().blockingCommits).toBe(19);
    expect(storage.blockingSyncCount - before).toBe(19);
    storage.crashClean();
    const { log: reopened } = await Log.open(DIR, options(storage));
    expect(values(await reopened.read(0, { maxRecords: 100 }))).toEqual(Array.from({ length: 20 }, (_, i) => `m${i}`));
    await reopened.close();
  });

  it('is off by default and above blockingCommitBytes', async () => {
    const storage = fresh();
    const { log } = await Log.open(DIR, { storage, clock: TEST_CLOCK });
    await log.appendOne({ value: 'a' });
    expect(log.stats().blockingCommits).toBe(0);
    await log.close();
    const { log: small } = await Log.open(DIR, options(storage, { blockingCommitBytes: 100 }));
    await small.appendOne({ value: 'x'.repeat(200) });
    expect(small.stats().blockingCommits, 'a flush over the limit takes the thread pool').toBe(0);
    await small.appendOne({ value: 'y' });
    expect(small.stats().blockingCommits).toBe(1);
    await small.close();
  });

  it('leaves a flush written during a running fdatasync to the pipeline', async () => {
    // A big flush syncs slowly through the thread pool; small appends arriving meanwhile wake the
    // loop (earlyFlushBytes) and are written alongside. That flush must not block, and everything
    // commits in order.
    const storage = fresh();
    storage.syncTicks = 60;
    const { log } = await Log.open(DIR, options(storage, { blockingCommitBytes: 64 * 1024, earlyFlushBytes: 64 }));
    await log.appendOne({ value: 'warm' });
    const big = log.appendOne({ value: 'B'.repeat(100_000) });
    // Until the big write is done and its 60-tick fdatasync has begun.
    const writes = storage.writeCount;
    while (storage.writeCount === writes) await Promise.resolve();
    for (let i = 0; i < 5; i++) await Promise.resolve();
    const small = Array.from({ length: 8 }, (_, i) => log.appendOne({ value: `s${i}`.padEnd(40, '.') }));
    expect(await big).toBe(1);
    expect(await Promise.all(small)).toEqual(Array.from({ length: 8 }, (_, i) => 2 + i));
    const s = log.stats();
    expect(s.flushesDuringSync, 'the small appends were written while the big flush synced').toBeGreaterThan(0);
    expect(s.blockingCommits, 'no flush blocked while another was in flight').toBe(0);
    // Once nothing is in flight, a lone one blocks again.
    await log.appendOne({ value: 'lone' });
    expect(log.stats().blockingCommits).toBe(1);
    await log.close();
  });

  it('rolls back a failed blocking fdatasync and keeps serving', async () => {
    // Fails if a blocking sync error confirms the append, or leaves its bytes to be read.
    const storage = fresh();
    const { log } = await Log.open(DIR, options(storage));
    await log.appendOne({ value: 'kept' });
    storage.failNext('sync', 'EIO');
    await expect(log.appendOne({ value: 'lost' })).rejects.toMatchObject({ code: 'SPOOL_ERR_IO' });
    expect(await log.appendOne({ value: 'next' })).toBe(1);
    expect(values(await log.read(0, { maxRecords: 10 }))).toEqual(['kept', 'next']);
    storage.crashClean();
    const { log: reopened } = await Log.open(DIR, options(storage));
    expect(values(await reopened.read(0, { maxRecords: 10 }))).toEqual(['kept', 'next']);
    await reopened.close();
  });

  it('rolls back a failed blocking write (full disk) and keeps serving', async () => {
    const storage = fresh();
    const { log } = await Log.open(DIR, options(storage));
    await log.appendOne({ value: 'kept' });
    storage.failNext('write', 'ENOSPC');
    await expect(log.appendOne({ value: 'lost' })).rejects.toMatchObject({ code: 'SPOOL_ERR_DISK_FULL' });
    expect(await log.appendOne({ value: 'next' })).toBe(1);
    expect(values(await log.read(0, { maxRecords: 10 }))).toEqual(['kept', 'next']);
    await log.close();
  });

  it('stops blocking for a while when blocking fdatasyncs are slow', async () => {
    // A slow disk must not stall the event loop: fdatasyncs of 3 ms (busy-waited, as a blocking
    // call would) turn the path off after a few, and later flushes go through the thread pool.
    const storage = fresh();
    const slow: Storage = new Proxy(storage, {
      get(target, prop) {
        if (prop === 'open') {
          return async (p: string, mode: Parameters<Storage['open']>[1]): Promise<StorageFile> => {
            const f = await target.open(p, mode);
            const syncBlocking = f.syncBlocking?.bind(f);
            return Object.assign(Object.create(f) as StorageFile, {
              syncBlocking: () => {
                const until = performance.now() + 3;
                while (performance.now() < until);
                syncBlocking?.();
              },
            });
          };
        }
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const { log } = await Log.open(DIR, options(slow));
    await log.appendOne({ value: 'warm' });
    for (let i = 0; i < 30; i++) await log.appendOne({ value: `m${i}` });
    const blocking = log.stats().blockingCommits;
    expect(blocking, 'a moving average over 1 ms pauses blocking commits after a few').toBeGreaterThan(0);
    expect(blocking).toBeLessThan(10);
    expect(values(await log.read(0, { maxRecords: 100 }))).toHaveLength(31);
    await log.close();
  });
});
