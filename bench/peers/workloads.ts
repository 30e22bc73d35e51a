/**
 * The workloads every peer runs, and what a peer reports. A peer provides three operations (publish
 * one message and resolve on its confirm; drain n messages with acks; nothing else), and these
 * helpers time them the same way for all:
 *
 *   confirmed publish   `messages` bodies of `bodyBytes`, `window` publishes outstanding (msgs/s)
 *   drain with acks     the messages just published, consumed and acked (msgs/s)
 *   confirm latency     lone publishes, each awaited alone (p50, p99)
 *
 * Every workload is bounded in time (`maxSeconds`): a peer too slow for the full count reports
 * the rate over what it did, and says so.
 */
import { performance } from 'node:perf_hooks';
import { median, percentile } from '../lib/report.js';

export interface WorkloadParams {
  messages: number;
  bodyBytes: number;
  window: number;
  latencyIterations: number;
  /** Cap per timed workload, seconds. */
  maxSeconds: number;
  /** Untimed publishes + drain before the timed ones. */
  warmup: number;
}

export interface Figures {
  publishPerSec: number;
  published: number;
  publishSeconds: number;
  /** The publish workload stopped at maxSeconds. */
  publishCapped: boolean;
  drainPerSec: number;
  drained: number;
  drainSeconds: number;
  drainCapped: boolean;
  confirmP50Us: number;
  confirmP99Us: number;
  latencyIterations: number;
  /** Publishing through the peer's batch API, BATCH_SIZE messages a call (only peers that have one). */
  batchPublishPerSec?: number;
}

/** Messages per call in the batch-API workload. */
export const BATCH_SIZE = 1000;

/**
 * The batch-API workload: `total` messages in calls of BATCH_SIZE, `inFlight` calls at a time (1
 * for a synchronous API). The caller hands whole batches, so no per-message promise is involved.
 */
