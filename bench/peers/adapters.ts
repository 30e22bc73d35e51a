/**
 * One function per peer: start its server (if it has one) on 127.0.0.1 with a temporary data dir,
 * run the shared workloads (workloads.ts) with comparable durability, stop the server by pid, and
 * say what its acknowledgement guarantees. A peer that cannot be loaded or started reports why and
 * the run goes on with the others.
 */
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { PublishOptions } from '../../src/broker/broker.js';
import type { Message } from '../../src/broker/delivery.js';
import { EXCHANGE, QUEUE, ROUTING_KEY, closeBroker, drainGroup, openBenchBroker } from '../broker.js';
import { makeTempDir, progress, removeTempDir } from '../lib/report.js';
import { ManagedServer, commandOutput, debVersion, freePort, which } from './servers.js';
import {
  type DelayFigures,
  type Figures,
  type PeerOutcome,
  type WorkloadParams,
  delayWorkload,
  loneLatencies,
  medianFigures,
  BATCH_SIZE,
  pumpBatches,
  pumpWindow,
  sleep,
  waitFor,
} from './workloads.js';
import { median, percentile } from '../lib/report.js';

export interface PeerRunParams extends WorkloadParams {
  repeats: number;
  /** Runs of Spool and SQLite batched when they take turns (`runSpoolAndSqlite`). */
  turns: number;
  /** Parent of the temp dirs. */
  tempBase: string;
  delays: boolean;
  delayMessages: number;
  delayMaxMs: number;
}

const require = createRequire(import.meta.url);

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The same bodies for every peer: `count` distinct Buffers of `bytes`. */
function bodies(count: number, bytes: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const b = Buffer.alloc(bytes, 0x61 + (i % 26));
    b.writeUInt32LE(i, 0);
    out.push(b);
  }
  return out;
}

/** A fresh instance of a peer, ready for one run of the workloads. */
interface PeerOps {
  publish: (i: number) => Promise<unknown>;
  drain: (n: number, maxSeconds: number) => Promise<{ count: number; seconds: number; capped: boolean }>;
  latency: (i: number) => Promise<unknown>;
  /** The peer's batch API: publish messages first..first+count-1 in one call. */
  publishBatch?: { call: (first: number, count: number) => Promise<unknown>; inFlight: number };
  cleanup?: () => Promise<void>;
}

/** A peer's runs: `open(run)` makes the instance that run `run` measures. */
interface PeerRuns {
  label: string;
  params: PeerRunParams;
  open: (run: number) => Promise<PeerOps>;
}

/** Runs the workloads once on a fresh instance of the peer. */
async function measureRun({ label, params: p, open }: PeerRuns, r: number): Promise<Figures> {
  const o = await open(r);
  try {
    if (p.warmup > 0) {
      await pumpWindow(p.warmup, p.window, p.maxSeconds, o.publish);
      await o.drain(p.warmup, p.maxSeconds);
    }
    progress(`${label}: run ${r + 1}/${p.repeats}: publish ${p.messages} x ${p.bodyBytes} B, ${p.window} outstanding`);
    const pub = await pumpWindow(p.messages, p.window, p.maxSeconds, o.publish);
    progress(`${label}: ${Math.round(pub.count / pub.seconds)} msgs/s published${pub.capped ? ` (capped at ${p.maxSeconds} s: ${pub.count})` : ''}; draining`);
    const dr = await o.drain(pub.count, p.maxSeconds * 2);
    progress(`${label}: ${Math.round(dr.count / dr.seconds)} msgs/s drained; ${p.latencyIterations} lone publishes`);
    const lat = await loneLatencies(p.latencyIterations, p.maxSeconds, o.latency);
    let batchPublishPerSec: number | undefined;
    if (o.publishBatch !== undefined) {
      // Warmed up like the single publishes above (the JIT has not seen the batch path yet in run 1).
      if (p.warmup > 0) await pumpBatches(p.warmup, o.publishBatch.inFlight, p.maxSeconds, o.publishBatch.call);
      progress(`${label}: batch API, ${p.messages} messages in calls of ${BATCH_SIZE}, ${o.publishBatch.inFlight} in flight`);
      const b = await pumpBatches(p.messages, o.publishBatch.inFlight, p.maxSeconds, o.publishBatch.call);
      batchPublishPerSec = b.count / b.seconds;
      progress(`${label}: ${Math.round(batchPublishPerSec)} msgs/s through the batch API`);
    }
    return {
      publishPerSec: pub.count / pub.seconds,
      published: pub.count,
      publishSeconds: pub.seconds,
      publishCapped: pub.capped,
      drainPerSec: dr.count / dr.seconds,
      drained: dr.count,
      drainSeconds: dr.seconds,
      drainCapped: dr.capped,
      confirmP50Us: median(lat),
      confirmP99Us: percentile(lat, 99),
      latencyIterations: lat.length,
      ...(batchPublishPerSec === undefined ? {} : { batchPublishPerSec }),
    };
  } finally {
    await o.cleanup?.();
  }
}

/**
 * Runs each peer's workloads `repeats` times, taking turns run by run (A B, B A, A B, ...), and
 * returns each peer's runs. For peers in this process: a slow spell of the shared machine then
 * falls on both sides of a ratio instead of on one peer's whole turn.
 */
