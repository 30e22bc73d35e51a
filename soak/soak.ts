/**
 * The durability soak: a real `spool serve` process, SIGKILLed and restarted again and again while
 * a client publishes to it and two consumer groups drain it, and then a check that nothing the
 * broker confirmed or acked was lost, duplicated or changed.
 *
 *   server     `node dist/src/cli/main.js serve --data <dir>`, a child process, killed with
 *              SIGKILL every killMinMs–killMaxMs and started again on the same dir
 *   producer   one client keeps `window` publishes in flight through the topic exchange 'soak';
 *              message n has the id `m-<n>`, a body derived from n (20–400 B, some 8–64 KiB) and
 *              the header `n`; some are delayed by 0–1.5 s. Both queues get every message.
 *   workers    group 'workers' on queue 'work': two competing consumers, ack 'manual' (32 handlers
 *              each, every one awaiting its settle), that nack (requeue) about one delivery in
 *              twelve, reject (nack without requeue) one in forty and ack the rest
 *   dead       'work' dead-letters to the fanout exchange 'soak.dlx', bound to the queue 'dead'
 *   auditor    group 'auditor' on queue 'audit', ack 'auto'
 *   ledger     group 'ledger' on all three queues, made before anything is published and read only at
 *              the end: it holds retention back, so it sees every record the queues ever stored
 *
 * What must hold, checked at the end (each is a violation, listed in the report):
 *   - every publish is answered 'confirmed' (or fails at its deadline): the client answers a resend
 *     that finds its id stored 'confirmed', since the message landed, once;
 *   - every confirmed message is delivered to both groups, and 'workers' ends with nothing unacked
 *     (its group state; an ack made durable just before a kill is never answered): nothing
 *     confirmed is lost;
 *   - every confirmed message's last fate in 'workers' is an ack, or it is in 'dead' (once, with an
 *     x-death entry 'rejected' from 'work', and only if a worker rejected it): a rejected message
 *     is moved, not lost or copied, and a requeued one comes back;
 *   - every message delivered has the body and header its id says: nothing is corrupted;
 *   - no 'workers' delivery arrives after an ack of that message resolved 'acked': an ack, once
 *     confirmed, survives the crash;
 *   - each queue stores each id once, and no id nobody published: the client's resends after a
 *     reconnect land exactly once (a publish that failed may be stored once or not at all);
 *   - the server stops cleanly at the end and `spool verify` finds every checksum good.
 *
 * It runs from the compiled tree (dist/), because the server child does. `npm run soak` runs it
 * for two minutes; test/soak/soak.test.ts runs a short one inside `npm test`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PublishResult } from '../src/broker/broker.js';
import { connect, type RemoteBroker, type RemoteMessage } from '../src/client/index.js';

export interface SoakOptions {
  /** How long to publish and kill, in seconds (the drain and the checks come after). */
  seconds: number;
  /** A kill comes a random time in [killMinMs, killMaxMs] after the server is up again. */
  killMinMs: number;
  killMaxMs: number;
  /** Publishes in flight. */
  window: number;
  /** Seeds the sizes, delays, nacks and kill times. */
  seed: number;
  /** Fraction of messages published with a delay of 0–1.5 s. */
  delayedFraction: number;
  /** Fraction of messages with a body of 8–64 KiB. */
  largeFraction: number;
  /** How long the drain may take once publishing stopped, in ms. */
  drainTimeoutMs: number;
  /** Parent of the temporary data dir (default: the OS's). */
  dir?: string;
  /** Keep the data dir afterwards. */
  keep?: boolean;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

export const SOAK_DEFAULTS: SoakOptions = {
  seconds: 120,
  killMinMs: 1000,
  killMaxMs: 4000,
  window: 64,
  seed: 1,
  delayedFraction: 0.1,
  largeFraction: 0.02,
  drainTimeoutMs: 60_000,
};

export interface SoakReport {
  ok: boolean;
  violations: string[];
  dataDir: string;
  seconds: number;
  kills: number;
  reconnects: number;
  /** Time from each kill to the client being connected again, in ms. */
  downMs: number[];
  published: number;
  confirmed: number;
  /**
   * Publishes answered 'duplicate'. Each id is published once, and the client answers a resend
   * that finds its id stored 'confirmed' (it landed, once), so this stays 0 unless that breaks.
   */
  duplicateAnswers: number;
  /** Publishes that failed (their deadline passed): stored at most once. */
  failed: number;
  delayed: number;
  workerDeliveries: number;
  workerRedeliveries: number;
  nacks: number;
  auditorDeliveries: number;
  rejects: number;
  /** Records each queue stored. */
  stored: { work: number; audit: number; dead: number };
}

