// Types for test/support/kill-records.mjs (shared by the SIGKILL crash test and its child).
export declare function prng(seed: number): () => number;
export interface KillRecord {
  key: string;
  value: Buffer;
  headers?: Record<string, string | Buffer>;
  timestamp?: number;
}
export declare function recordFor(id: string, tsBase: number): KillRecord;
export interface ParsedId {
  tag: string;
  seq: number;
  /** -1 for appendOne. */
  batchIndex: number;
  batchCount: number;
}
export declare function parseId(id: string): ParsedId | null;
