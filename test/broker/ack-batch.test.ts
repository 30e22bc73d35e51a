// Proves the ack store's batching (src/broker/ack-store.ts): acks nobody awaits wait up to batchMs
// and then share one write, while an awaited change or `drain` writes at once.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AckStore } from '../../src/broker/ack-store.js';
import { Log } from '../../src/log/index.js';
import { makeTempDir, sleep } from '../support/broker-helpers.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

async function openStore(batchMs: number): Promise<{ store: AckStore; dir: string }> {
  const base = makeTempDir('spool-ackbatch-');
  dirs.push(base);
  const dir = path.join(base, 'group');
  return { store: await AckStore.open(dir, 0, 0, {}, batchMs), dir };
}

/** The records of a closed store's log: the first is the snapshot made when it was created, then one per write. */
async function writesOf(dir: string): Promise<number> {
  const { log } = await Log.open(dir);
  const n = log.endOffset - log.startOffset;
  await log.close();
  return n - 1;
}

/** Acks offsets 0..count-1 one at a time, `gapMs` apart, as a consumer's 'auto' handlers would. */
async function ackQuietly(store: AckStore, count: number, gapMs: number): Promise<void> {
  for (let o = 0; o < count; o++) {
    store.state.committed = o + 1;
    expect(store.persistOne(o, false)).toBeUndefined();
    await sleep(gapMs);
  }
}

describe('ack batching', () => {
  it('unawaited acks within batchMs share one write', async () => {
    const { store, dir } = await openStore(200);
    await ackQuietly(store, 5, 10);
    await store.close();
    expect(await writesOf(dir)).toBe(1);
  });

  it('without batching each is written as it comes (the comparison the first test relies on)', async () => {
    const { store, dir } = await openStore(0);
    await ackQuietly(store, 5, 10);
    await store.close();
    expect(await writesOf(dir)).toBe(5);
  });

  it('an awaited change ends the wait: it and the acks before it are durable at once', async () => {
    const { store, dir } = await openStore(60_000);
    await ackQuietly(store, 3, 1);
    const started = Date.now();
    store.state.committed = 4;
    await store.persistOne(3, true);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(store.durableCommitted).toBe(4);
    await store.close();
    expect(await writesOf(dir)).toBe(1);
  });

  it('drain ends the wait, and close writes what waits', async () => {
    const { store } = await openStore(60_000);
    await ackQuietly(store, 2, 1);
    const started = Date.now();
    await store.drain();
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(store.durableCommitted).toBe(2);
    await ackQuietly(store, 1, 0);
    await store.close();
    expect(Date.now() - started).toBeLessThan(10_000);
  });
});
