/**
 * End-to-end scenarios through the embedded Broker (src/broker): every message goes through a
 * topic exchange ('bench', routing key 'bench.msg', bound with 'bench.#') into one queue, and a
 * publish counts only once its promise resolved, i.e. after the fsync covering it.
 *
 *   broker-publish  confirmed publish of 100 B / 1 KiB / 4 KiB bodies with 1,000 publishes
 *                   outstanding (throughput, confirm latency p50/p99/max), and with 1 outstanding
 *                   (latency, interleaved with a raw write + fdatasync in the same directory)
 *   broker-drain    a backlog is built, then drained by 1 consumer and by 4 consumers in one group,
 *                   with ack 'auto' and ack 'manual' (each drain is its own group over the same
 *                   backlog: the groups are created before the backlog so retention keeps it)
 *   broker-backlog  a big backlog (10,000,000 messages with --big; 1,000,000 by default; 200,000
 *                   with --quick) built with no consumer, then drained by one consumer started only
 *                   once it exists; RSS sampled every 250 ms throughout, in a child process of its
 *                   own so the figure is the broker's and not the suite's
 *
 * Each run opens a fresh broker in a fresh temp directory with a counting wrapper around
 * nodeStorage as its `storage` (so fsyncs/s and disk MB/s cover the queue log and the ack stores),
 * warms up untimed where it can, and removes its files afterwards.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { type BatchMessage, Broker } from '../src/broker/broker.js';
import type { Message } from '../src/broker/delivery.js';
import { type ScenarioContext } from './lib/context.js';
import { CountingStorage, type IoCounters, diffCounters } from './lib/counting-storage.js';
import { type RawLimits, RawSyncWriter } from './lib/raw-limits.js';
import {
  MB,
  type Metrics,
  type ScenarioReport,
  type Series,
  type SummaryRow,
  fmt,
  fmtPct,
  fmtRatio,
  median,
  percentile,
  progress,
  repeat,
  secondsSince,
  timed,
  withTempDir,
} from './lib/report.js';
import { makeRecords } from './lib/workload.js';

export const EXCHANGE = 'bench';
export const ROUTING_KEY = 'bench.msg';
export const QUEUE = 'q';

/** Targets of the broker (issues 3 and 6); judged by `npm run bench`, never asserted in tests. */
export const BROKER_TARGETS = {
  /** Confirmed publish of 100 B through a topic exchange, 1,000 outstanding. */
  publishMsgsPerSec: 500_000,
  /** Drain of a 1,000,000-message backlog with ack 'auto' (100 B, one consumer). */
  drainAutoMsgsPerSec: 1_000_000,
  /** Confirm latency p50 of a lone publish over one raw write + fdatasync. */
  confirmP50RatioMax: 1.3,
  /** Max RSS during the big backlog, MB (10^6 bytes). */
  backlogRssMaxMB: 150,
} as const;

export const BODY_SIZES = [100, 1024, 4096] as const;

export const BROKER_SIZES = {
  full: {
    publish: { 100: 1_000_000, 1024: 400_000, 4096: 150_000 } as Record<number, number>,
    latencyIterations: 2000,
    drain: { 100: 1_000_000, 1024: 400_000, 4096: 150_000 } as Record<number, number>,
    backlog: 1_000_000,
    backlogBig: 10_000_000,
  },
  quick: {
    publish: { 100: 200_000, 1024: 100_000, 4096: 40_000 } as Record<number, number>,
    latencyIterations: 300,
    drain: { 100: 200_000, 1024: 100_000, 4096: 40_000 } as Record<number, number>,
    backlog: 200_000,
    backlogBig: 10_000_000,
  },
} as const;

const KIB = 1024;

export function sizeLabel(bytes: number): string {
  return bytes >= KIB && bytes % KIB === 0 ? `${bytes / KIB} KiB` : `${bytes} B`;
}

/** A metric-key-safe size tag: 100 -> "100B", 1024 -> "1KiB". */
function sizeKey(bytes: number): string {
  return sizeLabel(bytes).replace(' ', '');
}

// --- broker plumbing ---

export interface BrokerHandle {
  broker: Broker;
  storage: CountingStorage;
  dataDir: string;
}

/** Opens a fresh broker with a counting storage, declares the topic exchange and the queue, runs `fn`, closes. */
export async function withBroker<T>(dir: string | undefined, prefix: string, fn: (h: BrokerHandle) => Promise<T>): Promise<T> {
  return withTempDir(prefix, dir, async (tmp) => {
    const h = await openBenchBroker(path.join(tmp, 'data'));
    try {
      return await fn(h);
    } finally {
      await closeBroker(h.broker);
    }
  });
}

/**
 * Closes the broker, waiting at most STALL_MS: a close that never settles (a lost promise in the
 * code under test) is reported on stderr instead of letting node exit silently with the figures
 * already measured.
 */
export async function closeBroker(broker: Broker): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<'stalled'>((resolve) => {
    timer = setTimeout(() => resolve('stalled'), STALL_MS);
  });
  try {
    const r = await Promise.race([broker.close().then(() => 'closed' as const), stalled]);
    if (r === 'stalled') progress(`WARNING: broker.close() did not settle within ${STALL_MS / 1000} s; going on without it`);
  } finally {
    clearTimeout(timer);
  }
}

export async function openBenchBroker(dataDir: string): Promise<BrokerHandle> {
  const storage = new CountingStorage();
  const broker = await Broker.open({ dataDir, storage, sweepIntervalMs: 60_000 });
  await broker.assertExchange(EXCHANGE, 'topic');
  await broker.assertQueue(QUEUE);
  await broker.bindQueue(QUEUE, EXCHANGE, 'bench.#');
  return { broker, storage, dataDir };
}

