// Proves a SIGKILLed broker loses no confirmed message, never redelivers a durably acked one, never corrupts or invents one, and hands its lock on: 24 children (publisher + groups g1 manual / g2 auto ack on one reused data dir) are SIGKILLed at random 20–400 ms, a last one drains and another re-opens, all checked against the children's stdout reports; plus one child killed just after retention deleted segments.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { assertDistFreshFor } from '../support/dist-fresh.js';
import { seededRandom } from '../support/faulty-storage.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(here, '..', '..');
const PRODUCER = path.join(REPO_ROOT, 'test', 'support', 'crash-producer.mjs');
const CONSUMER = path.join(REPO_ROOT, 'test', 'support', 'crash-consumer.mjs');

const CYCLES = Number(process.env.SPOOL_CRASH_CYCLES ?? 24);
const SEED = Number(process.env.SPOOL_CRASH_SEED ?? Math.floor(Math.random() * 0x7fffffff));
const OUTSTANDING = 100;
const MAX_PUBLISHES_PER_CYCLE = 4000;
/** Small segments, so kills also land in segment rolls and recovery spans many segments. */
const SEGMENT_BYTES = 256 * 1024;
const GROUPS = ['g1', 'g2'] as const;
type Group = (typeof GROUPS)[number];

/** The children run the compiled library: fail clearly when it is missing or older than src/. */
function assertDistFresh(): void {
  assertDistFreshFor(['src/broker', 'src/log'], "the crash test's children");
}


// ---- child processes: every live one is tracked so hooks can SIGKILL it by pid.
const live = new Set<ChildProcess>();

function killAllChildren(): void {
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

/**
 * How a child must end: SIGKILLed by us `delayMs` after spawn or after it reports the broker
 * open; 'self': it SIGKILLs itself; 'exit': it exits 0 on its own.
 */
type EndPlan = { from: 'spawn' | 'open'; delayMs: number } | 'self' | 'exit';

interface ChildRun {
  pid: number;
  /** The `O` line: the broker was open and the LOCK file named `lockPid`. */
  opened: { lockPid: number } | null;
  killedByUs: boolean;
  /** Set when the child misbehaved (ended the wrong way, wrote stderr, timed out, bad line). */
  error: string | null;
}

function describePlan(plan: EndPlan): string {
  return typeof plan === 'string' ? plan : `kill ${plan.delayMs} ms after ${plan.from}`;
}

function runChild(script: string, cfg: object, plan: EndPlan, timeoutMs: number, onLine: (line: string) => string | null): Promise<ChildRun> {
  const env = { ...process.env };
  delete env.NODE_OPTIONS; // whatever vitest put there is not for the child
  const proc = spawn(process.execPath, [script, JSON.stringify(cfg)], { stdio: ['ignore', 'pipe', 'pipe'], env });
  live.add(proc);
  const run: ChildRun = { pid: proc.pid ?? -1, opened: null, killedByUs: false, error: null };
  let killTimer: NodeJS.Timeout | null = null;
  let partial = '';
  let stderr = '';

  const kill = () => {
    if (run.killedByUs) return;
    run.killedByUs = true;
    if (killTimer !== null) clearTimeout(killTimer);
    try {
      proc.kill('SIGKILL');
    } catch {
      // it exited on its own; 'close' reports that
    }
  };
  const fail = (msg: string) => {
    if (run.error === null) run.error = msg;
    kill();
  };
  const armKill = (from: 'spawn' | 'open') => {
    if (typeof plan === 'object' && plan.from === from && killTimer === null && !run.killedByUs) killTimer = setTimeout(kill, plan.delayMs);
  };
  armKill('spawn');
  const watchdog = setTimeout(() => fail(`child pid ${run.pid} still running after ${timeoutMs} ms (broker opened: ${run.opened !== null})`), timeoutMs);

  const handle = (line: string) => {
    if (line.startsWith('O ')) {
      const [, pid, lockPid] = line.split(' ').map(Number);
      run.opened = { lockPid: lockPid ?? -1 };
      if (pid !== run.pid) fail(`child reported pid ${pid}, spawned as ${run.pid}`);
      armKill('open');
    }
    const err = onLine(line);
    if (err !== null) fail(err);
  };

  proc.stdout!.setEncoding('utf8');
  proc.stdout!.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? ''; // a line cut by the kill was never fully reported: ignore it
    for (const line of lines) if (line.length > 0) handle(line);
  });
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (chunk: string) => {
    stderr += chunk;
  });

  return new Promise((resolve) => {
    proc.on('error', (err) => fail(`child failed to spawn: ${err.message}`));
    // 'close' comes after the pipes drained (every line written before death was seen) and after
    // the process was reaped, so its pid is dead when the next child starts.
    proc.on('close', (code, signal) => {
      clearTimeout(watchdog);
      if (killTimer !== null) clearTimeout(killTimer);
      live.delete(proc);
      const how = `child pid ${run.pid} (${describePlan(plan)}) ended with code ${code}, signal ${signal}`;
      const tail = stderr.length > 0 ? `:\n${stderr.slice(0, 4000)}` : '';
      const rightEnd =
        typeof plan === 'object' ? run.killedByUs && signal === 'SIGKILL' : plan === 'self' ? !run.killedByUs && signal === 'SIGKILL' : code === 0;
      if (!rightEnd) run.error ??= `${how}${tail}`;
      else if (stderr.length > 0) run.error ??= `child pid ${run.pid} wrote to stderr${tail}`;
      resolve(run);
    });
  });
}

