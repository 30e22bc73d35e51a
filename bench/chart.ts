/**
 * Draws a benchmark run as one self-contained SVG (no scripts, no external fonts or images), so
 * it can be opened in a browser or shown in Markdown:
 *
 *   - throughput: every summary figure in msgs/s or rec/s, as horizontal bars on a log scale,
 *     coloured by the target's verdict, with the target marked;
 *   - latency: every figure in us, the same way, with the raw write + fdatasync median as a line;
 *   - series: values over time (RSS during the big backlog) as lines.
 *
 * `node dist/bench/run.js` writes <out>/<timestamp>.svg and <out>/latest.svg, and on a run of the
 * whole suite a copy at docs/benchmarks.svg; the peers run writes peers-*.svg and
 * docs/benchmarks-peers.svg.
 */
import fs from 'node:fs';
import path from 'node:path';
import { type Series, type SummaryRow, type Verdict, fmt, verdict } from './lib/report.js';

export interface ChartBar {
  /** Group heading the bar is listed under (the scenario or the workload). */
  group: string;
  label: string;
  value: number;
  unit: string;
  verdict?: Verdict;
  /** Where the target lies, in the bar's unit (only when the target is in that unit). */
  target?: number;
  /** Highlight (e.g. Spool among peers). */
  accent?: boolean;
  /** Text after the value, e.g. a ratio. */
  note?: string;
}

export interface ChartPanel {
  title: string;
  bars: ChartBar[];
  /** Vertical reference lines, e.g. the raw fdatasync median. */
  refs?: { value: number; label: string }[];
}

export interface ChartData {
  title: string;
  subtitle: string;
  /** Which legend to draw: target verdicts (the suite) or Spool vs peer. Default 'targets'. */
  legend?: 'targets' | 'peers';
  panels: ChartPanel[];
  series?: Series[];
}

const WIDTH = 1100;
const LABEL_W = 430;
const VALUE_W = 230;
const BAR_H = 14;
const ROW_H = 19;
const PAD = 16;

const COLORS = { PASS: '#2e8b57', MISS: '#d9534f', none: '#5b7fa6', accent: '#e08a1e', ref: '#7a4fa0', grid: '#e3e3e3', text: '#222', muted: '#666' };

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function text(x: number, y: number, s: string, opts: { size?: number; anchor?: 'start' | 'middle' | 'end'; weight?: string; fill?: string } = {}): string {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" font-size="${opts.size ?? 11}" text-anchor="${opts.anchor ?? 'start'}"${opts.weight ? ` font-weight="${opts.weight}"` : ''} fill="${opts.fill ?? COLORS.text}">${esc(s)}</text>`;
}

/** Powers of ten covering [lo, hi]. */
function decades(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) out.push(10 ** e);
  return out;
}

function shortNum(v: number): string {
  if (v >= 1e9) return `${v / 1e9}G`;
  if (v >= 1e6) return `${v / 1e6}M`;
  if (v >= 1e3) return `${v / 1e3}k`;
  return String(v);
}