async function interleavedRuns(peers: readonly PeerRuns[], repeats: number): Promise<Figures[][]> {
  const runs: Figures[][] = peers.map(() => []);
  for (let r = 0; r < repeats; r++) {
    const order = peers.map((_, i) => i);
    if (r % 2 === 1) order.reverse();
    for (const i of order) (runs[i] as Figures[]).push(await measureRun(peers[i] as PeerRuns, r));
  }
  return runs;
}

/** Runs the workloads `repeats` times on fresh instances; returns the median and the runs. */
async function figuresOf(peer: PeerRuns): Promise<{ figures: Figures; runs: Figures[] }> {
  const [runs] = (await interleavedRuns([peer], peer.params.repeats)) as [Figures[]];
  return { figures: medianFigures(runs), runs };
}

// --- Spool (embedded, same process) ---

/** publishBatch calls kept in flight in the batch-API workload. */
const SPOOL_BATCHES_IN_FLIGHT = 4;

/** Whether `publish(..., { delay })` delays delivery in this build of src/broker (checked by trying it). */
export async function spoolDelaySupported(tempBase: string): Promise<{ supported: boolean; how: string }> {
  const dir = makeTempDir('peers-spool-delay-probe', tempBase);
  try {
    const h = await openBenchBroker(path.join(dir, 'data'));
    try {
      let arrivedAfter = -1;
      const t0 = performance.now();
      const c = await h.broker.consume(QUEUE, () => {
        arrivedAfter = performance.now() - t0;
      }, { group: 'probe' });
      try {
        await h.broker.publish(EXCHANGE, ROUTING_KEY, 'probe', { delay: 600 } as unknown as PublishOptions);
      } catch (err) {
        return { supported: false, how: `publish with { delay } was rejected: ${errText(err)}` };
      }
      await waitFor(() => (arrivedAfter >= 0 ? 1 : 0), 1, 3000, 3000);
      await c.close();
      if (arrivedAfter < 0) return { supported: false, how: 'a message published with { delay: 600 } never arrived within 3 s' };
      if (arrivedAfter < 400) return { supported: false, how: `a message published with { delay: 600 } arrived after ${Math.round(arrivedAfter)} ms: the option is ignored` };
      return { supported: true, how: `a message published with { delay: 600 } arrived after ${Math.round(arrivedAfter)} ms` };
    } finally {
      await closeBroker(h.broker);
    }
  } finally {
    removeTempDir(dir);
  }
}

/** A peer measured by `runPeer` or `runInterleaved`: `runs` undefined when it cannot run here (`outcome.error`). */
interface Peer {
  outcome: PeerOutcome;
  runs?: PeerRuns;
  /** After the workloads (also when they failed): more workloads, cleanup. */
  after?: () => Promise<void>;
}

async function runPeer(peer: Peer): Promise<PeerOutcome> {
  if (peer.runs !== undefined) {
    try {
      const { figures, runs } = await figuresOf(peer.runs);
      peer.outcome.figures = figures;
      peer.outcome.runs = runs;
    } catch (err) {
      peer.outcome.error = errText(err);
    }
  }
  await peer.after?.();
  return peer.outcome;
}

/**
 * Peers in this process measured run by run in turn (`interleavedRuns`), so their ratios compare
 * runs made seconds apart; each outcome is marked `interleavedWith` the others.
 */
async function runInterleaved(peers: readonly Peer[], repeats: number): Promise<PeerOutcome[]> {
  const able = peers.filter((x) => x.runs !== undefined);
  try {
    const runs = await interleavedRuns(
      able.map((x) => x.runs as PeerRuns),
      repeats,
    );
    able.forEach((x, i) => {
      x.outcome.runs = runs[i] as Figures[];
      x.outcome.figures = medianFigures(runs[i] as Figures[]);
      x.outcome.interleavedWith = able.filter((y) => y !== x).map((y) => y.outcome.key);
      x.outcome.notes.push(`runs made in turn with ${x.outcome.interleavedWith.join(', ')} (run by run, the order alternating): the targets against it are judged on the median of the per-run ratios`);
    });
  } catch (err) {
    for (const x of able) x.outcome.error = errText(err);
  }
  for (const x of peers) await x.after?.();
  return peers.map((x) => x.outcome);
}

/** Spool and SQLite (batched) in turn run by run, then SQLite with single transactions alone. */
export async function runSpoolAndSqlite(p: PeerRunParams): Promise<PeerOutcome[]> {
  const inTurn = { ...p, repeats: p.turns };
  const both = await runInterleaved([spoolPeer(inTurn), sqlitePeer(inTurn, 1000)], p.turns);
  return [...both, await runPeer(sqlitePeer(p, 1))];
}

export function runSpool(p: PeerRunParams): Promise<PeerOutcome> {
  return runPeer(spoolPeer(p));
}

export function runSqlite(p: PeerRunParams, batch: number): Promise<PeerOutcome> {
  return runPeer(sqlitePeer(p, batch));
}