/** Distinct body buffers (views into one pseudo-random pool). */
export function makeBodies(count: number, bytes: number): Buffer[] {
  return makeRecords(count, bytes).map((r) => r.value as Buffer);
}

/**
 * Publishes `total` messages keeping `window` publish promises outstanding, refilling as each
 * resolves. With `latUs`, stores each publish's confirm latency (call to resolve) in microseconds.
 */
export async function pumpPublishes(broker: Broker, bodies: readonly Buffer[], total: number, window: number, latUs?: Float64Array): Promise<void> {
  if (total <= 0) return;
  let issued = 0;
  let done = 0;
  const dog = watchdog('publish', () => done, () => `${done} of ${total} publishes confirmed`);
  await new Promise<void>((resolve, reject) => {
    dog.onStall = reject;
    let failed = false;
    const onError = (err: unknown): void => {
      failed = true;
      reject(err);
    };
    const issue = (): void => {
      if (failed || issued >= total) return;
      const i = issued++;
      const body = bodies[i % bodies.length] as Buffer;
      if (latUs === undefined) {
        broker.publish(EXCHANGE, ROUTING_KEY, body).then(() => {
          if (++done === total) resolve();
          else issue();
        }, onError);
      } else {
        const t0 = performance.now();
        broker.publish(EXCHANGE, ROUTING_KEY, body).then(() => {
          latUs[i] = (performance.now() - t0) * 1000;
          if (++done === total) resolve();
          else issue();
        }, onError);
      }
    };
    for (let i = 0; i < window && i < total; i++) issue();
  }).finally(() => dog.stop());
}

/** How long a workload may go without progress before it fails as stalled (a lost promise would otherwise let node exit silently). */
export const STALL_MS = 30_000;

/**
 * Polls `progress()` every second; when it has not moved for STALL_MS, calls `onStall` with an
 * error describing `state()`. Its timer also keeps the event loop alive while promises are pending.
 */
function watchdog(what: string, progressOf: () => number, state: () => string): { onStall: (err: Error) => void; stop: () => void } {
  let last = progressOf();
  let lastAt = Date.now();
  const dog = {
    onStall: (_err: Error): void => {},
    stop: (): void => clearInterval(timer),
  };
  const timer = setInterval(() => {
    const now = progressOf();
    if (now !== last) {
      last = now;
      lastAt = Date.now();
    } else if (Date.now() - lastAt > STALL_MS) {
      clearInterval(timer);
      dog.onStall(new Error(`${what} stalled: no progress for ${STALL_MS / 1000} s (${state()})`));
    }
  }, 1000);
  return dog;
}

/** Resolves once every ack of `group` so far is durable (reaches into the broker's internals when it can). */
export async function acksDurable(broker: Broker, group: string): Promise<void> {
  const internals = broker as unknown as { queues?: Map<string, { groups?: Map<string, { drainAcks?: () => Promise<void> }> }> };
  const g = internals.queues?.get(QUEUE)?.groups?.get(group);
  if (g === undefined || typeof g.drainAcks !== 'function') return;
  let drained = 0;
  const dog = watchdog('ack drain', () => drained, () => `group ${group}: ${JSON.stringify(broker.queueStats(QUEUE).groups[group])}`);
  try {
    await new Promise<void>((resolve, reject) => {
      dog.onStall = reject;
      (g.drainAcks as () => Promise<void>)().then(() => {
        drained = 1;
        resolve();
      }, reject);
    });
  } finally {
    dog.stop();
  }
}

export interface DrainConfig {
  consumers: number;
  ack: 'auto' | 'manual';
}

export const DRAIN_CONFIGS: readonly DrainConfig[] = [
  { consumers: 1, ack: 'auto' },
  { consumers: 4, ack: 'auto' },
  { consumers: 1, ack: 'manual' },
  { consumers: 4, ack: 'manual' },
];

function configKey(c: DrainConfig): string {
  return `${c.ack}${c.consumers}`;
}

function configLabel(c: DrainConfig): string {
  return `${c.consumers} consumer${c.consumers > 1 ? 's' : ''}, ack ${c.ack}`;
}

/** Creates a group on the (still empty) queue by starting and closing one consumer, so retention keeps what the group has not read. */
export async function createGroup(broker: Broker, group: string): Promise<void> {
  const c = await broker.consume(QUEUE, () => {}, { group, ack: 'manual' });
  await c.close();
}

export interface DrainResult {
  /** Seconds until the last message's handler ran. */
  deliveredSeconds: number;
  /** Seconds until every ack was durable (manual: every ack() promise resolved; auto: the group's acks drained). */
  ackedSeconds: number;
  delivered: number;
}

/**
 * Drains `expected` messages from the queue with `config.consumers` consumers in `group`; with ack
 * 'manual' each handler calls msg.ack() without awaiting it (the acks are awaited as a whole).
 */
