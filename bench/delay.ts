/**
 * Time-driven delivery through the embedded Broker (issue 4): delayed messages, TTL expiry and the
 * fsync cost of persisting delivery counts. Every publish counts once its promise resolved (after
 * the fsync covering it); every broker runs on a CountingStorage so fsyncs/s can be set against
 * the raw fdatasync rate measured in the same run.
 *
 *   schedule   N delayed messages (1,000,000; 100,000 with --quick), each `{ delay: 30 min }` (the
 *              "cancel the unpaid order" case), 1,000 publishes outstanding: throughput and RSS
 *              (sampled every 250 ms in a child process of its own, so RSS is the broker's alone),
 *              then close and reopen with all of them pending: open time and RSS after it. One run.
 *   fire       messages due at a steady `rate` (10,000/s) over `spreadMs` (5 s; 2 s with --quick):
 *              rate × spread messages with random deliverAt in [T, T + spread], all scheduled
 *              before T; a consumer (ack auto) records arrival − deliverAt: lateness p50/p99/max;
 *              again with a fifth as many (2,000/s). Each in a child process that gives up 30 s
 *              after the last due time and reports what arrived by then.
 *   ttl        N messages (20,000; 10,000 with --quick) in a queue with messageTtl + DLX and an
 *              idle group, on a fake clock moved past the TTL at once: real time until all are in
 *              the DLQ (queue TTL scan); the same with a per-message ttl (the timing wheel).
 *   counts     one topic exchange feeding two queues with the same N messages (200,000; 50,000
 *              with --quick), one with deliveryLimit (the count is fsynced before each delivery)
 *              and one without; each drained by one consumer (ack auto, prefetch 1,000) in the
 *              same run, alternating which goes first: msgs/s until acks durable, fsyncs/s.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Broker } from '../src/broker/broker.js';
import type { ScenarioContext } from './lib/context.js';
import { CountingStorage, diffCounters } from './lib/counting-storage.js';
import { MB, type Metrics, type ScenarioReport, type SummaryRow, fmt, fmtPct, fmtRatio, percentile, progress, repeat, timed, withTempDir } from './lib/report.js';

/** Targets of issue 4; judged by `npm run bench`, never asserted in tests. */
export const DELAY_TARGETS = {
  /** Max RSS with 1,000,000 delayed messages pending, MB (10^6 bytes). */
  scheduleRssMaxMB: 250,
  /** Firing lateness p99 while 10,000 messages a second fire, ms. */
  fireP99MaxMs: 20,
} as const;

export const DELAY_SIZES = {
  full: { schedule: 1_000_000, fireRate: 10_000, fireSpreadMs: 5000, ttl: 20_000, counts: 200_000 },
  quick: { schedule: 100_000, fireRate: 10_000, fireSpreadMs: 2000, ttl: 10_000, counts: 50_000 },
} as const;

export interface DelayParams {
  schedule: number;
  /** Fires per second in the fire run. */
  fireRate: number;
  fireSpreadMs: number;
  ttl: number;
  counts: number;
  bodyBytes?: number;
  window?: number;
  dir?: string;
  /** Run the schedule part in a child process (default true). */
  child?: boolean;
}

const DELAY_MS = 30 * 60_000;
const STALL_MS = 60_000;
/**
 * A run whose RSS passes this is stopped and reported as such: firing a burst of delayed messages
 * once grew a broker to 23.6 GB RSS and the kernel's OOM killer ended it, on a machine other work
 * shares (see the fire part).
 */
export const RSS_ABORT_MB = 3000;

/** Resident set size of process `pid` in MB from /proc (Linux), or NaN. */
function rssOfPid(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m === null ? Number.NaN : (Number(m[1]) * 1024) / MB;
  } catch {
    return Number.NaN;
  }
}

/** What a child part returns, plus how the parent saw it end. */
export type PartResult = Metrics & { aborted?: number; childMaxRssMB?: number; progress?: number };

