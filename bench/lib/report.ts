/**
 * Shared plumbing of the benchmark suite: statistics, repetition, plain-text tables, targets,
 * progress lines, temp directories and the JSON results file.
 *
 * Conventions:
 * - Every scenario runs R times (default 5, 3 with --quick) and reports the MEDIAN of each metric;
 *   all runs are kept in the JSON output.
 * - MB means 10^6 bytes (MB/s as disk vendors and `dd` print it).
 * - Results and tables go to stdout; progress lines go to stderr.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const MB = 1_000_000;
export const MiB = 1024 * 1024;

// --- statistics ---

/** The median of `xs` (the mean of the two middle values for an even count); NaN when empty. */
export function median(xs: readonly number[]): number {
  return percentile(xs, 50);
}

/** The p-th percentile (0..100) of `xs` by linear interpolation between closest ranks; NaN when empty. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = (Math.min(Math.max(p, 0), 100) / 100) * (s.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  const a = s[lo] as number;
  const b = s[hi] as number;
  return a + (b - a) * (rank - lo);
}

export function mean(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  let sum = 0;
  for (const x of xs) sum += x;
  return sum / xs.length;
}

/** Seconds elapsed since `startNs` (a `process.hrtime.bigint()` value). */
export function secondsSince(startNs: bigint): number {
  return Number(process.hrtime.bigint() - startNs) / 1e9;
}

// --- repetition ---

/** One run of a scenario: named numeric metrics. */
export type Metrics = Record<string, number>;

export interface Repeated {
  /** The median of each metric over the runs. */
  median: Metrics;
  /** Every run's value of each metric, in run order. */
  runs: Record<string, number[]>;
  repeats: number;
}

/**
 * Runs `once` `repeats` times, one after the other, and returns each metric's median. A metric
 * missing from some run is reported over the runs that have it.
 */
export async function repeat(repeats: number, label: string, once: (run: number) => Promise<Metrics>): Promise<Repeated> {
  const runs: Record<string, number[]> = {};
  for (let i = 0; i < repeats; i++) {
    const m = await once(i);
    for (const [k, v] of Object.entries(m)) (runs[k] ??= []).push(v);
    progress(`${label}: run ${i + 1}/${repeats} ${headline(m)}`);
  }
  const med: Metrics = {};
  for (const [k, vs] of Object.entries(runs)) med[k] = median(vs);
  return { median: med, runs, repeats };
}

/** A short "key=value" digest of the first few metrics, for progress lines. */
function headline(m: Metrics): string {
  return Object.entries(m)
    .slice(0, 3)
    .map(([k, v]) => `${k}=${fmt(v)}`)
    .join(' ');
}

// --- output ---

/** A progress line on stderr (stdout carries only results). */
export function progress(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/** Prints a line of results on stdout. */
export function out(line = ''): void {
  process.stdout.write(`${line}\n`);
}

/** Formats a number for a table: thousands separators, about 3-4 significant digits. */
export function fmt(v: number | undefined, digits?: number): string {
  if (v === undefined || Number.isNaN(v)) return 'n/a';
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  const d = digits ?? (a >= 1000 ? 0 : a >= 100 ? 1 : a >= 10 ? 2 : a >= 1 ? 2 : 3);
  return v.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
}

export function fmtRatio(v: number | undefined): string {
  if (v === undefined || Number.isNaN(v)) return 'n/a';
  return `${v.toFixed(2)}x`;
}

export function fmtPct(v: number | undefined): string {
  if (v === undefined || Number.isNaN(v)) return 'n/a';
  return `${(v * 100).toFixed(0)}%`;
}

export type Align = 'left' | 'right';

/** Renders rows as a plain-text table with a header rule; numbers should be pre-formatted. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[], align?: readonly Align[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const cell = (s: string, i: number) => {
    const w = widths[i] as number;
    return (align?.[i] ?? (i === 0 ? 'left' : 'right')) === 'left' ? s.padEnd(w) : s.padStart(w);
  };
  const line = (r: readonly string[]) => headers.map((_, i) => cell(r[i] ?? '', i)).join('  ').trimEnd();
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

// --- targets and summary ---

export interface Target {
  /** `min`: the figure must be at least `value`; `max`: at most `value`. */
  kind: 'min' | 'max';
  value: number;
  /** How the target is phrased, e.g. ">= 1,500,000 rec/s" or "<= 1.3x raw". */
  text: string;
}

export type Verdict = 'PASS' | 'MISS' | '-';

