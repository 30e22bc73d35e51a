/**
 * Spool side by side with the brokers a Node developer would otherwise pick, in ONE run:
 *
 *   npm run bench:peers            (= npm run build && node dist/bench/peers/run.js)
 *   node dist/bench/peers/run.js [--only spool,sqlite,rabbitmq,nats,bullmq] [--messages n]
 *        [--window n] [--latency n] [--repeats n] [--turns n] [--max-seconds s] [--no-delays]
 *        [--delay-messages n] [--out dir] [--dir tmpdir]
 *
 * Install the peers first: bash bench/peers/setup.sh (Debian packages rabbitmq-server, nats-server,
 * redis-server; npm amqplib, nats, bullmq, ioredis, better-sqlite3). Each server is started here,
 * bound to 127.0.0.1 on a free port with a temporary data dir, and stopped by pid afterwards.
 *
 * Workloads (defaults: 100 B bodies, 200,000 messages, 1,000 publishes outstanding): confirmed
 * publish (msgs/s), drain with acks (msgs/s), confirm latency of a lone publish (p50, p99); and
 * delays: 10,000 messages with random delays of 0-5 s, firing lateness p50/p99. Prints every
 * figure with the Spool/peer ratio and what each peer's acknowledgement guarantees, judges the
 * targets of issue 6, and writes <out>/peers-<timestamp>.json, peers-latest.json, an SVG chart
 * beside them and docs/benchmarks-peers.svg (on a run of every peer).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { measureRawLimits, type RawLimits } from '../lib/raw-limits.js';
import { type SummaryRow, fmt, fmtRatio, installSignalCleanup, machineInfo, median, out, progress, sourceFingerprint, summaryTable, table, verdict } from '../lib/report.js';
import { type ChartBar, renderChart, writeChart } from '../chart.js';
import { type PeerRunParams, runBullmq, runNats, runRabbit, runSpool, runSpoolAndSqlite, runSqlite } from './adapters.js';
import { BATCH_SIZE, type Figures, type PeerOutcome } from './workloads.js';

export const PEERS = ['spool', 'sqlite', 'rabbitmq', 'nats', 'bullmq'] as const;
export type PeerName = (typeof PEERS)[number];

export interface PeersCli extends PeerRunParams {
  only: PeerName[];
  outDir: string;
}

const USAGE = `usage: node dist/bench/peers/run.js [--only ${PEERS.join(',')}] [--messages n] [--window n] [--latency n]
       [--repeats n] [--turns n] [--max-seconds s] [--no-delays] [--delay-messages n] [--out dir] [--dir tmpdir]
  --messages        messages per throughput workload (default 200,000), 100 B bodies (--body-bytes)
  --window          publishes outstanding (default 1,000)
  --latency         lone publishes for the confirm latency (default 2,000)
  --repeats         runs of each workload per peer, median reported (default 3)
  --turns           runs of Spool and SQLite batched, taken in turn (default 5): the targets against
                    SQLite are judged on the median of their per-run ratios
  --max-seconds     cap of one timed workload (default 60): a slower peer reports the rate over what it did
  --no-delays       skip the delay workloads (10,000 messages, random delays 0-5 s)`;

export function parsePeersArgs(argv: readonly string[]): PeersCli {
  const root = fileURLToPath(new URL('../../../', import.meta.url));
  const o: PeersCli = {
    only: [...PEERS],
    messages: 200_000,
    bodyBytes: 100,
    window: 1000,
    latencyIterations: 2000,
    maxSeconds: 60,
    warmup: 5000,
    repeats: 3,
    turns: 5,
    tempBase: os.tmpdir(),
    delays: true,
    delayMessages: 10_000,
    delayMaxMs: 5000,
    outDir: path.join(root, 'bench', 'results'),
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
      return v;
    };
    const int = (): number => {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} must be a non-negative integer\n${USAGE}`);
      return n;
    };
    switch (flag) {
      case '--only': {
        const names = value()
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
        for (const n of names) if (!(PEERS as readonly string[]).includes(n)) throw new Error(`unknown peer ${n}\n${USAGE}`);
        o.only = PEERS.filter((p) => names.includes(p));
        break;
      }
      case '--messages':
        o.messages = int();
        break;
      case '--body-bytes':
        o.bodyBytes = int();
        break;
      case '--window':
        o.window = Math.max(1, int());
        break;
      case '--latency':
        o.latencyIterations = int();
        break;
      case '--repeats':
        o.repeats = Math.max(1, int());
        break;
      case '--turns':
        o.turns = Math.max(1, int());
        break;
      case '--max-seconds':
        o.maxSeconds = Math.max(1, int());
        break;
      case '--warmup':
        o.warmup = int();
        break;
      case '--no-delays':
        o.delays = false;
        break;
      case '--delay-messages':
        o.delayMessages = int();
        break;
      case '--out':
        o.outDir = path.resolve(value());
        break;
      case '--dir':
        o.tempBase = path.resolve(value());
        break;
      case '--help':
      case '-h':
        out(USAGE);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument ${a}\n${USAGE}`);
    }
  }
  return o;
}

/**
 * Runs the selected peers one after the other (Spool first), each failure reported, never fatal.
 * Spool and SQLite both run in this process, so their runs take turns (the targets against SQLite
 * are judged run by run); the servers cannot, and run after.
 */