/**
 * Runs one part (`fn` in this module, compiled) in a fresh node process; the parent samples its RSS
 * every 20 ms from /proc and SIGKILLs it past RSS_ABORT_MB (its own event loop may be too busy to
 * notice), returning `{ aborted: 1, progress }` with the last `A <n>` progress line it printed.
 * Falls back to running `inProcess` when not compiled or when `child` is false.
 */
async function inChild(part: string, arg: unknown, child: boolean, inProcess: () => Promise<Metrics>, nodeArgs: string[] = []): Promise<PartResult> {
  const script = compiledSelf();
  if (script === null || !child) return inProcess();
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [...nodeArgs, script, '--part', part, JSON.stringify(arg)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    let maxRss = 0;
    let aborted = false;
    const monitor = setInterval(() => {
      if (proc.pid === undefined) return;
      const rss = rssOfPid(proc.pid);
      if (Number.isFinite(rss)) maxRss = Math.max(maxRss, rss);
      if (rss > RSS_ABORT_MB && !aborted) {
        aborted = true;
        proc.kill('SIGKILL');
      }
    }, 20);
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (x: string) => {
      text += x;
    });
    proc.on('error', (err) => {
      clearInterval(monitor);
      reject(err);
    });
    proc.on('exit', (code, signal) => {
      clearInterval(monitor);
      const lines = text.trim().split('\n');
      const progressLines = lines.filter((l) => l.startsWith('A '));
      const progress = progressLines.length > 0 ? Number(progressLines[progressLines.length - 1]!.slice(2)) : 0;
      if (aborted) return resolve({ aborted: 1, childMaxRssMB: maxRss, progress });
      if (code !== 0) return reject(new Error(`${part} child exited with ${code ?? signal}: ${text.slice(-500)}`));
      try {
        resolve({ ...(JSON.parse(lines.filter((l) => l.startsWith('{')).pop() ?? '') as Metrics), childMaxRssMB: maxRss, progress });
      } catch (err) {
        reject(err);
      }
    });
  });
}

/** Keeps `window` publishes outstanding until `total` resolved; `make(i)` issues publish i. */
async function pump(total: number, window: number, make: (i: number) => Promise<unknown>): Promise<void> {
  if (total <= 0) return;
  let issued = 0;
  let done = 0;
  let lastDone = 0;
  let lastAt = Date.now();
  await new Promise<void>((resolve, reject) => {
    const dog = setInterval(() => {
      if (done !== lastDone) {
        lastDone = done;
        lastAt = Date.now();
      } else if (Date.now() - lastAt > STALL_MS) {
        clearInterval(dog);
        reject(new Error(`publishing stalled at ${done} of ${total}`));
      }
    }, 1000);
    const issue = (): void => {
      if (issued >= total) return;
      make(issued++).then(() => {
        if (++done === total) {
          clearInterval(dog);
          resolve();
        } else issue();
      }, (err: unknown) => {
        clearInterval(dog);
        reject(err);
      });
    };
    for (let i = 0; i < window && i < total; i++) issue();
  });
}