/** A small seeded generator (mulberry32), so a failing run can be repeated with its seed. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Message n's body: its size and bytes follow from n and the seed alone, so a receiver can check it. */
export function bodyOf(n: number, seed: number, largeFraction: number): Buffer {
  const r = random((n * 2654435761) ^ seed);
  const size = r() < largeFraction ? 8192 + Math.floor(r() * 57_344) : 20 + Math.floor(r() * 380);
  const b = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) b[i] = Math.floor(r() * 256);
  return b;
}

const ACTION_ACKED = 1;
const ACTION_REQUEUED = 2;
const ACTION_REJECTED = 3;

function idOf(n: number): string {
  return `m-${n}`;
}

function numberOf(id: string): number {
  const m = /^m-(\d+)$/.exec(id);
  return m === null ? -1 : Number(m[1]);
}

/** The CLI entry the server child runs: dist/src/cli/main.js, from this module's place in or out of dist. */
function cliPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const inDist = path.join(here, '..', 'src', 'cli', 'main.js');
  if (here.split(path.sep).includes('dist') && fs.existsSync(inDist)) return inDist;
  const built = path.join(here, '..', 'dist', 'src', 'cli', 'main.js');
  if (!fs.existsSync(built)) throw new Error(`the soak runs the compiled server: ${built} is missing (npm run build)`);
  return built;
}

interface ServerChild {
  proc: ChildProcess;
  exited: Promise<number | null>;
}

/** Starts `spool serve --data dataDir` and resolves once it says where it listens. */
async function startServer(cli: string, dataDir: string): Promise<{ child: ServerChild; url: string }> {
  const proc = spawn(process.execPath, [cli, 'serve', '--data', dataDir], { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`spool serve did not start within 15 s: ${stderr}`)), 15_000);
    proc.stderr?.setEncoding('utf8').on('data', (s: string) => {
      stderr += s;
      const m = / on (unix:\/\/\S+?);/.exec(stderr);
      if (m !== null) {
        clearTimeout(timer);
        resolve(m[1] as string);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`spool serve exited (${code}) before it listened: ${stderr}`));
    });
  });
  return { child: { proc, exited }, url };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitUntil(ok: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await ok()) return true;
    await sleep(50);
  }
  return ok();
}

