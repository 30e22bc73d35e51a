/**
 * The durable state of one consumer group (docs/format.md "Group state"): a committed offset
 * (everything below is acked), the acked offsets above it, the delivery count of messages
 * delivered but not acked (persisted for queues with a deliveryLimit and for retries), and the due time of
 * messages waiting for a delayed retry. It lives in a small log of its own; each record is one
 * kind of change or a snapshot of the whole state. Replaying the log from its start rebuilds the
 * state; a snapshot lets retention drop everything before it.
 *
 * Writes are group-committed like appends: while one write is in flight, new changes wait and
 * then share the next write and fsync. A change is lost by a crash only if its write had not resolved.
 *
 * Acks nobody awaits (a consumer's 'auto' handler returned, a served client's DONE) also wait up
 * to `batchMs` before their write starts, so that more of them share it. A busy consumer otherwise
 * keeps one write and fdatasync after another in flight, each covering a few hundred acks; on a
 * 2-CPU machine those thread-pool fsyncs took CPU from the broker and its clients (a served drain
 * ran ~30% faster with 5 ms: 8 of 8 alternated pairs; the embedded drain did not change). Anything
 * awaited (a manual ack's promise, a delivery count, a retry time, `drain`) cuts the wait short.
 * After a crash, an ack still waiting is lost like any unwritten one: its message comes again.
 */
import { SpoolError } from '../errors.js';
import { Log, type LogOptions, type RecordInput } from '../log/index.js';

const KIND_RANGES = 1;
const KIND_SNAPSHOT = 2;
const KIND_COUNTS = 3;
const KIND_RETRY = 4;
/** Take a snapshot (and let retention drop older records) after this many records. */
const SNAPSHOT_EVERY_RECORDS = 20_000;
const ACK_SEGMENT_BYTES = 1024 * 1024;

export interface AckState {
  committed: number;
  acked: Set<number>;
  /** Deliveries so far of unacked messages (tracked with a deliveryLimit, and for messages waiting for a retry). */
  counts: Map<number, number>;
  /** Unacked messages waiting for a retry: offset → due time (ms). */
  retryAt: Map<number, number>;
}

export function emptyState(committed: number): AckState {
  return { committed, acked: new Set(), counts: new Map(), retryAt: new Map() };
}

function writeU64(buf: Buffer, v: number, p: number): void {
  buf.writeUInt32LE(v >>> 0, p);
  buf.writeUInt32LE(Math.floor(v / 0x1_0000_0000), p + 4);
}

function readU64(buf: Buffer, p: number): number {
  return buf.readUInt32LE(p + 4) * 0x1_0000_0000 + buf.readUInt32LE(p);
}

/** Kind 1: acked offsets as (start u64, count u32) ranges. Sorts `offsets` in place. */
export function encodeRanges(offsets: number[]): Buffer {
  let sorted = true;
  for (let i = 1; i < offsets.length; i++) {
    if ((offsets[i] as number) < (offsets[i - 1] as number)) {
      sorted = false;
      break;
    }
  }
  if (!sorted) offsets.sort((a, b) => a - b);
  const ranges: number[] = [];
  let start = offsets[0] as number;
  let count = 1;
  for (let i = 1; i < offsets.length; i++) {
    const o = offsets[i] as number;
    if (o === start + count) count++;
    else if (o >= start + count) {
      ranges.push(start, count);
      start = o;
      count = 1;
    }
  }
  ranges.push(start, count);
  const buf = Buffer.allocUnsafe(1 + (ranges.length / 2) * 12);
  buf[0] = KIND_RANGES;
  for (let i = 0; i < ranges.length; i += 2) {
    const p = 1 + (i / 2) * 12;
    writeU64(buf, ranges[i] as number, p);
    buf.writeUInt32LE(ranges[i + 1] as number, p + 8);
  }
  return buf;
}

/** Kinds 3 and 4: (offset u64, value u64) pairs. */
function encodePairs(kind: number, pairs: Map<number, number>): Buffer {
  const buf = Buffer.allocUnsafe(1 + pairs.size * 16);
  buf[0] = kind;
  let p = 1;
  for (const [o, v] of pairs) {
    writeU64(buf, o, p);
    writeU64(buf, v, p + 8);
    p += 16;
  }
  return buf;
}

