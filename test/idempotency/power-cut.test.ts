// Power cuts at random moments (seeded; the seed is printed on failure): concurrent claims, completes, releases, rolls, seals and merges run over the fault-injecting storage, which loses, tears or keeps each unsynced write; after every cut the reopened store must still hold every confirmed completion and every acknowledged live lease, and must never hand out 'acquired' for a key that is done.
import { afterAll, describe, expect, it } from 'vitest';
import { SpoolError } from '../../src/errors.js';
import type { OpenMode, Storage, StorageFile } from '../../src/log/index.js';
import { IdempotencyStore } from '../../src/idempotency/index.js';
import { FaultyStorage, seededRandom } from '../support/faulty-storage.js';
import { HOUR, T0, fakeClock } from './helpers.js';

const SEED = Number(process.env.SPOOL_IDEM_SEED ?? Math.floor(Math.random() * 0x7fffffff));
const CYCLES = Number(process.env.SPOOL_IDEM_CYCLES ?? 60);
const KEYS = Number(process.env.SPOOL_IDEM_KEYS ?? 2000);
const TRACE = process.env.SPOOL_IDEM_TRACE;

/**
 * One incarnation's view of the disk. `kill(cut)` marks the process dead (every later call fails,
 * so promises of the dead store that are still running cannot touch the next incarnation's disk)
 * and runs the power cut once no call is inside the fake disk: a call that started before death
 * completes first, as a real write would have reached the page cache before the power went.
 */
class KillableStorage implements Storage {
  dead = false;
  trace = false;
  private inflight = 0;
  private pendingCut: (() => void) | null = null;
  constructor(private readonly inner: Storage) {}

  kill(cut: () => void): void {
    this.dead = true;
    this.pendingCut = cut;
    this.maybeCut();
  }

  private maybeCut(): void {
    if (this.pendingCut !== null && this.inflight === 0) {
      const cut = this.pendingCut;
      this.pendingCut = null;
      cut();
    }
  }

  private async call<R>(name: string, what: string, fn: () => Promise<R>): Promise<R> {
    if (this.trace) console.log(`io ${name} ${what} dead=${this.dead}`);
    if (this.dead) throw Object.assign(new Error('EIO: the process is dead'), { code: 'EIO' });
    this.inflight++;
    try {
      const r = await fn();
      if (this.dead) throw Object.assign(new Error('EIO: the process died during the call'), { code: 'EIO' });
      return r;
    } finally {
      this.inflight--;
      this.maybeCut();
    }
  }

  async open(p: string, mode: OpenMode): Promise<StorageFile> {
    const f = await this.call('open', p, () => this.inner.open(p, mode));
    return {
      path: f.path,
      read: (b, o, l, pos) => this.call('read', p, () => f.read(b, o, l, pos)),
      writev: (bufs, pos) => this.call('writev', `${p} ${bufs.reduce((n, b) => n + b.length, 0)}@${pos}`, () => f.writev(bufs, pos)),
      sync: () => this.call('sync', p, () => f.sync()),
      truncate: (len) => this.call('truncate', p, () => f.truncate(len)),
      size: () => this.call('size', p, () => f.size()),
      close: () => f.close().catch(() => {}),
    };
  }
  readdir(d: string) {
    return this.call('readdir', d, () => this.inner.readdir(d));
  }
  mkdir(d: string) {
    return this.call('mkdir', d, () => this.inner.mkdir(d));
  }
  rename(a: string, b: string) {
    return this.call('rename', `${a} ${b}`, () => this.inner.rename(a, b));
  }
  unlink(p: string) {
    return this.call('unlink', p, () => this.inner.unlink(p));
  }
  syncDir(d: string) {
    return this.call('syncDir', d, () => this.inner.syncDir(d));
  }
  exists(p: string) {
    return this.call('exists', p, () => this.inner.exists(p));
  }
}

interface Model {
  /**
   * Keys whose completion was confirmed (or observed), with the stored result and the bounds of
   * its expiry: the completion time lies between the call's start and end, so the key must be
   * done before `earliest` and must be expired from `latest` on.
   */
  done: Map<string, { result: string; earliest: number; latest: number }>;
  /** Completions in flight at a cut (result → call start): each may or may not have become durable. */
  maybeDone: Map<string, Map<string, number>>;
  /** Acknowledged leases: the earliest their expiry can be (claim start + ttl). */
  leased: Map<string, number>;
  /** Keys whose lease state is uncertain (a release or complete was in flight at a cut). */
  leaseUncertain: Set<string>;
}