/** Spool embedded: single publishes with 1,000 outstanding, and its batch API (`publishBatch`). */
function spoolPeer(p: PeerRunParams): Peer {
  const outcome: PeerOutcome = {
    key: 'spool',
    name: 'Spool (embedded), topic exchange',
    version: `spoolmq ${readVersion()}`,
    ackMeans: 'publish resolves after the fdatasync of the queue log that holds it (group commit); acks are durable once the ack store is fdatasynced',
    durableAtAck: true,
    notes: [
      'drain: 1 consumer, ack auto, prefetch 1,000; timed until every ack is fdatasynced in the ack store (durable acks)',
      `batch API: publishBatch calls of ${BATCH_SIZE.toLocaleString('en-US')} messages (one log append each), ${SPOOL_BATCHES_IN_FLIGHT} calls in flight (a producer pipelines its batches, as Kafka's does)`,
    ],
  };
  const body = bodies(4096, p.bodyBytes);
  const dirs: string[] = [];
  const runs: PeerRuns = {
    label: outcome.key,
    params: p,
    open: async (run) => {
      const dir = makeTempDir('peers-spool', p.tempBase);
      dirs.push(dir);
      const h = await openBenchBroker(path.join(dir, 'data'));
      const lat = await openBenchBroker(path.join(dir, 'lat'));
      return {
        publish: (i) => h.broker.publish(EXCHANGE, ROUTING_KEY, body[i % body.length] as Buffer),
        drain: async (n) => {
          const r = await drainGroup(h.broker, `drain-${run}`, n, { consumers: 1, ack: 'auto' }, 1000);
          return { count: n, seconds: r.ackedSeconds, capped: false };
        },
        publishBatch: {
          inFlight: SPOOL_BATCHES_IN_FLIGHT,
          call: (first, count) => h.broker.publishBatch(EXCHANGE, Array.from({ length: count }, (_, j) => ({ routingKey: ROUTING_KEY, body: body[(first + j) % body.length] as Buffer }))),
        },
        latency: (i) => lat.broker.publish(EXCHANGE, ROUTING_KEY, body[i % body.length] as Buffer),
        cleanup: async () => {
          await closeBroker(h.broker);
          await closeBroker(lat.broker);
          removeTempDir(dir);
        },
      };
    },
  };
  const after = async (): Promise<void> => {
    if (p.delays) {
    const probe = await spoolDelaySupported(p.tempBase).catch((err: unknown) => ({ supported: false, how: errText(err) }));
    if (!probe.supported) {
      outcome.notes.push(`delays: not yet (${probe.how})`);
    } else {
      outcome.notes.push(`delays: ${probe.how}`);
      try {
        outcome.delay = await spoolDelays(p);
      } catch (err) {
        outcome.notes.push(`delays failed: ${errText(err)}`);
      }
    }
  }
    for (const d of dirs) removeTempDir(d);
  };
  return { outcome, runs, after };
}

async function spoolDelays(p: PeerRunParams): Promise<DelayFigures> {
  const dir = makeTempDir('peers-spool-delays', p.tempBase);
  try {
    const h = await openBenchBroker(path.join(dir, 'data'));
    try {
      const lateness: number[] = [];
      const c = await h.broker.consume(
        QUEUE,
        (msg: Message) => {
          const due = Number(msg.body.toString('utf8'));
          lateness.push(Date.now() - due);
        },
        { group: 'delays', prefetch: 1000 },
      );
      const figures = await delayWorkload(p, lateness, (d) => h.broker.publish(EXCHANGE, ROUTING_KEY, String(Date.now() + d), { delay: d } as unknown as PublishOptions));
      await c.close();
      return figures;
    } finally {
      await closeBroker(h.broker);
    }
  } finally {
    removeTempDir(dir);
  }
}

function readVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
    return pkg.version;
  } catch {
    return '?';
  }
}

// --- SQLite (better-sqlite3, in process) ---

interface SqliteStatement {
  run(...params: unknown[]): { changes: number; lastInsertRowid: number | bigint };
  all(...params: unknown[]): unknown[];
  get(...params: unknown[]): unknown;
}
interface SqliteDb {
  pragma(source: string, options?: { simple?: boolean }): unknown;
  exec(source: string): void;
  prepare(source: string): SqliteStatement;
  transaction<A extends unknown[]>(fn: (...args: A) => void): (...args: A) => void;
  close(): void;
}
type SqliteCtor = new (file: string) => SqliteDb;

/**
 * SQLite as a queue: one table (id INTEGER PRIMARY KEY, body BLOB). Publish: INSERT, committed in
 * transactions of `batch` rows (1: every publish its own transaction). Drain: SELECT the oldest
 * `batch` rows, then DELETE them (the ack), in one transaction per batch. better-sqlite3 is
 * synchronous, so "outstanding" does not apply: publishes are issued back to back.
 */