// ---- the oracle: everything the children reported, and the invariants over it.
interface Stats {
  startOffset: number;
  endOffset: number;
  groups: Record<string, { committed: number; lag: number; inFlight: number } | undefined>;
}

class Oracle {
  /** Phase label of the lines being fed: 'cycle 7', 'drain', 'verify'. */
  phase = '';
  readonly intents = new Map<string, string>();
  readonly confirmed = new Map<string, string>();
  readonly delivered: Record<Group, Map<string, string>> = { g1: new Map(), g2: new Map() };
  readonly deliveries: Record<Group, number> = { g1: 0, g2: 0 };
  /** g1 ids whose msg.ack() resolved 'acked', with the phase it happened in. */
  readonly acked = new Map<string, string>();
  /** The id each delivered offset carried: a durable record never changes. */
  readonly offsets = new Map<number, string>();
  readonly violations: string[] = [];
  firstViolationPhase: string | null = null;
  /** The segment files retention had deleted when a 'retention' child killed itself. */
  retentionDeleted: string[] | null = null;
  /** Set for the stalled-acks case, where retention must delete nothing. */
  expectNoTrim = false;
  /** Queue stats when the drain child was done, and when the verify child had watched. */
  drained: Stats | null = null;
  verified: Stats | null = null;

  violate(text: string): void {
    this.firstViolationPhase ??= this.phase;
    this.violations.push(`${this.phase}: ${text}`);
  }

