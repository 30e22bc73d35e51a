/** `spool stats`: depth, lag per group, in flight, and rates (sampled over an interval when a server runs). */
import type { Command } from 'commander';
import { type BrokerLike, withBroker } from '../broker-access.js';
import { type CommonOptions, common, parseDuration } from '../common.js';
import type { CliIo } from '../io.js';
import { emit, paint, table } from '../output.js';

export interface GroupStats {
  group: string;
  committed: number;
  lag: number;
  inFlight: number;
  consumers: number;
  /** Messages acked per second over the interval (null without an interval). */
  ackRate: number | null;
}

export interface QueueSummary {
  queue: string;
  depth: number;
  startOffset: number;
  endOffset: number;
  /** Messages appended per second over the interval. */
  inRate: number | null;
  groups: GroupStats[];
}

export interface StatsReport {
  broker: Record<string, number>;
  /** Published messages per second over the interval, null when not sampled. */
  publishRate: number | null;
  intervalMs: number;
  queues: QueueSummary[];
}

async function snapshot(broker: BrokerLike) {
  const counters = await broker.stats();
  const queues = [];
  for (const name of await broker.listQueues()) queues.push(await broker.queueStats(name));
  return { counters, queues, at: Date.now() };
}

/** Stats now; with `intervalMs` > 0, a second sample that far apart gives the rates. */
export async function collectStats(broker: BrokerLike, intervalMs: number): Promise<StatsReport> {
  const a = await snapshot(broker);
  let b = a;
  if (intervalMs > 0) {
    await new Promise((r) => setTimeout(r, intervalMs));
    b = await snapshot(broker);
  }
  const secs = (b.at - a.at) / 1000;
  const rate = (now: number | undefined, then: number | undefined) => (secs > 0 && now !== undefined && then !== undefined ? Math.round(((now - then) / secs) * 10) / 10 : null);
  return {
    broker: b.counters,
    publishRate: rate(b.counters.published, a.counters.published),
    intervalMs: intervalMs > 0 ? b.at - a.at : 0,
    queues: b.queues.map((q) => {
      const before = a.queues.find((x) => x.queue === q.queue);
      return {
        queue: q.queue,
        depth: q.depth,
        startOffset: q.startOffset,
        endOffset: q.endOffset,
        inRate: rate(q.endOffset, before?.endOffset),
        groups: Object.entries(q.groups).map(([group, g]) => ({ group, ...g, ackRate: rate(g.committed, before?.groups[group]?.committed) })),
      };
    }),
  };
}

const r = (x: number | null) => (x === null ? '-' : `${x}/s`);

export function renderStats(s: StatsReport, io: CliIo): string {
  const p = paint(io);
  const c = s.broker;
  const lines = [
    `broker: ${c.queues ?? 0} queues, ${c.exchanges ?? 0} exchanges; published ${c.published ?? 0}, duplicates ${c.duplicates ?? 0}, unroutable ${c.unroutable ?? 0}, dropped ${c.dropped ?? 0}` +
      (s.publishRate === null ? ' (rates: none sampled)' : `; publishing ${r(s.publishRate)} over ${s.intervalMs} ms`),
  ];
  if (s.queues.length > 0) {
    const rows: (string | number)[][] = [];
    for (const q of s.queues) {
      if (q.groups.length === 0) rows.push([q.queue, q.depth, r(q.inRate), '-', '-', '-', '-', '-']);
      for (const g of q.groups) rows.push([q.queue, q.depth, r(q.inRate), g.group, g.lag, g.inFlight, g.consumers, r(g.ackRate)]);
    }
    lines.push(table(['QUEUE', 'DEPTH', 'IN', 'GROUP', 'LAG', 'IN FLIGHT', 'CONSUMERS', 'ACKED'], rows, p));
  }
  return lines.join('\n');
}

export function registerStats(program: Command, io: CliIo): void {
  const cmd = program
    .command('stats')
    .description('depth, lag per group, in flight and rates of every queue')
    .option('--interval <duration>', 'sample twice this far apart for rates (default 1s with a running server, 0 embedded)', parseDuration);
  common(cmd, ['spool stats', 'spool stats --interval 5s', 'spool stats --json']);
  cmd.action(async (opts: CommonOptions & { interval?: number }) => {
    const report = await withBroker(opts, io, ({ broker, mode }) => collectStats(broker, opts.interval ?? (mode === 'remote' ? 1000 : 0)));
    emit(io, opts.json, report, (d) => renderStats(d, io));
  });
}
