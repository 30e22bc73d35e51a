/**
 * The benchmark suite: the storage engine (src/log) and the embedded broker end to end (src/broker).
 *
 *   node dist/bench/run.js [--quick] [--big] [--only name,name] [--out dir] [--dir tmpdir] [--repeats n]
 *
 * Measures this machine's raw limits first (fdatasync rate, sequential write MB/s), then runs the
 * scenarios, each R times (5, or 3 with --quick), reporting medians. Prints each scenario's block
 * and one summary table (figure, target, PASS/MISS, ratios to the raw limits) on stdout, progress
 * on stderr, and writes JSON to <out>/<timestamp>.json and <out>/latest.json (default bench/results)
 * and a chart to <out>/<timestamp>.svg and <out>/latest.svg (and docs/benchmarks.svg when the
 * whole suite ran). Targets are reported, never enforced: the exit code is 0 unless a scenario
 * fails outright.
 */
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { APPEND_SIZES, benchAppend4k, benchAppendBatch, benchAppendLatency, benchAppendOne } from './log-append.js';
import { READ_SIZES, benchRead } from './log-read.js';
import { MICRO_DEFAULTS, MICRO_SIZES, benchMicro } from './micro.js';
import { BODY_SIZES, BROKER_SIZES, benchBrokerBacklog, benchBrokerDrain, benchBrokerPublish } from './broker.js';
import { renderChart, suiteChartData, writeChart } from './chart.js';
import { type ScenarioContext, TARGETS } from './lib/context.js';
import { BROKER_TARGETS } from './broker.js';
import { DELAY_SIZES, DELAY_TARGETS, benchDelay } from './delay.js';
import { REMOTE_SIZES, benchRemote } from './remote.js';
import { IDEMPOTENCY_SIZES, benchIdempotency } from './idempotency.js';
import { RAW_DEFAULTS, type RawLimits, measureRawLimits } from './lib/raw-limits.js';
import {
  MiB,
  type ScenarioReport,
  type SummaryRow,
  fmt,
  installSignalCleanup,
  machineInfo,
  out,
  printScenario,
  progress,
  sourceFingerprint,
  summaryTable,
  table,
  verdict,
  writeResults,
} from './lib/report.js';

export interface CliOptions {
  quick: boolean;
  /** broker-backlog with 10,000,000 messages (the issue's figure) instead of 1,000,000 (200,000 with --quick). */
  big: boolean;
  /** broker-backlog with exactly this many messages (overrides --big): does RSS level off further out? */
  backlog?: number;
  only: string[] | null;
  outDir: string;
  tempBase: string;
  repeats: number;
}

interface Scenario {
  name: string;
  /** Whether its ratios need the raw limits. */
  usesRaw: boolean;
  run(ctx: ScenarioContext, quick: boolean, tempBase: string, opts?: { big: boolean; backlog?: number }): Promise<ScenarioReport>;
}

