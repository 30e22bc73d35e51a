// A full disk at the broker level (the logs on the fault-injecting storage, with a disk limit):
// publishes fail with SPOOL_ERR_DISK_FULL and store nothing, consumers keep getting what was
// stored, acks that cannot be written fail with the same code, and once space is freed
// everything works again; after a reopen nothing confirmed is missing and nothing extra is there.
import { afterEach, describe, expect, it } from 'vitest';
import { SpoolError } from '../../src/errors.js';
import { BrokerHarness, waitFor } from '../support/broker-helpers.js';
import { FaultyStorage } from '../support/faulty-storage.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

const codeOf = (err: unknown): string => (err instanceof SpoolError ? err.code : String(err));

describe('a full disk', () => {
  it('publishes and acks fail with SPOOL_ERR_DISK_FULL; the broker keeps serving and recovers when space is freed', async () => {
    const storage = new FaultyStorage();
    let b = await h.openBroker({ storage, segmentBytesMax: 64 * 1024 });
    await b.assertQueue('q');
    // A group that reads only at the end, so retention keeps every record for it.
    await (await b.consume('q', () => {}, { group: 'audit', ack: 'manual', prefetch: 1 })).close();
    const body = Buffer.alloc(2000, 7);
    const confirmed: string[] = [];
    for (let i = 0; i < 50; i++) {
      await b.sendToQueue('q', body, { id: `before-${i}` });
      confirmed.push(`before-${i}`);
    }
    const received = new Set<string>();
    const ackCodes = new Map<string, number>();
    await b.consume(
      'q',
      async (m) => {
        received.add(m.id);
        try {
          const s = await m.ack();
          ackCodes.set(s, (ackCodes.get(s) ?? 0) + 1);
        } catch (err) {
          ackCodes.set(codeOf(err), (ackCodes.get(codeOf(err)) ?? 0) + 1);
        }
      },
      { group: 'g', ack: 'manual', prefetch: 10 },
    );
    await waitFor(() => received.size === 50, 'the first 50 delivered');

    // The disk fills up: nothing more fits.
    storage.diskLimitBytes = storage.totalBytes;
    const failed: string[] = [];
    for (let i = 0; i < 30; i++) {
      try {
        await b.sendToQueue('q', body, { id: `full-${i}` });
        confirmed.push(`full-${i}`);
      } catch (err) {
        expect(codeOf(err)).toBe('SPOOL_ERR_DISK_FULL');
        expect((err as SpoolError).retriable).toBe(true);
        failed.push(`full-${i}`);
      }
    }
    // Preallocated space may take a few; then every publish fails, and cleanly.
    expect(failed.length).toBeGreaterThan(20);
    expect(b.queueStats('q').endOffset).toBe(confirmed.length);

    // Space is freed: publishes work again, and the consumer gets them.
    storage.diskLimitBytes = Infinity;
    for (let i = 0; i < 20; i++) {
      await b.sendToQueue('q', body, { id: `after-${i}` });
      confirmed.push(`after-${i}`);
    }
    await waitFor(() => confirmed.every((id) => received.has(id)), 'every confirmed message delivered');
    expect([...ackCodes.keys()].every((k) => k === 'acked' || k === 'SPOOL_ERR_DISK_FULL')).toBe(true);

    // Reopened: exactly the confirmed messages are stored, each once.
    b = await h.restart(b, { storage, segmentBytesMax: 64 * 1024 });
    const stored: string[] = [];
    await b.consume('q', (m) => void stored.push(m.id), { group: 'audit', prefetch: 100 });
    await waitFor(() => stored.length >= confirmed.length, 'the audit read');
    expect(stored.sort()).toEqual([...confirmed].sort());
  });

  it('a message consumed while the disk is full: its ack fails with SPOOL_ERR_DISK_FULL, and it is not lost', async () => {
    const storage = new FaultyStorage();
    let b = await h.openBroker({ storage });
    await b.assertQueue('q');
    for (let i = 0; i < 20; i++) await b.sendToQueue('q', `m${i}`, { id: `m${i}` });
    // The group exists before the disk fills (creating one needs space).
    await (await b.consume('q', () => {}, { group: 'g', ack: 'manual', prefetch: 1 })).close();
    storage.diskLimitBytes = storage.totalBytes;
    const outcomes = new Map<string, string>();
    const c = await b.consume(
      'q',
      async (m) => {
        try {
          outcomes.set(m.id, await m.ack());
        } catch (err) {
          outcomes.set(m.id, codeOf(err));
        }
      },
      { group: 'g', ack: 'manual', prefetch: 5, concurrency: 5 },
    );
    await waitFor(() => outcomes.size === 20, 'all 20 settled one way or the other');
    await c.close();
    const failedAcks = [...outcomes].filter(([, o]) => o !== 'acked').map(([id]) => id);
    expect(failedAcks.length).toBeGreaterThan(0);
    for (const [, o] of outcomes) expect(['acked', 'SPOOL_ERR_DISK_FULL']).toContain(o);
    // After a reopen (space freed), a message whose ack failed comes again; one acked never does.
    storage.diskLimitBytes = Infinity;
    b = await h.restart(b, { storage });
    const again: string[] = [];
    await b.consume('q', (m) => void again.push(m.id), { group: 'g', prefetch: 100 });
    await waitFor(() => again.length >= failedAcks.length, 'the unacked ones again', 3000);
    await new Promise((r) => setTimeout(r, 100));
    for (const id of again) expect(outcomes.get(id), id).not.toBe('acked');
    expect(new Set(again)).toEqual(new Set(failedAcks));
  });
});