/** Polls `cond` every 2 ms; rejects after `timeoutMs`. */
async function until(cond: () => boolean, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Resolves once every ack of group `group` on `queue` is durable (reaches into the broker). */
async function acksDurable(broker: Broker, queue: string, group: string): Promise<void> {
  const internals = broker as unknown as { queues?: Map<string, { groups?: Map<string, { drainAcks?: () => Promise<void> }> }> };
  await internals.queues?.get(queue)?.groups?.get(group)?.drainAcks?.();
}

async function openBroker(dataDir: string, extra: Record<string, unknown> = {}): Promise<{ broker: Broker; storage: CountingStorage }> {
  const storage = new CountingStorage();
  const broker = await Broker.open({ dataDir, storage, sweepIntervalMs: 60_000, ...extra });
  broker.on('error', (err) => progress(`broker error: ${err.message}`));
  return { broker, storage };
}

// --- schedule: N delayed messages, RSS ---

export interface ScheduleResult {
  messages: number;
  seconds: number;
  fsyncs: number;
  bytesWritten: number;
  maxRssMB: number;
  /** RSS 1 s after the last publish resolved (after a GC when --expose-gc). */
  settledRssMB: number;
  heapMB: number;
  reopenSeconds: number;
  reopenRssMB: number;
}

export async function scheduleInProcess(p: DelayParams): Promise<ScheduleResult> {
  const body = Buffer.alloc(p.bodyBytes ?? 100, 0x61);
  return withTempDir('delay-schedule', p.dir, async (tmp) => {
    const dataDir = path.join(tmp, 'data');
    let { broker, storage } = await openBroker(dataDir);
    let maxRss = 0;
    const sample = setInterval(() => {
      maxRss = Math.max(maxRss, process.memoryUsage().rss);
    }, 250);
    try {
      await broker.assertExchange('ex', 'topic');
      await broker.assertQueue('q');
      await broker.bindQueue('q', 'ex', '#');
      const before = storage.snapshot();
      const t0 = performance.now();
      await timed('delay schedule', () => pump(p.schedule, p.window ?? 1000, () => broker.publish('ex', 'order.unpaid', body, { delay: DELAY_MS })));
      const seconds = (performance.now() - t0) / 1000;
      const io = diffCounters(storage.snapshot(), before);
      await new Promise((r) => setTimeout(r, 1000));
      (globalThis as { gc?: () => void }).gc?.();
      const mu = process.memoryUsage();
      maxRss = Math.max(maxRss, mu.rss);
      const settledRssMB = mu.rss / MB;
      await broker.close();
      const r0 = performance.now();
      ({ broker, storage } = await openBroker(dataDir));
      const reopenSeconds = (performance.now() - r0) / 1000;
      const reopenRssMB = process.memoryUsage().rss / MB;
      return { messages: p.schedule, seconds, fsyncs: io.syncs, bytesWritten: io.bytesWritten, maxRssMB: maxRss / MB, settledRssMB, heapMB: mu.heapUsed / MB, reopenSeconds, reopenRssMB };
    } finally {
      clearInterval(sample);
      await broker.close();
    }
  });
}

function compiledSelf(): string | null {
  const self = fileURLToPath(import.meta.url);
  if (self.endsWith('.js')) return self;
  const js = path.join(path.resolve(path.dirname(self), '..'), 'dist', 'bench', 'delay.js');
  return fs.existsSync(js) ? js : null;
}

/** scheduleInProcess in a fresh `node --expose-gc` (RSS is then the broker's alone). */
export async function scheduleInChild(p: DelayParams): Promise<PartResult> {
  return inChild('schedule', { ...p, child: false }, p.child !== false, async () => ({ ...(await scheduleInProcess(p)) }), ['--expose-gc']);
}

// --- fire: lateness at a steady fire rate ---

export interface FireConfig {
  messages: number;
  spreadMs: number;
  window?: number;
  dir?: string;
  /** Stop waiting this long after the last due time; the figures then cover what arrived. */
  graceMs: number;
  /** In a child: on the deadline print the partial result and exit at once (a broker buried in fires can take minutes to close). */
  exitOnDeadline?: boolean;
}

/** `messages` with random deliverAt in [T, T + spreadMs], all scheduled before T; a consumer records arrival − deliverAt. */
export async function fireInProcess(c: FireConfig): Promise<Metrics> {
  const n = c.messages;
  return withTempDir('delay-fire', c.dir, async (tmp) => {
    const { broker, storage } = await openBroker(path.join(tmp, 'data'));
    try {
      await broker.assertExchange('ex', 'topic');
      await broker.assertQueue('q');
      await broker.bindQueue('q', 'ex', '#');
      const lateness = new Float64Array(n);
      const arrivals = new Float64Array(n);
      let got = 0;
      const now = () => performance.timeOrigin + performance.now();
      await broker.consume(
        'q',
        (msg) => {
          const t = now();
          if (got < n) {
            lateness[got] = t - Number(msg.body.toString());
            arrivals[got] = t;
          }
          got++;
        },
        { group: 'g', prefetch: 1000 },
      );
      // Everything is scheduled before the first due time: lead = a generous estimate of the publish time.
      const leadMs = 1000 + n / 20;
      const start = Math.ceil(Date.now() + leadMs);
      const dues = Array.from({ length: n }, () => start + Math.floor(Math.random() * c.spreadMs));
      const before = storage.snapshot();
      const p0 = performance.now();
      await pump(n, c.window ?? 1000, (i) => broker.publish('ex', 'k', String(dues[i]), { deliverAt: dues[i] as number }));
      const publishMarginMs = start - Date.now();
      const publishSeconds = (performance.now() - p0) / 1000;
      const deadline = start + c.spreadMs + c.graceMs;
      let lastReport = 0;
      await timed('delay fire', async () => {
        while (got < n && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 5));
          if (c.exitOnDeadline === true && got !== lastReport) {
            lastReport = got;
            process.stdout.write(`A ${got}\n`); // progress for a parent that may have to kill this process
          }
        }
      });
      if (got >= n) await new Promise((r) => setTimeout(r, 100));
      const arrived = Math.min(got, n);
      const io = diffCounters(storage.snapshot(), before);
      const lat = Array.from(lateness.subarray(0, arrived));
      const arr = Array.from(arrivals.subarray(0, arrived));
      const first = arrived > 0 ? Math.min(...arr) : Number.NaN;
      const last = arrived > 0 ? Math.max(...arr) : Number.NaN;
      const m: Metrics = {
        messages: n,
        arrived,
        extra: Math.max(0, got - n),
        lateP50Ms: percentile(lat, 50),
        lateP99Ms: percentile(lat, 99),
        lateMaxMs: arrived > 0 ? Math.max(...lat) : Number.NaN,
        lateMinMs: arrived > 0 ? Math.min(...lat) : Number.NaN,
        // Over the time fires actually took (at least the spread they were due over).
        firesPerSec: arrived / Math.max(c.spreadMs / 1000, (last - first) / 1000, 0.001),
        scheduleMsgsPerSec: n / publishSeconds,
        publishMarginMs,
        fsyncsPerSec: io.syncs / ((performance.now() - p0) / 1000),
        maxRssMB: process.memoryUsage.rss() / MB,
      };
      if (got < n && c.exitOnDeadline === true) {
        process.stdout.write(`${JSON.stringify(m)}\n`);
        process.exit(0); // the temp dir is removed by report.ts's exit hook
      }
      return m;
    } finally {
      await broker.close();
    }
  });
}

