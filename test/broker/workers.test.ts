// Proves handler modules on worker threads ack, nack, retry and redeliver exactly as in process: a module that throws on a message's first delivery and kills its own worker thread on another still ends with every message acked once, the failing ones redelivered.
import { afterEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Broker } from '../../src/broker/broker.js';
import { SpoolError } from '../../src/errors.js';

const dirs: string[] = [];
const brokers: Broker[] = [];
afterEach(async () => {
  for (const b of brokers.splice(0)) await b.close().catch(() => {});
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-workers-'));
  dirs.push(d);
  return d;
}

/** A handler module: CPU work per message; 'fail-once' throws on its first delivery; 'exit' ends its worker thread on its first delivery. */
function writeHandler(dir: string): string {
  const file = path.join(dir, 'handler.mjs');
  fs.writeFileSync(
    file,
    `import { createHash } from 'node:crypto';
     import { threadId } from 'node:worker_threads';
     export default async function (msg) {
       let h = Buffer.from(msg.body);
       for (let i = 0; i < 50; i++) h = createHash('sha256').update(h).digest();
       const body = Buffer.from(msg.body).toString();
       if (body.startsWith('fail-once') && msg.deliveryCount === 1) throw new Error('first attempt fails');
       if (body.startsWith('exit') && msg.deliveryCount === 1) process.exit(1);
       if (body.startsWith('always-fails')) throw new Error('never works');
     }`,
  );
  return file;
}

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('consume with a handler module on worker threads', () => {
  it('acks every message, redelivers the one that threw and the ones a dying worker held', async () => {
    const dir = tmp();
    const handler = writeHandler(dir);
    const broker = await Broker.open({ dataDir: path.join(dir, 'data') });
    brokers.push(broker);
    await broker.assertQueue('jobs');
    const bodies = Array.from({ length: 300 }, (_, i) => (i === 7 ? 'fail-once' : i === 99 ? 'exit' : `job-${i}`));
    for (const b of bodies) await broker.sendToQueue('jobs', b);
    const c = await broker.consume('jobs', handler, { workers: 2, group: 'g', prefetch: 16 });
    await waitFor(() => broker.queueStats('jobs').groups.g!.committed === bodies.length);
    const s = broker.queueStats('jobs').groups.g!;
    expect(s.lag).toBe(0);
    expect(s.inFlight).toBe(0);
    await c.close();
  });

  it('retries with backoff and then dead-letters, as in process', async () => {
    const dir = tmp();
    const handler = writeHandler(dir);
    const broker = await Broker.open({ dataDir: path.join(dir, 'data'), tickIntervalMs: 2 });
    brokers.push(broker);
    await broker.assertExchange('dlx', 'fanout');
    await broker.assertQueue('dead');
    await broker.bindQueue('dead', 'dlx');
    await broker.assertQueue('jobs', { deadLetterExchange: 'dlx' });
    await broker.sendToQueue('jobs', 'always-fails');
    await broker.sendToQueue('jobs', 'fine');
    const c = await broker.consume('jobs', handler, { workers: 1, group: 'g', retry: { attempts: 3, backoff: { initial: 20, factor: 2, max: 100, jitter: 0 } } });
    await waitFor(() => broker.queueStats('dead').endOffset === 1);
    const dead: { body: string; reason: unknown; error: unknown }[] = [];
    const sub = broker.subscribe('dead', { group: 'inspect' });
    for await (const m of sub) {
      const death = (m.headers['x-death'] as { reason: string; 'last-error'?: string }[])[0]!;
      dead.push({ body: m.body.toString(), reason: death.reason, error: death['last-error'] });
      await m.ack();
      break;
    }
    expect(dead).toEqual([{ body: 'always-fails', reason: 'rejected', error: expect.stringContaining('never works') }]);
    await waitFor(() => broker.queueStats('jobs').groups.g!.committed === 2);
    await c.close();
  });

  it('refuses manual ack and a module that cannot be loaded, with typed errors', async () => {
    const dir = tmp();
    const broker = await Broker.open({ dataDir: path.join(dir, 'data') });
    brokers.push(broker);
    await broker.assertQueue('jobs');
    await expect(broker.consume('jobs', writeHandler(dir), { workers: 1, ack: 'manual' })).rejects.toMatchObject({ code: 'SPOOL_ERR_INVALID_ARGUMENT' });
    const err = await broker.consume('jobs', path.join(dir, 'missing.mjs'), { workers: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SpoolError);
    expect((err as SpoolError).code).toBe('SPOOL_ERR_INVALID_ARGUMENT');
  });
});
