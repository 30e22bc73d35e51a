// Shared plumbing for the broker semantics tests: real temp dirs, brokers that are always closed,
// a controllable clock, polling waits, stable-error-code assertions and data-dir snapshots.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { Broker, type BrokerOptions } from '../../src/broker/broker.js';
import type { Message } from '../../src/broker/delivery.js';
import { SpoolError, type SpoolErrorCode } from '../../src/errors.js';
import type { Clock } from '../../src/log/index.js';
import { assertDistFreshFor } from './dist-fresh.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..');
export const DIST_BROKER = path.join(REPO_ROOT, 'dist', 'src', 'broker', 'broker.js');

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A fresh directory under the OS temp dir. */
export function makeTempDir(prefix = 'spool-sem-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A clock the test moves by hand. */
export interface FakeClock extends Clock {
  t: number;
  advance(ms: number): void;
}

export function fakeClock(start = 1_700_000_000_000): FakeClock {
  const c: FakeClock = {
    t: start,
    now: () => c.t,
    advance: (ms: number) => {
      c.t += ms;
    },
  };
  return c;
}

/**
 * Owns every broker and temp dir a test makes; `cleanup()` (call it from afterEach) closes the
 * brokers still open and removes the dirs, so a failing assertion never leaks a lock or a file.
 */
export class BrokerHarness {
  private readonly dirs: string[] = [];
  private readonly open = new Set<Broker>();

  /** A new empty temp dir, removed at cleanup. */
  dir(prefix?: string): string {
    const d = makeTempDir(prefix);
    this.dirs.push(d);
    return d;
  }

  /** Opens a broker (on a new temp dir unless one is given) and tracks it. */
  async openBroker(options: BrokerOptions = {}): Promise<Broker> {
    const b = await Broker.open({ ...options, dataDir: options.dataDir ?? this.dir() });
    this.open.add(b);
    return b;
  }

  /** Closes a broker and opens the same data dir again (a clean restart). */
  async restart(b: Broker, options: BrokerOptions = {}): Promise<Broker> {
    await this.close(b);
    return this.openBroker({ ...options, dataDir: b.dataDir });
  }

  async close(b: Broker): Promise<void> {
    this.open.delete(b);
    await b.close();
  }

  async cleanup(): Promise<void> {
    const errors: unknown[] = [];
    for (const b of [...this.open]) {
      this.open.delete(b);
      await b.close().catch((err: unknown) => errors.push(err));
    }
    for (const d of this.dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
    if (errors.length > 0) throw errors[0];
  }
}

/** Polls `cond` until it holds; fails naming `what` after `timeoutMs`. */
export async function waitFor(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** Rejects when `p` has not settled within `ms` (so a hung for-await loop fails instead of stalling). */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits until group `g` of queue `q` has committed at least `n`. */
export async function waitForCommitted(b: Broker, q: string, g: string, n: number, timeoutMs = 5000): Promise<void> {
  await waitFor(() => (b.queueStats(q).groups[g]?.committed ?? -1) >= n, `group ${g} of ${q} to commit ${n} (at ${b.queueStats(q).groups[g]?.committed})`, timeoutMs);
}

/** Runs `action` and asserts it fails (synchronously or not) with a SpoolError of `code`. */
export async function expectCode(action: () => unknown, code: SpoolErrorCode): Promise<SpoolError> {
  let failed = false;
  let err: unknown;
  try {
    await action();
  } catch (e) {
    failed = true;
    err = e;
  }
  if (!failed) throw new Error(`expected ${code}, but the call succeeded`);
  if (!(err instanceof SpoolError)) throw new Error(`expected SpoolError ${code}, got ${String(err)}`, { cause: err });
  expect(err.code, err.message).toBe(code);
  return err;
}

/** Every entry below `dir` (relative path → 'dir' or a hash of the file's bytes). */
export function snapshotTree(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const full = path.join(d, e.name);
      const rel = path.relative(dir, full);
      if (e.isDirectory()) {
        out.set(rel, 'dir');
        walk(full);
      } else {
        out.set(rel, crypto.createHash('sha1').update(fs.readFileSync(full)).digest('hex'));
      }
    }
  };
  walk(dir);
  return out;
}

/** Collects deliveries from one or more consumers, tagging each with who received it. */
export class Inbox {
  readonly got: { who: string; msg: Message }[] = [];

  /** A handler that records the message (under `who`) and then runs `then`. */
  handler(who = 'c', then?: (msg: Message) => unknown) {
    return (msg: Message) => {
      this.got.push({ who, msg });
      return then?.(msg);
    };
  }

  get messages(): Message[] {
    return this.got.map((g) => g.msg);
  }

  bodies(who?: string): string[] {
    return this.got.filter((g) => who === undefined || g.who === who).map((g) => g.msg.body.toString());
  }

  async waitForCount(n: number, timeoutMs = 5000): Promise<void> {
    await waitFor(() => this.got.length >= n, `${n} deliveries (have ${this.got.length})`, timeoutMs);
  }

  /** Waits `ms` and asserts the number of deliveries stayed at `n`. */
  async expectStays(n: number, ms = 150): Promise<void> {
    await sleep(ms);
    expect(this.got.length, `deliveries after waiting ${ms} ms`).toBe(n);
  }
}

/** Publishes `bodies` to a queue through the default exchange, one after another. */
export async function sendAll(broker: Broker, queue: string, bodies: string[]): Promise<string[]> {
  const ids: string[] = [];
  for (const b of bodies) {
    const r = await broker.sendToQueue(queue, b);
    expect(r.status).toBe('confirmed');
    ids.push(r.id);
  }
  return ids;
}

export const range = (n: number, prefix = 'm'): string[] => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

/** Throws when the compiled broker a child process imports is missing or older than its sources. */
export function assertDistFresh(): void {
  assertDistFreshFor(['src/broker', 'src/log'], 'the child process');
}