export async function runPeers(o: PeersCli): Promise<PeerOutcome[]> {
  const outcomes: PeerOutcome[] = [];
  const withSqlite = o.only.includes('spool') && o.only.includes('sqlite');
  for (const peer of o.only) {
    progress(`peer ${peer}${peer === 'spool' && withSqlite ? ', in turn with sqlite' : ''}`);
    try {
      switch (peer) {
        case 'spool':
          if (withSqlite) outcomes.push(...(await runSpoolAndSqlite(o)));
          else outcomes.push(await runSpool(o));
          break;
        case 'sqlite':
          if (withSqlite) break;
          outcomes.push(await runSqlite(o, 1000));
          outcomes.push(await runSqlite(o, 1));
          break;
        case 'rabbitmq':
          outcomes.push(...(await runRabbit(o)));
          break;
        case 'nats':
          outcomes.push(await runNats(o));
          break;
        case 'bullmq':
          outcomes.push(await runBullmq(o));
          break;
      }
    } catch (err) {
      outcomes.push({ key: peer, name: peer, version: '?', ackMeans: '?', durableAtAck: false, error: err instanceof Error ? err.message : String(err), notes: [] });
    }
  }
  return outcomes;
}

/** A ratio judged run by run: each run of Spool against the run of the peer made in turn with it. */
interface PairedRatio {
  median: number;
  runs: number[];
}

/** Spool/peer run by run (peer/Spool when lower is better), when their runs took turns; else undefined. */
export function pairedRatio(spool: PeerOutcome | undefined, peer: PeerOutcome | undefined, pick: (f: Figures) => number | undefined, higherIsBetter: boolean): PairedRatio | undefined {
  if (spool?.runs === undefined || peer?.runs === undefined || !(spool.interleavedWith ?? []).includes(peer.key)) return undefined;
  if (spool.runs.length !== peer.runs.length || spool.runs.length === 0) return undefined;
  const runs: number[] = [];
  for (let i = 0; i < spool.runs.length; i++) {
    const mine = pick(spool.runs[i] as Figures);
    const theirs = pick(peer.runs[i] as Figures);
    if (mine === undefined || theirs === undefined || !(mine > 0) || !(theirs > 0)) return undefined;
    runs.push(higherIsBetter ? mine / theirs : theirs / mine);
  }
  return { median: median(runs), runs };
}

function ratioCell(spool: number | undefined, peer: number | undefined): string {
  if (spool === undefined || peer === undefined || !Number.isFinite(spool) || !Number.isFinite(peer) || peer <= 0) return 'n/a';
  return fmtRatio(spool / peer);
}

