/**
 * The durability soak: a real `spool serve` process, SIGKILLed and restarted again and again while
 * a client publishes to it and two consumer groups drain it, and then a check that nothing the
 * broker confirmed or acked was lost, duplicated or changed.
 *
 *   server     `node dist/src/cli/main.js serve --data <dir> --segment-bytes 2097152` (queue logs
 *              roll every 2 MiB), a child process, killed with
 *              SIGKILL every killMinMs–killMaxMs and started again on the same dir; about one
 *              restart in three is itself killed 0–400 ms into its startup (recovery included)
 *              (`tcp`: also on TCP 127.0.0.1 with a token, and every client connects over it)
 *   producer   one client keeps `window` sends in flight through the topic exchange 'soak' (one in
 *              ten a `publishBatch` of 2–20); message n has the id `m-<n>`, a body derived from n
 *              (20–400 B, some 8–64 KiB) and the header `n`; some are delayed by 0–1.5 s, and a few
 *              by 1–3 s and then cancelled. Of the rest, `clientIdFraction` (0.3) go without an
 *              id: the client makes one and sends its first attempt with the flag NEW_ID (the
 *              server records it without a lookup), so resends of those are tested too. The queues 'work', 'audit' and 'retry' get every one.
 *   workers    group 'workers' on queue 'work': `workers` competing consumers, each in its own
 *              process (soak/consumer-child.ts), SIGKILLed every workerKillMinMs–workerKillMaxMs
 *              and started again; ack 'manual' (32 handlers each, every one awaiting its
 *              settle), they requeue about one delivery in twelve, reject (nack without requeue)
 *              one in forty and ack the rest, journaling each step to a file (soak/worker.ts)
 *   dead       'work' dead-letters to the fanout exchange 'soak.dlx', bound to the queue 'dead'
 *   retriers   group 'retriers' on queue 'retry', ack 'auto' with retries (3 attempts, backoff
 *              20 ms doubling): its handler throws on about one attempt in eight, so some
 *              messages are retried after a durable delay and about one in 500 is given up, to
 *              the queue 'gaveup' (through 'retry''s dead-letter exchange 'soak.gaveup')
 *   auditor    group 'auditor' on queue 'audit', ack 'auto'
 *   sleepy     group 'sleepy' on queue 'slow' (key job.0 only: one message in five; messageTtl
 *              300 ms), one 5 ms handler at a time: it cannot keep up, so most messages expire
 *              to the queue 'expired' (through 'slow''s dead-letter exchange 'soak.expired')
 *   ledger     group 'ledger' on every queue but 'slow', made before anything is published and read only at
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
 *   - every confirmed message's handler in 'retriers' succeeded once, or it is in 'gaveup' (once,
 *     x-death 'rejected' from 'retry' with the handler's error, only if the handler failed on it):
 *     retries and their due times survive the kills;
 *   - every confirmed message of 'slow' was handled by 'sleepy' or is in 'expired' (once, x-death
 *     'expired' from 'slow'): expiry moves a message, never loses or copies it;
 *   - a message whose cancel resolved true is never stored or delivered; one whose cancel
 *     resolved false is delivered like any other;
 *   - every message delivered has the body its header `n` says, and the id `m-<n>` or, for one
 *     published without an id, the one its confirmation named: nothing is corrupted;
 *   - no 'workers' delivery (in any worker process) comes after an ack of that message resolved
 *     'acked': an ack, once confirmed, survives the crash;
 *   - a worker process killed with deliveries unsettled loses none: they go to the others;
 *   - each queue stores each id once, and no id nobody published: the client's resends after a
 *     reconnect land exactly once (a publish that failed may be stored once or not at all);
 *   - the server stops cleanly at the end and `spool verify` finds every checksum good.
 *
 * It runs from the compiled tree (dist/), because the server child does. `npm run soak` runs it
 * for two minutes; test/soak/soak.test.ts runs a short one inside `npm test`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PublishResult } from '../src/broker/broker.js';
import { connect, type RemoteBroker, type RemoteMessage } from '../src/client/index.js';
import { bodyOf, idOf, numberOf, problemWith, random } from './messages.js';
import { readJournals } from './worker.js';

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
  /** Fraction of messages delayed by 1–3 s and cancelled 0–1.5 s after their publish is confirmed. */
  cancelFraction: number;
  /** Fraction of sends that are a `publishBatch` of 2–20 messages. */
  batchFraction: number;
  /** Fraction of messages (neither delayed nor cancelled) published without an id: the client makes one and sends it with NEW_ID. */
  clientIdFraction: number;
  /** How long the drain may take once publishing stopped, in ms. */
  drainTimeoutMs: number;
  /** Clients connect over TCP (127.0.0.1, with a token) instead of the unix socket. */
  tcp: boolean;
  /** `spool serve --segment-bytes`: small, so queue logs roll often (kills land in rolls; reads cross sealed segments). */
  segmentBytes: number;
  /** After a kill, the chance that the restart is SIGKILLed too, 0–400 ms into its startup (and the next restart again, twice at most). */
  startupKillFraction: number;
  /** Worker processes (group 'workers'), each SIGKILLed every workerKillMinMs–workerKillMaxMs and started again. */
  workers: number;
  workerKillMinMs: number;
  workerKillMaxMs: number;
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
  cancelFraction: 0.03,
  batchFraction: 0.1,
  clientIdFraction: 0.3,
  drainTimeoutMs: 60_000,
  tcp: false,
  segmentBytes: 2 * 1024 * 1024,
  startupKillFraction: 0.3,
  workers: 2,
  workerKillMinMs: 1500,
  workerKillMaxMs: 5000,
};

