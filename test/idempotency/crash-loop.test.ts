// Proves crash safety with real processes: 24 children (16 concurrent workers each, claiming new, hot and previously completed keys) share one store directory and are SIGKILLed 20–350 ms after opening it; no key whose completion a child confirmed is ever handed out as 'acquired' again (by later children or by this process at the end), every 'done' carries the right result, and the leases of killed holders stay in-progress until their expiry and then expire.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { IdempotencyStore } from '../../src/idempotency/index.js';
import { seededRandom } from '../support/faulty-storage.js';
import { StoreHarness, assertDistFresh } from './helpers.js';

const CHILD = path.join(path.dirname(new URL(import.meta.url).pathname), 'support', 'crash-child.mjs');
const CYCLES = Number(process.env.SPOOL_IDEM_CRASH_CYCLES ?? 24);
const SEED = Number(process.env.SPOOL_IDEM_CRASH_SEED ?? Math.floor(Math.random() * 0x7fffffff));

const h = new StoreHarness();
const live = new Set<ChildProcess>();

function killAll(): void {
  for (const p of live) {
    if (p.pid !== undefined && p.exitCode === null && p.signalCode === null) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  live.clear();
}

beforeAll(() => assertDistFresh());
afterEach(() => killAll());
afterAll(async () => {
  killAll();
  await h.cleanup();
  console.log(`crash-loop seed ${SEED} (SPOOL_IDEM_CRASH_SEED=${SEED} to replay the kill schedule)`);
});

interface Outcome {
  lines: string[][];
  opened: boolean;
  error: string | null;
}

/** Runs one child; SIGKILLs it `killAfterMs` after it reports the store open. */
function runChild(cfg: object, killAfterMs: number): Promise<Outcome> {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const proc = spawn(process.execPath, [CHILD, JSON.stringify(cfg)], { stdio: ['ignore', 'pipe', 'pipe'], env });
  live.add(proc);
  const out: Outcome = { lines: [], opened: false, error: null };
  let partial = '';
  let stderr = '';
  let killedByUs = false;
  const kill = () => {
    killedByUs = true;
    proc.kill('SIGKILL');
  };
  const watchdog = setTimeout(() => {
    out.error = `child did not open the store within 10 s`;
    kill();
  }, 10_000);
  proc.stdout!.setEncoding('utf8');
  proc.stdout!.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n');
    partial = parts.pop() ?? ''; // a line cut by the kill was not written whole: ignore it
    for (const l of parts) {
      const f = l.split(' ');
      out.lines.push(f);
      if (f[0] === 'O' && !out.opened) {
        out.opened = true;
        clearTimeout(watchdog);
        setTimeout(kill, killAfterMs);
      }
    }
  });
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (c: string) => {
    stderr += c;
  });
  return new Promise((resolve) => {
    proc.on('close', (code, signal) => {
      clearTimeout(watchdog);
      live.delete(proc);
      if (out.error === null && (!killedByUs || signal !== 'SIGKILL')) out.error = `child ended on its own (code ${code}, signal ${signal}): ${stderr}`;
      else if (out.error === null && stderr.length > 0) out.error = `child wrote to stderr: ${stderr}`;
      resolve(out);
    });
  });
}

describe('SIGKILL crash loop', () => {
  it(`${CYCLES} killed children never re-acquire a confirmed key; dead holders' leases hold, then expire`, async () => {
    const rnd = seededRandom(SEED);
    const dir = h.dir('spool-idem-crash-');
    /** Key → result of every completion a child confirmed (C line). */
    const confirmed = new Set<string>();
    /** Leases held by killed children: key → (lease lasts at least until, what the holder was doing). */
    let orphans = new Map<string, { notBefore: number; intent: string }>();
    const allOrphans = new Map<string, number>();
    const violations: string[] = [];
    let acquired = 0;
    let dones = 0;
    let probesChecked = 0;

    for (let cycle = 0; cycle < CYCLES; cycle++) {
      const reuse = [...confirmed].sort(() => rnd() - 0.5).slice(0, 300);
      const probes = [...orphans.entries()].map(([k, o]) => [k, o.notBefore]);
      const out = await runChild({ dir, cycle, seed: Math.floor(rnd() * 2 ** 31), reuse, probes }, 20 + Math.floor(rnd() * 330));
      expect(out.error, `cycle ${cycle} (seed ${SEED})`).toBeNull();
      expect(out.opened).toBe(true);
      const held = new Map<string, { notBefore: number; intent: string }>();
      for (const f of out.lines) {
        const [kind, key = '', a = '', b = ''] = f;
        switch (kind) {
          case 'A':
            acquired++;
            if (confirmed.has(key)) violations.push(`cycle ${cycle}: ${key} acquired again after a confirmed complete`);
            held.set(key, { notBefore: Number(a), intent: 'deciding' });
            break;
          case 'X': {
            const l = held.get(key);
            if (l !== undefined) l.intent = a;
            break;
          }
          case 'C':
            confirmed.add(key);
            held.delete(key);
            break;
          case 'R':
            held.delete(key);
            break;
          case 'D':
            dones++;
            if (a !== `r:${key}`) violations.push(`cycle ${cycle}: ${key} done with ${a}`);
            break;
          case 'PROBE': {
            const o = orphans.get(key);
            if (o === undefined) break;
            probesChecked++;
            // The lookup read its clock at or before `after`: if even that is before the lease's
            // earliest possible expiry, a dead holder's lease must still be there (or, if the holder
            // was completing, its completion may have become durable; if releasing, the release).
            const after = Number(b);
            const ok = after >= o.notBefore || a === 'in-progress' || (a === 'done' && o.intent === 'complete') || o.intent === 'release';
            if (!ok) violations.push(`cycle ${cycle}: lease of killed holder on ${key} (intent ${o.intent}) reads ${a} ${o.notBefore - after} ms before its expiry`);
            if (a === 'done') confirmed.add(key);
            break;
          }
          default:
            break;
        }
      }
      orphans = held;
      for (const [k, o] of held) allOrphans.set(k, o.notBefore);
    }
    expect(violations, `seed ${SEED}`).toEqual([]);
    expect(acquired).toBeGreaterThan(CYCLES * 20);
    expect(dones).toBeGreaterThan(0);
    expect(confirmed.size).toBeGreaterThan(CYCLES * 10);

    // Finally, in this process: every confirmed key is done with its result; every dead holder's
    // lease has expired by now (or its completion landed), so those keys are claimable.
    const latest = Math.max(0, ...allOrphans.values());
    if (latest > Date.now()) await new Promise((r) => setTimeout(r, latest - Date.now() + 5));
    const store = await IdempotencyStore.open({ dir, retentionMs: 3_600_000, bucketMs: 400, maintenanceIntervalMs: 0 });
    try {
      for (const key of confirmed) {
        const r = await store.claim(key, { ttlMs: 1000 });
        if (typeof r !== 'object' || r.result !== `r:${key}`) violations.push(`final: confirmed ${key} claims as ${JSON.stringify(r)}`);
      }
      for (const key of allOrphans.keys()) {
        if (confirmed.has(key)) continue;
        const r = await store.claim(key, { ttlMs: 1000 });
        if (r === 'in-progress') violations.push(`final: the lease of a dead holder on ${key} never expired`);
      }
    } finally {
      await store.close();
    }
    expect(violations, `seed ${SEED}`).toEqual([]);
    console.log(`crash loop: ${CYCLES} kills, ${acquired} acquired, ${confirmed.size} confirmed, ${dones} done answers, ${probesChecked} orphan-lease probes, ${allOrphans.size} orphan leases`);
  });
});