describe('power cuts', () => {
  afterAll(() => {
    // Printed always, so a failure elsewhere in the file can be replayed too.
    console.log(`power-cut seed ${SEED} (SPOOL_IDEM_SEED=${SEED} SPOOL_IDEM_CYCLES=${CYCLES} to replay)`);
  });

  it(`${CYCLES} cycles of concurrent work and a cut at a random moment lose no confirmed completion`, async () => {
    // Proves the crash-safety contract under torn and lost writes (not just SIGKILL): durable-before-ack for complete and claim, journal/table publication order, recovery of every crash point, across seeds.
    const rng = seededRandom(SEED);
    const disk = new FaultyStorage();
    disk.mkdirRaw('/store');
    const clock = fakeClock();
    const m: Model = { done: new Map(), maybeDone: new Map(), leased: new Map(), leaseUncertain: new Set() };
    const violations: string[] = [];
    let cuts = 0;
    let expiredTables = 0;
    let sealsAndMerges = 0;
    /** When the last cut happened (completions in flight then finished, if at all, by this time). */
    let cutAt = 0;
    let torn = 0;
    const RETENTION = 90 * 60_000;
    const opts = { dir: '/store', clock, retentionMs: RETENTION, bucketMs: 20 * 60_000, journalKeysMax: 40, mergeFanIn: 2, maintenanceIntervalMs: 0 };

    for (let cycle = 0; cycle < CYCLES; cycle++) {
      const storage = new KillableStorage(disk);
      storage.trace = process.env.SPOOL_IDEM_IOTRACE === String(cycle);
      let s: IdempotencyStore;
      try {
        s = await IdempotencyStore.open({ ...opts, storage });
      } catch (err) {
        throw new Error(`cycle ${cycle} (seed ${SEED}): recovery failed: ${(err as Error).stack}\nfiles: ${disk.listFiles().join(", ")}`);
      }
      torn += s.recovery.truncatedBytes > 0 ? 1 : 0;
      if (TRACE !== undefined) console.log(`cycle ${cycle} t=${clock.now()} open: ${JSON.stringify(s.recovery)} ${TRACE}=${JSON.stringify(await s.lookup(TRACE))} files=${disk.listFiles().join(',')}`);
      // ---- check the reopened store against the model
      const now = clock.now();
      for (const [key, d] of m.done) {
        const r = await s.lookup(key);
        if (now < d.earliest) {
          if (typeof r !== 'object' || r.result !== d.result) violations.push(`cycle ${cycle}: confirmed ${key}=${d.result} reads back ${JSON.stringify(r)}`);
        } else if (now >= d.latest) {
          if (typeof r === 'object' && r.result === d.result) violations.push(`cycle ${cycle}: ${key}=${d.result} outlived its window`);
          m.done.delete(key);
        } else if (typeof r !== 'object') {
          m.done.delete(key);
        }
      }
      for (const [key, results] of m.maybeDone) {
        const r = await s.lookup(key);
        if (typeof r === 'object') {
          const start = results.get(r.result as string);
          if (start === undefined) {
            // Not the in-flight completion's result: then it must be the confirmed one it raced with.
            if (m.done.get(key)?.result !== r.result) violations.push(`cycle ${cycle}: ${key} done with ${String(r.result)}, never written`);
          } else m.done.set(key, { result: r.result as string, earliest: start + RETENTION, latest: cutAt + RETENTION });
        }
      }
      m.maybeDone.clear();
      for (const [key, earliestExpiry] of m.leased) {
        if (m.done.has(key)) continue;
        if (m.leaseUncertain.has(key)) {
          // A release or complete was in flight at the cut: the store's answer now settles it.
          if ((await s.lookup(key)) !== 'in-progress') m.leased.delete(key);
          continue;
        }
        if (earliestExpiry > now && (await s.lookup(key)) !== 'in-progress') violations.push(`cycle ${cycle}: acknowledged lease on ${key} lost`);
      }
      expect(violations, `seed ${SEED}`).toEqual([]);
      m.leaseUncertain.clear();

      // ---- concurrent work; the cut comes after a random number of settled operations
      const cutAfter = Math.floor(rng() * 120);
      let settled = 0;
      let cut = false;
      const inFlight = new Map<number, { key: string; op: string; result?: string; start: number }>();
      let opSeq = 0;
      const doCut = () => {
        if (cut) return;
        cut = true;
        cutAt = clock.now();
        const clean = rng() >= 0.8;
        storage.kill(() => {
          if (clean) disk.crashClean();
          else disk.crash(rng);
          cuts++;
          if (storage.trace) console.log('io CUT');
        });
        if (TRACE !== undefined) console.log(`cycle ${cycle} cut; in flight: ${[...inFlight.values()].map((f) => `${f.op} ${f.key}`).join(', ')}`);
        for (const f of inFlight.values()) {
          if (f.op === 'complete') {
            let set = m.maybeDone.get(f.key);
            if (set === undefined) m.maybeDone.set(f.key, (set = new Map()));
            set.set(f.result as string, f.start);
          }
          m.leaseUncertain.add(f.key);
        }
      };
      const track = async <T>(key: string, op: string, result: string | undefined, p: () => Promise<T>): Promise<T | undefined> => {
        const id = opSeq++;
        inFlight.set(id, { key, op, result, start: clock.now() });
        try {
          const r = await p();
          if (TRACE === key) console.log(`cycle ${cycle} t=${clock.now()} ${op} ${key} -> ${JSON.stringify(r)} cut=${cut}`);
          return r;
        } catch (err) {
          if (!cut && !(err instanceof SpoolError)) throw err;
          if (!cut) violations.push(`cycle ${cycle}: ${op} ${key} failed before any cut: ${(err as Error).message}`);
          return undefined;
        } finally {
          inFlight.delete(id);
          if (!cut && ++settled >= cutAfter) doCut();
        }
      };
      const actor = async (a: number) => {
        for (let step = 0; step < 40 && !cut; step++) {
          const key = `k${Math.floor(rng() * KEYS)}`;
          const roll = rng();
          if (roll < 0.05) {
            await track('-', 'maintain', undefined, () => s.maintain());
            continue;
          }
          if (roll < 0.08) {
            clock.advance(Math.floor(rng() * 5 * 60_000));
            continue;
          }
          const start = clock.now();
          const ttl = 1000 + Math.floor(rng() * 30 * 60_000);
          const c = await track(key, 'claim', undefined, () => s.claim(key, { ttlMs: ttl }));
          const end = clock.now();
          if (c === undefined || cut) return;
          if (c === 'acquired') {
            const d = m.done.get(key);
            // The store's clock read lies in [start, end]; before `earliest` the key cannot have expired.
            if (d !== undefined && end < d.earliest) violations.push(`cycle ${cycle}: ${key} handed out 'acquired' though confirmed done`);
            m.done.delete(key);
            const held = m.leased.get(key);
            if (held !== undefined && held > end && !m.leaseUncertain.has(key)) violations.push(`cycle ${cycle}: ${key} acquired while a live lease was acknowledged`);
            m.leased.set(key, start + ttl);
            const next = rng();
            if (next < 0.7) {
              const result = `${key}@${cycle}.${a}.${step}`;
              const cstart = clock.now();
              const r = await track(key, 'complete', result, () => s.complete(key, result));
              if (r === 'completed') {
                m.done.set(key, { result, earliest: cstart + RETENTION, latest: clock.now() + RETENTION });
                m.leased.delete(key);
              }
              // 'already-done' is legitimate: a holder whose lease expired (the clock jumps) may
              // still complete the key while we hold the new lease (leases carry no fencing token).
            } else if (next < 0.85) {
              const r = await track(key, 'release', undefined, () => s.release(key));
              if (r === 'released') m.leased.delete(key);
            }
          } else if (typeof c === 'object') {
            const known = m.done.get(key);
            if (known !== undefined && c.result !== known.result) violations.push(`cycle ${cycle}: ${key} done with ${String(c.result)}, expected ${known.result}`);
            if (known === undefined) violations.push(`cycle ${cycle}: ${key} done but no completion of it was confirmed`);
            if (known !== undefined && start >= known.latest) violations.push(`cycle ${cycle}: ${key} still done after its window`);
          }
        }
      };
      await Promise.all(Array.from({ length: 6 }, (_, a) => actor(a)));
      if (!cut) {
        // Everything settled before the chosen moment: cut now (an idle cut).
        doCut();
      }
      expiredTables += s.stats().expiredTables;
      sealsAndMerges += s.stats().seals + s.stats().merges;
      await s.close().catch(() => {});
      expect(violations, `seed ${SEED}`).toEqual([]);
    }
    if (process.env.SPOOL_IDEM_DEBUG) console.log({ cuts, torn, done: m.done.size, leased: m.leased.size, hours: (clock.now() - T0) / HOUR, expiredTables, sealsAndMerges });
    expect(cuts).toBe(CYCLES);
    expect(m.done.size).toBeGreaterThan(20);
    // The work must have reached every kind of crash point, or this test proves little: rolls,
    // seals and merges ran, and retention deleted tables.
    expect(sealsAndMerges).toBeGreaterThan(0);
    expect(expiredTables).toBeGreaterThan(0);
  });
});