/** fireInProcess in a child; a run the parent had to kill for its RSS reports how many had arrived. */
async function fireInChild(c: FireConfig, child: boolean): Promise<Metrics> {
  const r = await inChild('fire', { ...c, exitOnDeadline: true }, child, () => fireInProcess(c));
  if (r.aborted !== 1) return { ...r, maxRssMB: Math.max(r.maxRssMB ?? 0, r.childMaxRssMB ?? 0), rssAborted: 0 };
  const nan = Number.NaN;
  return { messages: c.messages, arrived: r.progress ?? 0, extra: 0, lateP50Ms: nan, lateP99Ms: nan, lateMaxMs: nan, lateMinMs: nan, firesPerSec: nan, scheduleMsgsPerSec: nan, publishMarginMs: nan, fsyncsPerSec: nan, maxRssMB: r.childMaxRssMB ?? nan, rssAborted: 1 };
}

/** Two fire runs: at `fireRate` over `fireSpreadMs` (the target), and 10,000 messages over 5 s (2,000/s; quick: a fifth of the first). */
export async function fireOnce(p: DelayParams): Promise<Metrics> {
  const child = p.child !== false;
  const high = await fireInChild({ messages: Math.round((p.fireRate * p.fireSpreadMs) / 1000), spreadMs: p.fireSpreadMs, dir: p.dir, graceMs: 30_000 }, child);
  const low = await fireInChild({ messages: Math.round((p.fireRate * p.fireSpreadMs) / 5000), spreadMs: p.fireSpreadMs, dir: p.dir, graceMs: 30_000 }, child);
  const m: Metrics = {};
  for (const [k, v] of Object.entries(high)) m[k] = v;
  for (const [k, v] of Object.entries(low)) m[`low${k[0]!.toUpperCase()}${k.slice(1)}`] = v;
  return m;
}

