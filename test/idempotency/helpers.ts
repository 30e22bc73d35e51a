// Shared plumbing of the idempotency store tests: temp dirs, a hand-moved clock, stores that are
// always closed, and a check that the compiled library a child process imports is fresh.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IdempotencyStore, type IdempotencyStoreOptions } from '../../src/idempotency/index.js';
import { assertDistFreshFor } from '../support/dist-fresh.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..');

export const T0 = 1_700_000_000_000;
export const HOUR = 3_600_000;
export const DAY = 24 * HOUR;

export interface FakeClock {
  t: number;
  now(): number;
  advance(ms: number): void;
}

export function fakeClock(start = T0): FakeClock {
  const c: FakeClock = {
    t: start,
    now: () => c.t,
    advance: (ms) => {
      c.t += ms;
    },
  };
  return c;
}

/** Owns temp dirs and stores; `cleanup()` (afterEach) closes what is still open and removes the dirs. */
export class StoreHarness {
  private readonly dirs: string[] = [];
  private readonly open = new Set<IdempotencyStore>();

  dir(prefix = 'spool-idem-'): string {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    this.dirs.push(d);
    return d;
  }

  /** Opens a store with maintenance left to the test (maintenanceIntervalMs 0) unless asked otherwise. */
  async openStore(options: Partial<IdempotencyStoreOptions> = {}): Promise<IdempotencyStore> {
    const s = await IdempotencyStore.open({ maintenanceIntervalMs: 0, ...options, dir: options.dir ?? this.dir() });
    this.open.add(s);
    return s;
  }

  async close(s: IdempotencyStore): Promise<void> {
    this.open.delete(s);
    await s.close();
  }

  async reopen(s: IdempotencyStore, options: Partial<IdempotencyStoreOptions> = {}): Promise<IdempotencyStore> {
    await this.close(s);
    return this.openStore({ ...options, dir: s.dir });
  }

  async cleanup(): Promise<void> {
    for (const s of [...this.open]) {
      this.open.delete(s);
      await s.close().catch(() => {});
    }
    for (const d of this.dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  }
}

/** Files of a store directory by kind. */
export function listStore(dir: string): { journals: string[]; tables: string[]; other: string[] } {
  const out = { journals: [] as string[], tables: [] as string[], other: [] as string[] };
  for (const n of fs.readdirSync(dir).sort()) {
    if (n.endsWith('.jnl')) out.journals.push(n);
    else if (n.endsWith('.tbl')) out.tables.push(n);
    else out.other.push(n);
  }
  return out;
}

/** Throws when the compiled store a child process imports is missing or older than its sources. */
export function assertDistFresh(): void {
  assertDistFreshFor(['src/idempotency', 'src/log', 'src/broker'], "the crash test's child process");
}