/** The judged targets of issue 6, as summary rows (value = the ratio or figure judged). */
export function peerTargets(outcomes: readonly PeerOutcome[], raw: RawLimits | null): SummaryRow[] {
  const by = (k: string) => outcomes.find((o) => o.key === k);
  const spool = by('spool');
  const s = spool?.figures;
  const rows: SummaryRow[] = [];
  const ratioRow = (metric: string, mine: number | undefined, theirs: number | undefined, min: number, peer: string, higherIsBetter = true, paired?: PairedRatio): void => {
    const ok = mine !== undefined && theirs !== undefined && Number.isFinite(mine) && Number.isFinite(theirs) && theirs > 0;
    const v = paired !== undefined ? paired.median : ok ? (higherIsBetter ? (mine as number) / (theirs as number) : (theirs as number) / (mine as number)) : Number.NaN;
    const how = paired !== undefined ? `; median of ${paired.runs.length} runs in turn: ${paired.runs.map((r) => fmtRatio(r)).join(', ')}` : '';
    rows.push({
      scenario: 'peers',
      metric,
      value: v,
      unit: 'x',
      target: { kind: 'min', value: min, text: `>= ${min}x ${peer}` },
      ratios: ok ? `Spool ${fmt(mine)} vs ${fmt(theirs)}${how}` : `not measured (${peer} or Spool did not run)`,
      ...(ok ? {} : { unmeasured: true }),
    });
  };
  const q = by('rabbitmq-quorum')?.figures;
  const sb = by('sqlite-batch')?.figures;
  const ss = by('sqlite-single')?.figures;
  ratioRow('confirmed publish vs RabbitMQ quorum', s?.publishPerSec, q?.publishPerSec, 10, 'RabbitMQ quorum');
  const withBatch = by('sqlite-batch');
  const pairedBatch = (pick: (f: Figures) => number | undefined, higherIsBetter = true) => pairedRatio(spool, withBatch, pick, higherIsBetter);
  ratioRow('confirmed publish, batch API, vs SQLite batched', s?.batchPublishPerSec, sb?.batchPublishPerSec, 2, 'SQLite batched', true, pairedBatch((f) => f.batchPublishPerSec));
  ratioRow('confirmed publish (1,000 outstanding) vs SQLite single', s?.publishPerSec, ss?.publishPerSec, 1.3, 'SQLite single');
  ratioRow('drain with acks vs SQLite batched', s?.drainPerSec, sb?.drainPerSec, 3, 'SQLite batched', true, pairedBatch((f) => f.drainPerSec));
  ratioRow('drain with acks vs RabbitMQ quorum', s?.drainPerSec, q?.drainPerSec, 10, 'RabbitMQ quorum');
  if (s !== undefined && raw !== null) {
    rows.push({
      scenario: 'peers',
      metric: 'confirm p50 vs raw fdatasync',
      value: s.confirmP50Us / raw.fsyncMedianUs,
      unit: 'x',
      target: { kind: 'max', value: 1.3, text: '<= 1.3x raw' },
      ratios: `Spool ${fmt(s.confirmP50Us)} us vs raw write+fdatasync median ${fmt(raw.fsyncMedianUs)} us (this run)`,
    });
  }
  ratioRow('confirm p50: SQLite / Spool (>= 1 = no worse)', s?.confirmP50Us, sb?.confirmP50Us ?? ss?.confirmP50Us, 1, 'SQLite', false, sb !== undefined ? pairedBatch((f) => f.confirmP50Us, false) : undefined);
  const sd = spool?.delay;
  const bd = by('bullmq')?.delay;
  rows.push({
    scenario: 'peers',
    metric: 'delay lateness p99',
    value: sd?.p99Ms ?? Number.NaN,
    unit: 'ms',
    target: { kind: 'max', value: 20, text: '< 20 ms' },
    ratios: sd === undefined ? `not measured in this run (${spool === undefined ? 'Spool did not run' : (spool.notes.find((n) => n.startsWith('delays')) ?? 'delays skipped: --no-delays')})` : `${fmt(sd.received)} of ${fmt(sd.messages)} fired`,
    ...(sd === undefined ? { unmeasured: true } : {}),
  });
  ratioRow('delay lateness p99: BullMQ / Spool', sd?.p99Ms, bd?.p99Ms, 25, 'BullMQ', false);
  return rows;
}

function durability(o: PeerOutcome): string {
  return o.durableAtAck ? 'durable at ack' : 'NOT durable at ack';
}