export interface SoakReport {
  ok: boolean;
  violations: string[];
  dataDir: string;
  /** Where the clients connected (the token masked). */
  url: string;
  seconds: number;
  kills: number;
  /** SIGKILLs of a restarting server during its startup. */
  startupKills: number;
  /** SIGKILLs of worker processes. */
  workerKills: number;
  reconnects: number;
  /** Time from each kill to the client being connected again, in ms. */
  downMs: number[];
  published: number;
  confirmed: number;
  /** Confirmed messages that were published without an id (the client made one). */
  confirmedClientIds: number;
  /**
   * Publishes answered 'duplicate'. Each id is published once, and the client answers a resend
   * that finds its id stored 'confirmed' (it landed, once), so this stays 0 unless that breaks.
   */
  duplicateAnswers: number;
  /** Publishes that failed (their deadline passed): stored at most once. */
  failed: number;
  delayed: number;
  /** `publishBatch` calls. */
  batches: number;
  /** Cancels that resolved true, false, or not at all (cut off by a kill). */
  cancels: { cancelled: number; notPending: number; unknown: number };
  workerDeliveries: number;
  workerRedeliveries: number;
  nacks: number;
  auditorDeliveries: number;
  rejects: number;
  retrierDeliveries: number;
  retrierFailures: number;
  /** Records each queue stored. */
  stored: { work: number; audit: number; dead: number; retry: number; gaveup: number; expired: number };
}

/**
 * The queues a 'ledger' group reads back at the end. Not 'slow': a group there sees its messages
 * expire like any other (each group dead-letters its own copy), so 'sleepy' is its only group.
 */
const QUEUES = ['work', 'audit', 'dead', 'retry', 'gaveup', 'expired'] as const;
/** Messages of queue 'slow' live this long (its messageTtl). */
const SLOW_TTL_MS = 300;
/**
 * A compiled file the soak runs in a child process (`rel`, e.g. src/cli/main.js), found from this
 * module's place inside dist/ or beside it.
 */
function compiled(rel: string): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const inDist = path.join(here, '..', rel);
  if (here.split(path.sep).includes('dist') && fs.existsSync(inDist)) return inDist;
  const built = path.join(here, '..', 'dist', rel);
  if (!fs.existsSync(built)) throw new Error(`the soak runs compiled code in its children: ${built} is missing (npm run build)`);
  return built;
}