export const SCENARIOS: readonly Scenario[] = [
  {
    name: 'append-batch',
    usesRaw: true,
    run: (ctx, quick, dir) =>
      benchAppendBatch(ctx, { records: APPEND_SIZES[quick ? 'quick' : 'full'].batchRecords, batchSize: 1000, inFlight: 8, valueBytes: 100, dir }),
  },
  {
    name: 'append-batch-10k',
    usesRaw: true,
    run: (ctx, quick, dir) =>
      benchAppendBatch(ctx, { records: APPEND_SIZES[quick ? 'quick' : 'full'].batch10kRecords, batchSize: 10_000, inFlight: 4, valueBytes: 100, dir }, 'append-batch-10k'),
  },
  {
    name: 'append-one',
    usesRaw: true,
    run: (ctx, quick, dir) => benchAppendOne(ctx, { records: APPEND_SIZES[quick ? 'quick' : 'full'].oneRecords, window: 1000, valueBytes: 100, dir }),
  },
  {
    name: 'append-4k',
    usesRaw: true,
    run: (ctx, quick, dir) =>
      benchAppend4k(ctx, { records: APPEND_SIZES[quick ? 'quick' : 'full'].fourKBytes / 4096, batchSize: 256, inFlight: 8, valueBytes: 4096, dir }),
  },
  {
    name: 'append-latency',
    usesRaw: true,
    run: (ctx, quick, dir) => benchAppendLatency(ctx, { iterations: APPEND_SIZES[quick ? 'quick' : 'full'].latencyIterations, valueBytes: 100, dir }),
  },
  {
    name: 'read-seq',
    usesRaw: false,
    run: (ctx, quick, dir) => benchRead(ctx, { logBytes: READ_SIZES[quick ? 'quick' : 'full'].logBytes, valueBytes: 100, maxBytes: MiB, dir }),
  },
  {
    name: 'micro',
    usesRaw: false,
    run: (ctx, quick) => benchMicro(ctx, { ...MICRO_DEFAULTS, ...MICRO_SIZES[quick ? 'quick' : 'full'] }),
  },
  {
    name: 'broker-publish',
    usesRaw: true,
    run: (ctx, quick, dir) => {
      const s = BROKER_SIZES[quick ? 'quick' : 'full'];
      return benchBrokerPublish(ctx, { messages: s.publish, latencyIterations: s.latencyIterations, window: 1000, sizes: BODY_SIZES, dir });
    },
  },
  {
    name: 'broker-drain',
    usesRaw: true,
    run: (ctx, quick, dir) => benchBrokerDrain(ctx, { messages: BROKER_SIZES[quick ? 'quick' : 'full'].drain, sizes: BODY_SIZES, prefetch: 1000, dir }),
  },
  {
    name: 'broker-backlog',
    usesRaw: true,
    run: (ctx, quick, dir, o) => {
      const s = BROKER_SIZES[quick ? 'quick' : 'full'];
      return benchBrokerBacklog(ctx, { messages: o?.backlog ?? (o?.big === true ? s.backlogBig : s.backlog), bodyBytes: 100, sampleMs: 250, dir });
    },
  },
  {
    name: 'delay',
    usesRaw: true,
    run: (ctx, quick, dir) => benchDelay(ctx, { ...DELAY_SIZES[quick ? 'quick' : 'full'], dir }),
  },
  {
    name: 'remote',
    usesRaw: false,
    run: (ctx, quick, dir) => benchRemote(ctx, { ...REMOTE_SIZES[quick ? 'quick' : 'full'], window: 1000, bodyBytes: 100, dir }),
  },
  {
    name: 'idempotency',
    usesRaw: false,
    run: (ctx, quick, dir) => benchIdempotency(ctx, { ...IDEMPOTENCY_SIZES[quick ? 'quick' : 'full'], dir }),
  },
];

/** Group names accepted by --only besides scenario names. */
const GROUPS: Record<string, string[]> = {
  append: SCENARIOS.filter((s) => s.name.startsWith('append')).map((s) => s.name),
  read: ['read-seq'],
  broker: SCENARIOS.filter((s) => s.name.startsWith('broker')).map((s) => s.name),
  raw: [],
};

const USAGE = `usage: node dist/bench/run.js [--quick] [--big] [--only name,name] [--out dir] [--dir tmpdir] [--repeats n]
  --quick        smaller sizes, 3 repeats instead of 5
  --big          broker-backlog with 10,000,000 messages (default 1,000,000; 200,000 with --quick)
  --backlog n    broker-backlog with n messages (e.g. 30000000: does RSS level off past 10M?)
  --only         scenarios to run: ${SCENARIOS.map((s) => s.name).join(', ')}
                 or groups: ${Object.keys(GROUPS).join(', ')} (raw: only the raw limits)
  --out          results directory (default bench/results)
  --dir          parent directory for temp data (default os.tmpdir(); must be a real disk, not tmpfs)
  --repeats      runs per scenario (median reported)`;