export function printPeers(o: PeersCli, outcomes: readonly PeerOutcome[], raw: RawLimits | null): SummaryRow[] {
  const spool = outcomes.find((x) => x.key === 'spool')?.figures;
  const withFigures = outcomes.filter((x) => x.figures !== undefined);
  out(`== peers: ${fmt(o.bodyBytes, 0)} B bodies, ${fmt(o.messages)} messages, ${fmt(o.window)} publishes outstanding; medians of ${o.repeats} runs (Spool and SQLite batched: ${o.turns}, in turn); ratios are Spool/peer from this same run`);
  out(
    table(
      ['peer', 'ack', 'confirmed publish msgs/s', 'Spool/peer', 'drain with acks msgs/s', 'Spool/peer', 'confirm p50 ms', 'p99 ms', 'Spool/peer'],
      withFigures.map((x) => {
        const f = x.figures!;
        return [
          x.name,
          durability(x),
          `${fmt(f.publishPerSec)}${f.publishCapped ? ` (${fmt(f.published)} in ${fmt(f.publishSeconds, 1)} s, capped)` : ''}`,
          x.key === 'spool' ? '1.00x' : ratioCell(spool?.publishPerSec, f.publishPerSec),
          `${fmt(f.drainPerSec)}${f.drainCapped ? ` (${fmt(f.drained)}, capped)` : ''}`,
          x.key === 'spool' ? '1.00x' : ratioCell(spool?.drainPerSec, f.drainPerSec),
          fmt(f.confirmP50Us / 1000, 3),
          fmt(f.confirmP99Us / 1000, 3),
          x.key === 'spool' ? '1.00x' : ratioCell(spool?.confirmP50Us, f.confirmP50Us),
        ];
      }),
      ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
    ),
  );
  out('   (for latency, Spool/peer < 1 means Spool confirms faster)');
  for (const x of withFigures) {
    const b = x.figures?.batchPublishPerSec;
    if (b !== undefined) out(`   batch API, calls of ${fmt(BATCH_SIZE)}: ${x.name} ${fmt(b)} msgs/s${x.key === 'spool' ? '' : `; Spool/peer ${ratioCell(spool?.batchPublishPerSec, b)}`}`);
  }
  if (raw !== null) {
    out(`   raw limits, same run: write 100 B + fdatasync ${fmt(raw.fsyncCallsPerSec)}/s (median ${fmt(raw.fsyncMedianUs)} us); sequential write ${fmt(raw.seqWriteMBps)} MB/s`);
    for (const x of withFigures) {
      const f = x.figures!;
      out(`   ${x.key}: publish ${fmt(f.publishPerSec / raw.fsyncCallsPerSec)}x raw fdatasync rate, payload ${fmt(((f.publishPerSec * o.bodyBytes) / 1e6 / raw.seqWriteMBps) * 100, 2)}% of raw MB/s; confirm p50 ${fmtRatio(f.confirmP50Us / raw.fsyncMedianUs)} raw fdatasync`);
    }
  }
  out();
  const delays = outcomes.filter((x) => x.delay !== undefined);
  if (o.delays) {
    out(`== delays: ${fmt(o.delayMessages)} messages with random delays of 0-${fmt(o.delayMaxMs)} ms; lateness = arrival - (publish time + delay)`);
    const sd = outcomes.find((x) => x.key === 'spool')?.delay;
    const rows = delays.map((x) => {
      const d = x.delay!;
      return [x.name, `${fmt(d.received)}/${fmt(d.messages)}`, fmt(d.schedulePerSec), fmt(d.p50Ms), fmt(d.p99Ms), fmt(d.maxMs), x.key === 'spool' ? '1.00x' : ratioCell(sd?.p99Ms, d.p99Ms)];
    });
    if (sd === undefined) rows.push(['Spool publish(..., { delay })', 'not yet', '', '', '', '', '']);
    out(table(['peer', 'fired', 'scheduled msgs/s', 'p50 ms', 'p99 ms', 'max ms', 'Spool/peer p99'], rows));
    out();
  }
  out('== what an acknowledgement means');
  for (const x of outcomes) out(`   ${x.name} [${x.version}]: ${x.ackMeans}`);
  out();
  const notes = outcomes.filter((x) => x.notes.length > 0 || x.error !== undefined);
  if (notes.length > 0) {
    out('== notes');
    for (const x of notes) {
      if (x.error !== undefined) out(`   ${x.name}: COULD NOT RUN: ${x.error}`);
      for (const n of x.notes) out(`   ${x.name}: ${n}`);
    }
    out();
  }
  const targets = peerTargets(outcomes, raw);
  out('== targets of issue 6 (judged, never enforced)');
  out(summaryTable(targets));
  const judged = targets.filter((r) => r.unmeasured !== true);
  const misses = judged.filter((r) => verdict(r) === 'MISS');
  out(`${judged.length - misses.length}/${judged.length} measured targets met${misses.length > 0 ? `; missed: ${misses.map((r) => r.metric).join(', ')}` : ''}; ${targets.length - judged.length} not measurable in this run`);
  return targets;
}