export async function drainGroup(broker: Broker, group: string, expected: number, config: DrainConfig, prefetch = 1000): Promise<DrainResult> {
  let delivered = 0;
  let ackPending = 0;
  let ackFailed: unknown = null;
  let deliveredAt = 0;
  const t0 = process.hrtime.bigint();
  let resolveAll!: () => void;
  let rejectAll!: (err: unknown) => void;
  const all = new Promise<void>((res, rej) => {
    resolveAll = res;
    rejectAll = rej;
  });
  const dog = watchdog('drain', () => delivered * 2 + (expected - ackPending), () => `group ${group}: ${delivered} of ${expected} delivered, ${ackPending} acks pending`);
  dog.onStall = (err) => rejectAll(err);
  let ackedAll = false;
  const checkDone = (): void => {
    if (delivered >= expected && ackPending === 0 && !ackedAll) {
      ackedAll = true;
      resolveAll();
    }
  };
  const onDelivered = (): void => {
    if (++delivered === expected) {
      deliveredAt = secondsSince(t0);
      checkDone();
    }
  };
  const handler =
    config.ack === 'manual'
      ? (msg: Message): void => {
          ackPending++;
          msg.ack().then(
            () => {
              ackPending--;
              checkDone();
            },
            (err: unknown) => {
              ackFailed = err;
              rejectAll(err);
            },
          );
          onDelivered();
        }
      : (): void => onDelivered();
  const consumers = [];
  for (let i = 0; i < config.consumers; i++) {
    consumers.push(await broker.consume(QUEUE, handler, { group, ack: config.ack, prefetch, concurrency: 1 }));
  }
  try {
    await all;
    if (ackFailed !== null) throw ackFailed;
    if (config.ack === 'auto') await acksDurable(broker, group);
    const ackedSeconds = secondsSince(t0);
    return { deliveredSeconds: deliveredAt, ackedSeconds, delivered };
  } finally {
    dog.stop();
    for (const c of consumers) await c.close();
  }
}

// --- ratios ---

function ioMetrics(io: IoCounters, seconds: number): Metrics {
  return {
    fsyncsPerSec: io.syncs / seconds,
    diskMBps: io.bytesWritten / MB / seconds,
  };
}

function throughputRatio(m: Metrics, prefix: string, raw: RawLimits | null): string {
  if (raw === null) return '(raw limits not measured)';
  const f = m[`${prefix}FsyncsPerSec`] as number;
  const d = m[`${prefix}DiskMBps`] as number;
  const p = m[`${prefix}PayloadMBps`] as number;
  return `fsync ${fmtPct(f / raw.fsyncCallsPerSec)} of raw rate (${fmt(raw.fsyncCallsPerSec)}/s); payload ${fmtPct(p / raw.seqWriteMBps)}, disk ${fmtPct(d / raw.seqWriteMBps)} of raw ${fmt(raw.seqWriteMBps)} MB/s`;
}

function latencyRatio(us: number, raw: RawLimits | null): string {
  if (raw === null) return '(raw limits not measured)';
  return `${fmtRatio(us / raw.fsyncMedianUs)} raw fdatasync median ${fmt(raw.fsyncMedianUs)} us`;
}

// --- broker-publish ---

export interface PublishParams {
  /** Messages per body size with 1,000 outstanding (timed). */
  messages: Record<number, number>;
  /** Lone publishes per body size (each awaited alone, interleaved with a raw write + fdatasync). */
  latencyIterations: number;
  window: number;
  sizes: readonly number[];
  dir?: string;
}

/** One run: for each body size, a windowed throughput run and a lone-publish latency run, each in a fresh broker. */
export async function publishOnce(p: PublishParams): Promise<Metrics> {
  const m: Metrics = {};
  for (const size of p.sizes) {
    const k = sizeKey(size);
    const total = p.messages[size] ?? 10_000;
    const bodies = makeBodies(Math.min(total, 4096), size);
    const warmup = Math.max(p.window, Math.round(total * 0.05));
    await withBroker(p.dir, 'publish', async ({ broker, storage }) => {
      await pumpPublishes(broker, bodies, warmup, p.window);
      const lat = new Float64Array(total);
      const before = storage.snapshot();
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      await timed(`broker-publish ${k}`, () => pumpPublishes(broker, bodies, total, p.window, lat));
      const seconds = secondsSince(t0);
      const cpu = process.cpuUsage(c0);
      const io = ioMetrics(diffCounters(storage.snapshot(), before), seconds);
      const sorted = Array.from(lat).sort((a, b) => a - b);
      m[`w${k}MsgsPerSec`] = total / seconds;
      m[`w${k}PayloadMBps`] = (total * size) / MB / seconds;
      m[`w${k}DiskMBps`] = io.diskMBps as number;
      m[`w${k}FsyncsPerSec`] = io.fsyncsPerSec as number;
      m[`w${k}MsgsPerFsync`] = total / seconds / (io.fsyncsPerSec as number);
      m[`w${k}P50Us`] = sortedPercentile(sorted, 50);
      m[`w${k}P99Us`] = sortedPercentile(sorted, 99);
      m[`w${k}MaxUs`] = sorted[sorted.length - 1] as number;
      m[`w${k}CpuUsPerMsg`] = (cpu.user + cpu.system) / total;
    });
    // The batch API: publishBatch calls of BATCH_SIZE, BATCH_IN_FLIGHT at a time.
    await withBroker(p.dir, 'publish-batch', async ({ broker, storage }) => {
      const batches = Array.from({ length: Math.ceil(bodies.length / BATCH_SIZE) }, (_, b) =>
        bodies.slice(b * BATCH_SIZE, (b + 1) * BATCH_SIZE).map((body) => ({ routingKey: ROUTING_KEY, body })),
      );
      const warmBatches = Math.max(BATCH_IN_FLIGHT, Math.round(total / BATCH_SIZE / 20));
      await pumpBatches(broker, batches, warmBatches * BATCH_SIZE);
      const before = storage.snapshot();
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const sent = await timed(`broker-publish-batch ${k}`, () => pumpBatches(broker, batches, total));
      const seconds = secondsSince(t0);
      const cpu = process.cpuUsage(c0);
      const io = ioMetrics(diffCounters(storage.snapshot(), before), seconds);
      m[`b${k}MsgsPerSec`] = sent / seconds;
      m[`b${k}FsyncsPerSec`] = io.fsyncsPerSec as number;
      m[`b${k}DiskMBps`] = io.diskMBps as number;
      m[`b${k}CpuUsPerMsg`] = (cpu.user + cpu.system) / sent;
    });
    await withTempDir('publish-lat', p.dir, async (tmp) => {
      const h = await openBenchBroker(path.join(tmp, 'data'));
      const raw = await RawSyncWriter.create(path.join(tmp, 'raw.dat'), size);
      try {
        const one = async (i: number): Promise<number> => {
          const s = performance.now();
          await h.broker.publish(EXCHANGE, ROUTING_KEY, bodies[i % bodies.length] as Buffer);
          return (performance.now() - s) * 1000;
        };
        const warm = Math.min(20, Math.ceil(p.latencyIterations / 10));
        for (let i = 0; i < warm; i++) {
          await one(i);
          await raw.append();
        }
        const lat: number[] = [];
        const rawLat: number[] = [];
        await timed(`broker-publish-latency ${k}`, async () => {
          for (let i = 0; i < p.latencyIterations; i++) {
            if (i % 2 === 0) {
              lat.push(await one(i));
              rawLat.push(await raw.append());
            } else {
              rawLat.push(await raw.append());
              lat.push(await one(i));
            }
          }
        });
        m[`l${k}P50Us`] = median(lat);
        m[`l${k}P99Us`] = percentile(lat, 99);
        m[`l${k}MaxUs`] = Math.max(...lat);
        m[`l${k}RawP50Us`] = median(rawLat);
        m[`l${k}RatioToRaw`] = median(lat) / median(rawLat);
      } finally {
        await raw.close();
        await closeBroker(h.broker);
      }
    });
  }
  return m;
}