/** One panel of horizontal log-scale bars; returns the SVG fragment and its height. */
function drawPanel(p: ChartPanel, y0: number): { svg: string; height: number } {
  const bars = p.bars.filter((b) => Number.isFinite(b.value) && b.value > 0);
  const parts: string[] = [];
  parts.push(text(PAD, y0 + 16, p.title, { size: 14, weight: 'bold' }));
  if (bars.length === 0) {
    parts.push(text(PAD, y0 + 36, '(no figures in this run)', { fill: COLORS.muted }));
    return { svg: parts.join('\n'), height: 48 };
  }
  const values = [...bars.map((b) => b.value), ...bars.flatMap((b) => (b.target !== undefined ? [b.target] : [])), ...(p.refs ?? []).map((r) => r.value)].filter((v) => v > 0);
  const ticks = decades(Math.min(...values), Math.max(...values));
  const lo = ticks[0] as number;
  const hi = ticks[ticks.length - 1] as number;
  const x0 = LABEL_W;
  const plotW = WIDTH - LABEL_W - VALUE_W - PAD;
  const xOf = (v: number): number => x0 + ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo) || 1)) * plotW;
  const axisY = y0 + 28;
  // Rows, with a heading line whenever the group changes.
  let y = axisY + 8;
  let group = '';
  const rows: string[] = [];
  for (const b of bars) {
    if (b.group !== group) {
      group = b.group;
      y += 4;
      rows.push(text(PAD, y + 11, group, { weight: 'bold', size: 11 }));
      y += ROW_H;
    }
    const color = b.accent ? COLORS.accent : b.verdict === 'PASS' ? COLORS.PASS : b.verdict === 'MISS' ? COLORS.MISS : COLORS.none;
    const w = Math.max(1, xOf(b.value) - x0);
    rows.push(text(PAD + 12, y + 11, b.label));
    rows.push(`<rect x="${x0}" y="${y}" width="${w.toFixed(1)}" height="${BAR_H}" fill="${color}" rx="2"><title>${esc(`${b.group}: ${b.label} = ${fmt(b.value)} ${b.unit}${b.note ? ` (${b.note})` : ''}`)}</title></rect>`);
    if (b.target !== undefined && b.target > 0) {
      const tx = xOf(b.target);
      rows.push(`<line x1="${tx.toFixed(1)}" x2="${tx.toFixed(1)}" y1="${y - 2}" y2="${y + BAR_H + 2}" stroke="#000" stroke-width="2" stroke-dasharray="3,2"/>`);
    }
    const v = `${fmt(b.value)} ${b.unit}${b.verdict && b.verdict !== '-' ? ` ${b.verdict}` : ''}${b.note ? `  ${b.note}` : ''}`;
    rows.push(text(x0 + plotW + 8, y + 11, v, { size: 10.5, fill: b.verdict === 'MISS' ? COLORS.MISS : COLORS.text }));
    y += ROW_H;
  }
  const bottom = y + 4;
  // Grid and axis labels.
  const grid: string[] = [];
  for (const t of ticks) {
    const x = xOf(t);
    grid.push(`<line x1="${x.toFixed(1)}" x2="${x.toFixed(1)}" y1="${axisY}" y2="${bottom}" stroke="${COLORS.grid}"/>`);
    grid.push(text(x, axisY - 3, shortNum(t), { size: 10, anchor: 'middle', fill: COLORS.muted }));
  }
  for (const r of p.refs ?? []) {
    const x = xOf(r.value);
    grid.push(`<line x1="${x.toFixed(1)}" x2="${x.toFixed(1)}" y1="${axisY}" y2="${bottom}" stroke="${COLORS.ref}" stroke-width="1.5" stroke-dasharray="5,3"/>`);
    grid.push(text(x + 3, bottom + 11, `${r.label} ${fmt(r.value)}`, { size: 10, fill: COLORS.ref }));
  }
  grid.push(text(x0 + plotW, axisY - 16, `${[...new Set(bars.map((b) => b.unit))].join(' or ')}, log scale`, { size: 10, anchor: 'end', fill: COLORS.muted }));
  return { svg: [...parts, ...grid, ...rows].join('\n'), height: bottom - y0 + ((p.refs?.length ?? 0) > 0 ? 18 : 6) };
}

/** A line chart of one series (linear axes). */
function drawSeries(s: Series, y0: number): { svg: string; height: number } {
  const H = 220;
  const parts: string[] = [text(PAD, y0 + 16, s.name, { size: 14, weight: 'bold' })];
  const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (pts.length < 2) return { svg: parts.join('\n'), height: 30 };
  const x0 = 70;
  const x1 = WIDTH - PAD - 20;
  const top = y0 + 30;
  const bottom = top + H;
  const maxX = Math.max(...pts.map((p) => p[0]));
  const maxY = Math.max(...pts.map((p) => p[1]), ...(s.levels ?? []).map((l) => l.y)) * 1.1;
  const xOf = (x: number): number => x0 + (x / (maxX || 1)) * (x1 - x0);
  const yOf = (y: number): number => bottom - (y / (maxY || 1)) * H;
  const step = niceStep(maxY / 5);
  for (let v = 0; v <= maxY; v += step) {
    parts.push(`<line x1="${x0}" x2="${x1}" y1="${yOf(v).toFixed(1)}" y2="${yOf(v).toFixed(1)}" stroke="${COLORS.grid}"/>`);
    parts.push(text(x0 - 6, yOf(v) + 4, fmt(v, 0), { size: 10, anchor: 'end', fill: COLORS.muted }));
  }
  const xstep = niceStep(maxX / 8);
  for (let v = 0; v <= maxX; v += xstep) parts.push(text(xOf(v), bottom + 14, `${fmt(v, v >= 10 ? 0 : 1)} ${s.xUnit}`, { size: 10, anchor: 'middle', fill: COLORS.muted }));
  parts.push(`<line x1="${x0}" x2="${x1}" y1="${bottom}" y2="${bottom}" stroke="#999"/>`);
  for (const m of s.marks ?? []) {
    const x = xOf(m.x);
    parts.push(`<line x1="${x.toFixed(1)}" x2="${x.toFixed(1)}" y1="${top}" y2="${bottom}" stroke="${COLORS.ref}" stroke-dasharray="5,3"/>`);
    parts.push(text(x + 4, top + 12, m.label, { size: 10, fill: COLORS.ref }));
  }
  for (const l of s.levels ?? []) {
    const y = yOf(l.y);
    parts.push(`<line x1="${x0}" x2="${x1}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="${COLORS.MISS}" stroke-dasharray="6,3"/>`);
    parts.push(text(x0 + 4, y - 4, l.label, { size: 10, fill: COLORS.MISS }));
  }
  const d = pts.map(([x, y], i) => `${i === 0 ? 'M' : 'L'}${xOf(x).toFixed(1)},${yOf(y).toFixed(1)}`).join(' ');
  parts.push(`<path d="${d}" fill="none" stroke="${COLORS.none}" stroke-width="1.8"/>`);
  return { svg: parts.join('\n'), height: H + 56 };
}

