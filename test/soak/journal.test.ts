// The soak's journal checker (soak/worker.ts readJournals): the rules the soak relies on to see a
// broken promise in its worker processes' journals, on journals made up to break them.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { fileJournal, readJournals } from '../../soak/worker.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** Writes journals (one per array of lines) and returns their paths. */
function journals(...files: string[][]): string[] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-journal-'));
  dirs.push(dir);
  return files.map((lines, i) => {
    const p = path.join(dir, `w${i}.journal`);
    fs.writeFileSync(p, lines.map((l) => `${l}\n`).join(''));
    return p;
  });
}

describe('readJournals', () => {
  it('flags a delivery after an ack resolved, also when the two are in different processes', () => {
    const j = readJournals(journals(['100.000 D 5 1', '100.100 A 5', '100.900 K 5'], ['101.500 D 5 2', '101.600 A 5']));
    expect(j.problems).toEqual(["workers: m-5 delivered again after an ack of it resolved 'acked'"]);
  });

  it('allows a redelivery after an ack that was never answered (cut off by a kill)', () => {
    const j = readJournals(journals(['100.000 D 5 1', '100.100 A 5'], ['101.500 D 5 2', '101.600 A 5', '101.700 K 5']));
    expect(j.problems).toEqual([]);
    expect(j.lastAcked.has(5)).toBe(true);
  });

  it('orders settles by time across journals: a requeue after an ack leaves it not acked', () => {
    // Journals read in the other order, so file order must not decide.
    const j = readJournals(journals(['102.000 D 9 2', '102.100 Q 9'], ['100.000 D 9 1', '100.100 A 9']));
    expect(j.lastAcked.has(9)).toBe(false);
    const k = readJournals(journals(['102.000 D 9 2', '102.100 A 9'], ['100.000 D 9 1', '100.100 Q 9']));
    expect(k.lastAcked.has(9)).toBe(true);
    expect(k.requeues).toBe(1);
    expect(k.redeliveries).toBe(1);
  });

  it('an ack that resolved decides: a stale requeue journaled after it, by an older delivery another process still ran, does not', () => {
    // Seen in a soak over TCP: delivery 2 (worker 0, from before a server restart) was handled
    // after delivery 3 (worker 1) was acked; its requeue answered 'unknown'.
    const j = readJournals(journals(['100.000 D 7 1', '100.100 Q 7', '101.000 D 7 3', '101.100 A 7', '102.000 K 7'], ['101.200 D 7 2', '101.300 Q 7']));
    expect(j.problems).toEqual([]);
    expect(j.lastAcked.has(7)).toBe(true);
  });

  it('records rejects, deliveries and problems the workers wrote', () => {
    const j = readJournals(journals(['100.000 D 3 1', '100.100 J 3', '100.200 X 4 m-4 has a changed body (10 B)']));
    expect(j.rejected.has(3)).toBe(true);
    expect(j.rejects).toBe(1);
    expect(j.seen).toEqual(new Set([3]));
    expect(j.problems).toEqual(['workers: m-4 has a changed body (10 B)']);
  });

  it('journal times from different processes follow the order events happened in', () => {
    // The journals of separate worker processes are merged by time. Each process once took its
    // times from its own start-up sample of the wall clock, and two workers' timelines came out
    // 4 ms apart in a CI run: a requeue sorted after the redelivery it caused. Here this process,
    // a child, then this process again write one line each, one after the other.
    const [file] = journals([]);
    const journal = fileJournal(file as string);
    journal('D', 1, 1);
    const worker = new URL('../../dist/soak/worker.js', import.meta.url).pathname;
    execFileSync(process.execPath, ['--input-type=module', '-e', `const { fileJournal } = await import(${JSON.stringify(worker)}); fileJournal(${JSON.stringify(file)})('Q', 1);`]);
    journal('D', 1, 2);
    const times = fs.readFileSync(file as string, 'utf8').trim().split('\n').map((l) => Number(l.split(' ')[0]));
    expect(times).toHaveLength(3);
    expect(times[0]).toBeLessThan(times[1] as number);
    expect(times[1]).toBeLessThan(times[2] as number);
  });
});