  /** Feeds one stdout line; returns a protocol error (the child is then killed) or null. */
  line(line: string): string | null {
    const parts = line.split(' ');
    switch (parts[0]) {
      case 'O':
        return parts.length === 6 ? null : `bad line ${JSON.stringify(line)}`;
      case 'I':
        for (const id of parts.slice(1)) {
          if (this.intents.has(id)) return `id ${id} published twice (first in ${this.intents.get(id)})`;
          this.intents.set(id, this.phase);
        }
        return null;
      case 'P': {
        const id = parts[1] ?? '';
        if (!this.intents.has(id)) return `confirmation of ${id} without its intent line`;
        this.confirmed.set(id, this.phase);
        return null;
      }
      case 'D': {
        const [, g, id = '', offsetText, countText, ok] = parts;
        if ((g !== 'g1' && g !== 'g2') || ok !== 'ok') return `bad line ${JSON.stringify(line)}`;
        const offset = Number(offsetText);
        this.deliveries[g]++;
        if (this.phase === 'verify') {
          this.violate(`${g} got ${id} (offset ${offset}, deliveryCount ${countText}) after a clean drain and close`);
        }
        // (4) nothing is delivered that was never published.
        if (!this.intents.has(id)) this.violate(`${g} got ${id} at offset ${offset}, an id that was never published`);
        // (2) an ack that resolved is durable: g1 never sees that message again.
        const ackedIn = this.acked.get(id);
        if (g === 'g1' && ackedIn !== undefined) {
          this.violate(`g1 got ${id} again (offset ${offset}, deliveryCount ${countText}) although its msg.ack() resolved 'acked' in ${ackedIn}`);
        }
        const was = this.offsets.get(offset);
        if (was === undefined) this.offsets.set(offset, id);
        else if (was !== id) this.violate(`${g} got ${id} at offset ${offset}, which earlier held ${was}: a durable record changed`);
        if (!this.delivered[g].has(id)) this.delivered[g].set(id, this.phase);
        return null;
      }
      case 'BAD':
        // (3) every delivered body is the one published under its id.
        this.violate(`corrupt delivery: ${line}`);
        return null;
      case 'A':
        if (parts[1] !== 'g1' || parts[2] === undefined) return `bad line ${JSON.stringify(line)}`;
        if (!this.acked.has(parts[2])) this.acked.set(parts[2], this.phase);
        return null;
      case 'X':
        this.violate(`msg.ack() of ${parts[2]} in ${parts[1]} resolved '${parts[3]}' instead of 'acked' (no lock timeout can have passed)`);
        return null;
      case 'E':
        this.violate(`the broker emitted 'error': ${line.slice(2)}`);
        return null;
      case 'K':
        this.retentionDeleted = (parts[1] ?? '').split(',');
        if (this.expectNoTrim) this.violate(`retention deleted ${parts[1]} while no group's ack was durable`);
        return null;
      case 'NOTRIM':
        if (this.expectNoTrim) return null;
        return 'retention never deleted a segment, so the kill this case needs never happened';
      case 'STAT':
        this.verified = JSON.parse(line.slice(5)) as Stats;
        return null;
      case 'DONE':
        if (this.phase === 'drain') this.drained = JSON.parse(line.slice(5)) as Stats;
        return null;
      default:
        return `unknown line ${JSON.stringify(line.slice(0, 200))}`;
    }
  }

  /** The invariants that need the whole run: call after the drain and the verify run. */
  finish(): void {
    this.phase = 'end of run';
    // (1) every confirmed message reached both groups at least once.
    for (const g of GROUPS) {
      const missing = [...this.confirmed].filter(([id]) => !this.delivered[g].has(id));
      for (const [id, phase] of missing.slice(0, 10)) this.violate(`${id}, confirmed in ${phase}, was never delivered to ${g}`);
      if (missing.length > 10) this.violate(`... and ${missing.length - 10} more confirmed messages never delivered to ${g}`);
    }
    const drained = this.drained;
    const verified = this.verified;
    if (drained === null || verified === null) {
      this.violate('the drain or the verify child did not report its queue stats');
      return;
    }
    // Every durable record, confirmed or not, reached each group: no offset was skipped.
    for (const g of GROUPS) {
      if (this.delivered[g].size !== drained.endOffset) {
        this.violate(`${g} saw ${this.delivered[g].size} distinct messages but the queue holds ${drained.endOffset} records`);
      }
    }
    if (this.offsets.size !== drained.endOffset) this.violate(`deliveries covered ${this.offsets.size} distinct offsets of ${drained.endOffset}`);
    // After a clean drain and close, a re-open finds every group done.
    for (const g of GROUPS) {
      const s = verified.groups[g];
      if (s !== undefined && s.committed === verified.endOffset && s.lag === 0) continue;
      const at = `re-opened after a clean drain, ${g} is at ${JSON.stringify(s)} with log start ${verified.startOffset}, end ${verified.endOffset}`;
      if (s !== undefined && s.committed < verified.startOffset) {
        this.violate(
          `${at}: its committed offset is below the log start, so it can never advance again ` +
            `(the records at ${s.committed}..${verified.startOffset - 1} were deleted without this group's durable ack): ` +
            `its lag stays ${s.lag} and retention of the queue is stuck for good`,
        );
      } else {
        this.violate(`${at}: expected committed = end and lag 0`);
      }
    }
  }
}

