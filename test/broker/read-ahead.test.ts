// A consumer group reads its next batch while it delivers the current one (group.ts `readNext`).
// A batch read ahead must never change what is delivered: a read-ahead that fails is read again,
// and every message arrives once, in order, with no error.
import { afterEach, describe, expect, it } from 'vitest';
import type { Broker } from '../../src/broker/broker.js';
import type { Log, LogRecord, ReadOptions } from '../../src/log/index.js';
import { BrokerHarness, waitFor } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

async function fill(b: Broker, count: number): Promise<void> {
  await b.assertQueue('q');
  for (let i = 0; i < count; i += 1000) {
    await b.publishBatch('', Array.from({ length: Math.min(1000, count - i) }, (_, j) => ({ routingKey: 'q', body: `m${i + j}`.padEnd(200, '.') })));
  }
}

/** The queue's log, with its `read` failing (EIO) on the given calls (1-based). */
function failReads(b: Broker, failAt: Set<number>): { calls: () => number } {
  const log = (b as unknown as { queues: Map<string, { log: Log }> }).queues.get('q')?.log as Log;
  const read = log.read.bind(log);
  let calls = 0;
  log.read = (from: number, options?: ReadOptions): Promise<LogRecord[]> => {
    if (failAt.has(++calls)) return Promise.reject(Object.assign(new Error('EIO: injected read failure'), { code: 'EIO' }));
    return read(from, options);
  };
  return { calls: () => calls };
}

describe('read-ahead of a consumer group', () => {
  it('delivers a backlog of several read batches once each, in order, when read-aheads fail', async () => {
    // ~1.8 MB of records, about seven 256 KiB reads. The group's reads go: fill (1), read-ahead
    // (2), fill taking the read-ahead (3 when 2 failed), read-ahead (4), … Calls 2 and 4 fail:
    // without reading them again the drain would stop with an error.
    const b = await h.openBroker({ sweepIntervalMs: 60_000 });
    await fill(b, 8000);
    const { calls } = failReads(b, new Set([2, 4]));
    const errors: Error[] = [];
    b.on('error', (e: Error) => errors.push(e));
    const got: string[] = [];
    const c = await b.consume('q', (m) => void got.push(m.body.toString().replace(/\.+$/, '')), { group: 'g', ack: 'auto', prefetch: 500 });
    await waitFor(() => got.length >= 8000 || errors.length > 0, 'all 8,000 delivered', 10_000);
    await c.close();
    expect(errors).toEqual([]);
    expect(got).toEqual(Array.from({ length: 8000 }, (_, i) => `m${i}`));
    expect(calls(), 'the backlog took several reads, some of them read ahead').toBeGreaterThanOrEqual(6);
  });
});