/** Runs the soak; never throws for a broken promise of the broker (that is a violation in the report). */
export async function runSoak(partial: Partial<SoakOptions> = {}): Promise<SoakReport> {
  const o: SoakOptions = { ...SOAK_DEFAULTS, ...partial };
  const log = o.log ?? (() => {});
  const cli = cliPath();
  const base = fs.mkdtempSync(path.join(o.dir ?? os.tmpdir(), 'spool-soak-'));
  const dataDir = path.join(base, 'data');
  const rnd = random(o.seed);
  const violations: string[] = [];
  const violate = (what: string): void => {
    if (violations.length < 50) violations.push(what);
  };

  let server = await startServer(cli, dataDir);
  const client: RemoteBroker = await connect(server.url, { reconnect: { initialDelayMs: 20, maxDelayMs: 250 }, timeoutMs: 30_000 });
  const downMs: number[] = [];
  let reconnects = 0;
  client.on('reconnect', (r) => {
    reconnects++;
    downMs.push(r.downMs);
  });
  client.on('error', (err) => violate(`client error event: ${err.message}`));
  client.on('disconnect', () => {});

  await client.assertExchange('soak', 'topic');
  await client.assertExchange('soak.dlx', 'fanout');
  await client.assertQueue('work', { deadLetterExchange: 'soak.dlx' });
  await client.assertQueue('audit');
  await client.assertQueue('dead');
  await client.bindQueue('work', 'soak', 'job.*');
  await client.bindQueue('audit', 'soak', '#');
  await client.bindQueue('dead', 'soak.dlx');
  // The ledger groups exist before the first publish, so retention keeps every record for the end.
  for (const q of ['work', 'audit', 'dead']) await (await client.consume(q, () => {}, { group: 'ledger', ack: 'manual', prefetch: 1 })).close();

  // --- consumers ---
  const checkMessage = (m: RemoteMessage, who: string): number => {
    const n = numberOf(m.id);
    if (n < 0) {
      violate(`${who}: a message nobody published: id ${JSON.stringify(m.id)}`);
      return -1;
    }
    if (!m.body.equals(bodyOf(n, o.seed, o.largeFraction))) violate(`${who}: ${m.id} has a changed body (${m.body.length} B)`);
    if (m.headers.n !== n) violate(`${who}: ${m.id} has header n = ${JSON.stringify(m.headers.n)}`);
    return n;
  };
  const workerAcked = new Set<number>();
  const workerSeen = new Set<number>();
  let workerDeliveries = 0;
  let workerRedeliveries = 0;
  let nacks = 0;
  let rejects = 0;
  const nackRnd = random(o.seed ^ 0x5eed);
  /** Per message number: the last settle a worker made of it (ACTION_*), and whether it was ever rejected. */
  let lastAction = new Uint8Array(1 << 16);
  let everRejected = new Uint8Array(1 << 16);
  const act = (n: number, action: number): void => {
    if (n >= lastAction.length) {
      const size = Math.max(n + 1, lastAction.length * 2);
      const grown = new Uint8Array(size);
      grown.set(lastAction);
      lastAction = grown;
      const grownRejected = new Uint8Array(size);
      grownRejected.set(everRejected);
      everRejected = grownRejected;
    }
    lastAction[n] = action;
    if (action === ACTION_REJECTED) everRejected[n] = 1;
  };
  const worker = async (m: RemoteMessage): Promise<void> => {
    workerDeliveries++;
    if (m.deliveryCount > 1) workerRedeliveries++;
    const n = checkMessage(m, 'workers');
    if (n < 0) return;
    if (workerAcked.has(n)) violate(`workers: ${m.id} delivered again (count ${m.deliveryCount}) after its ack resolved 'acked'`);
    workerSeen.add(n);
    // The action is recorded before the settle: one cut off by a kill may have happened or not.
    const r = nackRnd();
    try {
      if (r < 1 / 12) {
        nacks++;
        act(n, ACTION_REQUEUED);
        await m.nack({ requeue: true });
      } else if (r < 1 / 12 + 1 / 40) {
        rejects++;
        act(n, ACTION_REJECTED);
        await m.nack({ requeue: false });
      } else {
        act(n, ACTION_ACKED);
        if ((await m.ack()) === 'acked') workerAcked.add(n);
      }
    } catch {
      // The connection went down under the settle: the message comes again unless it was done.
    }
  };
  const workerOptions = { group: 'workers', ack: 'manual' as const, prefetch: 64, concurrency: 32 };
  await client.consume('work', worker, workerOptions);
  await client.consume('work', worker, workerOptions);
  const auditorSeen = new Set<number>();
  let auditorDeliveries = 0;
  await client.consume(
    'audit',
    (m: RemoteMessage) => {
      auditorDeliveries++;
      const n = checkMessage(m, 'auditor');
      if (n >= 0) auditorSeen.add(n);
    },
    { group: 'auditor', ack: 'auto', prefetch: 100 },
  );

  // --- the killer ---
  let kills = 0;
  let stopKilling = false;
  const killer = (async () => {
    while (!stopKilling) {
      await sleep(o.killMinMs + rnd() * (o.killMaxMs - o.killMinMs));
      if (stopKilling) break;
      server.child.proc.kill('SIGKILL');
      await server.child.exited;
      kills++;
      server = await startServer(cli, dataDir);
      log(`kill ${kills}: restarted (pid ${server.child.proc.pid})`);
      // The next kill counts from when the client is back, so every kill hits a working session.
      await waitUntil(() => client.connected, 15_000);
    }
  })();

  // --- the producer ---
  const confirmed = new Set<number>();
  const failedSet = new Set<number>();
  let published = 0;
  let duplicateAnswers = 0;
  let delayed = 0;
  const until = Date.now() + o.seconds * 1000;
  await new Promise<void>((resolve) => {
    let inFlight = 0;
    const issue = (): void => {
      if (Date.now() >= until) {
        if (inFlight === 0) resolve();
        return;
      }
      const n = published++;
      const delay = rnd() < o.delayedFraction ? Math.floor(rnd() * 1500) : undefined;
      if (delay !== undefined) delayed++;
      inFlight++;
      const options = { id: idOf(n), headers: { n }, ...(delay !== undefined ? { delay } : {}) };
      client.publish('soak', `job.${n % 5}`, bodyOf(n, o.seed, o.largeFraction), options).then(
        (r: PublishResult) => {
          if (r.status === 'duplicate') duplicateAnswers++;
          if (r.status === 'confirmed') confirmed.add(n);
          else violate(`publish ${idOf(n)} answered ${r.status}: each id is published once, and a resend that finds it stored is 'confirmed'`);
        },
        () => failedSet.add(n),
      ).finally(() => {
        inFlight--;
        issue();
      });
    };
    for (let i = 0; i < o.window; i++) issue();
  });
  stopKilling = true;
  await killer;
  log(`published ${published} (${confirmed.size} confirmed, ${failedSet.size} failed) with ${kills} kills; draining`);

  // --- drain: everything confirmed reaches both groups, and 'workers' acks all of it ---
  // An ack the server made durable just before a kill is never answered: the client counts it
  // as not acked, and the message rightly never comes again. So the group's own state says
  // when everything is acked; the client's records say that every message was delivered.
  const lost = (seen: Set<number>): number[] => [...confirmed].filter((n) => !seen.has(n));
  const workersDone = async (): Promise<boolean> => {
    const g = (await client.queueStats('work')).groups.workers;
    return g !== undefined && g.lag === 0 && g.inFlight === 0;
  };
  const drainStart = Date.now();
  const drained = await waitUntil(async () => lost(workerSeen).length === 0 && lost(auditorSeen).length === 0 && (await workersDone()), o.drainTimeoutMs);
  if (!drained) {
    const w = lost(workerSeen);
    const a = lost(auditorSeen);
    if (w.length > 0) violate(`workers never got ${w.length} confirmed messages, e.g. ${w.slice(0, 5).map(idOf).join(', ')}`);
    if (a.length > 0) violate(`auditor never saw ${a.length} confirmed messages, e.g. ${a.slice(0, 5).map(idOf).join(', ')}`);
    if (!(await workersDone())) violate(`group 'workers' did not ack everything: ${JSON.stringify((await client.queueStats('work')).groups.workers)}`);
  }

  log(`drained in ${Date.now() - drainStart} ms`);

  // --- exactly once per queue, read back through the ledger group ---
  const stored = { work: 0, audit: 0, dead: 0 };
  const deadCounts = new Map<number, number>();
  for (const q of ['work', 'audit', 'dead'] as const) {
    const stats = await client.queueStats(q);
    const records = stats.endOffset - stats.startOffset;
    stored[q] = records;
    if (stats.startOffset !== 0) violate(`${q}: retention dropped records below the ledger group (start offset ${stats.startOffset})`);
    const counts = new Map<number, number>();
    let read = 0;
    const reader = await client.consume(
      q,
      (m: RemoteMessage) => {
        read++;
        const n = checkMessage(m, `ledger ${q}`);
        if (n >= 0) counts.set(n, (counts.get(n) ?? 0) + 1);
        if (q === 'dead') {
          const death = (m.headers['x-death'] as { reason?: string; queue?: string }[] | undefined)?.[0];
          if (death?.reason !== 'rejected' || death.queue !== 'work') violate(`dead: ${m.id} has x-death ${JSON.stringify(m.headers['x-death'])}`);
        }
      },
      { group: 'ledger', ack: 'none', prefetch: 1000 },
    );
    if (!(await waitUntil(() => read >= records, 30_000))) violate(`${q}: the ledger read ${read} of ${records} records`);
    await reader.close();
    log(`ledger ${q}: ${read} records read back`);
    for (const [n, c] of counts) {
      if (c > 1) violate(`${q}: ${idOf(n)} stored ${c} times`);
      if (!confirmed.has(n) && !failedSet.has(n)) violate(`${q}: ${idOf(n)} stored but never published`);
    }
    if (q === 'dead') {
      for (const [n, c] of counts) {
        deadCounts.set(n, c);
        if (everRejected[n] !== 1) violate(`dead: ${idOf(n)} was dead-lettered but no worker rejected it`);
      }
    } else {
      for (const n of confirmed) if (!counts.has(n)) violate(`${q}: confirmed ${idOf(n)} is not stored`);
    }
  }
  // Each message's fate in 'workers': its last settle was an ack (answered or cut off, and then
  // not delivered again), or it is in 'dead'. A last requeue, or a last reject with no dead copy,
  // means the broker dropped it.
  for (const n of confirmed) {
    const last = lastAction[n] ?? 0;
    if (deadCounts.has(n) || last === ACTION_ACKED) continue;
    violate(`workers: ${idOf(n)} is neither acked nor dead-lettered (last settle: ${['none', 'ack', 'requeue', 'reject'][last]})`);
  }

  await client.close();
  // A clean stop, then every checksum of every log.
  server.child.proc.kill('SIGTERM');
  const code = await server.child.exited;
  if (code !== 0) violate(`spool serve exited with ${code} on SIGTERM`);
  const verify = await new Promise<{ code: number | null; out: string }>((resolve) => {
    const p = spawn(process.execPath, [cli, 'verify', '--data', dataDir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout?.setEncoding('utf8').on('data', (s: string) => (out += s));
    p.stderr?.setEncoding('utf8').on('data', (s: string) => (out += s));
    p.once('exit', (c) => resolve({ code: c, out }));
  });
  if (verify.code !== 0) violate(`spool verify exited with ${verify.code}: ${verify.out.trim().split('\n').slice(-5).join(' | ')}`);

  if (!o.keep && violations.length === 0) fs.rmSync(base, { recursive: true, force: true });
  return {
    ok: violations.length === 0,
    violations,
    dataDir,
    seconds: o.seconds,
    kills,
    reconnects,
    downMs,
    published,
    confirmed: confirmed.size,
    duplicateAnswers,
    failed: failedSet.size,
    delayed,
    workerDeliveries,
    workerRedeliveries,
    nacks,
    rejects,
    auditorDeliveries,
    stored,
  };
}
