// Proves consume({ idempotent: true }) calls the handler once per message id per group, even when the same id is stored twice (published again after the dedupe window) and survives a restart, while the same consumer without it sees the duplicate.
import { afterEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Broker } from '../../src/broker/broker.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

async function until(cond: () => boolean): Promise<void> {
  const end = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function run(idempotent: boolean): Promise<string[]> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-idem-'));
  dirs.push(dataDir);
  let t = Date.now();
  const clock = { now: () => t };
  let b = await Broker.open({ dataDir, clock });
  await b.assertQueue('q', { dedupeWindowMs: 1000 });
  const seen: string[] = [];
  const handler = async (m: { id: string }) => void seen.push(m.id);
  await b.sendToQueue('q', 'first', { id: 'order-1' });
  let c = await b.consume('q', handler, { group: 'g', idempotent });
  await until(() => b.queueStats('q').groups.g!.committed === 1);
  await c.close();
  await b.close();
  // Past the dedupe window, the producer sends the same business event again (a second record).
  t += 5000;
  b = await Broker.open({ dataDir, clock });
  expect((await b.sendToQueue('q', 'again', { id: 'order-1' })).status).toBe('confirmed');
  await b.sendToQueue('q', 'other', { id: 'order-2' });
  c = await b.consume('q', handler, { group: 'g', idempotent });
  await until(() => b.queueStats('q').groups.g!.committed === 3);
  await c.close();
  await b.close();
  return seen;
}

describe('idempotent consumers', () => {
  it('see each logical message once across restarts; without the option the duplicate shows', async () => {
    expect(await run(true)).toEqual(['order-1', 'order-2']);
    expect(await run(false)).toEqual(['order-1', 'order-1', 'order-2']);
  });
});