function sqlitePeer(p: PeerRunParams, batch: number): Peer {
  const outcome: PeerOutcome = {
    key: batch > 1 ? 'sqlite-batch' : 'sqlite-single',
    name: batch > 1 ? `SQLite WAL, synchronous=FULL, transactions of ${batch.toLocaleString('en-US')}` : 'SQLite WAL, synchronous=FULL, one transaction per publish',
    version: '?',
    ackMeans: 'COMMIT returns after the WAL is fdatasynced (journal_mode=WAL, synchronous=FULL): durable at ack',
    durableAtAck: true,
    notes: [
      batch > 1
        ? `publish: INSERTs committed ${batch.toLocaleString('en-US')} per transaction (a confirm covers a whole batch); drain: SELECT ${batch.toLocaleString('en-US')} oldest + DELETE them per transaction`
        : 'publish: each INSERT its own transaction (autocommit); drain: SELECT the oldest row + DELETE it, one transaction per message',
      'better-sqlite3 is synchronous: calls are back to back in one thread ("1,000 outstanding" cannot apply)',
    ],
  };
  let Database: SqliteCtor;
  try {
    Database = require('better-sqlite3') as SqliteCtor;
  } catch (err) {
    outcome.error = `better-sqlite3 cannot be loaded (run bench/peers/setup.sh): ${errText(err)}`;
    return { outcome };
  }
  // One fsync per message is slow and steady: 20 s of it tell as much as the full count would.
  const params: PeerRunParams = batch > 1 ? p : { ...p, maxSeconds: Math.min(p.maxSeconds, 20) };
  if (params.maxSeconds < p.maxSeconds) outcome.notes.push(`each timed workload capped at ${params.maxSeconds} s`);
  outcome.notes.push('confirm latency: one INSERT committed alone (the same for both SQLite rows)');
  const runs: PeerRuns = {
    label: outcome.key,
    params,
    open: async () => {
      const dir = makeTempDir('peers-sqlite', p.tempBase);
      const db = new Database(path.join(dir, 'queue.db'));
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      const mode = String(db.pragma('journal_mode', { simple: true }));
      const sync = Number(db.pragma('synchronous', { simple: true }));
      if (mode !== 'wal' || sync !== 2) throw new Error(`SQLite refused the settings: journal_mode=${mode}, synchronous=${sync} (2 = FULL expected)`);
      outcome.version = `SQLite ${String((db.prepare('select sqlite_version() as v').get() as { v: string }).v)} (better-sqlite3 ${pkgVersion('better-sqlite3')})`;
      db.exec('CREATE TABLE q (id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)');
      db.exec('CREATE TABLE lat (id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)');
      const ins = db.prepare('INSERT INTO q (body) VALUES (?)');
      const insLat = db.prepare('INSERT INTO lat (body) VALUES (?)');
      const sel = db.prepare('SELECT id, body FROM q ORDER BY id LIMIT ?');
      const delTo = db.prepare('DELETE FROM q WHERE id <= ?');
      const insMany = db.transaction((rows: Buffer[]) => {
        for (const r of rows) ins.run(r);
      });
      const body = bodies(4096, p.bodyBytes);
      // Batched: a publish joins the current batch; the batch commits when full (or at the end of a
      // tick), and all its publishes resolve then. Single: every publish commits alone.
      let pending: { body: Buffer; resolve: () => void }[] = [];
      let scheduled = false;
      const commitPending = (): void => {
        scheduled = false;
        while (pending.length > 0) {
          const take = pending.splice(0, batch);
          insMany(take.map((x) => x.body));
          for (const x of take) x.resolve();
        }
      };
      const publish = (i: number): Promise<unknown> => {
        const b = body[i % body.length] as Buffer;
        if (batch <= 1) {
          ins.run(b);
          return Promise.resolve();
        }
        return new Promise<void>((resolve) => {
          pending.push({ body: b, resolve });
          if (pending.length >= batch) commitPending();
          else if (!scheduled) {
            scheduled = true;
            setImmediate(commitPending);
          }
        });
      };
      const drain = async (n: number, maxSeconds: number): Promise<{ count: number; seconds: number; capped: boolean }> => {
        const t0 = performance.now();
        const deadline = t0 + maxSeconds * 1000;
        let count = 0;
        const take = db.transaction((limit: number) => {
          const rows = sel.all(limit) as { id: number; body: Buffer }[];
          if (rows.length > 0) delTo.run((rows[rows.length - 1] as { id: number }).id);
          count += rows.length;
        });
        while (count < n) {
          if (performance.now() > deadline) return { count, seconds: (performance.now() - t0) / 1000, capped: true };
          const before = count;
          take(Math.min(batch, n - count));
          if (count === before) break;
          if (batch <= 1 && count % 1000 === 0) await sleep(0);
        }
        return { count, seconds: (performance.now() - t0) / 1000, capped: false };
      };
      return {
        publish,
        drain,
        latency: (i) => {
          insLat.run(body[i % body.length] as Buffer);
          return Promise.resolve();
        },
        // The batch API of SQLite: one transaction of BATCH_SIZE INSERTs per call (synchronous, so one at a time).
        ...(batch > 1
          ? {
              publishBatch: {
                inFlight: 1,
                call: (first: number, count: number) => {
                  insMany(Array.from({ length: count }, (_, j) => body[(first + j) % body.length] as Buffer));
                  return Promise.resolve();
                },
              },
            }
          : {}),
        cleanup: async () => {
          pending = [];
          db.close();
          removeTempDir(dir);
        },
      };
    },
  };
  return { outcome, runs };
}