/** The peers chart: one panel per workload, one bar per peer, Spool highlighted. */
export function peersChart(o: PeersCli, outcomes: readonly PeerOutcome[], when: Date, subtitle: string): string {
  const spool = outcomes.find((x) => x.key === 'spool')?.figures;
  const bar = (group: string, x: PeerOutcome, value: number, unit: string, ratio: number | undefined): ChartBar => ({
    group,
    label: `${x.name}${x.durableAtAck ? '' : ' (NOT durable at ack)'}`,
    value,
    unit,
    accent: x.key === 'spool',
    ...(x.key !== 'spool' && ratio !== undefined && Number.isFinite(ratio) ? { note: `Spool/peer ${fmtRatio(ratio)}` } : {}),
  });
  const withF = outcomes.filter((x) => x.figures !== undefined);
  const delays = outcomes.filter((x) => x.delay !== undefined);
  const sd = outcomes.find((x) => x.key === 'spool')?.delay;
  return renderChart({
    legend: 'peers',
    title: `Spool and its peers, ${when.toISOString().slice(0, 10)}: ${fmt(o.bodyBytes, 0)} B, ${fmt(o.messages)} messages, ${fmt(o.window)} outstanding`,
    subtitle,
    panels: [
      { title: 'Confirmed publish (msgs/s, higher is better)', bars: withF.map((x) => bar('confirmed publish', x, x.figures!.publishPerSec, 'msgs/s', spool ? spool.publishPerSec / x.figures!.publishPerSec : undefined)) },
      { title: 'Drain with acks (msgs/s, higher is better)', bars: withF.map((x) => bar('drain with acks', x, x.figures!.drainPerSec, 'msgs/s', spool ? spool.drainPerSec / x.figures!.drainPerSec : undefined)) },
      { title: 'Confirm latency of a lone publish, p50 (us, lower is better)', bars: withF.map((x) => bar('confirm p50', x, x.figures!.confirmP50Us, 'us', spool ? spool.confirmP50Us / x.figures!.confirmP50Us : undefined)) },
      ...(delays.length > 0
        ? [{ title: `Delay firing lateness p99 (ms, lower is better), ${fmt(o.delayMessages)} msgs, 0-${fmt(o.delayMaxMs / 1000, 0)} s`, bars: delays.map((x) => bar('lateness p99', x, Math.max(x.delay!.p99Ms, 0.001), 'ms', sd ? sd.p99Ms / x.delay!.p99Ms : undefined)) }]
        : []),
    ],
  });
}

export async function main(argv: readonly string[]): Promise<number> {
  const o = parsePeersArgs(argv);
  installSignalCleanup();
  const started = new Date();
  const machine = machineInfo(o.tempBase);
  out(`Spool vs peers, ${started.toISOString()}`);
  out(`node ${machine.node} on ${machine.platform}/${machine.arch} ${machine.kernel}, ${machine.cpus} x ${machine.cpuModel}, ${machine.memoryGiB} GiB RAM; temp data in ${machine.tempDir} (${machine.tempDirFs})`);
  const root0 = fileURLToPath(new URL('../../../', import.meta.url));
  const source = { log: sourceFingerprint(path.join(root0, 'src', 'log')), broker: sourceFingerprint(path.join(root0, 'src', 'broker')) };
  out(`code under test: src/log ${source.log.hash}, src/broker ${source.broker.hash} (newest ${source.broker.newest} at ${source.broker.newestMtime})`);
  out(`load average at start: ${machine.loadAverage.map((l) => l.toFixed(2)).join(' ')}; every server binds 127.0.0.1 with a temp data dir and is stopped by pid`);
  out();
  progress('raw limits');
  const raw = await measureRawLimits({ repeats: 3, fsyncIterations: 500, seqWriteBytes: 128 * 1024 * 1024, dir: o.tempBase });
  const outcomes = await runPeers(o);
  const targets = printPeers(o, outcomes, raw);
  // Not writeResults: that would replace latest.json, which is the main suite's.
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const peersFile = path.join(o.outDir, `peers-${stamp}.json`);
  const json = `${JSON.stringify({ startedAt: started.toISOString(), finishedAt: new Date().toISOString(), params: o, machine, source, loadAfter: os.loadavg(), raw, peers: outcomes, targets: targets.map((r) => ({ ...r, verdict: verdict(r) })) }, null, 2)}\n`;
  fs.mkdirSync(o.outDir, { recursive: true });
  fs.writeFileSync(peersFile, json);
  fs.writeFileSync(path.join(o.outDir, 'peers-latest.json'), json);
  const root = fileURLToPath(new URL('../../../', import.meta.url));
  const everyPeer = o.only.length === PEERS.length;
  const svg = peersChart(o, outcomes, started, `${machine.cpus} x ${machine.cpuModel}, ${machine.tempDirFs}, node ${machine.node}; medians of ${o.repeats} (Spool, SQLite batched: ${o.turns} in turn); raw ${fmt(raw.fsyncCallsPerSec)} fdatasync/s, ${fmt(raw.seqWriteMBps)} MB/s`);
  const charts = writeChart(o.outDir, svg, started, 'peers-', everyPeer ? path.join(root, 'docs', 'benchmarks-peers.svg') : undefined);
  out(`results: ${peersFile} (and peers-latest.json); chart: ${charts.join(', ')}`);
  return 0;
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exitCode = 2;
    },
  );
}