/** Messages per publishBatch call in the batch figures, and calls kept in flight. */
export const BATCH_SIZE = 1000;
export const BATCH_IN_FLIGHT = 4;

/** Publishes at least `total` messages through publishBatch, BATCH_IN_FLIGHT calls at a time; returns how many. */
async function pumpBatches(broker: Broker, batches: readonly BatchMessage[][], total: number): Promise<number> {
  let sent = 0;
  let next = 0;
  const lane = async (): Promise<void> => {
    while (sent < total) {
      const batch = batches[next++ % batches.length] as BatchMessage[];
      sent += batch.length;
      const results = await broker.publishBatch(EXCHANGE, batch);
      if (results.length !== batch.length || results[0]?.status !== 'confirmed') throw new Error(`publishBatch returned ${results.length} results, first ${results[0]?.status}`);
    }
  };
  await Promise.all(Array.from({ length: BATCH_IN_FLIGHT }, lane));
  return sent;
}

function sortedPercentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  const a = sorted[lo] as number;
  const b = sorted[hi] as number;
  return a + (b - a) * (rank - lo);
}

export async function benchBrokerPublish(ctx: ScenarioContext, p: PublishParams): Promise<ScenarioReport> {
  const name = 'broker-publish';
  const r = await repeat(ctx.repeats, name, () => publishOnce(p));
  const m = r.median;
  const raw = ctx.raw;
  const labels: Record<string, string> = {};
  const rows: SummaryRow[] = [];
  const ratios: string[] = [];
  for (const size of p.sizes) {
    const k = sizeKey(size);
    const sl = sizeLabel(size);
    labels[`w${k}MsgsPerSec`] = `${sl}, ${fmt(p.window)} outstanding: msgs/s`;
    labels[`w${k}PayloadMBps`] = `${sl}, ${fmt(p.window)} outstanding: payload MB/s`;
    labels[`w${k}FsyncsPerSec`] = `${sl}, ${fmt(p.window)} outstanding: fsyncs/s`;
    labels[`w${k}MsgsPerFsync`] = `${sl}, ${fmt(p.window)} outstanding: msgs per fsync`;
    labels[`w${k}P50Us`] = `${sl}, ${fmt(p.window)} outstanding: confirm p50 (us)`;
    labels[`w${k}P99Us`] = `${sl}, ${fmt(p.window)} outstanding: confirm p99 (us)`;
    labels[`w${k}MaxUs`] = `${sl}, ${fmt(p.window)} outstanding: confirm max (us)`;
    labels[`w${k}CpuUsPerMsg`] = `${sl}, ${fmt(p.window)} outstanding: process CPU us per msg`;
    labels[`l${k}P50Us`] = `${sl}, 1 outstanding: confirm p50 (us)`;
    labels[`l${k}P99Us`] = `${sl}, 1 outstanding: confirm p99 (us)`;
    labels[`l${k}MaxUs`] = `${sl}, 1 outstanding: confirm max (us)`;
    labels[`l${k}RawP50Us`] = `${sl}, paired raw write+fdatasync p50 (us)`;
    labels[`l${k}RatioToRaw`] = `${sl}, 1 outstanding: p50 / paired raw p50 (x)`;
    const wt = size === 100 ? { target: { kind: 'min' as const, value: BROKER_TARGETS.publishMsgsPerSec, text: `>= ${fmt(BROKER_TARGETS.publishMsgsPerSec)}` } } : {};
    rows.push({ scenario: name, metric: `${sl} publish, ${fmt(p.window)} outstanding`, value: m[`w${k}MsgsPerSec`] as number, unit: 'msgs/s', ...wt, ratios: throughputRatio(m, `w${k}`, raw) });
    rows.push({ scenario: name, metric: `${sl} confirm p50, ${fmt(p.window)} outstanding`, value: m[`w${k}P50Us`] as number, unit: 'us', ratios: `p99 ${fmt(m[`w${k}P99Us`])} us, max ${fmt(m[`w${k}MaxUs`])} us; p50 ${latencyRatio(m[`w${k}P50Us`] as number, raw)}` });
    const lt = size === 100 ? { target: { kind: 'max' as const, value: BROKER_TARGETS.confirmP50RatioMax, text: `<= ${BROKER_TARGETS.confirmP50RatioMax}x raw` }, judged: m[`l${k}RatioToRaw`] as number } : {};
    rows.push({
      scenario: name,
      metric: `${sl} confirm p50, 1 outstanding`,
      value: m[`l${k}P50Us`] as number,
      unit: 'us',
      ...lt,
      ratios: `${fmtRatio(m[`l${k}RatioToRaw`])} paired raw ${fmt(m[`l${k}RawP50Us`])} us; p99 ${fmt(m[`l${k}P99Us`])} us, max ${fmt(m[`l${k}MaxUs`])} us; ${latencyRatio(m[`l${k}P50Us`] as number, raw)}`,
    });
    const batchLabel = `publishBatch of ${fmt(BATCH_SIZE)}, ${BATCH_IN_FLIGHT} in flight`;
    labels[`b${k}MsgsPerSec`] = `${sl}, ${batchLabel}: msgs/s`;
    labels[`b${k}FsyncsPerSec`] = `${sl}, ${batchLabel}: fsyncs/s`;
    labels[`b${k}CpuUsPerMsg`] = `${sl}, ${batchLabel}: process CPU us per msg`;
    rows.push({
      scenario: name,
      metric: `${sl} ${batchLabel}`,
      value: m[`b${k}MsgsPerSec`] as number,
      unit: 'msgs/s',
      ratios: `${fmtRatio((m[`b${k}MsgsPerSec`] as number) / (m[`w${k}MsgsPerSec`] as number))} single publishes (${fmt(p.window)} outstanding, same run); ${fmt(m[`b${k}CpuUsPerMsg`])} CPU us/msg; ${raw === null ? '' : `fsync ${fmtPct((m[`b${k}FsyncsPerSec`] as number) / raw.fsyncCallsPerSec)} of raw rate`}`,
    });
    ratios.push(`${sl}, ${fmt(p.window)} outstanding: ${throughputRatio(m, `w${k}`, raw)}`);
    ratios.push(`${sl}, 1 outstanding: confirm p50 ${fmtRatio(m[`l${k}RatioToRaw`])} the paired raw write+fdatasync; ${latencyRatio(m[`l${k}P50Us`] as number, raw)}`);
  }
  return {
    name,
    title: `confirmed publish through a topic exchange, ${p.sizes.map(sizeLabel).join(' / ')} bodies, ${fmt(p.window)} and 1 outstanding`,
    params: { ...p },
    repeats: r.repeats,
    median: m,
    runs: r.runs,
    labels,
    ratios,
    rows,
  };
}