function niceStep(raw: number): number {
  if (!(raw > 0)) return 1;
  const e = 10 ** Math.floor(Math.log10(raw));
  const f = raw / e;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * e;
}

/** The whole chart as an SVG document. */
export function renderChart(data: ChartData): string {
  const body: string[] = [];
  let y = 0;
  body.push(text(PAD, 24, data.title, { size: 17, weight: 'bold' }));
  body.push(text(PAD, 42, data.subtitle, { size: 11, fill: COLORS.muted }));
  const legend: [string, string][] =
    data.legend === 'peers'
      ? [
          [COLORS.accent, 'Spool'],
          [COLORS.none, 'peer'],
        ]
      : [
          [COLORS.PASS, 'target met'],
          [COLORS.MISS, 'target missed'],
          [COLORS.none, 'no target'],
        ];
  let lx = PAD;
  const items: string[] = [];
  for (const [color, label] of legend) {
    items.push(`<rect x="${lx}" y="52" width="10" height="10" fill="${color}"/>${text(lx + 14, 61, label, { size: 10 })}`);
    lx += 30 + label.length * 6;
  }
  if (data.legend !== 'peers') items.push(`<line x1="${lx + 4}" x2="${lx + 4}" y1="50" y2="64" stroke="#000" stroke-width="2" stroke-dasharray="3,2"/>${text(lx + 10, 61, 'target', { size: 10 })}`);
  body.push(`<g>${items.join('')}</g>`);
  y = 72;
  for (const p of data.panels) {
    const r = drawPanel(p, y);
    body.push(r.svg);
    y += r.height + 14;
  }
  for (const s of data.series ?? []) {
    const r = drawSeries(s, y);
    body.push(r.svg);
    y += r.height + 10;
  }
  const height = Math.ceil(y + 10);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    ...body,
    '</svg>',
    '',
  ].join('\n');
}

const THROUGHPUT_UNITS = new Set(['rec/s', 'msgs/s', 'jobs/s']);
const LATENCY_UNITS = new Set(['us']);

/** The suite's chart: summary rows become bars by unit, scenario series become lines. */
export function suiteChartData(title: string, subtitle: string, rows: readonly SummaryRow[], series: readonly Series[], rawFsyncUs?: number): ChartData {
  const bar = (r: SummaryRow): ChartBar => ({
    group: r.scenario,
    label: r.metric,
    value: r.value,
    unit: r.unit,
    verdict: verdict(r),
    ...(r.target !== undefined && r.judged === undefined ? { target: r.target.value } : {}),
  });
  return {
    title,
    subtitle,
    panels: [
      { title: 'Throughput (medians)', bars: rows.filter((r) => THROUGHPUT_UNITS.has(r.unit)).map(bar) },
      { title: 'Latency (medians)', bars: rows.filter((r) => LATENCY_UNITS.has(r.unit)).map(bar), refs: rawFsyncUs !== undefined ? [{ value: rawFsyncUs, label: 'raw write+fdatasync median' }] : [] },
    ],
    series: [...series],
  };
}

/** Writes `<dir>/<stamp>.svg` (with `prefix`) and `<dir>/<prefix>latest.svg`, and copies to `copyTo` when given; returns the written paths. */
export function writeChart(dir: string, svg: string, when: Date, prefix = '', copyTo?: string): string[] {
  fs.mkdirSync(dir, { recursive: true });
  const stamp = when.toISOString().replace(/[:.]/g, '-');
  const files = [path.join(dir, `${prefix}${stamp}.svg`), path.join(dir, `${prefix}latest.svg`)];
  if (copyTo !== undefined) {
    fs.mkdirSync(path.dirname(copyTo), { recursive: true });
    files.push(copyTo);
  }
  for (const f of files) fs.writeFileSync(f, svg);
  return files;
}
