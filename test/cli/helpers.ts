// Helpers for the CLI tests: a fake io for in-process runs, temp data dirs, and spawned `spool` processes killed by pid.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { CliIo } from '../../src/cli/io.js';
import { run } from '../../src/cli/main.js';
import { assertDistFreshFor } from '../support/dist-fresh.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..');
export const CLI = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

export interface FakeIo {
  io: CliIo;
  out(): string;
  err(): string;
  interrupt(): void;
}

export function fakeIo(options: { stdin?: string; env?: Record<string, string>; outIsTTY?: boolean; errTTY?: NodeJS.WriteStream } = {}): FakeIo {
  const out: string[] = [];
  const err: string[] = [];
  const handlers = new Set<(reason: string) => void>();
  const io: CliIo = {
    out: (t) => void out.push(t),
    err: (t) => void err.push(t),
    stdin: options.stdin === undefined ? undefined : Readable.from([options.stdin]),
    stdinIsTTY: false,
    outIsTTY: options.outIsTTY ?? false,
    errTTY: options.errTTY,
    env: options.env ?? {},
    onInterrupt(h) {
      handlers.add(h);
      return () => handlers.delete(h);
    },
    flush: () => Promise.resolve(),
  };
  return {
    io,
    out: () => out.join(''),
    err: () => err.join(''),
    interrupt: () => {
      for (const h of [...handlers]) h('SIGINT');
    },
  };
}

/** Runs the CLI in process; returns status and output. */
export async function cli(argv: string[], options: Parameters<typeof fakeIo>[0] = {}): Promise<{ code: number; out: string; err: string }> {
  const f = fakeIo(options);
  const code = await run(argv, f.io);
  return { code, out: f.out(), err: f.err() };
}

export function tempDir(tag = 'spool-cli-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), tag));
}

export async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000, state: () => string = () => ''): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${state() ? `; ${state()}` : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Throws a clear error when dist/ is missing or older than any source file the spawned CLI runs. */
export function assertCliBuilt(): void {
  assertDistFreshFor(['src'], 'the spawned CLI');
}

export interface Spawned {
  proc: ChildProcess;
  out(): string;
  err(): string;
  /** Resolves with the exit status (or the signal's name) once the process ended and its pipes drained. */
  exited: Promise<number | string>;
}

const live = new Set<ChildProcess>();

/** Spawns `node dist/src/cli/main.js ...args`. */
export function spool(args: string[], options: { cwd?: string; stdin?: string } = {}): Spawned {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
  delete env.NODE_OPTIONS; // vitest's, not for the child
  const proc = spawn(process.execPath, [CLI, ...args], { cwd: options.cwd ?? REPO_ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] });
  live.add(proc);
  let out = '';
  let err = '';
  proc.stdout!.setEncoding('utf8').on('data', (c: string) => (out += c));
  proc.stderr!.setEncoding('utf8').on('data', (c: string) => (err += c));
  if (options.stdin !== undefined) proc.stdin!.end(options.stdin);
  else proc.stdin!.end();
  const exited = new Promise<number | string>((resolve) => {
    proc.on('close', (code, signal) => {
      live.delete(proc);
      resolve(code ?? signal ?? -1);
    });
  });
  return { proc, out: () => out, err: () => err, exited };
}

/** SIGKILLs every spawned process still running, by pid (for afterEach). */
export function killSpawned(): void {
  for (const proc of live) {
    if (proc.pid !== undefined && proc.exitCode === null && proc.signalCode === null) {
      try {
        process.kill(proc.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  live.clear();
}