// --- broker-drain ---

export interface DrainParams {
  /** Backlog per body size. */
  messages: Record<number, number>;
  sizes: readonly number[];
  configs?: readonly DrainConfig[];
  prefetch?: number;
  /** Publishes outstanding while building the backlog. */
  buildWindow?: number;
  dir?: string;
}

/** One run: per body size, build a backlog in a fresh broker, then drain it once per config (each its own group). */
export async function drainOnce(p: DrainParams): Promise<Metrics> {
  const configs = p.configs ?? DRAIN_CONFIGS;
  const m: Metrics = {};
  for (const size of p.sizes) {
    const k = sizeKey(size);
    const total = p.messages[size] ?? 10_000;
    const bodies = makeBodies(Math.min(total, 4096), size);
    await withBroker(p.dir, 'drain', async ({ broker, storage }) => {
      for (const c of configs) await createGroup(broker, `g-${configKey(c)}`);
      const before = storage.snapshot();
      const t0 = process.hrtime.bigint();
      await timed(`broker-drain build ${k}`, () => pumpPublishes(broker, bodies, total, p.buildWindow ?? 1000));
      const buildSeconds = secondsSince(t0);
      const io = diffCounters(storage.snapshot(), before);
      m[`build${k}MsgsPerSec`] = total / buildSeconds;
      m[`build${k}PayloadMBps`] = (total * size) / MB / buildSeconds;
      m[`build${k}DiskMBps`] = io.bytesWritten / MB / buildSeconds;
      m[`build${k}FsyncsPerSec`] = io.syncs / buildSeconds;
      for (const c of configs) {
        const ck = configKey(c);
        const b = storage.snapshot();
        const c0 = process.cpuUsage();
        const d = await timed(`broker-drain ${k} ${ck}`, () => drainGroup(broker, `g-${ck}`, total, c, p.prefetch ?? 1000));
        const cpu = process.cpuUsage(c0);
        const dio = diffCounters(storage.snapshot(), b);
        m[`${ck}${k}MsgsPerSec`] = total / d.deliveredSeconds;
        m[`${ck}${k}AckedMsgsPerSec`] = total / d.ackedSeconds;
        m[`${ck}${k}PayloadMBps`] = (total * size) / MB / d.deliveredSeconds;
        m[`${ck}${k}FsyncsPerSec`] = dio.syncs / d.ackedSeconds;
        m[`${ck}${k}CpuUsPerMsg`] = (cpu.user + cpu.system) / total;
      }
    });
  }
  return m;
}