interface ServerChild {
  proc: ChildProcess;
  exited: Promise<number | null>;
}

/** How the soak runs `spool serve`: the same every restart, so clients find it at the same address. */
interface Serve {
  cli: string;
  dataDir: string;
  segmentBytes: number;
  /** Also listen on TCP (127.0.0.1) with this token; the clients then connect over TCP. */
  tcp: { port: number; token: string } | null;
}

function serveArgs(s: Serve): string[] {
  const args = [s.cli, 'serve', '--data', s.dataDir, '--segment-bytes', String(s.segmentBytes)];
  if (s.tcp !== null) args.push('--tcp', String(s.tcp.port), '--token', s.tcp.token);
  return args;
}

/** A TCP port free right now on 127.0.0.1 (the server takes it at every restart). */
async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

/** Starts `spool serve` and resolves once it says where it listens. */
async function startServer(serve: Serve): Promise<{ child: ServerChild; url: string }> {
  const proc = spawn(process.execPath, serveArgs(serve), { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`spool serve did not start within 15 s: ${stderr}`)), 15_000);
    proc.stderr?.setEncoding('utf8').on('data', (s: string) => {
      stderr += s;
      const m = / on (unix:\/\/\S+?)[; ]/.exec(stderr);
      if (m !== null) {
        clearTimeout(timer);
        resolve(serve.tcp === null ? (m[1] as string) : `tcp://127.0.0.1:${serve.tcp.port}?token=${serve.tcp.token}`);
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
  const cli = compiled(path.join('src', 'cli', 'main.js'));
  const workerScript = compiled(path.join('soak', 'consumer-child.js'));
  const base = fs.mkdtempSync(path.join(o.dir ?? os.tmpdir(), 'spool-soak-'));
  const dataDir = path.join(base, 'data');
  const rnd = random(o.seed);
  const violations: string[] = [];
  const violate = (what: string): void => {
    if (violations.length < 50) violations.push(what);
  };

  /** Every child process still running, SIGKILLed if the soak itself fails. */
  const children = new Set<ChildProcess>();
  try {
    return await soak();
  } finally {
    for (const c of children) c.kill('SIGKILL');
  }

  async function soak(): Promise<SoakReport> {
    const serve: Serve = { cli, dataDir, segmentBytes: o.segmentBytes, tcp: o.tcp ? { port: await freePort(), token: `soak-${o.seed}` } : null };
    let server = await startServer(serve);
    log(`clients connect to ${server.url.replace(/token=[^&]*/, 'token=…')}`);
    children.add(server.child.proc);
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
    await client.assertExchange('soak.gaveup', 'fanout');
    await client.assertQueue('retry', { deadLetterExchange: 'soak.gaveup' });
    await client.assertQueue('gaveup');
    await client.bindQueue('work', 'soak', 'job.*');
    await client.bindQueue('audit', 'soak', '#');
    await client.bindQueue('dead', 'soak.dlx');
    await client.bindQueue('retry', 'soak', '#');
    await client.bindQueue('gaveup', 'soak.gaveup');
    // 'slow' gets one message in five (key job.0); its group cannot keep up, so most expire.
    await client.assertExchange('soak.expired', 'fanout');
    await client.assertQueue('slow', { messageTtl: SLOW_TTL_MS, deadLetterExchange: 'soak.expired' });
    await client.assertQueue('expired');
    await client.bindQueue('slow', 'soak', 'job.0');
    await client.bindQueue('expired', 'soak.expired');
    // The ledger groups exist before the first publish, so retention keeps every record for the end.
    for (const q of QUEUES) await (await client.consume(q, () => {}, { group: 'ledger', ack: 'manual', prefetch: 1 })).close();

    // --- consumers ---
    const checkMessage = (m: RemoteMessage, who: string): number => {
      const problem = problemWith(m, o.seed, o.largeFraction);
      if (problem !== null) violate(`${who}: ${problem}`);
      return numberOf(m);
    };
    // The workers: child processes, journaling what they do (soak/worker.ts).
    const journals: string[] = [];
    let workerKills = 0;
    let stopWorkerKills = false;
    /** Starts a worker process; one that cannot connect (the server is down just then) is started again, as a supervisor would. */
    const startWorker = async (slot: number): Promise<ChildProcess> => {
      for (let attempt = 1; ; attempt++) {
        const journal = path.join(base, `worker-${slot}-${journals.length}.journal`);
        journals.push(journal);
        const proc = spawn(process.execPath, [workerScript, server.url, journal, String(o.seed), String(o.largeFraction), String(o.seed * 1000 + journals.length)], { stdio: ['ignore', 'pipe', 'pipe'] });
        children.add(proc);
        proc.once('exit', () => children.delete(proc));
        let stderr = '';
        proc.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
        const ready = await new Promise<boolean>((resolve) => {
          let out = '';
          proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
            out += d;
            if (out.includes('ready\n')) resolve(true);
          });
          proc.once('exit', () => resolve(false));
        });
        if (ready) return proc;
        if (attempt >= 50) throw new Error(`a worker could not start 50 times; the last said: ${stderr.trim().split('\n').slice(-3).join(' | ')}`);
        await sleep(100);
      }
    };
    const workerProcs: ChildProcess[] = [];
    for (let slot = 0; slot < o.workers; slot++) workerProcs.push(await startWorker(slot));
    const workerKillers = workerProcs.map(async (_p, slot) => {
      while (!stopWorkerKills) {
        await sleep(o.workerKillMinMs + rnd() * (o.workerKillMaxMs - o.workerKillMinMs));
        if (stopWorkerKills) break;
        const proc = workerProcs[slot] as ChildProcess;
        const exited = new Promise((resolve) => proc.once('exit', resolve));
        proc.kill('SIGKILL');
        await exited;
        workerKills++;
        // Started again only while the server is up (it waits for the server otherwise).
        await waitUntil(() => client.connected, 15_000);
        workerProcs[slot] = await startWorker(slot);
      }
    });

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
    // Whether the retriers' handler fails message n on its attempt k: a fixed coin per (n, k), so
    // a redelivery after a kill decides the same way.
    const failsOn = (n: number, attempt: number): boolean => random((n * 31 + attempt) ^ (o.seed * 977))() < 1 / 8;
    // The sleepy group: one handler at a time, 5 ms each, against ~1,000 messages a second.
    const sleepyHandled = new Set<number>();
    await client.consume(
      'slow',
      async (m: RemoteMessage) => {
        const n = checkMessage(m, 'sleepy');
        await sleep(5);
        if (n >= 0) sleepyHandled.add(n);
      },
      { group: 'sleepy', ack: 'auto', prefetch: 1, concurrency: 1 },
    );
    const retrierSucceeded = new Set<number>();
    const retrierFailed = new Set<number>();
    let retrierDeliveries = 0;
    let retrierFailures = 0;
    await client.consume(
      'retry',
      (m: RemoteMessage) => {
        retrierDeliveries++;
        const n = checkMessage(m, 'retriers');
        if (n < 0) return;
        if (failsOn(n, m.deliveryCount)) {
          retrierFailures++;
          retrierFailed.add(n);
          throw new Error(`soak failure of ${m.id} on attempt ${m.deliveryCount}`);
        }
        retrierSucceeded.add(n);
      },
      { group: 'retriers', ack: 'auto', prefetch: 100, concurrency: 16, retry: { attempts: 3, backoff: { initial: 20, factor: 2, max: 200, jitter: 0 } } },
    );

    // --- the killer ---
    let kills = 0;
    let startupKills = 0;
    let stopKilling = false;
    const killer = (async () => {
      while (!stopKilling) {
        await sleep(o.killMinMs + rnd() * (o.killMaxMs - o.killMinMs));
        if (stopKilling) break;
        server.child.proc.kill('SIGKILL');
        await server.child.exited;
        kills++;
        // Now and then the restart is killed too, at a random moment of its startup: recovery
        // itself (torn tails cut, indexes and dedupe windows rebuilt) must survive a crash.
        for (let again = 0; again < 2 && rnd() < o.startupKillFraction; again++) {
          const starting = spawn(process.execPath, serveArgs(serve), { stdio: 'ignore' });
          children.add(starting);
          const exited = new Promise((resolve) => starting.once('exit', resolve));
          await sleep(rnd() * 400);
          starting.kill('SIGKILL');
          await exited;
          children.delete(starting);
          startupKills++;
        }
        server = await startServer(serve);
        children.add(server.child.proc);
        log(`kill ${kills}: restarted (pid ${server.child.proc.pid})`);
        // The next kill counts from when the client is back, so every kill hits a working session.
        await waitUntil(() => client.connected, 15_000);
      }
    })();

    // --- the producer ---
    const confirmed = new Set<number>();
    /** Message n → the id the client made for it (those published without one), from its confirmation. */
    const clientIds = new Map<number, string>();
    const failedSet = new Set<number>();
    let published = 0;
    let duplicateAnswers = 0;
    let delayed = 0;
    let batches = 0;
    // Cancels of delayed messages: a cancel that resolved true means the message never arrives
    // anywhere; false, that it was no longer pending (it fired); a cancel cut off by a kill, either.
    const cancelled = new Set<number>();
    const notCancelled = new Set<number>();
    const cancelUnknown = new Set<number>();
    const cancels: Promise<void>[] = [];
    const cancelLater = (n: number): void => {
      cancels.push(
        sleep(rnd() * 1500)
          .then(() => client.cancel(idOf(n)))
          .then(
            (ok) => void (ok ? cancelled : notCancelled).add(n),
            () => void cancelUnknown.add(n),
          ),
      );
    };
    /** Message n's publish options: its id and header, and maybe a delay (some long ones cancelled later). */
    const optionsOf = (n: number): { id?: string; headers: { n: number }; delay?: number; cancel: boolean } => {
      const d = rnd();
      if (d < o.delayedFraction) {
        delayed++;
        return { id: idOf(n), headers: { n }, delay: Math.floor(rnd() * 1500), cancel: false };
      }
      if (d < o.delayedFraction + o.cancelFraction) {
        delayed++;
        return { id: idOf(n), headers: { n }, delay: 1000 + Math.floor(rnd() * 2000), cancel: true };
      }
      if (rnd() < o.clientIdFraction) return { headers: { n }, cancel: false };
      return { id: idOf(n), headers: { n }, cancel: false };
    };
    const settled = (n: number, cancel: boolean, r: PublishResult): void => {
      if (r.status === 'duplicate') duplicateAnswers++;
      if (r.status !== 'confirmed') {
        violate(`publish ${idOf(n)} answered ${r.status}: each id is published once, and a resend that finds it stored is 'confirmed'`);
        return;
      }
      confirmed.add(n);
      if (r.id !== idOf(n)) clientIds.set(n, r.id);
      if (cancel) cancelLater(n);
    };
    const until = Date.now() + o.seconds * 1000;
    await new Promise<void>((resolve) => {
      let inFlight = 0;
      const issue = (): void => {
        if (Date.now() >= until) {
          if (inFlight === 0) resolve();
          return;
        }
        inFlight++;
        let sent: Promise<unknown>;
        if (rnd() < o.batchFraction) {
          // A batch of 2–20, each message with its own id, options and result.
          const first = published;
          const size = 2 + Math.floor(rnd() * 19);
          published += size;
          batches++;
          const opts = Array.from({ length: size }, (_, k) => optionsOf(first + k));
          const messages = opts.map(({ cancel: _cancel, ...options }, k) => ({ ...options, routingKey: `job.${(first + k) % 5}`, body: bodyOf(first + k, o.seed, o.largeFraction) }));
          sent = client.publishBatch('soak', messages).then(
            (results) => results.forEach((r, k) => settled(first + k, (opts[k] as { cancel: boolean }).cancel, r)),
            () => {
              for (let k = 0; k < size; k++) failedSet.add(first + k);
            },
          );
        } else {
          const n = published++;
          const { cancel, ...options } = optionsOf(n);
          sent = client.publish('soak', `job.${n % 5}`, bodyOf(n, o.seed, o.largeFraction), options).then(
            (r: PublishResult) => settled(n, cancel, r),
            () => void failedSet.add(n),
          );
        }
        void sent.finally(() => {
          inFlight--;
          issue();
        });
      };
      for (let i = 0; i < o.window; i++) issue();
    });
    await Promise.all(cancels);
    // A message whose cancel resolved true is gone, and one whose cancel was cut off may be: the
    // delivery checks below are about the rest ('expected'); the stored checks count them apart.
    const expected = new Set([...confirmed].filter((n) => !cancelled.has(n) && !cancelUnknown.has(n)));
    stopKilling = true;
    stopWorkerKills = true;
    await killer;
    await Promise.all(workerKillers);
    log(`published ${published} (${confirmed.size} confirmed, ${failedSet.size} failed) with ${kills} kills; draining`);

    // --- drain: everything confirmed reaches both groups, and 'workers' acks all of it ---
    // An ack the server made durable just before a kill is never answered: the client counts it
    // as not acked, and the message rightly never comes again. So the group's own state says
    // when everything is acked; the client's records say that every message was delivered.
    const lost = (seen: Set<number>): number[] => [...expected].filter((n) => !seen.has(n));
    const groupDone = async (q: string, group: string): Promise<boolean> => {
      const g = (await client.queueStats(q)).groups[group];
      return g !== undefined && g.lag === 0 && g.inFlight === 0;
    };
    const workersDone = (): Promise<boolean> => groupDone('work', 'workers');
    const retriersDone = (): Promise<boolean> => groupDone('retry', 'retriers');
    const sleepyDone = (): Promise<boolean> => groupDone('slow', 'sleepy');
    const drainStart = Date.now();
    const drained = await waitUntil(async () => lost(auditorSeen).length === 0 && (await workersDone()) && (await retriersDone()) && (await sleepyDone()), o.drainTimeoutMs);
    if (!drained) {
      const a = lost(auditorSeen);
      if (a.length > 0) violate(`auditor never saw ${a.length} confirmed messages, e.g. ${a.slice(0, 5).map(idOf).join(', ')}`);
      if (!(await workersDone())) violate(`group 'workers' did not ack everything: ${JSON.stringify((await client.queueStats('work')).groups.workers)}`);
      if (!(await sleepyDone())) violate(`group 'sleepy' did not finish everything: ${JSON.stringify((await client.queueStats('slow')).groups.sleepy)}`);
      if (!(await retriersDone())) violate(`group 'retriers' did not finish everything: ${JSON.stringify((await client.queueStats('retry')).groups.retriers)}`);
    }

    log(`drained in ${Date.now() - drainStart} ms`);
    // The workers stop (nothing is in flight), and their journals are read.
    await Promise.all(
      workerProcs.map(async (proc) => {
        const exited = new Promise((resolve) => proc.once('exit', resolve));
        proc.kill('SIGTERM');
        await exited;
      }),
    );
    const j = readJournals(journals);
    for (const p of j.problems) violate(p);
    const unseen = lost(j.seen);
    if (unseen.length > 0) violate(`workers never got ${unseen.length} confirmed messages, e.g. ${unseen.slice(0, 5).map(idOf).join(', ')}`);

    // --- exactly once per queue, read back through the ledger group ---
    const stored = { work: 0, audit: 0, dead: 0, retry: 0, gaveup: 0, expired: 0 };
    const expiredCounts = new Map<number, number>();
    const deadCounts = new Map<number, number>();
    const gaveUpCounts = new Map<number, number>();
    for (const q of QUEUES) {
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
          // A client-made id is fixed before the first attempt: a resend keeps it.
          if (n >= 0 && clientIds.has(n) && m.id !== clientIds.get(n)) violate(`${q}: message ${n} is stored as ${m.id}, confirmed as ${clientIds.get(n)}`);
          if (q === 'dead' || q === 'gaveup' || q === 'expired') {
            const death = (m.headers['x-death'] as { reason?: string; queue?: string; 'last-error'?: string }[] | undefined)?.[0];
            const [from, reason] = q === 'dead' ? ['work', 'rejected'] : q === 'gaveup' ? ['retry', 'rejected'] : ['slow', 'expired'];
            if (death?.reason !== reason || death.queue !== from) violate(`${q}: ${m.id} has x-death ${JSON.stringify(m.headers['x-death'])}`);
            if (q === 'gaveup' && !(death?.['last-error'] ?? '').includes('soak failure')) violate(`gaveup: ${m.id} has no handler error in its x-death: ${JSON.stringify(death)}`);
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
          if (!j.rejected.has(n)) violate(`dead: ${idOf(n)} was dead-lettered but no worker rejected it`);
        }
      } else if (q === 'expired') {
        for (const [n, c] of counts) {
          expiredCounts.set(n, c);
          if (n % 5 !== 0) violate(`expired: ${idOf(n)} never went to 'slow'`);
        }
      } else if (q === 'gaveup') {
        for (const [n, c] of counts) {
          gaveUpCounts.set(n, c);
          if (!retrierFailed.has(n)) violate(`gaveup: ${idOf(n)} was given up but its handler never failed`);
        }
      } else {
        for (const n of expected) if (!counts.has(n)) violate(`${q}: confirmed ${idOf(n)} is not stored`);
      for (const n of cancelled) if (counts.has(n)) violate(`${q}: ${idOf(n)} is stored although its cancel resolved true`);
      }
    }
    // Each message's fate in 'workers': an ack of it resolved 'acked', or its last settle was an
    // ack (cut off, and then not delivered again), or it is in 'dead'. A last requeue, or a last reject with no dead copy,
    // means the broker dropped it.
    for (const n of expected) {
      if (!deadCounts.has(n) && !j.lastAcked.has(n)) violate(`workers: ${idOf(n)} is neither acked nor dead-lettered (its last settle was not an ack)`);
      if (!retrierSucceeded.has(n) && !gaveUpCounts.has(n)) violate(`retriers: ${idOf(n)} neither succeeded nor was given up`);
      // In 'slow', handled or expired (both, when a kill undid the ack of a handled one that had expired meanwhile).
      if (n % 5 === 0 && !sleepyHandled.has(n) && !expiredCounts.has(n)) violate(`sleepy: ${idOf(n)} was neither handled nor expired`);
    }
    for (const n of cancelled) {
      if (auditorSeen.has(n) || j.seen.has(n) || retrierSucceeded.has(n) || sleepyHandled.has(n) || expiredCounts.has(n)) violate(`${idOf(n)} was delivered although its cancel resolved true`);
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
      url: server.url.replace(/token=[^&]*/, 'token=…'),
      seconds: o.seconds,
      kills,
      startupKills,
      reconnects,
      downMs,
      published,
      confirmed: confirmed.size,
      confirmedClientIds: clientIds.size,
      duplicateAnswers,
      failed: failedSet.size,
      delayed,
      batches,
      cancels: { cancelled: cancelled.size, notPending: notCancelled.size, unknown: cancelUnknown.size },
      workerKills,
      workerDeliveries: j.deliveries,
      workerRedeliveries: j.redeliveries,
      nacks: j.requeues,
      rejects: j.rejects,
      retrierDeliveries,
      retrierFailures,
      auditorDeliveries,
      stored,
    };
  }
}