function pkgVersion(name: string): string {
  try {
    const dir = path.dirname(require.resolve(name));
    for (let d = dir; d !== path.dirname(d); d = path.dirname(d)) {
      const f = path.join(d, 'package.json');
      if (fs.existsSync(f)) {
        const j = JSON.parse(fs.readFileSync(f, 'utf8')) as { name?: string; version?: string };
        if (j.name === name) return j.version ?? '?';
      }
    }
  } catch {
    // fall through
  }
  try {
    const j = JSON.parse(fs.readFileSync(path.join(process.cwd(), 'node_modules', name, 'package.json'), 'utf8')) as { version?: string };
    return j.version ?? '?';
  } catch {
    return '?';
  }
}

// --- RabbitMQ (amqplib, publisher confirms) ---

type Amqp = typeof import('amqplib');

async function startRabbit(tempBase: string): Promise<{ servers: ManagedServer[]; port: number; dir: string; version: string }> {
  const server = which('/usr/lib/rabbitmq/bin/rabbitmq-server');
  const epmdBin = which('epmd');
  if (server === null || epmdBin === null) throw new Error('rabbitmq-server is not installed (run bench/peers/setup.sh)');
  const dir = makeTempDir('peers-rabbitmq', tempBase);
  fs.chmodSync(dir, 0o755);
  const [port, distPort, epmdPort] = [await freePort(), await freePort(), await freePort()];
  for (const d of ['mnesia', 'log']) fs.mkdirSync(path.join(dir, d));
  fs.writeFileSync(path.join(dir, 'enabled_plugins'), '[].\n');
  fs.writeFileSync(path.join(dir, 'rabbitmq.conf'), [`listeners.tcp.default = 127.0.0.1:${port}`, 'log.console = false', 'log.file.level = warning', ''].join('\n'));
  fs.writeFileSync(path.join(dir, 'rabbitmq-env.conf'), '');
  const servers: ManagedServer[] = [];
  // Our own epmd, on loopback and a free port (Erlang distribution needs one), stopped by pid after.
  servers.push(await ManagedServer.start({ name: 'epmd', command: epmdBin, args: ['-address', '127.0.0.1', '-port', String(epmdPort)], logFile: path.join(dir, 'epmd.log'), port: epmdPort, startTimeoutMs: 10_000 }));
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: dir,
    LANG: 'C.UTF-8',
    ERL_EPMD_PORT: String(epmdPort),
    ERL_EPMD_ADDRESS: '127.0.0.1',
    RABBITMQ_NODENAME: `spoolbench${process.pid}@localhost`,
    RABBITMQ_MNESIA_BASE: path.join(dir, 'mnesia'),
    RABBITMQ_LOG_BASE: path.join(dir, 'log'),
    RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
    RABBITMQ_NODE_PORT: String(port),
    RABBITMQ_DIST_PORT: String(distPort),
    RABBITMQ_CONFIG_FILE: path.join(dir, 'rabbitmq.conf'),
    RABBITMQ_ADVANCED_CONFIG_FILE: path.join(dir, 'advanced.config'),
    RABBITMQ_CONF_ENV_FILE: path.join(dir, 'rabbitmq-env.conf'),
    RABBITMQ_ENABLED_PLUGINS_FILE: path.join(dir, 'enabled_plugins'),
    RABBITMQ_PID_FILE: path.join(dir, 'rabbit.pid'),
    // Erlang distribution on loopback only.
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
  };
  try {
    servers.push(await ManagedServer.start({ name: 'rabbitmq-server', command: server, args: [], env, cwd: dir, logFile: path.join(dir, 'server.log'), port, startTimeoutMs: 90_000 }));
  } catch (err) {
    for (const s of servers.reverse()) await s.stop();
    removeTempDir(dir);
    throw err;
  }
  return { servers, port, dir, version: `RabbitMQ ${debVersion('rabbitmq-server') ?? '?'}` };
}

function confirmPublish(ch: import('amqplib').ConfirmChannel, exchange: string, key: string, body: Buffer, options: import('amqplib').Options.Publish): Promise<void> {
  return new Promise((resolve, reject) => {
    ch.publish(exchange, key, body, options, (err: unknown) => (err ? reject(err instanceof Error ? err : new Error('nacked by the broker')) : resolve()));
  });
}