export async function benchBrokerDrain(ctx: ScenarioContext, p: DrainParams): Promise<ScenarioReport> {
  const name = 'broker-drain';
  const configs = p.configs ?? DRAIN_CONFIGS;
  const r = await repeat(ctx.repeats, name, () => drainOnce(p));
  const m = r.median;
  const raw = ctx.raw;
  const labels: Record<string, string> = {};
  const rows: SummaryRow[] = [];
  const ratios: string[] = [];
  for (const size of p.sizes) {
    const k = sizeKey(size);
    const sl = sizeLabel(size);
    const n = p.messages[size] ?? 10_000;
    labels[`build${k}MsgsPerSec`] = `${sl}: backlog build msgs/s (1,000 outstanding)`;
    labels[`build${k}FsyncsPerSec`] = `${sl}: backlog build fsyncs/s`;
    rows.push({
      scenario: name,
      metric: `${sl} build ${fmt(n)}`,
      value: m[`build${k}MsgsPerSec`] as number,
      unit: 'msgs/s',
      ratios: raw === null ? '' : `fsync ${fmtPct((m[`build${k}FsyncsPerSec`] as number) / raw.fsyncCallsPerSec)} of raw rate; disk ${fmtPct((m[`build${k}DiskMBps`] as number) / raw.seqWriteMBps)} of raw MB/s`,
    });
    for (const c of configs) {
      const ck = configKey(c);
      labels[`${ck}${k}MsgsPerSec`] = `${sl}, ${configLabel(c)}: delivered msgs/s`;
      labels[`${ck}${k}AckedMsgsPerSec`] = `${sl}, ${configLabel(c)}: msgs/s until acks durable`;
      labels[`${ck}${k}CpuUsPerMsg`] = `${sl}, ${configLabel(c)}: process CPU us per msg`;
      const target =
        size === 100 && c.ack === 'auto' && c.consumers === 1
          ? { target: { kind: 'min' as const, value: BROKER_TARGETS.drainAutoMsgsPerSec, text: `>= ${fmt(BROKER_TARGETS.drainAutoMsgsPerSec)}${n === 1_000_000 ? '' : ` (of 1M; ran ${fmt(n)})`}` } }
          : {};
      const payload = m[`${ck}${k}PayloadMBps`] as number;
      const ackF = m[`${ck}${k}FsyncsPerSec`] as number;
      const rtext =
        raw === null
          ? ''
          : `payload ${fmt(payload)} MB/s = ${fmtPct(payload / raw.seqWriteMBps)} of raw write MB/s; ack fsyncs ${fmt(ackF)}/s = ${fmtPct(ackF / raw.fsyncCallsPerSec)} of raw rate`;
      rows.push({ scenario: name, metric: `${sl} drain ${fmt(n)}, ${configLabel(c)}`, value: m[`${ck}${k}MsgsPerSec`] as number, unit: 'msgs/s', ...target, ratios: `until acks durable ${fmt(m[`${ck}${k}AckedMsgsPerSec`])}/s; ${rtext}` });
      ratios.push(`${sl}, ${configLabel(c)}: ${rtext || '(raw limits not measured)'}`);
    }
  }
  return {
    name,
    title: `backlog build then drain, ${p.sizes.map(sizeLabel).join(' / ')} bodies, 1 and 4 consumers in one group, ack auto and manual (prefetch ${p.prefetch ?? 1000})`,
    params: { ...p, configs: configs.map(configLabel) },
    repeats: r.repeats,
    median: m,
    runs: r.runs,
    labels,
    ratios,
    rows,
  };
}

// --- broker-backlog: the big backlog with RSS over time ---

export interface BacklogParams {
  messages: number;
  bodyBytes: number;
  /** RSS sample period, ms. */
  sampleMs?: number;
  /** Publishes outstanding while building. */
  buildWindow?: number;
  prefetch?: number;
  dir?: string;
  /** Run in a child process (default true): RSS then is the broker's alone, not the whole suite's. */
  child?: boolean;
}

export interface RssSample {
  /** Seconds since the start of the build. */
  t: number;
  rssMB: number;
  heapMB: number;
  /** Memory of ArrayBuffers and Buffers (outside the V8 heap), MB. */
  buffersMB: number;
  phase: 'build' | 'drain';
  /** Messages published (build) or delivered (drain) so far. */
  n: number;
}

export interface BacklogResult {
  messages: number;
  buildSeconds: number;
  drainSeconds: number;
  samples: RssSample[];
}

/** Builds the backlog with no consumer, then starts one consumer (ack auto) and drains it, sampling RSS. */
export async function backlogInProcess(p: BacklogParams): Promise<BacklogResult> {
  const sampleMs = p.sampleMs ?? 250;
  const bodies = makeBodies(4096, p.bodyBytes);
  return withBroker(p.dir, 'backlog', async ({ broker }) => {
    const samples: RssSample[] = [];
    let phase: RssSample['phase'] = 'build';
    let published = 0;
    let delivered = 0;
    const t0 = performance.now();
    const sample = (): void => {
      const mu = process.memoryUsage();
      samples.push({ t: (performance.now() - t0) / 1000, rssMB: mu.rss / MB, heapMB: mu.heapUsed / MB, buffersMB: mu.arrayBuffers / MB, phase, n: phase === 'build' ? published : delivered });
    };
    sample();
    const timer = setInterval(sample, sampleMs);
    try {
      // Build in chunks so progress can be counted without a per-message callback.
      const chunk = 100_000;
      while (published < p.messages) {
        const n = Math.min(chunk, p.messages - published);
        await pumpPublishes(broker, bodies, n, p.buildWindow ?? 1000);
        published += n;
      }
      const buildSeconds = (performance.now() - t0) / 1000;
      sample();
      phase = 'drain';
      const d0 = performance.now();
      const dog = watchdog('backlog drain', () => delivered, () => `${delivered} of ${p.messages} delivered`);
      await new Promise<void>((resolve, reject) => {
        dog.onStall = reject;
        broker
          .consume(
            QUEUE,
            () => {
              if (++delivered === p.messages) resolve();
            },
            { group: 'drain', ack: 'auto', prefetch: p.prefetch ?? 1000 },
          )
          .catch(reject);
      }).finally(() => dog.stop());
      await acksDurable(broker, 'drain');
      const drainSeconds = (performance.now() - d0) / 1000;
      sample();
      return { messages: p.messages, buildSeconds, drainSeconds, samples };
    } finally {
      clearInterval(timer);
    }
  });
}

