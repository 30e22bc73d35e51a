/**
 * Summarizes a V8 .cpuprofile (from `node --cpu-prof`): self and inclusive time per function,
 * with dist/ JavaScript positions mapped back to the TypeScript sources through the source maps
 * tsc emits next to them.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SourceMap } from 'node:module';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
  hitCount?: number;
  /** Samples per 1-based line of the script, over the whole profile. */
  positionTicks?: { line: number; ticks: number }[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface FunctionTime {
  /** "name (file:line)" with the file relative to the project root when it is ours. */
  key: string;
  name: string;
  location: string;
  selfMs: number;
  totalMs: number;
  selfPct: number;
  totalPct: number;
}

export interface LineTime {
  /** "src/log/log.ts:350" */
  location: string;
  /** The function the line belongs to. */
  name: string;
  selfMs: number;
  selfPct: number;
}

export interface ProfileSummary {
  file: string;
  /** Set when the summary was cut to timed windows: how many, and their total length in ms. */
  windows: { count: number; ms: number } | null;
  /** Sampled wall time, ms. */
  totalMs: number;
  functions: FunctionTime[];
  /**
   * Self time per source line: each function's in-window self time split over its lines in the
   * proportions of its whole-profile line ticks.
   */
  lines: LineTime[];
}

const mapCache = new Map<string, SourceMap | null>();

function sourceMapFor(jsPath: string): SourceMap | null {
  if (mapCache.has(jsPath)) return mapCache.get(jsPath) as SourceMap | null;
  let map: SourceMap | null = null;
  try {
    const payload = JSON.parse(fs.readFileSync(`${jsPath}.map`, 'utf8'));
    map = new SourceMap(payload);
  } catch {
    map = null;
  }
  mapCache.set(jsPath, map);
  return map;
}

/** "src/log/log.ts:312" for our own code (through the source map), the URL's tail otherwise. */
function locate(cf: CallFrame, root: string): string {
  if (cf.url === '') return '';
  if (!cf.url.startsWith('file:')) return cf.url;
  const js = fileURLToPath(cf.url);
  const map = sourceMapFor(js);
  if (map !== null) {
    const e = map.findEntry(cf.lineNumber, cf.columnNumber) as { originalSource?: string; originalLine?: number };
    if (e.originalSource !== undefined && e.originalLine !== undefined) {
      const src = e.originalSource.startsWith('file:') ? fileURLToPath(e.originalSource) : path.resolve(path.dirname(js), e.originalSource);
      return `${path.relative(root, src)}:${e.originalLine + 1}`;
    }
  }
  const rel = path.relative(root, js);
  return `${rel.startsWith('..') ? js : rel}:${cf.lineNumber + 1}`;
}

/**
 * Self and inclusive time per function. With `windows` (process.hrtime microseconds, the clock of
 * V8's profiles), only samples taken inside one of them count.
 */
const jsLines = new Map<string, string[]>();

/** The .ts position of a 1-based line of a dist/ script, through its source map. */
function locateLine(url: string, line1: number, root: string): string {
  if (!url.startsWith('file:')) return `${url}:${line1}`;
  const js = fileURLToPath(url);
  let lines = jsLines.get(js);
  if (lines === undefined) {
    try {
      lines = fs.readFileSync(js, 'utf8').split('\n');
    } catch {
      lines = [];
    }
    jsLines.set(js, lines);
  }
  const text = lines[line1 - 1] ?? '';
  const column = Math.max(0, text.search(/\S/));
  return locate({ functionName: '', url, lineNumber: line1 - 1, columnNumber: column }, root);
}

export function summarizeProfile(file: string, root: string, windows: readonly { startUs: number; endUs: number }[] | null = null): ProfileSummary {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of prof.nodes) byId.set(n.id, n);
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  const keyOf = new Map<number, string>();
  const info = new Map<string, { name: string; location: string }>();
  for (const n of prof.nodes) {
    const name = n.callFrame.functionName || (n.callFrame.url ? '(anonymous)' : n.callFrame.functionName);
    const location = locate(n.callFrame, root);
    const key = location ? `${name} (${location})` : name;
    keyOf.set(n.id, key);
    info.set(key, { name, location });
  }

  const self = new Map<string, number>();
  const selfByNode = new Map<number, number>();
  const total = new Map<string, number>();
  let totalUs = 0;
  const n = prof.samples.length;
  const inWindow = (t: number) => windows === null || windows.some((w) => t >= w.startUs && t <= w.endUs);
  let t = prof.startTime;
  for (let i = 0; i < n; i++) {
    // timeDeltas[i] is the time since the previous sample; charge the interval to the sample that ends it.
    const dt = prof.timeDeltas[i] ?? 0;
    t += dt;
    if (dt <= 0 || !inWindow(t)) continue;
    totalUs += dt;
    const leaf = prof.samples[i] as number;
    const leafKey = keyOf.get(leaf) as string;
    self.set(leafKey, (self.get(leafKey) ?? 0) + dt);
    selfByNode.set(leaf, (selfByNode.get(leaf) ?? 0) + dt);
    const seen = new Set<string>();
    for (let id: number | undefined = leaf; id !== undefined; id = parent.get(id)) {
      const k = keyOf.get(id) as string;
      if (seen.has(k)) continue;
      seen.add(k);
      total.set(k, (total.get(k) ?? 0) + dt);
    }
  }
  const functions: FunctionTime[] = [];
  for (const [key, i] of info) {
    const s = self.get(key) ?? 0;
    const t = total.get(key) ?? 0;
    if (s === 0 && t === 0) continue;
    functions.push({ key, name: i.name, location: i.location, selfMs: s / 1000, totalMs: t / 1000, selfPct: (s / totalUs) * 100, totalPct: (t / totalUs) * 100 });
  }
  functions.sort((a, b) => b.selfMs - a.selfMs);
  const lineUs = new Map<string, { name: string; us: number }>();
  for (const [id, us] of selfByNode) {
    const node = byId.get(id) as ProfileNode;
    const ticks = node.positionTicks ?? [];
    const hits = ticks.reduce((a, t) => a + t.ticks, 0);
    if (hits === 0) continue;
    for (const t of ticks) {
      const loc = locateLine(node.callFrame.url, t.line, root);
      const cur = lineUs.get(loc) ?? { name: node.callFrame.functionName || '(anonymous)', us: 0 };
      cur.us += (us * t.ticks) / hits;
      lineUs.set(loc, cur);
    }
  }
  const lines: LineTime[] = [...lineUs]
    .map(([location, v]) => ({ location, name: v.name, selfMs: v.us / 1000, selfPct: (v.us / totalUs) * 100 }))
    .sort((a, b) => b.selfMs - a.selfMs);
  const windowInfo = windows === null ? null : { count: windows.length, ms: windows.reduce((a, w) => a + (w.endUs - w.startUs), 0) / 1000 };
  return { file, windows: windowInfo, totalMs: totalUs / 1000, functions, lines };
}
