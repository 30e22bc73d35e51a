// idempotentHandler with the real broker: each logical message is handled once across lock-timeout redeliveries, nack redeliveries and a SIGKILL restart between completion and ack — while the same consumer without the wrapper demonstrably handles some messages twice in each scenario (so these tests can fail).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Broker } from '../../src/broker/broker.js';
import type { Message } from '../../src/broker/delivery.js';
import { SpoolError } from '../../src/errors.js';
import { IdempotencyStore, type IdempotentHandler, idempotentHandler } from '../../src/idempotency/index.js';
import { StoreHarness, assertDistFresh } from './helpers.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'support', 'consumer-child.mjs');
const h = new StoreHarness();
const brokers = new Set<Broker>();
afterEach(async () => {
  for (const b of [...brokers]) await b.close().catch(() => {});
  brokers.clear();
  await h.cleanup();
});
beforeAll(() => assertDistFresh());

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function openBroker(dataDir: string): Promise<Broker> {
  const b = await Broker.open({ dataDir, sweepIntervalMs: 10 });
  brokers.add(b);
  return b;
}

async function closeBroker(b: Broker): Promise<void> {
  brokers.delete(b);
  await b.close();
}

async function waitFor(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

const IDS = Array.from({ length: 12 }, (_, i) => `m${i}`);

async function publishAll(b: Broker): Promise<void> {
  await b.assertQueue('orders');
  for (const id of IDS) expect((await b.sendToQueue('orders', `order ${id}`, { id })).status).toBe('confirmed');
}

function counts(ids: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const id of ids) m.set(id, (m.get(id) ?? 0) + 1);
  return m;
}

/**
 * Lock-timeout scenario: the first delivery of each message takes 400 ms, past a 100 ms lock
 * timeout, so the broker hands the message to another slot while the first is still working.
 */
async function lockTimeoutRun(idempotent: boolean): Promise<{ effects: Map<string, number>; store: IdempotencyStore | null; handler: IdempotentHandler<Message> | null }> {
  const b = await openBroker(h.dir('spool-idem-broker-'));
  await publishAll(b);
  const effects: string[] = [];
  const work = async (msg: Message) => {
    effects.push(msg.id); // the side effect
    if (msg.deliveryCount === 1) await sleep(400);
  };
  const store = idempotent ? await h.openStore({ dir: h.dir() }) : null;
  const handler = store !== null ? idempotentHandler(store, 'billing', work, { leaseMs: 10_000 }) : null;
  await b.consume('orders', handler ?? work, {
    group: 'billing',
    concurrency: 8,
    prefetch: 24,
    lockTimeoutMs: 100,
    // A delivery sent back as in-progress returns 20 ms later rather than at once.
    retry: { attempts: 100, backoff: { initial: 20, factor: 1, max: 20, jitter: 0 } },
  });
  await waitFor(() => (b.queueStats('orders').groups.billing?.committed ?? 0) >= IDS.length, 'every message acked');
  await sleep(300); // late duplicates would show up now
  return { effects: counts(effects), store, handler };
}