// --- ttl: expiry throughput ---

/** Per-message TTL expiries are capped at this many per run: each expiry reads its record alone, and a burst of 20,000 grew the broker past 15 GB RSS. */
export const MESSAGE_TTL_MAX = 2000;

export async function ttlKindInProcess(a: { kind: 'queue' | 'message'; n: number; bodyBytes?: number; window?: number; dir?: string }): Promise<Metrics> {
  const body = Buffer.alloc(a.bodyBytes ?? 100, 0x62);
  return withTempDir('delay-ttl', a.dir, async (tmp) => {
    const clock = { t: Date.now(), now: () => clock.t };
    const { broker } = await openBroker(path.join(tmp, 'data'), { clock, tickIntervalMs: 5 });
    try {
      await broker.assertExchange('dlx', 'fanout');
      await broker.assertQueue('dlq');
      await broker.bindQueue('dlq', 'dlx');
      await broker.assertQueue('tq', { deadLetterExchange: 'dlx', ...(a.kind === 'queue' ? { messageTtl: 1000 } : {}) });
      // An idle group: expiry acts per group (a queue without any group does not expire; see test/broker/time-ttl.test.ts).
      await (await broker.consume('tq', () => {}, { group: 'idle' })).close();
      const opts = a.kind === 'message' ? { ttl: 1000 } : {};
      // The first ttl message alone: concurrent first ttl publishes to a queue fail with EEXIST (test/broker/time-ttl.test.ts).
      await broker.sendToQueue('tq', body, opts);
      await pump(a.n - 1, a.window ?? 1000, () => broker.sendToQueue('tq', body, opts));
      const t0 = performance.now();
      clock.t += 1000;
      await timed(`delay ttl ${a.kind}`, () => until(() => broker.queueStats('dlq').endOffset >= a.n, `${a.n} expired (${broker.queueStats('dlq').endOffset})`, 300_000));
      await acksDurable(broker, 'tq', 'idle');
      return { msgsPerSec: a.n / ((performance.now() - t0) / 1000), maxRssMB: process.memoryUsage.rss() / MB };
    } finally {
      await broker.close();
    }
  });
}

export async function ttlOnce(p: DelayParams): Promise<Metrics> {
  const m: Metrics = {};
  const child = p.child !== false;
  for (const kind of ['queue', 'message'] as const) {
    const arg = { kind, n: kind === 'queue' ? p.ttl : Math.min(p.ttl, MESSAGE_TTL_MAX), bodyBytes: p.bodyBytes, window: p.window, dir: p.dir };
    const r = await inChild('ttl', arg, child, () => ttlKindInProcess(arg));
    m[`${kind}TtlMsgsPerSec`] = r.aborted === 1 ? Number.NaN : (r.msgsPerSec as number);
    m[`${kind}TtlMaxRssMB`] = Math.max(r.maxRssMB ?? 0, r.childMaxRssMB ?? 0);
    m[`${kind}TtlAborted`] = r.aborted ?? 0;
  }
  return m;
}

// --- counts: drain with and without deliveryLimit ---

async function drainQueue(broker: Broker, queue: string, n: number): Promise<number> {
  let got = 0;
  const t0 = performance.now();
  const c = await broker.consume(queue, () => void got++, { group: 'drain', prefetch: 1000 });
  try {
    await until(() => got >= n, `${queue} drained (${got} of ${n})`, 600_000);
    await acksDurable(broker, queue, 'drain');
    return (performance.now() - t0) / 1000;
  } finally {
    await c.close();
  }
}

