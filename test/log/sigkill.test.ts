// Proves that an append confirmed before a real SIGKILL (mid-append, mid-roll, mid-recovery, after a torn write) survives at its offset with exact bytes, by killing child processes that append and report confirmations, then reopening and checking the whole log every cycle.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Log } from '../../src/log/index.js';
import type { LogRecord, RecoveryReport } from '../../src/log/index.js';
import { parseId, prng, recordFor } from '../support/kill-records.mjs';
import { assertDistFresh, killAllChildren, runAppender, type AppenderConfig, type ChildOutcome, type KillPlan } from '../support/kill-process.js';

const CYCLES = 32;
const SEGMENT_BYTES_MAX = 256 * 1024;
/** Retention after each check keeps the log (and so each full scan) small. */
const RETAIN_BYTES = 2 * 1024 * 1024;
const SEED = Number(process.env.SPOOL_SIGKILL_SEED ?? Math.floor(Math.random() * 2 ** 31));
const TS_BASE = Date.now() - 3_600_000;

let root = '';
let failed = false;

/** Everything found wrong in one check, reported together with how to reproduce it. */
class Problems {
  readonly list: string[] = [];
  add(msg: string): void {
    if (this.list.length < 25) this.list.push(msg);
  }
  get any(): boolean {
    return this.list.length > 0;
  }
}

interface Stats {
  spawns: number;
  confirmed: number;
  kills: Record<string, number>;
  frozen: Record<string, number>;
  recoveryCrashes: number;
  truncatedCycles: number;
  truncatedBytes: number;
  checkpointUsed: number;
  rebuiltIndexes: number;
  removedFiles: number;
  partialBatchTails: number;
  records: number;
  segmentsMax: number;
  childMs: number;
  checkMs: number;
}

function sameHeaders(got: Readonly<Record<string, Buffer>>, want: Record<string, string | Buffer> | undefined): boolean {
  const w = want ?? {};
  const gk = Object.keys(got).sort();
  const wk = Object.keys(w).sort();
  if (gk.join('\0') !== wk.join('\0')) return false;
  return wk.every((k) => {
    const v = w[k] as string | Buffer;
    return (got[k] as Buffer).equals(typeof v === 'string' ? Buffer.from(v) : v);
  });
}

/** Describes what is wrong with `r` as the record for its own key, or null. */
function recordProblem(r: LogRecord, now: number): string | null {
  if (r.key === null) return 'has no key';
  const id = r.key.toString();
  if (parseId(id) === null) return `has key ${JSON.stringify(id)}, which no child wrote`;
  const want = recordFor(id, TS_BASE);
  if (!r.value.equals(want.value)) return `${id}: value of ${r.value.length} bytes differs from the ${want.value.length} appended`;
  if (!sameHeaders(r.headers, want.headers)) return `${id}: headers ${JSON.stringify(Object.keys(r.headers))} differ`;
  if (want.timestamp !== undefined ? r.timestamp !== want.timestamp : r.timestamp < TS_BASE || r.timestamp > now + 60_000) {
    return `${id}: timestamp ${r.timestamp} is wrong (explicit: ${want.timestamp})`;
  }
  return null;
}

function describeOutcome(o: ChildOutcome): string {
  const offsets = o.confirmed.map(([off]) => off);
  const range = offsets.length === 0 ? 'none' : `${offsets.reduce((a, b) => Math.min(a, b))}..${offsets.reduce((a, b) => Math.max(a, b))}`;
  return `${o.tag} opened ${JSON.stringify(o.opened)}, confirmed ${offsets.length} (${range}), frozen ${JSON.stringify(o.frozenAt)}, killed ${o.killedAt} after ${o.ms} ms`;
}

/**
 * Keeps the crashed state for a failure report: copies the newest segment and every small file,
 * hard-links older segments (sealed, so recovery never writes them; cheaper than copying).
 */
function snapshotDir(from: string, to: string): void {
  fs.rmSync(to, { recursive: true, force: true });
  if (!fs.existsSync(from)) return; // killed before it created the directory
  fs.mkdirSync(to);
  const names = fs.readdirSync(from).sort();
  const newestLog = names.filter((n) => n.endsWith('.log')).pop();
  for (const n of names) {
    if (n.endsWith('.log') && n !== newestLog) fs.linkSync(path.join(from, n), path.join(to, n));
    else fs.copyFileSync(path.join(from, n), path.join(to, n));
  }
}

