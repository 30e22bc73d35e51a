// Proves the client's guarantees against real processes: a server SIGKILLed mid-stream and restarted loses nothing it confirmed, the client reconnects and resends its in-flight publishes so each id is stored exactly once, and a SIGSTOPped consumer process is dropped by heartbeat and its messages redelivered.
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { PublishResult } from '../../src/broker/broker.js';
import { CONSUME_CHILD, SERVE_CHILD, assertDistFresh, killAllChildren, spawnChild, type Child } from './children.js';
import { ServerHarness, waitFor } from './helpers.js';

const h = new ServerHarness();
beforeAll(() => assertDistFresh());
afterEach(async () => {
  killAllChildren();
  await h.cleanup();
});

async function startServerChild(dataDir: string, heartbeatMs = 200): Promise<{ child: Child; socketPath: string }> {
  const child = spawnChild(SERVE_CHILD, [dataDir, String(heartbeatMs)]);
  const line = await child.line(/^ready /);
  return { child, socketPath: line.slice('ready '.length) };
}

describe('a server process killed mid-stream', () => {
  it('loses nothing confirmed; the client reconnects and each in-flight publish lands exactly once', async () => {
    const dataDir = h.dir();
    let { child, socketPath } = await startServerChild(dataDir);
    const client = await h.client(`unix://${socketPath}`, { reconnect: { initialDelayMs: 20, maxDelayMs: 200 }, timeoutMs: 20_000 });
    let reconnects = 0;
    client.on('reconnect', () => reconnects++);
    await client.assertQueue('q');

    // A live consumer (ack 'auto') reads while the server dies and comes back.
    const consumed = new Set<string>();
    await client.consume('q', (m) => void consumed.add(m.id), { group: 'live', prefetch: 50 });

    const total = 4000;
    const window = 200;
    const killAfter = 1000;
    const results: PublishResult[] = new Array(total);
    let inFlightAtKill = -1;
    let restarted: Promise<void> = Promise.resolve();
    await new Promise<void>((resolve, reject) => {
      let next = 0;
      let done = 0;
      const issue = (): void => {
        if (next >= total) return;
        const i = next++;
        // No caller id: the client makes one, and must resend with that same one.
        client.sendToQueue('q', `m${i}`).then((r) => {
          results[i] = r;
          done++;
          if (done === killAfter) {
            inFlightAtKill = next - done;
            child.proc.kill('SIGKILL');
            restarted = child.exited.then(async () => {
              ({ child, socketPath } = await startServerChild(dataDir));
            });
          }
          if (done === total) resolve();
          else issue();
        }, reject);
      };
      for (let k = 0; k < window; k++) issue();
    });
    await restarted;

    expect(inFlightAtKill).toBeGreaterThan(0);
    expect(reconnects).toBeGreaterThanOrEqual(1);
    const ids = results.map((r) => r.id);
    expect(results.every((r) => r.status === 'confirmed')).toBe(true);
    expect(new Set(ids).size).toBe(total);

    // Exactly once in the log: as many records as publishes, and every id among them once.
    const stats = await client.queueStats('q');
    expect(stats.endOffset - stats.startOffset).toBe(total);
    const seen = new Map<string, number>();
    const reader = await client.consume('q', (m) => void seen.set(m.id, (seen.get(m.id) ?? 0) + 1), { group: 'verify', from: 'earliest', prefetch: 500 });
    await waitFor(() => seen.size === total, `all ${total} ids read back (have ${seen.size})`, 15_000);
    await reader.close();
    expect([...seen.values()].every((n) => n === 1)).toBe(true);
    for (const id of ids) expect(seen.has(id)).toBe(true);

    // The live consumer was re-created after the reconnect and saw everything (at least once).
    await waitFor(() => consumed.size === total, `the live consumer to see all ${total} (has ${consumed.size})`, 15_000);
  });
});

describe('a consumer process that freezes', () => {
  it('is dropped by heartbeat within a few seconds and its unacked messages go to another consumer', async () => {
    const { broker, server } = await h.served({}, { heartbeatMs: 200 });
    await broker.assertQueue('jobs');
    for (let i = 0; i < 8; i++) await broker.sendToQueue('jobs', `j${i}`, { id: `job-${i}` });
    const frozen = spawnChild(CONSUME_CHILD, [server.url, 'jobs', 'workers']);
    await frozen.line(/^consuming$/);
    await waitFor(() => frozen.lines.filter((l) => l.startsWith('got ')).length === 8, 'the child to hold all eight');

    const other = await h.client(server.url);
    const got: string[] = [];
    await other.consume('jobs', (m) => void got.push(m.id), { group: 'workers' });
    expect(broker.queueStats('jobs').groups.workers?.inFlight).toBe(8);

    frozen.proc.kill('SIGSTOP');
    const stoppedAt = Date.now();
    await waitFor(() => got.length === 8, 'redelivery to the live consumer', 5000);
    const tookMs = Date.now() - stoppedAt;
    expect(tookMs).toBeLessThan(2000);
    expect(got.sort()).toEqual(Array.from({ length: 8 }, (_, i) => `job-${i}`));
    frozen.proc.kill('SIGKILL');
  });
});
