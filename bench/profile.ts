/**
 * CPU-profiles one scenario and prints its top functions by self time.
 *
 *   node dist/bench/profile.js <scenario> [--quick] [--top n] [--out dir] [--whole]
 *   node dist/bench/profile.js --summarize file.cpuprofile [--marks file.windows.json] [--top n]
 *
 * Runs the scenario once (no raw limits) in a child `node --cpu-prof`, then summarizes the profile:
 * top functions overall and those in src/log, by self and by inclusive time, with positions mapped
 * to the .ts sources. Only samples inside the scenario's timed windows count (so the read
 * scenario's build phase, warm-ups and temp-dir cleanup are left out) unless --whole is given.
 * The .cpuprofile and its .windows.json are kept in <out> (default bench/results/profiles) for
 * Chrome DevTools or speedscope.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type ProfileSummary, summarizeProfile } from './lib/cpuprofile.js';
import { fmt, out, progress, table, timedWindows } from './lib/report.js';
import { SCENARIOS } from './run.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

function printSummary(s: ProfileSummary, top: number): void {
  const row = (f: ProfileSummary['functions'][number]) => [f.name, f.location, fmt(f.selfMs), `${f.selfPct.toFixed(1)}%`, fmt(f.totalMs), `${f.totalPct.toFixed(1)}%`];
  const headers = ['function', 'where', 'self ms', 'self', 'total ms', 'total'];
  out(`profile ${path.relative(process.cwd(), s.file)}: ${fmt(s.totalMs)} ms sampled` + (s.windows !== null ? ` inside the scenario's ${s.windows.count} timed window(s) (${fmt(s.windows.ms)} ms); setup, warm-up and teardown excluded` : ' (whole process)'));
  out();
  out(`top ${top} by self time (all code)`);
  out(table(headers, s.functions.slice(0, top).map(row), ['left', 'left']));
  out();
  const ours = s.functions.filter((f) => f.location.startsWith('src/log/'));
  out(`top ${top} in src/log by self time`);
  out(table(headers, ours.slice(0, top).map(row), ['left', 'left']));
  out();
  out(`top ${top} in src/log by inclusive time`);
  out(table(headers, [...ours].sort((a, b) => b.totalMs - a.totalMs).slice(0, top).map(row), ['left', 'left']));
  out();
  out(`top ${top} hot lines in src/log (self time)`);
  out(
    table(
      ['line', 'function', 'self ms', 'self'],
      s.lines
        .filter((l) => l.location.startsWith('src/log/'))
        .slice(0, top)
        .map((l) => [l.location, l.name, fmt(l.selfMs), `${l.selfPct.toFixed(1)}%`]),
      ['left', 'left'],
    ),
  );
  out();
}

async function main(argv: string[]): Promise<void> {
  let top = 20;
  let outDir = path.join(root, 'bench', 'results', 'profiles');
  let quick = false;
  let child = false;
  let summarize: string | null = null;
  let marks: string | null = null;
  let whole = false;
  let scenario: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--quick') quick = true;
    else if (a === '--child') child = true;
    else if (a === '--top') top = Number(argv[++i]);
    else if (a === '--out') outDir = path.resolve(argv[++i] as string);
    else if (a === '--summarize') summarize = path.resolve(argv[++i] as string);
    else if (a === '--marks') marks = path.resolve(argv[++i] as string);
    else if (a === '--whole') whole = true;
    else if (!a.startsWith('--') && scenario === null) scenario = a;
    else throw new Error(`unknown argument ${a}`);
  }
  const windowsFrom = (file: string | null) => (file !== null && !whole && fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : null);
  if (summarize !== null) {
    printSummary(summarizeProfile(summarize, root, windowsFrom(marks)), top);
    return;
  }
  const s = SCENARIOS.find((x) => x.name === scenario);
  if (s === undefined) throw new Error(`usage: profile.js <${SCENARIOS.map((x) => x.name).join('|')}> [--quick] [--top n] [--out dir]`);
  if (child) {
    await s.run({ repeats: 1, raw: null }, quick, (await import('node:os')).tmpdir());
    if (marks !== null) fs.writeFileSync(marks, JSON.stringify(timedWindows));
    return;
  }
  fs.mkdirSync(outDir, { recursive: true });
  const name = `${s.name}-${new Date().toISOString().replace(/[:.]/g, '-')}.cpuprofile`;
  const marksFile = path.join(outDir, name.replace(/\.cpuprofile$/, '.windows.json'));
  progress(`profiling ${s.name}${quick ? ' (quick)' : ''} -> ${path.join(outDir, name)}`);
  const r = spawnSync(
    process.execPath,
    ['--cpu-prof', `--cpu-prof-dir=${outDir}`, `--cpu-prof-name=${name}`, fileURLToPath(import.meta.url), s.name, '--child', '--marks', marksFile, ...(quick ? ['--quick'] : [])],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  if (r.status !== 0) throw new Error(`profiled run failed with status ${r.status}`);
  printSummary(summarizeProfile(path.join(outDir, name), root, windowsFrom(marksFile)), top);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