interface TagState {
  nextSeq: number;
  batch: { seq: number; index: number; count: number; firstOffset: number } | null;
}

/**
 * Reads the whole log from startOffset and checks: offsets dense up to endOffset; every record is
 * exactly what its id derives; every confirmed offset holds its id; each child's records are a
 * prefix of what it issued, in issue order (FIFO group commit), with at most its last batch cut.
 */
async function checkLog(log: Log, confirmed: Map<number, string>, cycleTags: Set<string>, problems: Problems, stats: Stats): Promise<void> {
  const start = log.startOffset;
  const end = log.endOffset;
  const now = Date.now();
  const tags = new Map<string, TagState>();
  const seen = new Set<string>();
  const confirmedOffsets = new Set<number>();
  const maxBytesChoices = [1, 4096, 65_536, 1024 * 1024];
  let next = start;
  let readIndex = 0;
  scan: while (next < end) {
    const maxBytes = maxBytesChoices[readIndex++ % maxBytesChoices.length] as number;
    const recs = await log.read(next, { maxBytes });
    if (recs.length === 0) {
      problems.add(`read(${next}) returned nothing though endOffset is ${end}`);
      break;
    }
    for (const r of recs) {
      if (r.offset !== next) {
        problems.add(`read returned offset ${r.offset} where ${next} was due: offsets are not dense`);
        break scan;
      }
      next++;
      const bad = recordProblem(r, now);
      if (bad !== null) {
        problems.add(`offset ${r.offset}: ${bad}`);
        continue;
      }
      const id = (r.key as Buffer).toString();
      const want = confirmed.get(r.offset);
      if (want !== undefined) {
        confirmedOffsets.add(r.offset);
        if (want !== id) problems.add(`offset ${r.offset}: confirmed as ${want} but holds ${id}`);
      }
      if (seen.has(id)) problems.add(`offset ${r.offset}: ${id} appears twice`);
      seen.add(id);
      const p = parseId(id)!;
      let st = tags.get(p.tag);
      if (st === undefined) {
        // A child's first record: seq 0 when the child ran this cycle; retention may have cut older ones.
        st = { nextSeq: cycleTags.has(p.tag) ? 0 : p.seq, batch: null };
        tags.set(p.tag, st);
      }
      if (st.batch !== null) {
        if (p.seq === st.batch.seq && p.batchIndex === st.batch.index + 1) {
          st.batch.index++;
          if (p.batchIndex === p.batchCount - 1) {
            st.batch = null;
            st.nextSeq = p.seq + 1;
          }
          continue;
        }
        problems.add(`offset ${r.offset}: ${id} follows ${st.batch.index + 1} of ${st.batch.count} records of ${p.tag}:${st.batch.seq}, whose append was cut short before later appends`);
        st.batch = null;
        st.nextSeq = p.seq;
      }
      if (p.seq !== st.nextSeq || p.batchIndex > 0) {
        problems.add(`offset ${r.offset}: ${id} where ${p.tag}:${st.nextSeq} was due: a child's appends are missing or out of order`);
      }
      if (p.batchIndex === 0 && p.batchCount > 1) st.batch = { seq: p.seq, index: 0, count: p.batchCount, firstOffset: r.offset };
      else st.nextSeq = p.seq + 1;
    }
  }
  if (next !== end && !problems.any) problems.add(`scan ended at ${next}, endOffset is ${end}`);
  if ((await log.read(end)).length !== 0) problems.add(`read(endOffset=${end}) returned records`);
  for (const [tag, st] of tags) {
    if (st.batch === null) continue;
    // Only the last append of a killed child may be cut, and never a confirmed one.
    stats.partialBatchTails++;
    const b = st.batch;
    for (let i = 0; i <= b.index; i++) {
      if (confirmed.has(b.firstOffset + i)) problems.add(`offset ${b.firstOffset + i}: confirmed append ${tag}:${b.seq} of ${b.count} records kept only ${b.index + 1}`);
    }
  }
  for (const [offset, id] of confirmed) {
    if (offset < start) continue;
    if (!confirmedOffsets.has(offset)) problems.add(`confirmed ${id} at offset ${offset} is missing (log holds ${start}..${end - 1})`);
  }

  // Point reads through the indexes, not only the sequential scan.
  const rand = prng(end ^ SEED);
  const offsets = [...confirmed.keys()].filter((o) => o >= start);
  for (let i = 0; i < Math.min(20, offsets.length); i++) {
    const o = offsets[rand() % offsets.length] as number;
    const got = await log.read(o, { maxRecords: 1 + (rand() % 3), maxBytes: 1 });
    const r = got[0];
    if (r === undefined || r.offset !== o || r.key?.toString() !== confirmed.get(o) || recordProblem(r, now) !== null) {
      problems.add(`read(${o}, maxRecords) returned ${r === undefined ? 'nothing' : `offset ${r.offset} key ${r.key?.toString()}`}, expected ${confirmed.get(o)}`);
    }
  }

  const v = await log.verify();
  if (!v.ok) problems.add(`verify() failed: ${JSON.stringify({ badRanges: v.badRanges, badIndexes: v.badIndexes })}`);
  if (v.records !== end - start) problems.add(`verify() counted ${v.records} records, the log holds ${end - start}`);
  stats.records = end - start;
}