/** Kind 2: committed u64, then counted lists of acked offsets, (offset, count) and (offset, retryAt). */
function encodeSnapshot(state: AckState): Buffer {
  const buf = Buffer.allocUnsafe(1 + 8 + 4 + state.acked.size * 8 + 4 + state.counts.size * 16 + 4 + state.retryAt.size * 16);
  buf[0] = KIND_SNAPSHOT;
  writeU64(buf, state.committed, 1);
  let p = 9;
  buf.writeUInt32LE(state.acked.size, p);
  p += 4;
  for (const o of state.acked) {
    writeU64(buf, o, p);
    p += 8;
  }
  for (const map of [state.counts, state.retryAt]) {
    buf.writeUInt32LE(map.size, p);
    p += 4;
    for (const [o, v] of map) {
      writeU64(buf, o, p);
      writeU64(buf, v, p + 8);
      p += 16;
    }
  }
  return buf;
}

function corrupt(why: string): SpoolError {
  return new SpoolError('SPOOL_ERR_CORRUPT', `group state record: ${why}`);
}

export function applyRecord(state: AckState, value: Buffer): void {
  const kind = value[0];
  if (kind === KIND_SNAPSHOT) {
    if (value.length < 13) throw corrupt('short snapshot');
    state.committed = readU64(value, 1);
    state.acked = new Set();
    state.counts = new Map();
    state.retryAt = new Map();
    let p = 9;
    const n = value.readUInt32LE(p);
    p += 4;
    for (let i = 0; i < n; i++, p += 8) state.acked.add(readU64(value, p));
    for (const map of [state.counts, state.retryAt]) {
      if (p + 4 > value.length) break;
      const m = value.readUInt32LE(p);
      p += 4;
      for (let i = 0; i < m; i++, p += 16) map.set(readU64(value, p), readU64(value, p + 8));
    }
    return;
  }
  if (kind === KIND_COUNTS || kind === KIND_RETRY) {
    const map = kind === KIND_COUNTS ? state.counts : state.retryAt;
    for (let p = 1; p + 16 <= value.length; p += 16) {
      const o = readU64(value, p);
      const v = readU64(value, p + 8);
      if (o < state.committed || state.acked.has(o)) continue;
      if (v === 0) map.delete(o);
      else map.set(o, v);
    }
    return;
  }
  if (kind !== KIND_RANGES) throw corrupt(`unknown kind ${kind}`);
  for (let p = 1; p + 12 <= value.length; p += 12) {
    const start = readU64(value, p);
    const count = value.readUInt32LE(p + 8);
    for (let o = start; o < start + count; o++) ackInto(state, o);
  }
}

/** Marks `offset` acked; returns false when it already was. */
export function ackInto(state: AckState, offset: number): boolean {
  if (offset < state.committed) return false;
  if (state.counts.size > 0) state.counts.delete(offset);
  if (state.retryAt.size > 0) state.retryAt.delete(offset);
  if (offset === state.committed) {
    let c = offset + 1;
    while (state.acked.delete(c)) c++;
    state.committed = c;
    return true;
  }
  if (state.acked.has(offset)) return false;
  state.acked.add(offset);
  return true;
}

export class AckStore {
  private pending: number[] = [];
  private pendingCounts = new Map<number, number>();
  private pendingRetry = new Map<number, number>();
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private flushing = false;
  private recordsSinceSnapshot = 0;
  private idle: (() => void)[] = [];
  /** The wait before a write of only unawaited acks (see the header): its timer, and what ends it early. */
  private batchTimer: NodeJS.Timeout | null = null;
  private batchWake: (() => void) | null = null;
  /** `drain` was called: no more waits until the loop goes idle. */
  private draining = false;
  /** The committed offset as far as the disk knows: retention may only delete below this. */
  durableCommitted: number;
  onError: (err: Error) => void = () => {};
  /** Called after each durable write, once `durableCommitted` is current. */
  onDurable: () => void = () => {};

  private constructor(
    private readonly log: Log,
    readonly state: AckState,
    /** How long unawaited acks wait for company before a write (0: none). */
    private readonly batchMs: number,
  ) {
    this.durableCommitted = state.committed;
  }

  /**
   * Opens the group's state log, creating it at `initialCommitted` when new. `floor` is the
   * queue's first retained offset: a committed offset below it (a crash between retention and
   * an ack write) is raised to it, since those messages are gone.
   */
  static async open(dir: string, initialCommitted: number, floor: number, logOptions: LogOptions, batchMs = 0): Promise<AckStore> {
    // Never blocking commits: acks of a fast drain flush thousands of times a second, and the
    // drain would stall on every one of them.
    const { log, recovery } = await Log.open(dir, { ...logOptions, segmentBytesMax: ACK_SEGMENT_BYTES, blockingCommitBytes: 0 });
    const state = emptyState(0);
    if (recovery.created || log.endOffset === log.startOffset) {
      state.committed = initialCommitted;
      await log.appendOne({ value: encodeSnapshot(state) });
      return new AckStore(log, state, batchMs);
    }
    let next = log.startOffset;
    for (;;) {
      const records = await log.read(next, { maxBytes: 4 * 1024 * 1024 });
      if (records.length === 0) break;
      for (const r of records) applyRecord(state, r.value);
      next = records[records.length - 1]!.offset + 1;
    }
    if (state.committed < floor) {
      for (const o of state.acked) if (o < floor) state.acked.delete(o);
      for (const map of [state.counts, state.retryAt]) for (const o of map.keys()) if (o < floor) map.delete(o);
      let c = floor;
      while (state.acked.delete(c)) c++;
      state.committed = c;
      await log.appendOne({ value: encodeSnapshot(state) });
    }
    const store = new AckStore(log, state, batchMs);
    store.recordsSinceSnapshot = log.endOffset - log.startOffset;
    return store;
  }