export function parseArgs(argv: readonly string[]): CliOptions {
  const root = fileURLToPath(new URL('../../', import.meta.url));
  const o: CliOptions = { quick: false, big: false, only: null, outDir: path.join(root, 'bench', 'results'), tempBase: os.tmpdir(), repeats: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
      return v;
    };
    switch (flag) {
      case '--quick':
        o.quick = true;
        break;
      case '--big':
        o.big = true;
        break;
      case '--backlog': {
        const n = Number(value().replace(/_/g, ''));
        if (!Number.isSafeInteger(n) || n < 1000) throw new Error(`--backlog must be an integer >= 1,000\n${USAGE}`);
        o.backlog = n;
        break;
      }
      case '--only':
        o.only = value()
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
        break;
      case '--out':
        o.outDir = path.resolve(value());
        break;
      case '--dir':
        o.tempBase = path.resolve(value());
        break;
      case '--repeats': {
        const n = Number(value());
        if (!Number.isInteger(n) || n < 1) throw new Error(`--repeats must be a positive integer\n${USAGE}`);
        o.repeats = n;
        break;
      }
      case '--help':
      case '-h':
        out(USAGE);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument ${a}\n${USAGE}`);
    }
  }
  if (o.repeats === 0) o.repeats = o.quick ? 3 : 5;
  return o;
}

/** The selected scenario names, and whether the raw limits are to be measured. */
export function selectScenarios(only: readonly string[] | null): { names: string[]; raw: boolean } {
  if (only === null) return { names: SCENARIOS.map((s) => s.name), raw: true };
  const names = new Set<string>();
  let raw = false;
  for (const n of only) {
    if (n === 'raw') raw = true;
    const group = GROUPS[n];
    if (group !== undefined) for (const g of group) names.add(g);
    else if (SCENARIOS.some((s) => s.name === n)) names.add(n);
    else throw new Error(`unknown scenario ${n}\n${USAGE}`);
  }
  const ordered = SCENARIOS.map((s) => s.name).filter((n) => names.has(n));
  if (ordered.some((n) => SCENARIOS.find((s) => s.name === n)?.usesRaw)) raw = true;
  return { names: ordered, raw };
}

function rawRows(raw: RawLimits): SummaryRow[] {
  return [
    { scenario: 'raw', metric: 'write 100 B + fdatasync', value: raw.fsyncCallsPerSec, unit: 'calls/s', ratios: `median ${fmt(raw.fsyncMedianUs)} us, p99 ${fmt(raw.fsyncP99Us)} us` },
    { scenario: 'raw', metric: 'sequential write (1 MiB)', value: raw.seqWriteMBps, unit: 'MB/s', ratios: `incl. final fdatasync (${fmt(raw.seqWriteFsyncSeconds)} s)` },
    { scenario: 'raw', metric: 'seq write, fsync per 8 MiB', value: raw.seqWriteSyncedMBps, unit: 'MB/s', ratios: 'reference: one-flush-at-a-time ceiling' },
  ];
}

export async function main(argv: readonly string[]): Promise<number> {
  const opts = parseArgs(argv);
  const { names, raw: wantRaw } = selectScenarios(opts.only);
  installSignalCleanup();
  const started = new Date();
  const machine = machineInfo(opts.tempBase);
  const root = fileURLToPath(new URL('../../', import.meta.url));
  const source = sourceFingerprint(path.join(root, 'src', 'log'), path.join(root, 'dist', 'src', 'log'));
  const brokerSource = sourceFingerprint(path.join(root, 'src', 'broker'), path.join(root, 'dist', 'src', 'broker'));
  out(`Spool benchmarks (${opts.quick ? 'quick' : 'full'}${opts.big ? ', big backlog' : ''}), ${started.toISOString()}`);
  out(
    `node ${machine.node} on ${machine.platform}/${machine.arch} ${machine.kernel}, ${machine.cpus} x ${machine.cpuModel}, ${machine.memoryGiB} GiB RAM; ` +
      `temp data in ${machine.tempDir} (${machine.tempDirFs})`,
  );
  out(`code under test: src/log fingerprint ${source.hash} (${source.files} files, newest ${source.newest} at ${source.newestMtime})`);
  out(`                src/broker fingerprint ${brokerSource.hash} (${brokerSource.files} files, newest ${brokerSource.newest} at ${brokerSource.newestMtime})`);
  if (source.staleDist.length > 0) out(`WARNING: dist/ is older than src/log/${source.staleDist.join(', ')}: run npm run build (npm run bench does)`);
  if (brokerSource.staleDist.length > 0) out(`WARNING: dist/ is older than src/broker/${brokerSource.staleDist.join(', ')}: run npm run build (npm run bench does)`);
  out(`each scenario runs ${opts.repeats} times; figures are medians; MB = 10^6 bytes`);
  const load1 = machine.loadAverage[0] as number;
  out(`load average at start: ${machine.loadAverage.map((l) => l.toFixed(2)).join(' ')}${load1 > machine.cpus * 0.5 ? `  WARNING: other processes are busy on ${machine.cpus} CPUs; figures will be noisy` : ''}`);
  out();
  if (machine.tempDirFs === 'tmpfs' || machine.tempDirFs === 'ramfs') {
    out(`WARNING: ${machine.tempDir} is ${machine.tempDirFs}: fdatasync is a no-op there, durable figures mean nothing. Use --dir on a real disk.`);
    out();
  }

  let raw: RawLimits | null = null;
  if (wantRaw) {
    const sizes = RAW_DEFAULTS[opts.quick ? 'quick' : 'full'];
    progress(`raw limits: ${sizes.fsyncIterations} x (write 100 B + fdatasync), ${fmt(sizes.seqWriteBytes / MiB)} MiB sequential write, ${opts.repeats} repeats`);
    raw = await measureRawLimits({ repeats: opts.repeats, ...sizes, dir: opts.tempBase });
    out('== raw limits of this machine (node:fs callback API, same run)');
    out(
      table(
        ['limit', 'median', 'unit'],
        [
          ['write 100 B + fdatasync, one at a time', fmt(raw.fsyncCallsPerSec), 'calls/s'],
          ['  latency of one write + fdatasync', fmt(raw.fsyncMedianUs), 'us (median)'],
          ['  p99', fmt(raw.fsyncP99Us), 'us'],
          [`sequential write, 1 MiB writes, ${fmt(sizes.seqWriteBytes / MiB)} MiB + one fdatasync`, fmt(raw.seqWriteMBps), 'MB/s'],
          ['  of which the final fdatasync', fmt(raw.seqWriteFsyncSeconds), 's'],
          ['  same, but fdatasync every 8 MiB (reference only)', fmt(raw.seqWriteSyncedMBps), 'MB/s'],
        ],
        ['left', 'right', 'left'],
      ),
    );
    out();
  }

  const ctx: ScenarioContext = { repeats: opts.repeats, raw };
  const reports: ScenarioReport[] = [];
  const failures: { name: string; error: string }[] = [];
  for (const name of names) {
    const scenario = SCENARIOS.find((s) => s.name === name) as Scenario;
    progress(`scenario ${name}`);
    try {
      const report = await scenario.run(ctx, opts.quick, opts.tempBase, { big: opts.big, ...(opts.backlog === undefined ? {} : { backlog: opts.backlog }) });
      report.loadAfter = os.loadavg()[0] as number;
      reports.push(report);
      printScenario(report);
    } catch (err) {
      const error = err instanceof Error ? (err.stack ?? err.message) : String(err);
      failures.push({ name, error });
      out(`== ${name}: FAILED\n${error}\n`);
    }
  }

  const rows = [...(raw !== null ? rawRows(raw) : []), ...reports.flatMap((r) => r.rows)];
  out('== summary (medians; targets are judged, never enforced)');
  out(summaryTable(rows));
  const judged = rows.filter((r) => r.target !== undefined);
  const misses = judged.filter((r) => verdict(r) === 'MISS');
  out();
  out(`${judged.length - misses.length}/${judged.length} targets met${misses.length > 0 ? `; missed: ${misses.map((r) => `${r.scenario} ${r.metric}`).join(', ')}` : ''}`);
  for (const f of failures) out(`scenario ${f.name} failed (see above)`);

  const file = writeResults(
    opts.outDir,
    {
      startedAt: started.toISOString(),
      finishedAt: new Date().toISOString(),
      mode: opts.quick ? 'quick' : 'full',
      big: opts.big,
      ...(opts.backlog === undefined ? {} : { backlog: opts.backlog }),
      repeats: opts.repeats,
      machine,
      source,
      brokerSource,
      targets: { ...TARGETS, broker: BROKER_TARGETS, delay: DELAY_TARGETS },
      raw,
      scenarios: reports,
      summary: rows.map((r) => ({ ...r, verdict: verdict(r) })),
      failures,
    },
    started,
  );
  out(`results: ${file} (and latest.json)`);
  const chart = renderChart(
    suiteChartData(
      `Spool benchmarks, ${started.toISOString().slice(0, 10)} (${opts.quick ? 'quick' : 'full'}${opts.big ? ', big backlog' : ''})`,
      `${machine.cpus} x ${machine.cpuModel}, ${machine.memoryGiB} GiB, ${machine.tempDirFs}; node ${machine.node}; medians of ${opts.repeats}` +
        (raw !== null ? `; raw: ${fmt(raw.fsyncCallsPerSec)} fdatasync/s (median ${fmt(raw.fsyncMedianUs)} us), ${fmt(raw.seqWriteMBps)} MB/s sequential write` : ''),
      rows,
      reports.flatMap((r) => r.series ?? []),
      raw?.fsyncMedianUs,
    ),
  );
  const docsChart = opts.only === null ? path.join(root, 'docs', 'benchmarks.svg') : undefined;
  const charts = writeChart(opts.outDir, chart, started, '', docsChart);
  out(`chart: ${charts.join(', ')}`);
  return failures.length > 0 ? 1 : 0;
}

// Run when executed directly (not when imported by a test).
if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 2;
    },
  );
}