/** The compiled form of this module (dist/bench/broker.js), for the child process. */
function compiledSelf(): string | null {
  const self = fileURLToPath(import.meta.url);
  if (self.endsWith('.js')) return self;
  const root = path.resolve(path.dirname(self), '..');
  const js = path.join(root, 'dist', 'bench', 'broker.js');
  return fs.existsSync(js) ? js : null;
}

/** Runs backlogInProcess in a fresh `node` process and returns its result. */
export async function backlogInChild(p: BacklogParams): Promise<BacklogResult> {
  const script = compiledSelf();
  if (script === null) return backlogInProcess(p);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, '--backlog-child', JSON.stringify({ ...p, child: false })], { stdio: ['ignore', 'pipe', 'inherit'] });
    let outText = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (s: string) => {
      outText += s;
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      const line = outText.trim().split('\n').pop() ?? '';
      if (code !== 0) return reject(new Error(`backlog child exited with ${code ?? signal}: ${outText.slice(-500)}`));
      try {
        resolve(JSON.parse(line) as BacklogResult);
      } catch (err) {
        reject(err);
      }
    });
  });
}

/**
 * "Flat": memory does not grow with the backlog. Judged per phase, since starting a consumer is a
 * step (prefetched deliveries, read batches, ack state), not growth: within the build and within
 * the drain, leaving out the first quarter of each (start-up, warm-up), the max exceeds the first
 * sample by at most max(16 MB, 15%). Also reports least-squares slopes of RSS over messages in
 * each phase, MB per million, and the overall growth after the first quarter of the build.
 */
export interface RssShape {
  maxMB: number;
  /** RSS at the first sample after the first quarter of the build. */
  baseMB: number;
  /** Overall max minus baseMB (includes the step when the drain starts). */
  growthMB: number;
  buildGrowthMB: number;
  drainGrowthMB: number;
  flat: boolean;
  buildSlopeMBPerM: number;
  drainSlopeMBPerM: number;
  finalBuildMB: number;
  maxDrainMB: number;
}

function phaseGrowth(phase: readonly RssSample[]): { growth: number; base: number; slope: number } {
  const last = phase[phase.length - 1];
  if (last === undefined) return { growth: 0, base: Number.NaN, slope: Number.NaN };
  const quarter = last.n / 4;
  const after = phase.filter((s) => s.n >= quarter);
  const base = after[0]?.rssMB ?? Number.NaN;
  const growth = after.length > 0 ? Math.max(...after.map((s) => s.rssMB)) - base : 0;
  return { growth, base, slope: slopePerMillion(after) };
}

/** Least-squares slope of RSS (MB) over messages (millions). */
function slopePerMillion(samples: readonly RssSample[]): number {
  if (samples.length < 3) return Number.NaN;
  const xs = samples.map((s) => s.n / 1e6);
  const ys = samples.map((s) => s.rssMB);
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  let num = 0;
  let den = 0;
  for (let i = 0; i < xs.length; i++) {
    num += ((xs[i] as number) - mx) * ((ys[i] as number) - my);
    den += ((xs[i] as number) - mx) ** 2;
  }
  return den > 0 ? num / den : Number.NaN;
}

export function rssShape(samples: readonly RssSample[]): RssShape {
  const build = samples.filter((s) => s.phase === 'build');
  const drain = samples.filter((s) => s.phase === 'drain');
  const b = phaseGrowth(build);
  const d = phaseGrowth(drain);
  const maxMB = Math.max(...samples.map((s) => s.rssMB));
  const base = Number.isFinite(b.base) ? b.base : (samples[0]?.rssMB ?? Number.NaN);
  const ok = (g: { growth: number; base: number }): boolean => !Number.isFinite(g.base) || g.growth <= Math.max(16, g.base * 0.15);
  return {
    maxMB,
    baseMB: base,
    growthMB: maxMB - base,
    buildGrowthMB: b.growth,
    drainGrowthMB: d.growth,
    flat: ok(b) && ok(d),
    buildSlopeMBPerM: b.slope,
    drainSlopeMBPerM: d.slope,
    finalBuildMB: build[build.length - 1]?.rssMB ?? Number.NaN,
    maxDrainMB: drain.length > 0 ? Math.max(...drain.map((s) => s.rssMB)) : Number.NaN,
  };
}