describe('log survives SIGKILL of a real appending process', () => {
  beforeAll(() => {
    assertDistFresh();
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-sigkill-'));
  });

  afterEach(() => {
    killAllChildren(true);
  });

  afterAll(() => {
    killAllChildren(true);
    if (root !== '' && !failed) fs.rmSync(root, { recursive: true, force: true });
  });

  it(`keeps every confirmed append, dense and verified, across ${CYCLES} kill cycles`, async () => {
    try {
      await killCycles();
    } catch (err) {
      failed = true; // keep the directory for inspection
      throw err;
    }
  });
});

async function killCycles(): Promise<void> {
  const t0 = Date.now();
  const dir = path.join(root, 'log');
  const snapshot = path.join(root, 'crashed-state');
  const rand = prng(SEED);
  const between = (lo: number, hi: number) => lo + (rand() % (hi - lo + 1));
  const stats: Stats = {
    spawns: 0,
    confirmed: 0,
    kills: {},
    frozen: {},
    recoveryCrashes: 0,
    truncatedCycles: 0,
    truncatedBytes: 0,
    checkpointUsed: 0,
    rebuiltIndexes: 0,
    removedFiles: 0,
    partialBatchTails: 0,
    records: 0,
    segmentsMax: 0,
    childMs: 0,
    checkMs: 0,
  };
  /** offset -> id of every confirmed append still retained. */
  const confirmed = new Map<number, string>();
  let expected = { start: 0, end: 0 };
  let maxConfirmed = -1;
  let openCallsAfterCrash = 24;
  const repro = (cycle: number) =>
    `cycle ${cycle}, seed ${SEED} (rerun: SPOOL_SIGKILL_SEED=${SEED} npx vitest run test/log/sigkill.test.ts; timing varies). Log: ${dir}; the crashed state the last recovery started from: ${snapshot}`;

  const spawnChild = async (cycle: number, spawnNo: number, pause: AppenderConfig['pause'], plan: KillPlan, problems: Problems): Promise<ChildOutcome> => {
    const cfg: AppenderConfig = {
      dir,
      tag: `c${cycle}s${spawnNo}`,
      seed: rand(),
      tsBase: TS_BASE,
      segmentBytesMax: SEGMENT_BYTES_MAX,
      // Mostly 50..200 appends in flight; sometimes a few, so small flushes die before any roll.
      outstanding: rand() % 4 === 0 ? between(1, 8) : between(50, 200),
      batchPercent: between(3, 15),
      batchMax: between(2, 60),
      pause,
    };
    const out = await runAppender(cfg, plan);
    stats.spawns++;
    stats.childMs += out.ms;
    if (out.error !== null) problems.add(out.error);
    stats.kills[out.killedAt ?? 'none'] = (stats.kills[out.killedAt ?? 'none'] ?? 0) + 1;
    if (out.frozenAt !== null) {
      const k = `${out.frozenAt.phase}:${out.frozenAt.call}`;
      stats.frozen[k] = (stats.frozen[k] ?? 0) + 1;
    }
    for (const [offset, id] of out.confirmed) {
      const prior = confirmed.get(offset);
      if (prior !== undefined && prior !== id) problems.add(`offset ${offset} was confirmed to ${prior} and later to ${id} (${cfg.tag}): a confirmed record was lost`);
      confirmed.set(offset, id);
      if (offset > maxConfirmed) maxConfirmed = offset;
    }
    stats.confirmed += out.confirmed.length;
    return out;
  };

  for (let cycle = 0; cycle < CYCLES; cycle++) {
    const problems = new Problems();
    const cycleTags = new Set<string>();
    // 1. An appender on the log the parent closed cleanly: killed while appending, frozen
    //    mid-roll, frozen after tearing a segment write, or killed right as it opens.
    const mode = rand() % 10;
    const pause: AppenderConfig['pause'] =
      mode >= 2 && mode < 5 ? { phase: 'roll', at: between(1, 26) } : mode >= 5 && mode < 7 ? { phase: 'write', at: between(1, 40) } : null;
    const plan: KillPlan = { afterFirstConfirmMs: between(20, 300), timeoutMs: 10_000 };
    if (mode < 2) plan.afterOpenStartMs = between(0, 2);
    const first = await spawnChild(cycle, 0, pause, plan, problems);
    cycleTags.add(first.tag);
    if (first.opened !== null && (first.opened.start !== expected.start || first.opened.end !== expected.end)) {
      problems.add(`the child opened a cleanly closed log as ${first.opened.start}..${first.opened.end}, the parent closed it as ${expected.start}..${expected.end}`);
    }
    // 2. Sometimes recover the crashed log in another child and kill that one mid-recovery
    //    (frozen before a random storage call of Log.open), once or twice.
    for (let n = 1; n <= 2 && rand() % 10 < (n === 1 ? 4 : 3); n++) {
      const mustKeep = maxConfirmed;
      snapshotDir(dir, snapshot);
      const rec = await spawnChild(cycle, n, { phase: 'open', at: between(1, openCallsAfterCrash) }, { afterFirstConfirmMs: between(20, 150), timeoutMs: 10_000 }, problems);
      cycleTags.add(rec.tag);
      if (rec.frozenAt !== null) stats.recoveryCrashes++;
      if (rec.opened !== null) {
        openCallsAfterCrash = Math.max(openCallsAfterCrash, rec.opened.openCalls);
        if (rec.opened.end <= mustKeep) {
          problems.add(`${rec.tag} recovered the crashed log to end ${rec.opened.end}, not past confirmed offset ${mustKeep}; before it ${describeOutcome(first)}`);
        }
      }
    }
    expect(problems.list, repro(cycle)).toEqual([]);

    // 3. The parent recovers and checks everything.
    const checkStart = Date.now();
    snapshotDir(dir, snapshot);
    let opened: { log: Log; recovery: RecoveryReport };
    try {
      opened = await Log.open(dir, { segmentBytesMax: SEGMENT_BYTES_MAX });
    } catch (err) {
      throw new Error(`Log.open after the crash failed: ${(err as Error).stack}\n${repro(cycle)}`);
    }
    const { log, recovery } = opened;
    try {
      if (recovery.truncatedBytes > 0) stats.truncatedCycles++;
      stats.truncatedBytes += recovery.truncatedBytes;
      if (recovery.checkpointUsed) stats.checkpointUsed++;
      stats.rebuiltIndexes += recovery.rebuiltIndexes.length;
      stats.removedFiles += recovery.removedFiles.length;
      stats.segmentsMax = Math.max(stats.segmentsMax, log.stats().segments);
      if (log.startOffset !== expected.start) problems.add(`startOffset is ${log.startOffset} after the crash, was ${expected.start}`);
      if (log.endOffset < expected.end) problems.add(`endOffset ${log.endOffset} is below the ${expected.end} the parent closed the log with`);
      try {
        await checkLog(log, confirmed, cycleTags, problems, stats);
      } catch (err) {
        problems.add(`checking the log threw: ${(err as Error).stack}`);
      }
      if (problems.any) problems.add(`recovery: ${JSON.stringify(recovery)}`);
      expect(problems.list, repro(cycle)).toEqual([]);
      // Retention, so the next full scan stays small; deleted offsets drop out of `confirmed`.
      await log.deleteToSize(RETAIN_BYTES);
      for (const o of confirmed.keys()) if (o < log.startOffset) confirmed.delete(o);
      expected = { start: log.startOffset, end: log.endOffset };
    } finally {
      await log.close();
    }
    stats.checkMs += Date.now() - checkStart;
  }
  const seconds = (Date.now() - t0) / 1000;
  console.log(`sigkill: seed ${SEED}, ${CYCLES} cycles in ${seconds.toFixed(1)} s: ${JSON.stringify(stats)}`);
  expect(stats.confirmed).toBeGreaterThan(CYCLES * 100);
  expect(stats.kills.appending ?? 0).toBeGreaterThan(CYCLES / 4);
}