export async function runRabbit(p: PeerRunParams): Promise<PeerOutcome[]> {
  const kinds = [
    {
      key: 'rabbitmq-classic',
      type: 'classic',
      ackMeans: 'publisher confirm of a persistent message in a durable classic queue: sent once the queue has written it to disk and fsynced it (RabbitMQ batches the fsyncs): durable at ack',
    },
    {
      key: 'rabbitmq-quorum',
      type: 'quorum',
      ackMeans: 'publisher confirm on a quorum queue: sent once a majority of members fsynced the Raft log entry; here one node, so after its own WAL fsync: durable at ack',
    },
  ] as const;
  const outcomes: PeerOutcome[] = kinds.map((k) => ({ key: k.key, name: `RabbitMQ ${k.type} queue (durable, persistent, confirms)`, version: '?', ackMeans: k.ackMeans, durableAtAck: true, notes: [] }));
  const delayOutcome: PeerOutcome = {
    key: 'rabbitmq-delay',
    name: 'RabbitMQ per-message TTL + dead-letter exchange (delays)',
    version: '?',
    ackMeans: 'as classic',
    durableAtAck: true,
    notes: ['delays: a classic "hold" queue without consumers, per-message expiration = the delay, dead-lettered to the queue consumed; messages expire only at the head of the queue'],
  };
  let amqp: Amqp;
  try {
    const mod = (await import('amqplib')) as Amqp & { default?: Amqp };
    amqp = mod.default ?? mod;
  } catch (err) {
    for (const o of outcomes) o.error = `amqplib cannot be loaded (run bench/peers/setup.sh): ${errText(err)}`;
    return outcomes;
  }
  let started: Awaited<ReturnType<typeof startRabbit>>;
  try {
    progress('rabbitmq: starting rabbitmq-server on 127.0.0.1');
    started = await startRabbit(p.tempBase);
  } catch (err) {
    for (const o of outcomes) o.error = `RabbitMQ could not start here: ${errText(err)}`;
    return outcomes;
  }
  try {
    const conn = await amqp.connect(`amqp://guest:guest@127.0.0.1:${started.port}`);
    try {
      const ver = String((conn.connection.serverProperties as { version?: unknown }).version ?? '');
      for (const [i, k] of kinds.entries()) {
        const o = outcomes[i] as PeerOutcome;
        o.version = ver !== '' ? `RabbitMQ ${ver} (Debian ${debVersion('rabbitmq-server') ?? '?'}), amqplib ${pkgVersion('amqplib')}` : started.version;
        o.notes.push('publish to a durable topic exchange bound to the queue, persistent, confirm channel; drain: prefetch 1,000, basic.ack per message (acks are not confirmed to the client)');
        try {
          const { figures, runs } = await figuresOf({ label: k.key, params: p, open: async (run) => {
            const ch = await conn.createConfirmChannel();
            const cch = await conn.createChannel();
            const ex = `bench.${k.type}.${run}`;
            const q = `bench.${k.type}.${run}`;
            const lq = `lat.${k.type}.${run}`;
            await ch.assertExchange(ex, 'topic', { durable: true });
            for (const name of [q, lq]) await ch.assertQueue(name, { durable: true, arguments: { 'x-queue-type': k.type } });
            await ch.bindQueue(q, ex, 'bench.#');
            const body = bodies(4096, p.bodyBytes);
            return {
              publish: (i) => confirmPublish(ch, ex, 'bench.msg', body[i % body.length] as Buffer, { persistent: true }),
              drain: async (n, maxSeconds) => {
                await cch.prefetch(1000);
                let count = 0;
                const t0 = performance.now();
                const { consumerTag } = await cch.consume(q, (msg) => {
                  if (msg === null) return;
                  cch.ack(msg);
                  count++;
                });
                const ok = await waitFor(() => count, n, 30_000, maxSeconds * 1000);
                const seconds = (performance.now() - t0) / 1000;
                await cch.cancel(consumerTag);
                return { count, seconds, capped: !ok };
              },
              latency: (i) => confirmPublish(ch, '', lq, body[i % body.length] as Buffer, { persistent: true }),
              cleanup: async () => {
                await ch.deleteQueue(q).catch(() => {});
                await ch.deleteQueue(lq).catch(() => {});
                await ch.deleteExchange(ex).catch(() => {});
                await cch.close().catch(() => {});
                await ch.close().catch(() => {});
              },
            };
          } });
          o.figures = figures;
          o.runs = runs;
        } catch (err) {
          o.error = errText(err);
        }
      }
      if (p.delays) {
        delayOutcome.version = outcomes[0]?.version ?? '?';
        try {
          delayOutcome.delay = await rabbitDelays(conn, p);
        } catch (err) {
          delayOutcome.error = errText(err);
        }
        outcomes.push(delayOutcome);
      }
    } finally {
      await conn.close().catch(() => {});
    }
  } catch (err) {
    for (const o of outcomes) o.error ??= errText(err);
  } finally {
    for (const s of [...started.servers].reverse()) {
      const r = await s.stop();
      progress(`rabbitmq: stopped ${s.name} (pid ${s.pid})${r.killed ? ' with SIGKILL' : ''}`);
    }
    removeTempDir(started.dir);
  }
  return outcomes;
}

async function rabbitDelays(conn: import('amqplib').ChannelModel, p: PeerRunParams): Promise<DelayFigures> {
  const ch = await conn.createConfirmChannel();
  const cch = await conn.createChannel();
  await ch.assertExchange('delay.dlx', 'direct', { durable: true });
  await ch.assertQueue('delay.hold', { durable: true, arguments: { 'x-dead-letter-exchange': 'delay.dlx', 'x-dead-letter-routing-key': 'fire' } });
  await ch.assertQueue('delay.fire', { durable: true });
  await ch.bindQueue('delay.fire', 'delay.dlx', 'fire');
  const lateness: number[] = [];
  await cch.prefetch(1000);
  await cch.consume('delay.fire', (msg) => {
    if (msg === null) return;
    lateness.push(Date.now() - Number(msg.content.toString('utf8')));
    cch.ack(msg);
  });
  progress(`rabbitmq delays: ${p.delayMessages} messages, random delays 0-${p.delayMaxMs} ms`);
  const figures = await delayWorkload(p, lateness, (d) => confirmPublish(ch, '', 'delay.hold', Buffer.from(String(Date.now() + d)), { persistent: true, expiration: String(d) }));
  await cch.close().catch(() => {});
  await ch.close().catch(() => {});
  return figures;
}

// --- NATS JetStream ---