/** One line of the final summary: a figure, optionally its target and its ratios to the raw limits. */
export interface SummaryRow {
  scenario: string;
  metric: string;
  value: number;
  unit: string;
  target?: Target;
  /** The figure the target is judged on, when it is not `value` (e.g. a ratio). */
  judged?: number;
  /** Free text: the ratios to the raw limits measured in this run. */
  ratios?: string;
  /** The figure could not be measured in this run (e.g. a peer or an API is missing): judged '-', not MISS. */
  unmeasured?: boolean;
}

export function verdict(row: SummaryRow): Verdict {
  const t = row.target;
  if (t === undefined || row.unmeasured === true) return '-';
  const v = row.judged ?? row.value;
  if (!Number.isFinite(v)) return 'MISS';
  return (t.kind === 'min' ? v >= t.value : v <= t.value) ? 'PASS' : 'MISS';
}

export function summaryTable(rows: readonly SummaryRow[]): string {
  return table(
    ['scenario', 'figure (median)', 'value', 'unit', 'target', 'result', 'vs raw limits (same run)'],
    rows.map((r) => [r.scenario, r.metric, fmt(r.value), r.unit, r.target?.text ?? '-', verdict(r), r.ratios ?? '']),
    ['left', 'left', 'right', 'left', 'left', 'left', 'left'],
  );
}

// --- temp directories ---

const liveTempDirs = new Set<string>();
let exitHookInstalled = false;

/**
 * Creates a fresh temp directory under `base` (default os.tmpdir()). It is removed by
 * `removeTempDir`, and also at process exit if a scenario dies midway (and on SIGINT/SIGTERM once
 * the CLI called `installSignalCleanup`).
 */
export function makeTempDir(prefix: string, base: string = os.tmpdir()): string {
  fs.mkdirSync(base, { recursive: true });
  const dir = fs.mkdtempSync(path.join(base, `spool-bench-${prefix}-`));
  liveTempDirs.add(dir);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', removeAllTempDirs);
  }
  return dir;
}

/** For the CLI only: on Ctrl-C or SIGTERM remove the live temp directories, then exit. */
export function installSignalCleanup(): void {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      removeAllTempDirs();
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  }
}

export function removeTempDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  liveTempDirs.delete(dir);
}

function removeAllTempDirs(): void {
  for (const d of liveTempDirs) {
    try {
      fs.rmSync(d, { recursive: true, force: true });
    } catch {
      // best effort at exit
    }
  }
  liveTempDirs.clear();
}

/** Runs `fn` with a fresh temp directory and always removes it afterwards. */
export async function withTempDir<T>(prefix: string, base: string | undefined, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = makeTempDir(prefix, base);
  try {
    return await fn(dir);
  } finally {
    removeTempDir(dir);
  }
}

// --- machine description and results file ---

export interface MachineInfo {
  node: string;
  platform: string;
  arch: string;
  kernel: string;
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  tempDir: string;
  /** Filesystem type of the temp dir from /proc/mounts (Linux), e.g. ext4; "tmpfs" makes fsync meaningless. */
  tempDirFs: string;
  /** 1, 5 and 15 minute load averages when the run started; other busy processes make figures noisy. */
  loadAverage: number[];
}

export function machineInfo(tempDir: string): MachineInfo {
  const cpus = os.cpus();
  return {
    node: process.version,
    platform: process.platform,
    arch: process.arch,
    kernel: os.release(),
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    tempDir,
    tempDirFs: filesystemOf(tempDir),
    loadAverage: os.loadavg().map((l) => Math.round(l * 100) / 100),
  };
}

/** The type of the filesystem holding `dir`, from the longest matching mount point in /proc/mounts. */
export function filesystemOf(dir: string): string {
  try {
    const real = fs.realpathSync(dir);
    let best = '';
    let type = 'unknown';
    for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n')) {
      const [, mnt, fsType] = line.split(' ');
      if (mnt === undefined || fsType === undefined) continue;
      const m = mnt.replace(/\\040/g, ' ');
      if ((real === m || real.startsWith(m.endsWith('/') ? m : `${m}/`)) && m.length > best.length) {
        best = m;
        type = fsType;
      }
    }
    return type;
  } catch {
    return 'unknown';
  }
}

/**
 * Identifies the code under test without git: a hash of the .ts files in `dir` (e.g. src/log) and
 * the most recently modified one, since the engine may change between two benchmark runs.
 */