export async function countsOnce(p: DelayParams, run: number): Promise<Metrics> {
  const body = Buffer.alloc(p.bodyBytes ?? 100, 0x63);
  return withTempDir('delay-counts', p.dir, async (tmp) => {
    const { broker, storage } = await openBroker(path.join(tmp, 'data'));
    try {
      await broker.assertExchange('ex', 'fanout');
      await broker.assertQueue('plain');
      await broker.assertQueue('limited', { deliveryLimit: 5 });
      for (const q of ['plain', 'limited']) {
        await broker.bindQueue(q, 'ex');
        await (await broker.consume(q, () => {}, { group: 'drain', ack: 'manual' })).close();
      }
      await pump(p.counts, p.window ?? 1000, () => broker.publish('ex', '', body));
      const m: Metrics = {};
      const order = run % 2 === 0 ? ['plain', 'limited'] : ['limited', 'plain'];
      for (const q of order) {
        const before = storage.snapshot();
        const s = await timed(`delay counts ${q}`, () => drainQueue(broker, q, p.counts));
        const io = diffCounters(storage.snapshot(), before);
        m[`${q}MsgsPerSec`] = p.counts / s;
        m[`${q}FsyncsPerSec`] = io.syncs / s;
        m[`${q}MsgsPerFsync`] = p.counts / Math.max(1, io.syncs);
      }
      m.limitedOverPlain = (m.limitedMsgsPerSec as number) / (m.plainMsgsPerSec as number);
      return m;
    } finally {
      await broker.close();
    }
  });
}

// --- the scenario ---