// ---- one run over one data dir: children in turn, lock hand-over checks, the final report.
const dataDirs: { dir: string; keep: boolean }[] = [];

class CrashRun {
  readonly dataDir: string;
  readonly oracle = new Oracle();
  readonly failures: string[] = [];
  readonly started = Date.now();
  takeovers = 0;
  private readonly pids: number[] = [];
  private prev: ChildRun | null = null;
  private readonly entry: { dir: string; keep: boolean };

  constructor() {
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-crash-'));
    this.entry = { dir: this.dataDir, keep: false };
    dataDirs.push(this.entry);
  }

  /** Runs one child over the data dir; its lines go to the oracle under `phase`. */
  async child(phase: string, script: string, cfg: object, plan: EndPlan, timeoutMs: number): Promise<ChildRun> {
    this.oracle.phase = phase;
    // The previous owner died holding the lock (SIGKILL cannot release it): it must still be
    // there, and the next owner must take it over.
    let stale: number | null = null;
    try {
      stale = (JSON.parse(fs.readFileSync(path.join(this.dataDir, 'LOCK'), 'utf8')) as { pid: number }).pid;
    } catch {
      stale = null;
    }
    const prev = this.prev;
    if (prev !== null && prev.opened !== null && prev.killedByUs && stale !== prev.pid) {
      this.oracle.violate(`the LOCK file names pid ${stale}, not the SIGKILLed owner ${prev.pid}`);
    }
    if (stale !== null && !this.pids.includes(stale)) this.oracle.violate(`the LOCK file names pid ${stale}, which is none of this run's children`);
    const run = await runChild(script, { ...cfg, dataDir: this.dataDir }, plan, timeoutMs, (line) => this.oracle.line(line));
    this.pids.push(run.pid);
    if (run.error !== null) this.failures.push(`${phase}: ${run.error}`);
    if (run.opened !== null) {
      if (run.opened.lockPid !== run.pid) this.oracle.violate(`after opening, the LOCK file names pid ${run.opened.lockPid}, not the owner ${run.pid}`);
      else if (stale !== null) this.takeovers++;
    }
    this.prev = run;
    return run;
  }

  /** A last child consumes everything and closes cleanly; another re-opens and must find nothing. */
  async drainAndVerify(options: object): Promise<void> {
    if (this.failures.length > 0) return;
    await this.child('drain', CONSUMER, { ...options, mode: 'drain', stallMs: 2000 }, 'exit', 40_000);
    if (this.failures.length > 0) return;
    if (fs.existsSync(path.join(this.dataDir, 'LOCK'))) this.oracle.violate('the drain child closed the broker but left its LOCK file behind');
    await this.child('verify', CONSUMER, { ...options, mode: 'verify', watchMs: 300 }, 'exit', 20_000);
    if (this.failures.length > 0) return;
    this.oracle.finish();
  }

  summary(what: string): string {
    const o = this.oracle;
    return (
      `${what} in ${Date.now() - this.started} ms: ${o.intents.size} publishes started, ${o.confirmed.size} confirmed, ` +
      `${o.deliveries.g1} g1 / ${o.deliveries.g2} g2 deliveries, ${o.acked.size} g1 acks, ${this.takeovers} lock takeovers`
    );
  }

  /** Fails the test with everything needed to understand and replay it; keeps the data dir then. */
  report(summary: string, replay: string): void {
    const o = this.oracle;
    if (this.failures.length === 0 && o.violations.length === 0) {
      console.log(summary);
      return;
    }
    this.entry.keep = true;
    const first = this.failures.length > 0 ? (this.failures[0] as string).split(':')[0] : o.firstViolationPhase;
    const lines = [
      `crash test failed, first in ${first}; data dir kept at ${this.dataDir}`,
      `replay: ${replay}`,
      summary,
      ...this.failures,
      ...o.violations.slice(0, 30),
      ...(o.violations.length > 30 ? [`... ${o.violations.length - 30} more violations`] : []),
    ];
    expect.fail(lines.join('\n'));
  }
}

