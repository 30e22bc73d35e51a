/**
 * Shared pieces of the log's crash and fault tests: records whose every byte follows from a unique
 * id (so any record read back can be traced to the append that submitted it), a fence that kills
 * an abandoned Log's storage access after a simulated power cut, and a full-log reader.
 */
import type { Log } from '../../src/log/log.js';
import type { LogRecord, RecordInput } from '../../src/log/record-batch.js';
import type { OpenMode, Storage, StorageFile } from '../../src/log/storage.js';
import { type FaultyStorage, type Rng, errnoError, seededRandom } from './faulty-storage.js';

export const VALUE_BYTES_MAX = 600;

/**
 * A fixed clock near the explicit timestamps `recordFor` uses. With the real clock, a record with
 * an explicit 2020 timestamp and a defaulted one in the same flush are more than 24 days apart,
 * which the batch encoder does not handle (see write-failures.test.ts); the oracle sidesteps that.
 */
export const TEST_CLOCK = { now: (): number => 1_600_000_500_000 };
const ID_PREFIX = /^id:(\d+):/;

/**
 * The record submitted for `id`. Deterministic: the value is `id:<n>:` plus padding (string or
 * binary) up to a pseudo-random length of at most 600 bytes; some ids carry a key, headers or an
 * explicit timestamp.
 */
export function recordFor(id: number): RecordInput {
  const rng = seededRandom((id * 2654435761) ^ 0x5f3759df);
  const prefix = `id:${id}:`;
  const total = Math.max(prefix.length, 1 + Math.floor(rng() * VALUE_BYTES_MAX));
  const padLength = total - prefix.length;
  let value: Buffer | string;
  if (rng() < 0.5) {
    let pad = '';
    for (let i = 0; i < padLength; i++) pad += String.fromCharCode(97 + ((id * 7 + i * 13) % 26));
    value = prefix + pad;
  } else {
    const b = Buffer.alloc(total);
    b.write(prefix, 0, 'latin1');
    for (let i = 0; i < padLength; i++) b[prefix.length + i] = (id * 131 + i * 7 + (i >> 3)) & 0xff;
    value = b;
  }
  const record: RecordInput = { value };
  const k = rng();
  if (k < 0.25) record.key = `key-${id}`;
  else if (k < 0.35) record.key = Buffer.from([id & 0xff, (id >> 8) & 0xff, 0, 0xff]);
  else if (k < 0.45) record.key = null;
  if (rng() < 0.25) record.headers = { h: `h${id}`, bin: Buffer.from([1, 2, id & 0xff]), empty: '' };
  if (rng() < 0.2) record.timestamp = 1_600_000_000_000 + id;
  return record;
}

function asBuffer(v: Buffer | Uint8Array | string): Buffer {
  return typeof v === 'string' ? Buffer.from(v, 'utf8') : Buffer.from(v);
}

/** The id a record read back claims to be, or null when its value has no id prefix. */
export function idOf(value: Buffer): number | null {
  const m = ID_PREFIX.exec(value.subarray(0, 24).toString('latin1'));
  return m === null ? null : Number(m[1]);
}

/** Null when `rec` is exactly what `recordFor(id)` submitted; otherwise what differs. */
export function recordMismatch(rec: LogRecord, id: number): string | null {
  const want = recordFor(id);
  if (!rec.value.equals(asBuffer(want.value))) return `value of id ${id} differs (${rec.value.length} bytes read, ${asBuffer(want.value).length} written)`;
  const wantKey = want.key == null ? null : asBuffer(want.key);
  if (wantKey === null ? rec.key !== null : rec.key === null || !rec.key.equals(wantKey)) return `key of id ${id} differs`;
  const wantHeaders = want.headers ?? {};
  const gotNames = Object.keys(rec.headers).sort();
  const wantNames = Object.keys(wantHeaders).sort();
  if (gotNames.join('\0') !== wantNames.join('\0')) return `header names of id ${id} differ: ${gotNames} vs ${wantNames}`;
  for (const name of wantNames) {
    if (!(rec.headers[name] as Buffer).equals(asBuffer(wantHeaders[name] as string | Buffer))) return `header ${name} of id ${id} differs`;
  }
  if (want.timestamp !== undefined && rec.timestamp !== want.timestamp) return `timestamp of id ${id} is ${rec.timestamp}, wrote ${want.timestamp}`;
  return null;
}

/**
 * A view of the shared FaultyStorage for one Log incarnation (one "process"). `kill()` is the
 * process dying: from then on every call through this view fails with EIO, and a call that was
 * already in flight never "returns" either (it rejects with EIO even if the disk did the work),
 * because a dead process cannot observe a result. Without this, the old Log's leftover promise
 * chains would keep running in this single-process simulation: they could create or rename files
 * in the world after a power cut, and (FaultyFile checks its crash epoch one microtask before it
 * applies an operation) an fsync straddling the cut could resolve although it made nothing durable.
 * `busy` counts calls in flight, so a test can wait for the dead process's calls to drain.
 */
export class FencedStorage implements Storage {
  private dead = false;
  busy = 0;

  constructor(readonly disk: FaultyStorage) {}