export async function benchDelay(ctx: ScenarioContext, p: DelayParams): Promise<ScenarioReport> {
  const name = 'delay';
  const raw = ctx.raw;
  progress(`${name}: scheduling ${fmt(p.schedule)} delayed messages${p.child === false ? '' : ' (child process)'}`);
  const sched = await scheduleInChild(p);
  const num = (v: number | undefined) => v ?? Number.NaN;
  const r = await repeat(ctx.repeats, name, async (run) => ({ ...(await fireOnce(p)), ...(await ttlOnce(p)), ...(await countsOnce(p, run)) }));
  const m: Metrics = {
    ...r.median,
    scheduleMsgsPerSec: num(sched.messages) / num(sched.seconds),
    scheduleFsyncsPerSec: num(sched.fsyncs) / num(sched.seconds),
    scheduleMaxRssMB: Math.max(num(sched.maxRssMB), sched.childMaxRssMB ?? 0),
    scheduleSettledRssMB: num(sched.settledRssMB),
    scheduleHeapMB: num(sched.heapMB),
    reopenSeconds: num(sched.reopenSeconds),
    reopenRssMB: num(sched.reopenRssMB),
  };
  const runs: Record<string, number[]> = { ...r.runs };
  for (const k of ['scheduleMsgsPerSec', 'scheduleFsyncsPerSec', 'scheduleMaxRssMB', 'scheduleSettledRssMB', 'scheduleHeapMB', 'reopenSeconds', 'reopenRssMB']) runs[k] = [m[k] as number];
  const fsyncPct = (v: number) => (raw === null ? '(raw limits not measured)' : `${fmtPct(v / raw.fsyncCallsPerSec)} of raw fdatasync rate (${fmt(raw.fsyncCallsPerSec)}/s)`);
  const n = Math.round((p.fireRate * p.fireSpreadMs) / 1000);
  const nLow = Math.round(n / 5);
  const rows: SummaryRow[] = [
    {
      scenario: name,
      metric: `schedule ${fmt(p.schedule)} delayed (30 min), 1,000 outstanding`,
      value: m.scheduleMsgsPerSec as number,
      unit: 'msgs/s',
      ratios: `fsyncs ${fmt(m.scheduleFsyncsPerSec)}/s = ${fsyncPct(m.scheduleFsyncsPerSec as number)}; ${fmt((m.scheduleMsgsPerSec as number) / Math.max(1, m.scheduleFsyncsPerSec as number))} msgs per fsync`,
    },
    {
      scenario: name,
      metric: `max RSS, ${fmt(p.schedule)} pending`,
      value: m.scheduleMaxRssMB as number,
      unit: 'MB',
      target: { kind: 'max', value: DELAY_TARGETS.scheduleRssMaxMB, text: `< ${DELAY_TARGETS.scheduleRssMaxMB} MB${p.schedule >= 1_000_000 ? '' : ` (of 1M; ran ${fmt(p.schedule)})`}` },
      ratios: `settled ${fmt(m.scheduleSettledRssMB)} MB (heap ${fmt(m.scheduleHeapMB)} MB); reopen with all pending ${fmt(m.reopenSeconds)} s, RSS ${fmt(m.reopenRssMB)} MB`,
    },
    {
      scenario: name,
      metric: `fire lateness p99, ${fmt(n)} msgs due at ${fmt(p.fireRate)}/s`,
      value: m.lateP99Ms as number,
      unit: 'ms',
      target: { kind: 'max', value: DELAY_TARGETS.fireP99MaxMs, text: `< ${DELAY_TARGETS.fireP99MaxMs} ms` },
      ...(m.arrived === m.messages ? {} : { judged: Number.POSITIVE_INFINITY }),
      ratios: `${m.arrived === m.messages ? '' : `ONLY ${fmt(m.arrived)} OF ${fmt(m.messages)} ARRIVED ${m.rssAborted ? `before its RSS passed ${fmt(RSS_ABORT_MB)} MB and it was killed (no lateness figures)` : 'within 30 s after the last due time (figures cover those)'}; `}max RSS ${fmt(m.maxRssMB)} MB; p50 ${fmt(m.lateP50Ms)} ms, max ${fmt(m.lateMaxMs)} ms; achieved ${fmt(m.firesPerSec)} fires/s; fsyncs ${fmt(m.fsyncsPerSec)}/s = ${fsyncPct(m.fsyncsPerSec as number)}`,
    },
    {
      scenario: name,
      metric: `fire lateness p99, ${fmt(nLow)} msgs due at ${fmt(p.fireRate / 5)}/s`,
      value: m.lowLateP99Ms as number,
      unit: 'ms',
      ratios: `${m.lowArrived === m.lowMessages ? '' : `ONLY ${fmt(m.lowArrived)} OF ${fmt(m.lowMessages)} ARRIVED${m.lowRssAborted ? ` (RSS passed ${fmt(RSS_ABORT_MB)} MB)` : ''}; `}max RSS ${fmt(m.lowMaxRssMB)} MB; p50 ${fmt(m.lowLateP50Ms)} ms, max ${fmt(m.lowLateMaxMs)} ms; achieved ${fmt(m.lowFiresPerSec)} fires/s`,
    },
    { scenario: name, metric: `TTL expiry → DLX, queue messageTtl, ${fmt(p.ttl)} msgs`, value: m.queueTtlMsgsPerSec as number, unit: 'msgs/s', ratios: `fake clock moved past the TTL at once; real time until all are in the DLQ; max RSS ${fmt(m.queueTtlMaxRssMB)} MB` },
    {
      scenario: name,
      metric: `TTL expiry → DLX, per-message ttl, ${fmt(Math.min(p.ttl, MESSAGE_TTL_MAX))} msgs`,
      value: m.messageTtlMsgsPerSec as number,
      unit: 'msgs/s',
      ratios: `through the timing wheel; max RSS ${fmt(m.messageTtlMaxRssMB)} MB${m.messageTtlAborted ? ` — KILLED past ${fmt(RSS_ABORT_MB)} MB` : ''} (capped at ${fmt(MESSAGE_TTL_MAX)}: each expiry reads its record alone, ~1 MiB buffer each)`,
    },
    {
      scenario: name,
      metric: `drain ${fmt(p.counts)} with deliveryLimit (count fsynced first)`,
      value: m.limitedMsgsPerSec as number,
      unit: 'msgs/s',
      ratios: `${fmtRatio(m.limitedOverPlain)} the same drain without a limit (${fmt(m.plainMsgsPerSec)}/s); fsyncs ${fmt(m.limitedFsyncsPerSec)}/s = ${fsyncPct(m.limitedFsyncsPerSec as number)} vs ${fmt(m.plainFsyncsPerSec)}/s; ${fmt(m.limitedMsgsPerFsync)} vs ${fmt(m.plainMsgsPerFsync)} msgs per fsync`,
    },
  ];
  return {
    name,
    title: `delayed messages (schedule ${fmt(p.schedule)}, fire at ${fmt(p.fireRate)}/s), TTL expiry, delivery-count fsync cost`,
    params: { ...p, child: p.child !== false },
    repeats: r.repeats,
    median: m,
    runs,
    labels: {
      scheduleMsgsPerSec: `schedule ${fmt(p.schedule)} x 30 min delay: msgs/s (one run)`,
      scheduleMaxRssMB: 'max RSS while scheduling (MB, one run)',
      scheduleSettledRssMB: 'RSS 1 s after, post-GC (MB)',
      reopenSeconds: `reopen with ${fmt(p.schedule)} pending (s)`,
      reopenRssMB: 'RSS after reopen (MB)',
      arrived: `fired and delivered of ${fmt(n)} due at ${fmt(p.fireRate)}/s (within 30 s after the last due time)`,
      lateP50Ms: 'fire lateness p50 (ms)',
      lateP99Ms: 'fire lateness p99 (ms)',
      lateMaxMs: 'fire lateness max (ms)',
      firesPerSec: 'achieved fires/s',
      maxRssMB: 'max RSS of the firing broker (MB)',
      lowArrived: `fired and delivered of ${fmt(nLow)} due at ${fmt(p.fireRate / 5)}/s`,
      lowLateP50Ms: `  at ${fmt(p.fireRate / 5)}/s: fire lateness p50 (ms)`,
      lowLateP99Ms: `  at ${fmt(p.fireRate / 5)}/s: fire lateness p99 (ms)`,
      lowLateMaxMs: `  at ${fmt(p.fireRate / 5)}/s: fire lateness max (ms)`,
      lowFiresPerSec: `  at ${fmt(p.fireRate / 5)}/s: achieved fires/s`,
      publishMarginMs: 'scheduling finished this long before the first due time (ms)',
      queueTtlMsgsPerSec: 'queue messageTtl expiry -> DLQ msgs/s',
      messageTtlMsgsPerSec: `per-message ttl expiry -> DLQ msgs/s (${fmt(Math.min(p.ttl, MESSAGE_TTL_MAX))} msgs)`,
      messageTtlMaxRssMB: '  max RSS meanwhile (MB)',
      plainMsgsPerSec: 'drain without deliveryLimit msgs/s (until acks durable)',
      limitedMsgsPerSec: 'drain with deliveryLimit msgs/s (until acks durable)',
      plainFsyncsPerSec: 'fsyncs/s without deliveryLimit',
      limitedFsyncsPerSec: 'fsyncs/s with deliveryLimit',
    },
    ratios: [
      `schedule: ${fmt(m.scheduleMsgsPerSec)} msgs/s, max RSS ${fmt(m.scheduleMaxRssMB)} MB for ${fmt(p.schedule)} pending (RSS includes node itself, ~45 MB)`,
      `fire: ${fmt(m.arrived)} of ${fmt(n)} arrived, p99 ${fmt(m.lateP99Ms)} ms at ${fmt(m.firesPerSec)} fires/s achieved (due at ${fmt(p.fireRate)}/s); at ${fmt(p.fireRate / 5)}/s p99 ${fmt(m.lowLateP99Ms)} ms; fsyncs ${fsyncPct(m.fsyncsPerSec as number)}`,
      `deliveryLimit costs ${fmtPct(1 - (m.limitedOverPlain as number))} of drain throughput; fsyncs with it ${fsyncPct(m.limitedFsyncsPerSec as number)}, without ${fsyncPct(m.plainFsyncsPerSec as number)}`,
    ],
    rows,
  };
}

// Child-process entry point of the parts run by inChild.
const isMain = process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain && process.argv[2] === '--part') {
  const part = process.argv[3];
  const arg = JSON.parse(process.argv[4] ?? '{}') as never;
  const run = part === 'schedule' ? async () => ({ ...(await scheduleInProcess(arg)) }) : part === 'fire' ? () => fireInProcess(arg) : part === 'ttl' ? () => ttlKindInProcess(arg) : null;
  if (run === null) {
    process.stderr.write(`unknown part ${part}\n`);
    process.exitCode = 2;
  } else {
    run().then(
      (r) => {
        process.stdout.write(`${JSON.stringify(r)}\n`);
      },
      (err: unknown) => {
        process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
        process.exitCode = 1;
      },
    );
  }
}