export async function pumpBatches(total: number, inFlight: number, maxSeconds: number, publishBatch: (first: number, count: number) => Promise<unknown>): Promise<{ count: number; seconds: number; capped: boolean }> {
  const t0 = performance.now();
  const deadline = t0 + maxSeconds * 1000;
  let next = 0;
  let done = 0;
  let capped = false;
  const lane = async (): Promise<void> => {
    while (next < total) {
      if (performance.now() > deadline) {
        capped = true;
        return;
      }
      const first = next;
      const count = Math.min(BATCH_SIZE, total - first);
      next += count;
      await publishBatch(first, count);
      done += count;
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  return { count: done, seconds: (performance.now() - t0) / 1000, capped };
}

export interface DelayFigures {
  messages: number;
  received: number;
  maxDelayMs: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Publishing the delayed messages, msgs/s. */
  schedulePerSec: number;
}

export interface PeerOutcome {
  key: string;
  name: string;
  version: string;
  /** What an acknowledgement of a publish guarantees, in words. */
  ackMeans: string;
  /** True when an acknowledged message survives a power loss (fsynced before the ack). */
  durableAtAck: boolean;
  figures?: Figures;
  /** Per-run figures when repeated. */
  runs?: Figures[];
  /** Peers whose runs took turns with this one's (run i of each made seconds apart): their ratios are judged run by run. */
  interleavedWith?: string[];
  delay?: DelayFigures;
  /** Why this peer (or a part of it) did not run. */
  error?: string;
  notes: string[];
}

/**
 * Calls `publishOne(i)` for i = 0..total-1 keeping `window` outstanding, stopping new calls after
 * `maxSeconds`. Returns how many resolved and the seconds taken.
 */
export async function pumpWindow(total: number, window: number, maxSeconds: number, publishOne: (i: number) => Promise<unknown>): Promise<{ count: number; seconds: number; capped: boolean }> {
  const t0 = performance.now();
  const deadline = t0 + maxSeconds * 1000;
  let issued = 0;
  let done = 0;
  let capped = false;
  await new Promise<void>((resolve, reject) => {
    let failed = false;
    let inFlight = 0;
    const issue = (): void => {
      if (failed) return;
      if (issued >= total || (issued > 0 && performance.now() > deadline)) {
        if (issued < total) capped = true;
        if (inFlight === 0) resolve();
        return;
      }
      const i = issued++;
      inFlight++;
      publishOne(i).then(
        () => {
          inFlight--;
          done++;
          issue();
        },
        (err: unknown) => {
          failed = true;
          reject(err);
        },
      );
    };
    for (let i = 0; i < window && i < total; i++) issue();
  });
  return { count: done, seconds: (performance.now() - t0) / 1000, capped };
}

/** Awaits `publishOne` alone `iterations` times; returns latencies in microseconds. */
export async function loneLatencies(iterations: number, maxSeconds: number, publishOne: (i: number) => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  const deadline = performance.now() + maxSeconds * 1000;
  for (let i = 0; i < iterations && performance.now() < deadline; i++) {
    const s = performance.now();
    await publishOne(i);
    out.push((performance.now() - s) * 1000);
  }
  return out;
}

/** Distinct bodies of `bytes` (printable, so peers that want text, e.g. JSON job data, get the same size). */
export function textBodies(count: number, bytes: number): string[] {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  const out: string[] = [];
  let x = 0x2545f491;
  for (let i = 0; i < count; i++) {
    let s = '';
    for (let j = 0; j < bytes; j++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      s += alphabet[(x >>> 0) % alphabet.length];
    }
    out.push(s);
  }
  return out;
}

/** Random delays in [0, maxMs], deterministic. */
export function randomDelays(count: number, maxMs: number): number[] {
  let x = 0x1234567;
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.push(Math.round(((x >>> 0) / 0xffffffff) * maxMs));
  }
  return out;
}

/** Messages, and their longest delay, in the untimed warm-up round of the delay workload. */
export const DELAY_WARMUP = { messages: 1000, maxDelayMs: 200 } as const;

/**
 * The delay workload, the same for every peer: `schedule(delayMs)` publishes a message due in
 * `delayMs` (resolving on the peer's confirm), whose consumer pushes its lateness (ms) onto
 * `lateness`. First an untimed warm-up round of DELAY_WARMUP messages, waited for until all have
 * fired and then forgotten, like the other workloads' warm-ups: the first delayed publishes of a
 * process run cold code, and the messages due while the timed round is still being published
 * (the shortest delays) set its p99. Then `delayMessages` with random delays of 0-`delayMaxMs`.
 */
export async function delayWorkload(
  p: Pick<WorkloadParams, 'window' | 'maxSeconds'> & { delayMessages: number; delayMaxMs: number },
  lateness: number[],
  schedule: (delayMs: number) => Promise<unknown>,
): Promise<DelayFigures> {
  const warm = randomDelays(DELAY_WARMUP.messages, DELAY_WARMUP.maxDelayMs);
  const warmed = await pumpWindow(warm.length, p.window, p.maxSeconds, (i) => schedule(warm[i] as number));
  await waitFor(() => lateness.length, warmed.count, 15_000, DELAY_WARMUP.maxDelayMs + 60_000);
  lateness.length = 0;
  const delays = randomDelays(p.delayMessages, p.delayMaxMs);
  const t0 = performance.now();
  const pub = await pumpWindow(delays.length, p.window, p.maxSeconds, (i) => schedule(delays[i] as number));
  const schedulePerSec = pub.count / ((performance.now() - t0) / 1000);
  await waitFor(() => lateness.length, pub.count, 15_000, p.delayMaxMs + 60_000);
  return delayFigures(lateness, pub.count, p.delayMaxMs, schedulePerSec);
}

export function delayFigures(lateness: readonly number[], messages: number, maxDelayMs: number, schedulePerSec: number): DelayFigures {
  return {
    messages,
    received: lateness.length,
    maxDelayMs,
    p50Ms: median(lateness),
    p99Ms: percentile(lateness, 99),
    maxMs: lateness.length > 0 ? Math.max(...lateness) : Number.NaN,
    schedulePerSec,
  };
}

/** Median of each numeric field over runs (the first run's booleans). */
export function medianFigures(runs: readonly Figures[]): Figures {
  const first = runs[0] as Figures;
  const m = (k: keyof Figures): number => median(runs.map((r) => r[k] as number));
  return {
    publishPerSec: m('publishPerSec'),
    published: m('published'),
    publishSeconds: m('publishSeconds'),
    publishCapped: runs.some((r) => r.publishCapped),
    drainPerSec: m('drainPerSec'),
    drained: m('drained'),
    drainSeconds: m('drainSeconds'),
    drainCapped: runs.some((r) => r.drainCapped),
    confirmP50Us: m('confirmP50Us'),
    confirmP99Us: m('confirmP99Us'),
    latencyIterations: first.latencyIterations,
    ...(first.batchPublishPerSec === undefined ? {} : { batchPublishPerSec: m('batchPublishPerSec') }),
  };
}

/** Resolves after `ms`, keeping the event loop alive. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Waits until `count()` reaches `target`, or no progress for `stallMs`, or `maxMs` in all; returns
 * whether the target was reached.
 */
export async function waitFor(count: () => number, target: number, stallMs: number, maxMs: number): Promise<boolean> {
  const t0 = Date.now();
  let last = count();
  let lastAt = t0;
  while (count() < target) {
    await sleep(20);
    const now = count();
    if (now !== last) {
      last = now;
      lastAt = Date.now();
    }
    if (Date.now() - lastAt > stallMs || Date.now() - t0 > maxMs) return false;
  }
  return true;
}
