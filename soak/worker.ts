/**
 * The soak's 'workers': a manual-ack handler that acks, requeues (1 in 12) or rejects (1 in 40)
 * each delivery, and writes what it does to a journal before and after each settle. The workers
 * run in child processes that are SIGKILLed too, so the journal is a file written synchronously:
 * a line written before a settle is on disk before the settle is sent, whatever kills the
 * process next. The soak merges every journal by time at the end (`readJournals`).
 *
 * Journal lines: `<ms since the epoch, fractional> <kind> <n> [<delivery count> | <problem>]`
 *   D  delivered (with its delivery count)    A  about to ack       K  the ack resolved 'acked'
 *   Q  about to requeue                        J  about to reject    X  a problem with the message
 */
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { RemoteMessage } from '../src/client/index.js';
import { numberOf, problemWith, random } from './messages.js';

export type JournalKind = 'D' | 'A' | 'K' | 'Q' | 'J' | 'X';

/** Appends journal lines to `file`, each with one write (so a kill never leaves half a line before a whole one). */
export function fileJournal(file: string): (kind: JournalKind, n: number, extra?: string | number) => void {
  const fd = fs.openSync(file, 'a');
  return (kind, n, extra) => {
    // CLOCK_MONOTONIC, one clock for every process on the machine. `performance.timeOrigin +
    // performance.now()` is not: each process samples its wall-clock origin once at startup, and
    // two worker processes' timelines came out 4 ms apart under CI load (a worker's requeue then
    // sorted after the redelivery it caused, and the checker reported that as a delivery after an ack).
    const t = Number(process.hrtime.bigint() / 1000n) / 1000;
    fs.writeSync(fd, `${t.toFixed(3)} ${kind} ${n}${extra === undefined ? '' : ` ${extra}`}\n`);
  };
}

/** The handler of one worker. `rngSeed` differs per worker process, so each decides on its own. */
export function workerHandler(seed: number, largeFraction: number, rngSeed: number, journal: (kind: JournalKind, n: number, extra?: string | number) => void): (m: RemoteMessage) => Promise<void> {
  const decide = random(rngSeed);
  return async (m) => {
    const n = numberOf(m);
    const problem = problemWith(m, seed, largeFraction);
    if (problem !== null) journal('X', Math.max(n, 0), problem.replace(/\n/g, ' '));
    if (n < 0) return;
    journal('D', n, m.deliveryCount);
    const r = decide();
    try {
      if (r < 1 / 12) {
        journal('Q', n);
        await m.nack({ requeue: true });
      } else if (r < 1 / 12 + 1 / 40) {
        journal('J', n);
        await m.nack({ requeue: false });
      } else {
        journal('A', n);
        if ((await m.ack()) === 'acked') journal('K', n);
      }
    } catch {
      // The connection went down under the settle: the message comes again unless it was done.
    }
  };
}

export interface JournalSummary {
  deliveries: number;
  redeliveries: number;
  requeues: number;
  rejects: number;
  /** Message numbers delivered at least once. */
  seen: Set<number>;
  /** Message numbers some worker rejected. */
  rejected: Set<number>;
  /** Message numbers an ack resolved 'acked' for, or whose last settle (by time) was an ack. */
  lastAcked: Set<number>;
  problems: string[];
}

/**
 * Merges the journals and checks the one rule they alone can tell: no delivery of a message after
 * an ack of it resolved 'acked' (in any process). Returns the problems found and what the fate
 * checks need.
 */
export function readJournals(files: readonly string[]): JournalSummary {
  const times: number[] = [];
  const kinds: string[] = [];
  const ns: number[] = [];
  const out: JournalSummary = { deliveries: 0, redeliveries: 0, requeues: 0, rejects: 0, seen: new Set(), rejected: new Set(), lastAcked: new Set(), problems: [] };
  for (const file of files) {
    if (!fs.existsSync(file)) continue;
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    // A process killed between two writes leaves whole lines only; the last element is the empty tail.
    for (const line of lines) {
      if (line === '') continue;
      const [t, kind, nText, ...rest] = line.split(' ');
      const n = Number(nText);
      if (kind === 'X') {
        out.problems.push(`workers: ${rest.join(' ')}`);
        continue;
      }
      times.push(Number(t));
      kinds.push(kind as string);
      ns.push(n);
      if (kind === 'D') {
        out.deliveries++;
        if (Number(rest[0]) > 1) out.redeliveries++;
        out.seen.add(n);
      } else if (kind === 'Q') out.requeues++;
      else if (kind === 'J') {
        out.rejects++;
        out.rejected.add(n);
      }
    }
  }
  const order = times.map((_, i) => i).sort((a, b) => (ns[a] as number) - (ns[b] as number) || (times[a] as number) - (times[b] as number));
  let i = 0;
  while (i < order.length) {
    const n = ns[order[i] as number] as number;
    let ackedAt = Number.POSITIVE_INFINITY;
    let last = '';
    // An ack answered 'acked' (K) is final: the broker never delivers the message again, so a
    // settle journaled after it by time belongs to an older delivery another process still ran
    // (one from before a server restart, superseded) and was answered 'unknown'.
    for (; i < order.length && ns[order[i] as number] === n; i++) {
      const k = order[i] as number;
      const kind = kinds[k] as string;
      if (kind === 'K') ackedAt = Math.min(ackedAt, times[k] as number);
      else if (kind === 'D' && (times[k] as number) > ackedAt && out.problems.length < 50) out.problems.push(`workers: m-${n} delivered again after an ack of it resolved 'acked'`);
      else if (kind === 'A' || kind === 'Q' || kind === 'J') last = kind;
    }
    if (last === 'A' || ackedAt !== Number.POSITIVE_INFINITY) out.lastAcked.add(n);
  }
  return out;
}