describe('idempotentHandler with the broker', () => {
  it('lock-timeout redeliveries: without the wrapper some messages run twice; with it each runs once', async () => {
    // Proves the in-progress path: the redelivered copy meets a live lease, is nacked with SPOOL_ERR_IN_PROGRESS and retried until the first copy completed, then skipped.
    const plain = await lockTimeoutRun(false);
    expect([...plain.effects.values()].some((n) => n >= 2), `without the wrapper: ${JSON.stringify([...plain.effects])}`).toBe(true);

    const idem = await lockTimeoutRun(true);
    expect([...idem.effects.entries()].sort(), 'each message handled exactly once').toEqual(IDS.map((id) => [id, 1]).sort());
    const c = idem.handler!.counters;
    expect(c.processed).toBe(IDS.length);
    expect(c.inProgress).toBeGreaterThan(0);
    for (const id of IDS) expect(await idem.store!.lookup(`billing:${id}`)).toEqual({ status: 'done', result: undefined });
  });

  it('an ack lost after completion (the handler fails after its work): the redelivery is skipped', async () => {
    // Proves the done path: a message whose completion is durable but whose delivery is nacked afterwards is redelivered and acked without running the work again; without the wrapper the work runs twice.
    for (const idempotent of [false, true]) {
      const b = await openBroker(h.dir('spool-idem-broker-'));
      await publishAll(b);
      const effects: string[] = [];
      const store = idempotent ? await h.openStore({ dir: h.dir() }) : null;
      const work = async (msg: Message) => {
        effects.push(msg.id);
      };
      const inner = store !== null ? idempotentHandler(store, 'billing', work) : work;
      const failedOnce = new Set<string>();
      await b.consume(
        'orders',
        async (msg: Message) => {
          await inner(msg);
          // A crash of the connection or process between the side effect and the ack, simulated.
          if (!failedOnce.has(msg.id) && Number(msg.id.slice(1)) % 3 === 0) {
            failedOnce.add(msg.id);
            throw new Error('lost the ack');
          }
        },
        { group: 'billing' },
      );
      await waitFor(() => (b.queueStats('orders').groups.billing?.committed ?? 0) >= IDS.length, 'every message acked');
      const c = counts(effects);
      if (idempotent) {
        expect([...c.values()].every((n) => n === 1), JSON.stringify([...c])).toBe(true);
        expect((inner as IdempotentHandler<Message>).counters.skipped).toBe(4);
      } else {
        expect(c.get('m0')).toBe(2);
        expect(c.get('m3')).toBe(2);
      }
      await closeBroker(b);
    }
  });

  it('SIGKILL after completion, before the ack, then a restart: the restarted consumer skips what was done', async () => {
    // Proves restarts with real processes: a child consumer handles m0..m5 and kills itself right after m5's completion is durable; this process reopens broker and store and consumes the rest. With the wrapper every id's side effect happens once; without it, m5 (at least) happens twice.
    for (const idempotent of [false, true]) {
      const dataDir = h.dir('spool-idem-broker-');
      const storeDir = h.dir();
      const effectsFile = path.join(h.dir(), 'effects.log');
      let b = await openBroker(dataDir);
      await publishAll(b);
      await closeBroker(b);
      const env = { ...process.env };
      delete env.NODE_OPTIONS;
      const child = spawn(process.execPath, [CHILD, JSON.stringify({ dataDir, storeDir, effects: effectsFile, idempotent, killOn: 'm5' })], { stdio: ['ignore', 'pipe', 'pipe'], env });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += String(d)));
      const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
      expect(signal, `child should have killed itself (code ${code}): ${stderr}`).toBe('SIGKILL');
      const before = fs.readFileSync(effectsFile, 'utf8').split('\n').filter(Boolean);
      expect(before).toContain('m5');

      b = await openBroker(dataDir);
      const store = await h.openStore({ dir: storeDir });
      const effects = [...before];
      const work = async (msg: Message) => {
        effects.push(msg.id);
      };
      const handler = idempotent ? idempotentHandler(store, 'billing', work) : work;
      await b.consume('orders', handler, { group: 'billing' });
      await waitFor(() => (b.queueStats('orders').groups.billing?.committed ?? 0) >= IDS.length, 'every message acked after the restart');
      const c = counts(effects);
      if (idempotent) {
        expect([...c.entries()].sort(), 'each id handled once across the crash').toEqual(IDS.map((id) => [id, 1]).sort());
        expect((handler as IdempotentHandler<Message>).counters.skipped).toBeGreaterThanOrEqual(1);
      } else {
        expect(c.get('m5'), `without the wrapper m5 runs again: ${JSON.stringify([...c])}`).toBe(2);
      }
      await closeBroker(b);
    }
  });

  it('a failing handler releases the lease so the retry runs at once; bad options are refused up front', async () => {
    // Proves the failure path (release, rethrow, counted) and argument checks that happen before any side effect.
    const store = await h.openStore({ retentionMs: 60_000 });
    let calls = 0;
    const handler = idempotentHandler(store, 'g', async () => {
      calls++;
      if (calls === 1) throw new Error('boom');
    });
    const msg = { id: 'x1' };
    await expect(handler(msg)).rejects.toThrow('boom');
    expect(await store.lookup('g:x1')).toBe('absent');
    await handler(msg);
    await handler(msg);
    expect(calls).toBe(2);
    expect(handler.counters).toEqual({ processed: 1, skipped: 1, inProgress: 0, failed: 1 });
    await store.claim('g:x2', { ttlMs: 10_000 });
    const err = await handler({ id: 'x2' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SpoolError);
    expect((err as SpoolError).code).toBe('SPOOL_ERR_IN_PROGRESS');
    expect((err as SpoolError).retriable).toBe(true);
    expect(() => idempotentHandler(store, 'g', async () => {}, { windowMs: 60_001 })).toThrow(SpoolError);
    expect(() => idempotentHandler(store, '', async () => {})).toThrow(SpoolError);
  });
});