  /** Records offsets as acked (already applied to `state` by the caller); resolves once durable. */
  persist(offsets: readonly number[], wantPromise: boolean): Promise<void> | undefined {
    for (const o of offsets) this.pending.push(o);
    return this.queued(wantPromise);
  }

  persistOne(offset: number, wantPromise: boolean): Promise<void> | undefined {
    this.pending.push(offset);
    return this.queued(wantPromise);
  }

  /** Records a delivery count (already set in `state`); resolves once durable. */
  persistCount(offset: number, count: number): Promise<void> {
    this.pendingCounts.set(offset, count);
    return this.queued(true) as Promise<void>;
  }

  /** Records a retry due time (0 clears it; already set in `state`); resolves once durable. */
  persistRetry(offset: number, dueAt: number): Promise<void> {
    this.pendingRetry.set(offset, dueAt);
    return this.queued(true) as Promise<void>;
  }

  private queued(wantPromise: boolean): Promise<void> | undefined {
    let p: Promise<void> | undefined;
    if (wantPromise) {
      p = new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
      this.endBatchWait();
    }
    if (!this.flushing) {
      this.flushing = true;
      queueMicrotask(() => void this.flushLoop());
    }
    return p;
  }

  /** Waits up to `batchMs` for more changes (see the header), unless `endBatchWait` comes first. */
  private batchWait(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.batchWake = resolve;
      this.batchTimer = setTimeout(() => this.endBatchWait(), this.batchMs);
    });
  }

  private endBatchWait(): void {
    if (this.batchTimer !== null) clearTimeout(this.batchTimer);
    this.batchTimer = null;
    const wake = this.batchWake;
    this.batchWake = null;
    wake?.();
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.pending.length > 0 || this.pendingCounts.size > 0 || this.pendingRetry.size > 0) {
        if (this.batchMs > 0 && this.waiters.length === 0 && !this.draining) await this.batchWait();
        const records: RecordInput[] = [];
        // Counts and retries first: an ack in the same write then wins on replay.
        if (this.pendingCounts.size > 0) records.push({ value: encodePairs(KIND_COUNTS, this.pendingCounts) });
        if (this.pendingRetry.size > 0) records.push({ value: encodePairs(KIND_RETRY, this.pendingRetry) });
        if (this.pending.length > 0) records.push({ value: encodeRanges(this.pending) });
        const waiters = this.waiters;
        this.pending = [];
        this.pendingCounts = new Map();
        this.pendingRetry = new Map();
        this.waiters = [];
        // Every ack applied so far is in this write or an earlier one, so once it is durable
        // the disk knows this committed offset.
        const committed = this.state.committed;
        try {
          await this.log.append(records);
          this.recordsSinceSnapshot += records.length;
          this.durableCommitted = Math.max(this.durableCommitted, committed);
          for (const w of waiters) w.resolve();
          this.onDurable();
        } catch (err) {
          for (const w of waiters) w.reject(err as Error);
          this.onError(err as Error);
        }
        if (this.recordsSinceSnapshot >= SNAPSHOT_EVERY_RECORDS) await this.snapshot().catch((err: Error) => this.onError(err));
      }
    } finally {
      this.flushing = false;
      this.draining = false;
      const idle = this.idle;
      this.idle = [];
      for (const f of idle) f();
    }
  }

  /** Writes the whole state as one record and drops the log segments before it. */
  private async snapshot(): Promise<void> {
    const offset = await this.log.appendOne({ value: encodeSnapshot(this.state) });
    this.recordsSinceSnapshot = 0;
    await this.log.deleteBefore(offset);
  }

  /** Resolves when every change handed over so far is durable (or failed). */
  drain(): Promise<void> {
    if (!this.flushing) return Promise.resolve();
    this.draining = true;
    this.endBatchWait();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  async close(): Promise<void> {
    await this.drain();
    await this.log.close();
  }
}
