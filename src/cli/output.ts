/**
 * Printing: one `emit` for every command's result (JSON with --json, text for people), tables,
 * colors (only on a terminal, never with NO_COLOR) and progress bars (only on a terminal, on stderr).
 */
import cliProgress from 'cli-progress';
import type { CliIo } from './io.js';

/** Prints `data` as one JSON document (`--json`) or as `human(data)`. */
export function emit<T>(io: CliIo, json: boolean | undefined, data: T, human: (data: T) => string): void {
  if (json) io.out(`${JSON.stringify(data, null, 2)}\n`);
  else {
    const text = human(data);
    if (text.length > 0) io.out(text.endsWith('\n') ? text : `${text}\n`);
  }
}

/** One JSON value per line (streams: produce confirmations, consumed messages, tail records). */
export function jsonLine(value: unknown): string {
  return `${JSON.stringify(value)}\n`;
}

export function colorEnabled(io: CliIo, stream: 'out' | 'err' = 'out'): boolean {
  const env = io.env ?? {};
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  if (env.TERM === 'dumb') return false;
  return stream === 'out' ? io.outIsTTY === true : io.errTTY !== undefined;
}

export interface Paint {
  bold(s: string): string;
  dim(s: string): string;
  red(s: string): string;
  green(s: string): string;
  yellow(s: string): string;
}

const plain = (s: string) => s;
const sgr = (open: number, close: number) => (s: string) => `\u001b[${open}m${s}\u001b[${close}m`;

export function paint(io: CliIo, stream: 'out' | 'err' = 'out'): Paint {
  if (!colorEnabled(io, stream)) return { bold: plain, dim: plain, red: plain, green: plain, yellow: plain };
  return { bold: sgr(1, 22), dim: sgr(2, 22), red: sgr(31, 39), green: sgr(32, 39), yellow: sgr(33, 39) };
}

/** A left-aligned table with a header row; numbers are right-aligned. */
export function table(headers: string[], rows: (string | number)[][], p?: Paint): string {
  const cells = rows.map((r) => r.map((c) => String(c)));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)));
  const fmt = (r: string[], raw: (string | number)[] | null) =>
    r
      .map((c, i) => (raw !== null && typeof raw[i] === 'number' ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number)))
      .join('  ')
      .trimEnd();
  const head = fmt(headers, null);
  return [p ? p.bold(head) : head, ...cells.map((r, i) => fmt(r, rows[i] as (string | number)[]))].join('\n');
}

export interface Progress {
  /** Moves the bar forward by `n` (default 1). */
  increment(n?: number): void;
  setTotal(total: number): void;
  stop(): void;
}

export const noProgress: Progress = { increment() {}, setTotal() {}, stop() {} };

/**
 * A progress bar on stderr when stderr is a terminal; otherwise a no-op (pipes, files, CI, tests).
 * `total` 0 means unknown: the bar shows a count and rate only.
 */
export function progress(io: CliIo, label: string, total: number, unit = 'items'): Progress {
  const stream = io.errTTY;
  if (stream === undefined) return noProgress;
  const known = total > 0;
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: known ? `${label} [{bar}] {percentage}% {value}/{total} ${unit} {eta_formatted} left` : `${label} {value} ${unit} {duration_formatted}`,
      hideCursor: true,
      clearOnComplete: true,
      barsize: 30,
      fps: 10,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(known ? total : 1, 0);
  let stopped = false;
  return {
    increment: (n = 1) => {
      if (!stopped) bar.increment(n);
    },
    setTotal: (t) => {
      if (!stopped && t > 0) bar.setTotal(t);
    },
    stop: () => {
      if (stopped) return;
      stopped = true;
      bar.stop();
    },
  };
}