describe('broker under SIGKILL', () => {
  afterEach(() => {
    killAllChildren();
  });

  afterAll(() => {
    killAllChildren();
    for (const d of dataDirs) if (!d.keep) fs.rmSync(d.dir, { recursive: true, force: true });
  });

  it(`keeps confirmed messages and durable acks across ${CYCLES} kills (seed ${SEED})`, async () => {
    assertDistFresh();
    const run = new CrashRun();
    const rand = seededRandom(SEED); // a failing run's kill schedule can be replayed from SEED
    let cycles = 0;
    let killedWhilePublishing = 0;
    for (let cycle = 0; cycle < CYCLES && run.failures.length === 0; cycle++) {
      const plan: EndPlan = { from: rand() < 0.25 ? 'spawn' : 'open', delayMs: 20 + Math.floor(rand() * 381) };
      const before = run.oracle.intents.size - run.oracle.confirmed.size;
      const cfg = { cycle, outstanding: OUTSTANDING, maxPublishes: MAX_PUBLISHES_PER_CYCLE, segmentBytesMax: SEGMENT_BYTES };
      await run.child(`cycle ${cycle} (${describePlan(plan)})`, PRODUCER, cfg, plan, 20_000);
      if (run.oracle.intents.size - run.oracle.confirmed.size > before) killedWhilePublishing++;
      cycles++;
    }
    await run.drainAndVerify({ segmentBytesMax: SEGMENT_BYTES });
    const summary = `${run.summary(`${cycles} cycles`)}, ${killedWhilePublishing} kills with publishes in flight (seed ${SEED})`;
    if (run.failures.length === 0 && (run.oracle.confirmed.size < 1000 || run.takeovers < CYCLES / 2 || killedWhilePublishing < CYCLES / 2)) {
      run.failures.push(`the run exercised too little to prove anything: ${summary}`);
    }
    run.report(summary, `SPOOL_CRASH_SEED=${SEED} npx vitest run test/broker/crash.test.ts (same kill schedule; timing still varies)`);
  }, 85_000);

  it('never lets retention run ahead of durable acks, even with ack writes stalled', async () => {
    // Once both groups are open the child's writes to the groups' state logs stall (acks apply in
    // memory, none is durable); retention must then delete nothing for 3 s, after which the child
    // SIGKILLs itself. Afterwards both groups drain to the end and every confirmed message reached both.
    assertDistFresh();
    const run = new CrashRun();
    run.oracle.expectNoTrim = true;
    const options = { segmentBytesMax: 64 * 1024 };
    const cfg = { ...options, mode: 'retention', stall: true, cycle: 0, outstanding: OUTSTANDING, maxPublishes: 6000 };
    await run.child('retention stalled', PRODUCER, cfg, 'self', 30_000);
    await run.drainAndVerify(options);
    run.report(run.summary('retention with stalled acks'), 'npx vitest run test/broker/crash.test.ts -t stalled');
  }, 60_000);

  it('leaves every group able to finish after a SIGKILL right behind retention', async () => {
    // Small segments so retention has whole segments to delete; the child SIGKILLs itself as soon
    // as retention has deleted segments and fsynced the directory, with acks still on their way to
    // disk. Afterwards both groups must still drain to the end (committed = endOffset, lag 0) and
    // every confirmed message must have reached both.
    assertDistFresh();
    const run = new CrashRun();
    const options = { segmentBytesMax: 64 * 1024 };
    const cfg = { ...options, mode: 'retention', cycle: 0, outstanding: OUTSTANDING, maxPublishes: 6000 };
    await run.child('retention kill', PRODUCER, cfg, 'self', 30_000);
    if (run.failures.length === 0 && run.oracle.retentionDeleted === null) run.failures.push('the retention child never reported the segments it deleted');
    await run.drainAndVerify(options);
    const deleted = run.oracle.retentionDeleted;
    const what = `retention case (killed after deleting ${deleted === null ? '?' : `${deleted.length} segments, ${deleted[0]}..${deleted[deleted.length - 1]}`})`;
    run.report(run.summary(what), 'npx vitest run test/broker/crash.test.ts -t retention');
  }, 60_000);
});
