/** What every scenario is given, and the targets the summary judges figures against. */
import type { RawLimits } from './raw-limits.js';

export interface ScenarioContext {
  /** Runs per scenario; the median of each metric is reported. */
  repeats: number;
  /** Raw limits measured earlier in this run; null leaves out the ratios and the raw-relative targets. */
  raw: RawLimits | null;
}

/** The storage engine's performance targets (never asserted in tests: they are judged only by `npm run bench`). */
export const TARGETS = {
  /** (a) 100 B records through append(batch). */
  appendBatchRecordsPerSec: 1_500_000,
  /** (b) 100 B records through appendOne with 1,000 in flight. */
  appendOneRecordsPerSec: 700_000,
  /** (c) 4 KiB records: payload MB/s as a fraction of raw sequential write MB/s. */
  append4kFractionOfRawMBps: 0.7,
  /** (d) lone appendOne median latency over one raw write + fdatasync. */
  appendLatencyRatioMax: 1.3,
  /** Sequential read of 100 B records with read(next, { maxBytes: 1 MiB }). */
  readRecordsPerSec: 3_000_000,
} as const;