  get killed(): boolean {
    return this.dead;
  }

  kill(): void {
    this.dead = true;
  }

  /** Throws as every call does once the process is dead. */
  checkAlive(op: string, p: string): void {
    if (this.dead) throw errnoError('EIO', op, p, 'the process owning this log is gone');
  }

  /** Runs one storage call: refused once dead, and its result withheld if death came meanwhile. */
  async call<T>(op: string, p: string, fn: () => Promise<T>): Promise<T> {
    if (this.dead) throw errnoError('EIO', op, p, 'the process owning this log is gone');
    this.busy++;
    try {
      const value = await fn();
      if (this.dead) throw errnoError('EIO', op, p, 'the process died during the call');
      return value;
    } finally {
      this.busy--;
    }
  }

  async open(filePath: string, mode: OpenMode): Promise<StorageFile> {
    const file = await this.call('open', filePath, () => this.disk.open(filePath, mode));
    return new FencedFile(this, file);
  }
  readdir(dir: string): Promise<string[]> {
    return this.call('readdir', dir, () => this.disk.readdir(dir));
  }
  mkdir(dir: string): Promise<void> {
    return this.call('mkdir', dir, () => this.disk.mkdir(dir));
  }
  rename(from: string, to: string): Promise<void> {
    return this.call('rename', from, () => this.disk.rename(from, to));
  }
  unlink(filePath: string): Promise<void> {
    return this.call('unlink', filePath, () => this.disk.unlink(filePath));
  }
  syncDir(dir: string): Promise<void> {
    return this.call('syncDir', dir, () => this.disk.syncDir(dir));
  }
  exists(filePath: string): Promise<boolean> {
    return this.call('exists', filePath, () => this.disk.exists(filePath));
  }
}

class FencedFile implements StorageFile {
  writevBlocking?: (buffers: readonly Buffer[], position: number) => void;
  syncBlocking?: () => void;

  constructor(
    private readonly fence: FencedStorage,
    private readonly inner: StorageFile,
  ) {
    // The blocking forms, when the disk has them: refused once the process is dead. (Nothing can
    // die during one: the whole call runs without yielding.)
    const { writevBlocking, syncBlocking } = inner;
    if (writevBlocking !== undefined && syncBlocking !== undefined) {
      this.writevBlocking = (buffers, position) => {
        fence.checkAlive('write', inner.path);
        writevBlocking.call(inner, buffers, position);
      };
      this.syncBlocking = () => {
        fence.checkAlive('sync', inner.path);
        syncBlocking.call(inner);
      };
    }
  }

  get path(): string {
    return this.inner.path;
  }
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    return this.fence.call('read', this.path, () => this.inner.read(buffer, offset, length, position));
  }
  writev(buffers: readonly Buffer[], position: number): Promise<void> {
    return this.fence.call('write', this.path, () => this.inner.writev(buffers, position));
  }
  sync(): Promise<void> {
    return this.fence.call('sync', this.path, () => this.inner.sync());
  }
  truncate(length: number): Promise<void> {
    return this.fence.call('truncate', this.path, () => this.inner.truncate(length));
  }
  size(): Promise<number> {
    return this.fence.call('size', this.path, () => this.inner.size());
  }
  close(): Promise<void> {
    return this.fence.call('close', this.path, () => this.inner.close());
  }
}

/**
 * Reads the whole log from startOffset in pieces of random size, checking that offsets are dense
 * (each read starts exactly where asked and continues without a hole) and that nothing is returned
 * at or past endOffset.
 */
export async function readWholeLog(log: Log, rng: Rng = Math.random): Promise<LogRecord[]> {
  const out: LogRecord[] = [];
  const end = log.endOffset;
  let next = log.startOffset;
  while (next < end) {
    const maxBytes = rng() < 0.5 ? 1 + Math.floor(rng() * 2048) : 1 + Math.floor(rng() * 65536);
    const maxRecords = rng() < 0.3 ? 1 + Math.floor(rng() * 40) : undefined;
    const recs = await log.read(next, maxRecords === undefined ? { maxBytes } : { maxBytes, maxRecords });
    if (recs.length === 0) throw new Error(`read(${next}) returned nothing although endOffset is ${end}`);
    for (const r of recs) {
      if (r.offset !== next) throw new Error(`hole or disorder: read returned offset ${r.offset} where ${next} was expected`);
      out.push(r);
      next++;
    }
  }
  if (next !== end) throw new Error(`read past endOffset: reached ${next}, endOffset ${end}`);
  const tail = await log.read(end);
  if (tail.length !== 0) throw new Error(`read(endOffset=${end}) returned ${tail.length} records`);
  return out;
}

/** Ids of the records, checking each is an untouched submitted record; throws on the first bad one. */
export function idsOf(records: readonly LogRecord[]): number[] {
  return records.map((r) => {
    const id = idOf(r.value);
    if (id === null) throw new Error(`offset ${r.offset} holds a record no append submitted: ${r.value.subarray(0, 32).toString('hex')}`);
    const bad = recordMismatch(r, id);
    if (bad !== null) throw new Error(`offset ${r.offset}: ${bad}`);
    return id;
  });
}