export function sourceFingerprint(dir: string, distDir?: string): { hash: string; files: number; newest: string; newestMtime: string; staleDist: string[] } {
  const staleDist: string[] = [];
  const h = createHash('sha256');
  let newest = '';
  let newestMs = 0;
  const names = fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => n.endsWith('.ts')).sort() : [];
  for (const n of names) {
    const file = path.join(dir, n);
    h.update(n).update('\0').update(fs.readFileSync(file));
    const ms = fs.statSync(file).mtimeMs;
    if (distDir !== undefined) {
      const js = path.join(distDir, n.replace(/\.ts$/, '.js'));
      if (!fs.existsSync(js) || fs.statSync(js).mtimeMs < ms) staleDist.push(n);
    }
    if (ms > newestMs) {
      newestMs = ms;
      newest = n;
    }
  }
  return { hash: h.digest('hex').slice(0, 12), files: names.length, newest, newestMtime: new Date(newestMs).toISOString(), staleDist };
}

/** Writes `data` to `<dir>/<timestamp>.json` and `<dir>/latest.json`; returns the first path. */
export function writeResults(dir: string, data: unknown, when: Date = new Date()): string {
  fs.mkdirSync(dir, { recursive: true });
  const stamp = when.toISOString().replace(/[:.]/g, '-');
  const file = path.join(dir, `${stamp}.json`);
  const json = `${JSON.stringify(data, null, 2)}\n`;
  fs.writeFileSync(file, json);
  fs.writeFileSync(path.join(dir, 'latest.json'), json);
  return file;
}

// --- scenario reports ---

/** What every scenario returns: its parameters, the per-metric medians and runs, and its summary rows. */
export interface ScenarioReport {
  name: string;
  title: string;
  params: Record<string, unknown>;
  repeats: number;
  median: Metrics;
  runs: Record<string, number[]>;
  /** Metric key -> human label with unit; metrics listed here are printed, in this order. */
  labels: Record<string, string>;
  /** Lines of ratios to the raw limits, printed under the table. */
  ratios: string[];
  rows: SummaryRow[];
  /** 1-minute load average after the scenario (set by the CLI); > number of CPUs means contention. */
  loadAfter?: number;
  /** Values over time (e.g. RSS samples), drawn as lines by bench/chart.ts. */
  series?: Series[];
}

/** A line for the chart: points (x, y), optionally vertical marks (e.g. where a phase starts). */
export interface Series {
  name: string;
  xUnit: string;
  yUnit: string;
  points: [number, number][];
  marks?: { x: number; label: string }[];
  /** Horizontal reference lines, e.g. a target. */
  levels?: { y: number; label: string }[];
}

/** Prints one scenario's block: parameters, each metric's median/min/max over the runs, and ratios. */
export function printScenario(r: ScenarioReport): void {
  out(`== ${r.name}: ${r.title}`);
  out(`   params: ${Object.entries(r.params).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${typeof v === 'number' ? fmt(v, Number.isInteger(v) ? 0 : undefined) : typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join(', ')}; repeats=${r.repeats} (median reported)`);
  const rows = Object.entries(r.labels).map(([key, label]) => {
    const vs = r.runs[key] ?? [];
    return [label, fmt(r.median[key]), fmt(vs.length ? Math.min(...vs) : Number.NaN), fmt(vs.length ? Math.max(...vs) : Number.NaN)];
  });
  out(table(['metric', 'median', 'min', 'max'], rows));
  for (const line of r.ratios) out(`   ${line}`);
  if (r.loadAfter !== undefined) out(`   1-min load average after the scenario: ${r.loadAfter.toFixed(2)} (${os.cpus().length} CPUs)`);
  for (const row of r.rows) {
    if (row.target !== undefined) out(`   target ${row.metric}: ${row.target.text} -> ${verdict(row)}`);
  }
  out();
}

// --- timed-window marks (for profiling: bench/profile.ts keeps only samples inside them) ---

/** Timed windows of the scenarios, in process.hrtime microseconds (the clock V8's CPU profiles use). */
export const timedWindows: { label: string; startUs: number; endUs: number }[] = [];

/** Runs `fn` as a timed window: records its start and end so a profile can be cut to it. */
export async function timed<T>(label: string, fn: () => Promise<T>): Promise<T> {
  const startUs = Number(process.hrtime.bigint() / 1000n);
  try {
    return await fn();
  } finally {
    timedWindows.push({ label, startUs, endUs: Number(process.hrtime.bigint() / 1000n) });
  }
}