export async function benchBrokerBacklog(ctx: ScenarioContext, p: BacklogParams): Promise<ScenarioReport> {
  const name = 'broker-backlog';
  progress(`${name}: ${fmt(p.messages)} x ${sizeLabel(p.bodyBytes)}, RSS every ${p.sampleMs ?? 250} ms${p.child === false ? '' : ' (child process)'}`);
  const res = p.child === false ? await backlogInProcess(p) : await backlogInChild(p);
  const shape = rssShape(res.samples);
  const raw = ctx.raw;
  const buildRate = res.messages / res.buildSeconds;
  const drainRate = res.messages / res.drainSeconds;
  const m: Metrics = {
    buildMsgsPerSec: buildRate,
    drainMsgsPerSec: drainRate,
    buildSeconds: res.buildSeconds,
    drainSeconds: res.drainSeconds,
    maxRssMB: shape.maxMB,
    baseRssMB: shape.baseMB,
    growthMB: shape.growthMB,
    finalBuildRssMB: shape.finalBuildMB,
    maxDrainRssMB: shape.maxDrainMB,
    buildGrowthMB: shape.buildGrowthMB,
    drainGrowthMB: shape.drainGrowthMB,
    flat: shape.flat ? 1 : 0,
    samples: res.samples.length,
  };
  if (Number.isFinite(shape.buildSlopeMBPerM)) m.buildSlopeMBPerM = shape.buildSlopeMBPerM;
  if (Number.isFinite(shape.drainSlopeMBPerM)) m.drainSlopeMBPerM = shape.drainSlopeMBPerM;
  const runs: Record<string, number[]> = {};
  for (const [key, v] of Object.entries(m)) runs[key] = [v];
  const payloadMBps = (buildRate * p.bodyBytes) / MB;
  const rows: SummaryRow[] = [
    {
      scenario: name,
      metric: `max RSS, ${fmt(res.messages)} backlog`,
      value: shape.maxMB,
      unit: 'MB',
      target: { kind: 'max', value: BROKER_TARGETS.backlogRssMaxMB, text: `< ${BROKER_TARGETS.backlogRssMaxMB} MB${res.messages >= 10_000_000 ? '' : ` (of 10M; ran ${fmt(res.messages)})`}` },
      ratios: `${fmt(shape.baseMB)} MB after the first quarter of the build, ${fmt(shape.finalBuildMB)} MB at its end, ${fmt(shape.maxDrainMB)} MB max while draining`,
    },
    {
      scenario: name,
      metric: 'RSS flat (1 = yes)',
      value: shape.flat ? 1 : 0,
      unit: 'bool',
      target: { kind: 'min', value: 1, text: 'flat' },
      ratios: `within the build +${fmt(shape.buildGrowthMB)} MB, within the drain +${fmt(shape.drainGrowthMB)} MB after each phase's first quarter (flat: <= max(16 MB, 15%) each); slopes ${fmt(shape.buildSlopeMBPerM)} / ${fmt(shape.drainSlopeMBPerM)} MB per 1M msgs`,
    },
    {
      scenario: name,
      metric: `build ${fmt(res.messages)}, no consumer`,
      value: buildRate,
      unit: 'msgs/s',
      ratios: raw === null ? '' : `payload ${fmtPct(payloadMBps / raw.seqWriteMBps)} of raw write MB/s`,
    },
    {
      scenario: name,
      metric: `drain ${fmt(res.messages)}, 1 consumer started after, ack auto`,
      value: drainRate,
      unit: 'msgs/s',
      ratios: raw === null ? '' : `payload ${fmtPct((drainRate * p.bodyBytes) / MB / raw.seqWriteMBps)} of raw write MB/s`,
    },
  ];
  const series: Series[] = [
    { name: `RSS (MB), ${fmt(res.messages)} x ${sizeLabel(p.bodyBytes)} backlog: build then drain`, xUnit: 's', yUnit: 'MB', points: res.samples.map((s) => [s.t, s.rssMB]), marks: [{ x: res.buildSeconds, label: 'drain starts' }], levels: [{ y: BROKER_TARGETS.backlogRssMaxMB, label: `target: < ${BROKER_TARGETS.backlogRssMaxMB} MB` }] },
    { name: `V8 heap used (MB), same run`, xUnit: 's', yUnit: 'MB', points: res.samples.map((s) => [s.t, s.heapMB]), marks: [{ x: res.buildSeconds, label: 'drain starts' }] },
    { name: `Buffers outside the heap (process.memoryUsage().arrayBuffers, MB), same run`, xUnit: 's', yUnit: 'MB', points: res.samples.map((s) => [s.t, s.buffersMB ?? 0]), marks: [{ x: res.buildSeconds, label: 'drain starts' }] },
  ];
  return {
    name,
    title: `${fmt(res.messages)}-message backlog of ${sizeLabel(p.bodyBytes)} built with no consumer, then drained by one consumer (ack auto); RSS every ${p.sampleMs ?? 250} ms`,
    params: { ...p, child: p.child !== false },
    repeats: 1,
    median: m,
    runs,
    labels: {
      buildMsgsPerSec: 'build msgs/s (no consumer, 1,000 outstanding)',
      drainMsgsPerSec: 'drain msgs/s (consumer started after, until acks durable)',
      maxRssMB: 'max RSS (MB)',
      baseRssMB: 'RSS after the first quarter of the build (MB)',
      finalBuildRssMB: 'RSS at the end of the build (MB)',
      maxDrainRssMB: 'max RSS while draining (MB)',
      samples: 'RSS samples',
    },
    ratios: [
      `RSS: max ${fmt(shape.maxMB)} MB; within the build +${fmt(shape.buildGrowthMB)} MB (slope ${fmt(shape.buildSlopeMBPerM)} MB per 1M), within the drain +${fmt(shape.drainGrowthMB)} MB (slope ${fmt(shape.drainSlopeMBPerM)} MB per 1M), step at drain start ${fmt(shape.maxDrainMB - shape.finalBuildMB)} MB -> ${shape.flat ? 'flat' : 'NOT flat'}`,
      ...(raw === null ? [] : [`build payload ${fmt(payloadMBps)} MB/s = ${fmtPct(payloadMBps / raw.seqWriteMBps)} of raw sequential write ${fmt(raw.seqWriteMBps)} MB/s`]),
      '(one run: the median of one; RSS includes node itself, about 40-50 MB)',
    ],
    rows,
    series,
  };
}

// Child-process entry point of broker-backlog.
if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url) && process.argv[2] === '--backlog-child') {
  backlogInProcess(JSON.parse(process.argv[3] ?? '{}') as BacklogParams).then(
    (r) => {
      process.stdout.write(`${JSON.stringify(r)}\n`);
    },
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