type Nats = typeof import('nats');

export async function runNats(p: PeerRunParams): Promise<PeerOutcome> {
  const outcome: PeerOutcome = {
    key: 'nats',
    name: 'NATS JetStream, file storage, work-queue stream',
    version: '?',
    ackMeans: '?',
    durableAtAck: false,
    notes: ['publish: js.publish awaiting the PubAck; drain: durable pull consumer, explicit ack per message (m.ack(), not awaited), up to 1,000 pulled at once'],
  };
  const bin = which('nats-server');
  if (bin === null) {
    outcome.error = 'nats-server is not installed (run bench/peers/setup.sh)';
    return outcome;
  }
  const version = (commandOutput(bin, ['--version']) ?? '?').replace(/^nats-server:\s*/, '');
  outcome.version = `nats-server ${version} (Debian ${debVersion('nats-server') ?? '?'}), nats.js ${pkgVersion('nats')}`;
  let nats: Nats;
  try {
    const mod = (await import('nats')) as Nats & { default?: Nats };
    nats = typeof mod.connect === 'function' ? mod : (mod.default as Nats);
  } catch (err) {
    outcome.error = `the nats client cannot be loaded (run bench/peers/setup.sh): ${errText(err)}`;
    return outcome;
  }
  const dir = makeTempDir('peers-nats', p.tempBase);
  const port = await freePort();
  const conf = (syncAlways: boolean): string =>
    [`listen: 127.0.0.1:${port}`, `jetstream {`, `  store_dir: "${path.join(dir, 'js')}"`, ...(syncAlways ? ['  sync_interval: always'] : []), `}`, ''].join('\n');
  let server: ManagedServer | null = null;
  let syncAlways = true;
  try {
    fs.writeFileSync(path.join(dir, 'nats.conf'), conf(true));
    try {
      server = await ManagedServer.start({ name: 'nats-server', command: bin, args: ['-c', path.join(dir, 'nats.conf')], logFile: path.join(dir, 'nats.log'), port, startTimeoutMs: 20_000 });
    } catch (err) {
      syncAlways = false;
      const why = errText(err).match(/unknown field "sync_interval"/) ? 'this nats-server does not know sync_interval' : errText(err).split('\n')[0];
      outcome.notes.push(`sync_interval: always was refused (${why}); running with the default sync (every 2 minutes)`);
      fs.writeFileSync(path.join(dir, 'nats.conf'), conf(false));
      server = await ManagedServer.start({ name: 'nats-server', command: bin, args: ['-c', path.join(dir, 'nats.conf')], logFile: path.join(dir, 'nats.log'), port, startTimeoutMs: 20_000 });
    }
    outcome.durableAtAck = syncAlways;
    outcome.ackMeans = syncAlways
      ? 'PubAck after the message is stored and fsynced (jetstream sync_interval: always): durable at ack'
      : `PubAck once the message is written to the stream's file store, BEFORE fsync: nats-server ${version} fsyncs every 2 minutes and has no sync_interval option, so acked messages can be lost on power loss: NOT durable at ack`;
    const nc = await nats.connect({ servers: `127.0.0.1:${port}` });
    try {
      const jsm = await nc.jetstreamManager();
      const js = nc.jetstream();
      const { figures, runs } = await figuresOf({ label: 'nats', params: p, open: async (run) => {
        const stream = `BENCH${run}`;
        const lstream = `LAT${run}`;
        await jsm.streams.add({ name: stream, subjects: [`bench${run}.>`], storage: nats.StorageType.File, retention: nats.RetentionPolicy.Workqueue });
        await jsm.streams.add({ name: lstream, subjects: [`lat${run}.>`], storage: nats.StorageType.File, retention: nats.RetentionPolicy.Limits });
        const body = bodies(4096, p.bodyBytes);
        let cseq = 0;
        return {
          publish: (i) => js.publish(`bench${run}.msg`, body[i % body.length] as Buffer),
          drain: async (n, maxSeconds) => {
            const name = `drain${cseq++}`;
            await jsm.consumers.add(stream, { durable_name: name, ack_policy: nats.AckPolicy.Explicit, max_ack_pending: 20_000 });
            const consumer = await js.consumers.get(stream, name);
            const t0 = performance.now();
            let count = 0;
            const msgs = await consumer.consume({ max_messages: 1000 });
            const loop = (async () => {
              for await (const m of msgs) {
                m.ack();
                if (++count >= n) break;
              }
            })().catch(() => {});
            const ok = await waitFor(() => count, n, 30_000, maxSeconds * 1000);
            await nc.flush();
            const seconds = (performance.now() - t0) / 1000;
            // Not `await msgs.close()`: in nats.js 2.29 it can stay pending after the loop broke.
            msgs.stop();
            void loop;
            const capped = !ok;
            await jsm.consumers.delete(stream, name).catch(() => {});
            return { count, seconds, capped };
          },
          latency: (i) => js.publish(`lat${run}.msg`, body[i % body.length] as Buffer),
          cleanup: async () => {
            await jsm.streams.delete(stream).catch(() => {});
            await jsm.streams.delete(lstream).catch(() => {});
          },
        };
      } });
      outcome.figures = figures;
      outcome.runs = runs;
    } finally {
      await nc.close().catch(() => {});
    }
  } catch (err) {
    outcome.error = `NATS: ${errText(err)}`;
  } finally {
    if (server !== null) {
      const r = await server.stop();
      progress(`nats: stopped nats-server (pid ${server.pid})${r.killed ? ' with SIGKILL' : ''}`);
    }
    removeTempDir(dir);
  }
  return outcome;
}

