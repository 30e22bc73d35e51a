// Proves that a group commit settles its appends a chunk per event-loop turn (src/log/settle-queue.ts):
// other work gets turns between chunks, appends still settle in offset order and only after their
// fdatasync, a lone append is not delayed, a failure keeps its place in line, and close() returns
// only once every append it waited for is settled.
import { describe, expect, it } from 'vitest';
import { Log } from '../../src/log/index.js';
import { SettleQueue } from '../../src/log/settle-queue.js';
import { FaultyStorage } from '../support/faulty-storage.js';
import { TEST_CLOCK } from '../support/log-oracle.js';

const DIR = '/data/q';

function fresh(): FaultyStorage {
  const storage = new FaultyStorage();
  storage.mkdirRaw('/data');
  return storage;
}

/** Records 'tick' in `events` once per event-loop turn (check phase) until stopped. */
function ticker(events: string[]): () => void {
  let on = true;
  const tick = (): void => {
    if (!on) return;
    events.push('tick');
    setImmediate(tick);
  };
  setImmediate(tick);
  return () => {
    on = false;
  };
}

describe('SettleQueue', () => {
  it('settles in push order, at most perTurn per turn, the first chunk at once', async () => {
    const settled: number[] = [];
    const q = new SettleQueue<number>(3, (n) => settled.push(n));
    for (let i = 0; i < 8; i++) q.push(i);
    q.flush();
    expect(settled).toEqual([0, 1, 2]); // synchronously
    q.push(8); // behind the waiting ones, even though flushed at once
    q.flush();
    expect(settled).toEqual([0, 1, 2]);
    expect(q.idle).toBe(false);
    await new Promise((r) => setImmediate(r));
    expect(settled).toEqual([0, 1, 2, 3, 4, 5]);
    await q.whenIdle();
    expect(settled).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(q.idle).toBe(true);
  });

  it('rejects a non-positive chunk size', () => {
    expect(() => new SettleQueue<number>(0, () => {})).toThrow(/perTurn/);
  });
});

describe('log: settling a big commit', () => {
  it('gives the event loop turns between chunks, and resolves in offset order', async () => {
    // Fails if a commit settles all of its appends in one turn: no tick would fall between the
    // first and the last resolution.
    const storage = fresh();
    const { log } = await Log.open(DIR, { storage, clock: TEST_CLOCK });
    const events: string[] = [];
    const offsets: number[] = [];
    const appends = Array.from({ length: 1000 }, (_, i) =>
      log.appendOne({ value: `m${i}` }).then((o) => {
        offsets.push(o);
        events.push('resolved');
      }),
    );
    const stop = ticker(events);
    await Promise.all(appends);
    stop();
    expect(offsets).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    const first = events.indexOf('resolved');
    const last = events.lastIndexOf('resolved');
    const ticksBetween = events.slice(first, last).filter((e) => e === 'tick').length;
    expect(ticksBetween).toBeGreaterThanOrEqual(3);
    await log.close();
  });

  it('resolves a lone append in the turn its flush commits', async () => {
    const storage = fresh();
    const { log } = await Log.open(DIR, { storage, clock: TEST_CLOCK });
    await log.appendOne({ value: 'warm' });
    const events: string[] = [];
    const p = log.appendOne({ value: 'one' }).then(() => events.push('resolved'));
    await p;
    expect(events).toEqual(['resolved']);
    await log.close();
  });

  it('close() returns only after every append is settled, and each settled one is durable', async () => {
    // Fails if close() waits only for the flush loop: appends still queued for their turn would
    // resolve after close() returned.
    const storage = fresh();
    const { log } = await Log.open(DIR, { storage, clock: TEST_CLOCK });
    let resolved = 0;
    const appends = Array.from({ length: 600 }, (_, i) => log.appendOne({ value: `m${i}` }).then(() => void resolved++));
    await log.close();
    expect(resolved).toBe(600);
    await Promise.all(appends);
    storage.crashClean();
    const { log: reopened } = await Log.open(DIR, { storage, clock: TEST_CLOCK });
    expect(reopened.endOffset).toBe(600);
    await reopened.close();
  });

  it('an append settled in a later turn was durable: a power cut between chunks loses none that resolved', async () => {
    // Fails if a commit hands appends to the queue before their fdatasync: those settled after the
    // cut would be missing when the log is reopened.
    const storage = fresh();
    const { log } = await Log.open(DIR, { storage, clock: TEST_CLOCK });
    await log.appendOne({ value: 'warm' });
    const resolved = new Map<number, string>();
    const track = (value: string) =>
      log.appendOne({ value }).then(
        (offset) => void resolved.set(offset, value),
        () => {},
      );
    const first = Array.from({ length: 1000 }, (_, i) => track(`a${i}`));
    while (resolved.size === 0) await new Promise((r) => setImmediate(r));
    expect(resolved.size).toBeLessThan(1000); // later chunks still wait for their turns
    const second = Array.from({ length: 300 }, (_, i) => track(`b${i}`)); // in flight at the cut
    storage.crashClean();
    await Promise.all([...first, ...second]);
    expect(resolved.size).toBeGreaterThanOrEqual(1000);
    const { log: reopened } = await Log.open(DIR, { storage, clock: TEST_CLOCK });
    const stored = new Map((await reopened.read(0, { maxRecords: 5000 })).map((r) => [r.offset, r.value.toString()]));
    for (const [offset, value] of resolved) expect(stored.get(offset), `offset ${offset}`).toBe(value);
    await reopened.close();
  });

  it('a failed flush rejects only after the appends committed before it resolved', async () => {
    // Fails if a rejection skips the line: the failed append would settle before earlier ones.
    const storage = fresh();
    const { log } = await Log.open(DIR, { storage, clock: TEST_CLOCK });
    await log.appendOne({ value: 'warm' });
    const order: string[] = [];
    const ok = Array.from({ length: 500 }, (_, i) =>
      log.appendOne({ value: `ok${i}` }).then(
        () => order.push('ok'),
        () => order.push('failed-ok'),
      ),
    );
    // Once that commit's first chunk resolved (the rest wait for their turns), fail the next write.
    while (order.length === 0) await new Promise((r) => setImmediate(r));
    expect(order.length).toBeLessThan(500);
    storage.failNext('write', 'EIO');
    const bad = log.appendOne({ value: 'bad' }).then(
      () => order.push('bad-resolved'),
      () => order.push('bad'),
    );
    await Promise.all([...ok, bad]);
    expect(order.length).toBe(501);
    expect(order.slice(0, 500).every((o) => o === 'ok')).toBe(true);
    expect(order[500]).toBe('bad');
    await log.close().catch(() => {});
  });
});
