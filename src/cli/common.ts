/** What every command shares: the --data/--broker/--json options, examples in --help, and argument parsing. */
import { type Command, InvalidArgumentError } from 'commander';
import { SpoolError } from '../errors.js';

export interface CommonOptions {
  /** The data directory (default ./data). */
  data: string;
  /** A server to use instead of discovering one: unix:///path/spool.sock or tcp://host:port?token=… */
  broker?: string;
  json?: boolean;
}

/** Adds an "Examples:" block to --help. */
export function examples(cmd: Command, lines: string[]): Command {
  return cmd.addHelpText('after', `\nExamples:\n${lines.map((e) => `  $ ${e}`).join('\n')}\n`);
}

/** Adds --data, --broker and --json, and an "Examples:" block to --help. Only on leaf commands (a parent would swallow them). */
export function common(cmd: Command, lines: string[]): Command {
  cmd
    .option('--data <dir>', 'data directory', './data')
    .option('--broker <url>', 'use the server at this URL (unix:///path/spool.sock, tcp://host:port?token=…) instead of finding one')
    .option('--json', 'print machine-readable JSON');
  return examples(cmd, lines);
}

/** commander argument parser: a non-negative integer. */
export function parseCount(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('expected a non-negative integer');
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError('number too large');
  return n;
}

/** commander argument parser: a positive integer. */
export function parsePositive(value: string): number {
  const n = parseCount(value);
  if (n === 0) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** commander argument parser: a duration in ms: `500`, `500ms`, `5s`, `2m`, `1h`, `1d`. */
export function parseDuration(value: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(value.trim());
  if (m === null) throw new InvalidArgumentError('expected a duration: 500 (ms), 500ms, 5s, 2m, 1h');
  const ms = Math.round(Number(m[1]) * (UNITS[m[2] ?? 'ms'] as number));
  if (!Number.isSafeInteger(ms)) throw new InvalidArgumentError('duration too large');
  return ms;
}

/** commander collector for repeatable options. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** `k=v` pairs (repeatable --header) to a header object; values stay strings. */
export function parseHeaders(pairs: string[] | undefined): Record<string, string> | undefined {
  if (pairs === undefined || pairs.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `--header ${JSON.stringify(p)} must look like name=value`);
    out[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return out;
}

export type FromOption = 'earliest' | 'latest' | number | Date;

/** `earliest`, `latest`, an offset, or an ISO time. */
export function parseFrom(value: string): FromOption {
  if (value === 'earliest' || value === 'latest') return value;
  if (/^\d+$/.test(value)) return parseCount(value);
  if (/^\d{4}-\d{2}-\d{2}/.test(value)) {
    const t = Date.parse(value);
    if (Number.isFinite(t)) return new Date(t);
  }
  throw new InvalidArgumentError('expected earliest, latest, an offset or an ISO time (2024-05-01T12:00:00Z)');
}

/** commander choice parser. */
export function oneOf<T extends string>(choices: readonly T[]): (value: string) => T {
  return (value: string) => {
    if (!(choices as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected one of ${choices.join(', ')}`);
    return value as T;
  };
}

/** A usage error found after parsing: printed like commander's own, exit status 2. */
export function usageError(cmd: Command, message: string): never {
  return cmd.error(`error: ${message}`, { exitCode: 2, code: 'spool.usage' });
}

/** The error for a broker method this broker does not have yet. */
export function notSupported(what: string): SpoolError {
  return new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${what} is not supported yet by this broker`);
}