// --- BullMQ on Redis (appendfsync always) ---

type BullMQ = typeof import('bullmq');

export async function runBullmq(p: PeerRunParams): Promise<PeerOutcome> {
  const outcome: PeerOutcome = {
    key: 'bullmq',
    name: 'BullMQ + Redis (appendonly, appendfsync always)',
    version: '?',
    ackMeans: 'Queue.add resolves on the Redis reply; with appendfsync always Redis writes and fsyncs the AOF before it replies (one fsync per event-loop iteration): durable at ack',
    durableAtAck: true,
    notes: ['publish: Queue.add, 1,000 outstanding, removeOnComplete; drain: one Worker, concurrency 100, counted on "completed" (the job moved to completed = the ack)'],
  };
  const bin = which('redis-server');
  if (bin === null) {
    outcome.error = 'redis-server is not installed (run bench/peers/setup.sh)';
    return outcome;
  }
  const rv = commandOutput(bin, ['--version']) ?? '?';
  outcome.version = `Redis ${rv.match(/v=(\S+)/)?.[1] ?? '?'}, BullMQ ${pkgVersion('bullmq')}, ioredis ${pkgVersion('ioredis')}`;
  let bull: BullMQ;
  try {
    bull = (await import('bullmq')) as BullMQ;
    require.resolve('ioredis');
  } catch (err) {
    outcome.error = `bullmq/ioredis cannot be loaded (run bench/peers/setup.sh): ${errText(err)}`;
    return outcome;
  }
  const dir = makeTempDir('peers-redis', p.tempBase);
  const port = await freePort();
  let server: ManagedServer | null = null;
  try {
    server = await ManagedServer.start({
      name: 'redis-server',
      command: bin,
      args: ['--port', String(port), '--bind', '127.0.0.1', '--protected-mode', 'yes', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--daemonize', 'no', '--logfile', path.join(dir, 'redis.log')],
      logFile: path.join(dir, 'redis.stdout'),
      port,
      startTimeoutMs: 20_000,
    });
    const connection = { host: '127.0.0.1', port, maxRetriesPerRequest: null };
    const { figures, runs } = await figuresOf({ label: 'bullmq', params: p, open: async (run) => {
      const queue = new bull.Queue(`bench${run}`, { connection, defaultJobOptions: { removeOnComplete: true, removeOnFail: true } });
      const lq = new bull.Queue(`lat${run}`, { connection, defaultJobOptions: { removeOnComplete: true } });
      await queue.waitUntilReady();
      await lq.waitUntilReady();
      const data = bodies(4096, p.bodyBytes).map((b) => b.toString('latin1'));
      return {
        publish: (i) => queue.add('m', data[i % data.length]),
        drain: async (n, maxSeconds) => {
          let count = 0;
          const t0 = performance.now();
          const worker = new bull.Worker(`bench${run}`, async () => {}, { connection, concurrency: 100 });
          worker.on('completed', () => {
            count++;
          });
          const ok = await waitFor(() => count, n, 30_000, maxSeconds * 1000);
          const seconds = (performance.now() - t0) / 1000;
          await worker.close();
          return { count: Math.min(count, n), seconds, capped: !ok };
        },
        latency: (i) => lq.add('m', data[i % data.length]),
        cleanup: async () => {
          await queue.obliterate({ force: true }).catch(() => {});
          await lq.obliterate({ force: true }).catch(() => {});
          await queue.close();
          await lq.close();
        },
      };
    } });
    outcome.figures = figures;
    outcome.runs = runs;
    if (p.delays) {
      try {
        outcome.delay = await bullDelays(bull, connection, p);
      } catch (err) {
        outcome.notes.push(`delays failed: ${errText(err)}`);
      }
    }
  } catch (err) {
    outcome.error = `BullMQ/Redis: ${errText(err)}`;
  } finally {
    if (server !== null) {
      const r = await server.stop();
      progress(`redis: stopped redis-server (pid ${server.pid})${r.killed ? ' with SIGKILL' : ''}`);
    }
    removeTempDir(dir);
  }
  return outcome;
}

async function bullDelays(bull: BullMQ, connection: { host: string; port: number; maxRetriesPerRequest: null }, p: PeerRunParams): Promise<DelayFigures> {
  const queue = new bull.Queue('delays', { connection, defaultJobOptions: { removeOnComplete: true } });
  await queue.waitUntilReady();
  const lateness: number[] = [];
  const worker = new bull.Worker(
    'delays',
    async (job) => {
      lateness.push(Date.now() - Number(job.data as string));
    },
    { connection, concurrency: 100 },
  );
  await worker.waitUntilReady();
  progress(`bullmq delays: ${p.delayMessages} delayed jobs, random delays 0-${p.delayMaxMs} ms`);
  const figures = await delayWorkload(p, lateness, (d) => queue.add('d', String(Date.now() + d), { delay: d }));
  await worker.close();
  await queue.close();
  return figures;
}

