// Shared plumbing of the time-driven tests (test/broker/time-*.test.ts): brokers on a fake clock
// whose own timers never run (the test calls runTimers), x-death access, event recorders, and a
// spawner for the time-child.mjs child processes that SIGKILLs them on a plan.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Broker, BrokerOptions, DeathRecord } from '../../src/broker/broker.js';
import type { Message } from '../../src/broker/delivery.js';
import { nodeStorage, type Storage, type StorageFile } from '../../src/log/index.js';
import { type BrokerHarness, type FakeClock, fakeClock, sleep } from './broker-helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const TIME_CHILD = path.join(here, 'time-child.mjs');

/** Longest setInterval node accepts: the broker's own ticker and lock sweeper then never run. */
export const NEVER_MS = 2 ** 31 - 1;

/**
 * A broker on `clock` (a new fake one by default) whose timers run when the test calls `runTimers`.
 * (The delay store's wake timer waits real milliseconds, but fires only what the fake clock says is due.)
 */
export async function openFake(h: BrokerHarness, clock: FakeClock = fakeClock(), options: BrokerOptions = {}): Promise<{ b: Broker; clock: FakeClock }> {
  const b = await h.openBroker({ clock, tickIntervalMs: NEVER_MS, sweepIntervalMs: NEVER_MS, ...options });
  return { b, clock };
}

/** Sets the fake clock to `t` and runs the broker's due timers once. */
export async function at(b: Broker, clock: FakeClock, t: number): Promise<void> {
  clock.t = t;
  await b.runTimers();
}

/** Records the broker's 'drop' and 'deadLetter' events. */
export function recordEvents(b: Broker) {
  const drops: { queue: string; group: string; id: string; offset: number; reason: string }[] = [];
  const deadLetters: { queue: string; group: string; id: string; reason: string; exchange: string; queues: string[] }[] = [];
  const errors: Error[] = [];
  b.on('drop', (e) => drops.push(e));
  b.on('deadLetter', (e) => deadLetters.push(e));
  b.on('error', (e) => errors.push(e));
  return { drops, deadLetters, errors };
}

/** The x-death list of a dead-lettered message (newest first). */
export function xDeath(msg: Message): DeathRecord[] {
  const d = msg.headers['x-death'];
  if (!Array.isArray(d)) throw new Error(`message ${msg.id} has no x-death header: ${JSON.stringify(msg.headers)}`);
  return d as unknown as DeathRecord[];
}

/** Every record a brand-new group sees from the start of `queue` (read with a consumer, then closed). */
export async function readAll(b: Broker, queue: string, group: string, expected: number, timeoutMs = 5000): Promise<Message[]> {
  const got: Message[] = [];
  const c = await b.consume(queue, (m) => void got.push(m), { group, from: 'earliest', prefetch: 1000 });
  const deadline = Date.now() + timeoutMs;
  while (got.length < expected && Date.now() < deadline) await sleep(5);
  await sleep(30); // anything beyond `expected` shows up too
  await c.close();
  return got;
}

/** Lateness statistics (ms). */
export function stats(xs: readonly number[]): { n: number; min: number; p50: number; p99: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] as number;
  return { n: s.length, min: s[0] as number, p50: q(50), p99: q(99), max: s[s.length - 1] as number };
}

/** Open file descriptors of this process (Linux). */
export function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

// ---- child processes (test/support/time-child.mjs) ----

const live = new Set<ChildProcess>();

/** SIGKILLs every child still running, by pid; for afterEach. */
export function killChildren(): void {
  for (const proc of live) {
    if (proc.pid !== undefined && proc.exitCode === null && proc.signalCode === null) {
      try {
        process.kill(proc.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  live.clear();
}

export interface ChildResult {
  lines: string[];
  /** 'SIGKILL' when it was killed (by us or by itself), else its exit code. */
  ended: string;
  killedByUs: boolean;
  stderr: string;
}

/**
 * Runs time-child.mjs with `cfg`. `onLine` sees each complete stdout line and returns true to have
 * the child SIGKILLed at once, or a number of ms to kill it that much later. Rejects when the child
 * outlives `timeoutMs`.
 */
export function runChild(cfg: Record<string, unknown>, onLine: (line: string) => boolean | number, timeoutMs = 20_000): Promise<ChildResult> {
  const env = { ...process.env };
  delete env.NODE_OPTIONS; // vitest's loader hooks are not for the child
  const proc = spawn(process.execPath, [TIME_CHILD, JSON.stringify(cfg)], { stdio: ['ignore', 'pipe', 'pipe'], env });
  live.add(proc);
  const res: ChildResult = { lines: [], ended: '', killedByUs: false, stderr: '' };
  let partial = '';
  let killTimer: NodeJS.Timeout | null = null;
  const kill = () => {
    if (res.killedByUs) return;
    res.killedByUs = true;
    try {
      proc.kill('SIGKILL');
    } catch {
      // gone already
    }
  };
  proc.stdout!.setEncoding('utf8');
  proc.stdout!.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) {
      if (line.length === 0) continue;
      res.lines.push(line);
      if (res.killedByUs || killTimer !== null) continue;
      const verdict = onLine(line);
      if (verdict === true || verdict === 0) kill();
      else if (typeof verdict === 'number') killTimer = setTimeout(kill, verdict);
    }
  });
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (s: string) => {
    res.stderr += s;
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      kill();
      reject(new Error(`child ${String(cfg.mode)} still running after ${timeoutMs} ms; its last lines: ${res.lines.slice(-5).join(' | ')}; stderr: ${res.stderr}`));
    }, timeoutMs);
    proc.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    proc.on('close', (code, signal) => {
      clearTimeout(timer);
      if (killTimer !== null) clearTimeout(killTimer);
      live.delete(proc);
      res.ended = signal ?? String(code);
      resolve(res);
    });
  });
}

/** node:fs storage whose fsyncs of files under `dirPart` wait while `gate.closed`; `gate.waiting` counts blocked ones. */
export function gatedStorage(dirPart: string) {
  const gate = { closed: false, waiting: 0, release: () => {} };
  gate.release = () => {
    gate.closed = false;
  };
  const wrap = (f: StorageFile): StorageFile => ({
    get path() {
      return f.path;
    },
    read: (...a) => f.read(...a),
    writev: (...a) => f.writev(...a),
    truncate: (n) => f.truncate(n),
    size: () => f.size(),
    close: () => f.close(),
    sync: async () => {
      if (f.path.includes(dirPart)) {
        gate.waiting++;
        while (gate.closed) await sleep(2);
        gate.waiting--;
      }
      return f.sync();
    },
  });
  return { gate, storage: nodeStorageWith(wrap) };
}

/** node:fs storage whose opened files are passed through `wrap` (a test's seam on file calls). */
export function nodeStorageWith(wrap: (f: StorageFile) => StorageFile): Storage {
  return {
    open: async (p, mode) => wrap(await nodeStorage.open(p, mode)),
    readdir: (d) => nodeStorage.readdir(d),
    mkdir: (d) => nodeStorage.mkdir(d),
    rename: (a, b) => nodeStorage.rename(a, b),
    unlink: (p) => nodeStorage.unlink(p),
    syncDir: (d) => nodeStorage.syncDir(d),
    exists: (p) => nodeStorage.exists(p),
    rmdir: nodeStorage.rmdir === undefined ? undefined : (d) => nodeStorage.rmdir!(d),
  };
}
