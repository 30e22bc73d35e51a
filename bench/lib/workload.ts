/**
 * Workload generators shared by the append and read scenarios: record pools and pumps that keep a
 * fixed number of append promises in flight, refilling as each resolves.
 */
import type { Log } from '../../src/log/log.js';
import type { RecordInput } from '../../src/log/record-batch.js';

/** Distinct record objects whose values are views into one deterministic pseudo-random buffer. */
export function makeRecords(count: number, valueBytes: number): RecordInput[] {
  const pool = Buffer.allocUnsafe(count * valueBytes);
  let x = 0x9e3779b9;
  for (let i = 0; i + 4 <= pool.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    pool.writeUInt32LE(x >>> 0, i);
  }
  const out = new Array<RecordInput>(count);
  for (let i = 0; i < count; i++) out[i] = { value: pool.subarray(i * valueBytes, (i + 1) * valueBytes) };
  return out;
}

/** Appends `total` records as batches of `batchSize`, keeping `inFlight` append promises outstanding. */
export async function pumpBatches(log: Log, batches: readonly RecordInput[][], total: number, inFlight: number): Promise<void> {
  const batchSize = (batches[0] as RecordInput[]).length;
  const calls = Math.ceil(total / batchSize);
  let issued = 0;
  let next = 0;
  await new Promise<void>((resolve, reject) => {
    let done = 0;
    let failed = false;
    const issue = (): void => {
      if (failed || issued >= calls) return;
      const last = issued === calls - 1 && total % batchSize !== 0;
      const batch = batches[next] as RecordInput[];
      next = (next + 1) % batches.length;
      issued++;
      log.append(last ? batch.slice(0, total % batchSize) : batch).then(onDone, onError);
    };
    const onDone = (): void => {
      done++;
      if (done === calls) resolve();
      else issue();
    };
    const onError = (err: unknown): void => {
      failed = true;
      reject(err);
    };
    for (let i = 0; i < inFlight && i < calls; i++) issue();
  });
}

/** Appends `total` single records with `window` appendOne promises outstanding, refilling as each resolves. */
export async function pumpSingles(log: Log, records: readonly RecordInput[], total: number, window: number): Promise<void> {
  let issued = 0;
  await new Promise<void>((resolve, reject) => {
    let done = 0;
    let failed = false;
    const issue = (): void => {
      if (failed || issued >= total) return;
      const rec = records[issued % records.length] as RecordInput;
      issued++;
      log.appendOne(rec).then(onDone, onError);
    };
    const onDone = (): void => {
      done++;
      if (done === total) resolve();
      else issue();
    };
    const onError = (err: unknown): void => {
      failed = true;
      reject(err);
    };
    for (let i = 0; i < window && i < total; i++) issue();
  });
}
