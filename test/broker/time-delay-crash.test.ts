// Proves delayed messages fire exactly once per bound queue across SIGKILL: a child broker (compiled dist/) holding 1,500 delays — some already fired, a 750-message burst firing at the kill — is SIGKILLed, a second child is SIGKILLed during its startup fires of the overdue ones; a reopened broker fires the rest on time and every confirmed id is in each of the two queues exactly once (the dedupe key covers a kill between routing and marking fired, which the test counts from the files).
import path from 'node:path';
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { Log } from '../../src/log/index.js';
import { AckStore } from '../../src/broker/ack-store.js';
import { BrokerHarness, assertDistFresh, sleep } from '../support/broker-helpers.js';
import { killChildren, runChild } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(async () => {
  killChildren();
  await h.cleanup();
});

/** Ids in a log's records (keys), read straight from its files. */
async function idsIn(dir: string, skip: (offset: number) => boolean = () => false): Promise<string[]> {
  const { log } = await Log.open(dir, { create: false });
  const ids: string[] = [];
  try {
    let next = log.startOffset;
    while (next < log.endOffset) {
      const rs = await log.read(next, { maxBytes: 1 << 20 });
      if (rs.length === 0) break;
      for (const r of rs) if (!skip(r.offset)) ids.push(r.keyText());
      next = rs[rs.length - 1]!.offset + 1;
    }
  } finally {
    await log.close();
  }
  return ids;
}

/** White box: ids routed into `queue` but still pending (not marked done) in the delay store — the crash window the dedupe key must cover. */
async function routedButPending(dataDir: string, queue: string): Promise<number> {
  const delayed = path.join(dataDir, 'delayed');
  const pending = new Set<string>();
  for (const bucket of fs.readdirSync(delayed)) {
    const done = await AckStore.open(path.join(delayed, bucket, 'done'), 0, 0, {});
    const st = done.state;
    await done.close();
    for (const id of await idsIn(path.join(delayed, bucket, 'messages'), (o) => o < st.committed || st.acked.has(o))) pending.add(id);
  }
  return (await idsIn(path.join(dataDir, 'queues', queue, 'messages'))).filter((id) => pending.has(id)).length;
}

describe('delay: SIGKILL', () => {
  it('every confirmed delayed message reaches each bound queue exactly once across two kills, and late ones fire on time after reopen', async () => {
    // Child 1 publishes 1,500 (half due together at +700 ms, half random within 1.5 s) and is killed at the first delivery of the burst; child 2 reopens and is killed at its first delivery (an overdue fire at startup); the parent reopens, waits for all due times, and counts ids per queue with fresh groups from earliest.
    assertDistFresh();
    const dataDir = h.dir('spool-time-crash-');
    const confirmed = new Map<string, number>();
    let window = 0;
    for (const tag of ['c1', 'c2']) {
      const burstAt = Date.now() + 700;
      let sawDelivery = false;
      const res = await runChild({ mode: 'delays', dataDir, count: 1500, burstAt, tag }, (line) => {
        const [kind, id, at] = line.split(' ');
        if (kind === 'P') confirmed.set(id!, Number(at));
        if (kind === 'D') {
          sawDelivery = true;
          // c1: kill inside the burst (many fires between routing and marking done); c2: at its first delivery (startup fires of c1's leftovers).
          return tag === 'c2' || (id!.startsWith('c1-') && Number(id!.split('-')[1]) % 2 === 0);
        }
        return false;
      });
      expect(res.stderr, `child ${tag} stderr`).toBe('');
      expect(res.killedByUs, `child ${tag} was killed by the test (ended ${res.ended})`).toBe(true);
      expect(sawDelivery).toBe(true);
      window += await routedButPending(dataDir, 'qa');
    }
    const latest = Math.max(...confirmed.values());
    expect(confirmed.size, 'confirmed delayed publishes before the kills').toBeGreaterThan(500);

    const b = await h.openBroker({ dataDir });
    const reopenedAt = Date.now();
    const seen: Record<'qa' | 'qb', Map<string, number[]>> = { qa: new Map(), qb: new Map() };
    for (const q of ['qa', 'qb'] as const) {
      await b.consume(
        q,
        (msg) => {
          const arr = seen[q].get(msg.id) ?? [];
          arr.push(Date.now());
          seen[q].set(msg.id, arr);
        },
        { group: 'audit', from: 'earliest', prefetch: 1000 },
      );
    }
    const deadline = Math.max(latest, reopenedAt) + 5000;
    while ([...confirmed.keys()].some((id) => !seen.qa.has(id) || !seen.qb.has(id)) && Date.now() < deadline) await sleep(20);
    await sleep(300); // a double would show up meanwhile

    for (const q of ['qa', 'qb'] as const) {
      const missing = [...confirmed.keys()].filter((id) => !seen[q].has(id));
      const doubled = [...seen[q]].filter(([, ts]) => ts.length > 1).map(([id]) => id);
      const unknown = [...seen[q].keys()].filter((id) => !confirmed.has(id) && !/^c[12]-\d+$/.test(id));
      expect({ q, missing: missing.slice(0, 5), missingCount: missing.length, doubled: doubled.slice(0, 5), unknown }, `kills landed between routing and marking fired for ${window} messages`).toEqual({
        q,
        missing: [],
        missingCount: 0,
        doubled: [],
        unknown: [],
      });
    }
    // Not early, and on time, for everything still pending at reopen.
    const late: number[] = [];
    for (const [id, due] of confirmed) {
      if (due <= reopenedAt + 50) continue;
      const t = seen.qa.get(id)![0]!;
      late.push(t - due);
    }
    if (late.length > 0) {
      // -1: the delay store's 2 ms wheel tick rounds due times down (reported bug "timers fire up to one tick early").
      expect(Math.min(...late), 'earliest arrival relative to deliverAt (ms)').toBeGreaterThanOrEqual(-1);
      // Generous: the reopened broker re-fires ~750 overdue messages (each read alone from its bucket, ~1-2k fires/s
      // measured by bench/delay.ts) while two groups read 3,000 records; 500 ms was exceeded under a loaded full run.
      expect(Math.max(...late), 'latest arrival relative to deliverAt (ms)').toBeLessThan(2000);
    }
    expect(b.stats().scheduled).toBe(0);
  });
});
