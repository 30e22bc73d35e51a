// Runs test/support/kill-appender.mjs as a real child process for the SIGKILL crash test: parses
// its stdout side channel, SIGKILLs it on a plan, and tracks every live child so hooks can kill them.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { assertDistFreshFor } from './dist-fresh.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const APPENDER_SCRIPT = path.join(here, 'kill-appender.mjs');
export const REPO_ROOT = path.resolve(here, '..', '..');

/** Throws a clear error when the compiled library the child imports is missing or older than its sources. */
export function assertDistFresh(): void {
  assertDistFreshFor(['src/log'], "the SIGKILL test's child");
}

export interface AppenderConfig {
  dir: string;
  /** Names the child in record ids; unique per spawn. */
  tag: string;
  seed: number;
  tsBase: number;
  segmentBytesMax: number;
  /** Appends (appendOne or append) kept in flight. */
  outstanding: number;
  /** Percent of appends that are `append` of 2..batchMax records. */
  batchPercent: number;
  batchMax: number;
  /**
   * Freeze before the `at`-th storage call while opening or during the first roll; or (`write`)
   * write only a prefix of the `at`-th segment write after opening, then freeze: a torn write.
   */
  pause: { phase: 'open' | 'roll' | 'write'; at: number } | null;
}

export interface KillPlan {
  /** Kill this many ms after the child says it is about to open the log (0: at once). */
  afterOpenStartMs?: number;
  /** Kill this many ms after the first confirmation arrives (unless killed earlier). */
  afterFirstConfirmMs: number;
  /** Give up (kill, and report it) when nothing killed the child by then. */
  timeoutMs: number;
}

export type KillMoment = 'before-open' | 'during-open' | 'frozen' | 'after-open' | 'appending';

export interface ChildOutcome {
  tag: string;
  /** Confirmed records in the order they were reported: [offset, id]. */
  confirmed: [number, string][];
  opened: { start: number; end: number; openCalls: number } | null;
  frozenAt: { phase: string; at: number; call: string; file: string } | null;
  /** What the parent had seen when it sent SIGKILL. */
  killedAt: KillMoment | null;
  /** Set when the child ended or misbehaved on its own: the test must fail. */
  error: string | null;
  ms: number;
}

const live = new Set<ChildProcess>();
let stopped = false;

/** SIGKILLs every child still running (by pid), and with `stop` refuses later spawns; for afterEach/afterAll. */
export function killAllChildren(stop = false): void {
  if (stop) stopped = true;
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

/** Spawns the appender, SIGKILLs it per `plan` (or at once when it freezes), and resolves after it is gone. */
export function runAppender(cfg: AppenderConfig, plan: KillPlan): Promise<ChildOutcome> {
  if (stopped) {
    // A test that timed out keeps running in the background: it must not start new children.
    return Promise.resolve({ tag: cfg.tag, confirmed: [], opened: null, frozenAt: null, killedAt: null, error: 'children were stopped', ms: 0 });
  }
  const env = { ...process.env };
  delete env.NODE_OPTIONS; // whatever vitest put there is not for the child
  const started = Date.now();
  const proc = spawn(process.execPath, [APPENDER_SCRIPT, JSON.stringify(cfg)], { stdio: ['ignore', 'pipe', 'pipe'], env });
  live.add(proc);
  const outcome: ChildOutcome = { tag: cfg.tag, confirmed: [], opened: null, frozenAt: null, killedAt: null, error: null, ms: 0 };
  let sawOpenStart = false;
  let killTimer: NodeJS.Timeout | null = null;
  let stderr = '';
  let partial = '';

  const moment = (): KillMoment => {
    if (outcome.frozenAt !== null) return 'frozen';
    if (!sawOpenStart) return 'before-open';
    if (outcome.opened === null) return 'during-open';
    return outcome.confirmed.length === 0 ? 'after-open' : 'appending';
  };
  const kill = () => {
    if (outcome.killedAt !== null) return;
    outcome.killedAt = moment();
    if (killTimer !== null) clearTimeout(killTimer);
    killTimer = null;
    try {
      proc.kill('SIGKILL');
    } catch {
      // it exited on its own; 'exit' reports that
    }
  };
  const killAfter = (ms: number) => {
    if (outcome.killedAt !== null || killTimer !== null) return;
    if (ms <= 0) kill();
    else killTimer = setTimeout(kill, ms);
  };
  const fail = (msg: string) => {
    if (outcome.error === null) outcome.error = msg;
    kill();
  };
  const watchdog = setTimeout(() => fail(`child ${cfg.tag} was not killed within ${plan.timeoutMs} ms (seen: ${moment()})`), plan.timeoutMs);

  const onLine = (line: string) => {
    const parts = line.split(' ');
    switch (parts[0]) {
      case 'C': {
        const offset = Number(parts[1]);
        const id = parts[2];
        if (!Number.isSafeInteger(offset) || id === undefined) return fail(`child ${cfg.tag} sent a bad line: ${JSON.stringify(line)}`);
        outcome.confirmed.push([offset, id]);
        if (outcome.confirmed.length === 1) killAfter(plan.afterFirstConfirmMs);
        return;
      }
      case 'S':
        sawOpenStart = true;
        if (plan.afterOpenStartMs !== undefined) killAfter(plan.afterOpenStartMs);
        return;
      case 'O':
        outcome.opened = { start: Number(parts[1]), end: Number(parts[2]), openCalls: Number(parts[3]) };
        return;
      case 'P':
        outcome.frozenAt = { phase: parts[1] ?? '', at: Number(parts[2]), call: parts[3] ?? '', file: parts[4] ?? '' };
        kill();
        return;
      default:
        return fail(`child ${cfg.tag} sent an unknown line: ${JSON.stringify(line)}`);
    }
  };

  proc.stdout!.setEncoding('utf8');
  proc.stdout!.on('data', (chunk: string) => {
    const text = partial + chunk;
    const lines = text.split('\n');
    // Only complete lines count: a line cut by the kill was not received.
    partial = lines.pop() ?? '';
    for (const line of lines) if (line.length > 0) onLine(line);
  });
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (chunk: string) => {
    stderr += chunk;
  });

  return new Promise((resolve) => {
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(watchdog);
      if (killTimer !== null) clearTimeout(killTimer);
      live.delete(proc);
      outcome.ms = Date.now() - started;
      resolve(outcome);
    };
    proc.on('error', (err) => {
      fail(`child ${cfg.tag} failed: ${err.message}`);
      if (proc.pid === undefined) finish(); // never started, so no 'close' will come
    });
    // 'close' comes after the pipes drained, so every line the child wrote before dying was seen.
    proc.on('close', (code, signal) => {
      if (outcome.killedAt === null || signal !== 'SIGKILL') {
        const why = `child ${cfg.tag} ended on its own (code ${code}, signal ${signal})`;
        outcome.error = outcome.error ?? (stderr.length > 0 ? `${why}:\n${stderr}` : why);
      } else if (stderr.length > 0 && outcome.error === null) {
        outcome.error = `child ${cfg.tag} wrote to stderr:\n${stderr}`;
      }
      finish();
    });
  });
}
