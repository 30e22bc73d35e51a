/**
 * Building tables: sealing a rolled journal into a level-0 table, and merging tables of one
 * retention bucket into a bigger one (docs/idempotency.md "Buckets, levels and merges").
 *
 * Both stream with bounded memory: a seal holds one (hash, position) pair per DONE record of one
 * journal (at most `journalKeysMax`), a merge holds one read buffer per input. Neither changes its
 * inputs; the caller swaps the new table in and deletes the inputs afterwards, and recovery
 * finishes that job after a crash (a table lists its merge inputs as `sources`).
 */
import assert from 'node:assert/strict';
import { CorruptError, SpoolError } from '../errors.js';
import type { Storage } from '../log/index.js';
import { ENTRY_BYTES, LENGTH_HINT_MAX, RecordType, crc32 } from './format.js';
import type { Journal } from './journal.js';
import { sortByHash } from './sort.js';
import { Table, TableBuilder } from './table.js';

export interface BuildParams {
  recordBytesMax: number;
  filterHashes: number;
  /** The filter size in bits for a table of `entries` keys (decided by the store's memory budget). */
  filterBitsFor(entries: number): number;
  /** Checked between chunks: a merge abandons its temp file when the store is closing. */
  shouldStop(): boolean;
}

export class CompactionStopped extends Error {
  constructor() {
    super('compaction stopped: the store is closing');
  }
}

/** Seals a journal that no longer takes writes into table `journal.seq`; null when it holds no DONE record. */
export async function sealJournal(storage: Storage, dir: string, journal: Journal, p: BuildParams): Promise<Table | null> {
  const n = journal.doneCount;
  if (n === 0) return null;
  const builder = await TableBuilder.create(storage, dir, { seq: journal.seq, level: 0, entryCount: n, sources: [], filterBits: p.filterBitsFor(n), filterHashes: p.filterHashes });
  try {
    const his = new Uint32Array(n);
    const los = new Uint32Array(n);
    const positions = new Float64Array(n);
    const lengths = new Uint32Array(n);
    let i = 0;
    // Values are copied in journal order (one sequential pass); entries are sorted afterwards.
    const scan = await journal.scan(p.recordBytesMax, async (rec, _pos, raw) => {
      if (rec.type !== RecordType.DONE) return;
      assert(i < n, 'a sealed journal holds exactly the DONE records it indexed');
      his[i] = rec.hashHi;
      los[i] = rec.hashLo;
      lengths[i] = raw.length;
      positions[i] = await builder.addValue(raw, rec.time1, rec.time2);
      i++;
    });
    if (scan.bad !== null) throw new CorruptError(journal.path, scan.validEnd, `${scan.bad} inside the durable part of a journal being sealed`);
    assert.equal(i, n, 'a sealed journal holds exactly the DONE records it indexed');
    const order = sortByHash(his, los, n);
    for (let k = 0; k < n; k++) {
      const j = order[k] as number;
      await builder.addEntry(his[j] as number, los[j] as number, positions[j] as number, lengths[j] as number);
    }
    return await builder.finish();
  } catch (err) {
    await builder.abort();
    throw err;
  }
}

const MERGE_CHUNK_ENTRIES = 16 * 1024;
const COPY_CHUNK_BYTES = 1024 * 1024;

/** Reads one input table's entries in directory-slot order, checking each slot's CRC. */
class EntryCursor {
  private buf = Buffer.allocUnsafe(MERGE_CHUNK_ENTRIES * ENTRY_BYTES);
  private count = 0;
  private i = 0;
  private nextSlot = 0;
  hi = 0;
  lo = 0;
  done = false;

  constructor(
    readonly table: Table,
    /** Where this input's values region starts in the merged table. */
    readonly base: number,
  ) {}

  async advance(): Promise<void> {
    this.i++;
    if (this.i >= this.count && !(await this.fill())) {
      this.done = true;
      return;
    }
    this.load();
  }

  async start(): Promise<void> {
    this.i = 0;
    if (!(await this.fill())) this.done = true;
    else this.load();
  }

  private load(): void {
    const o = this.i * ENTRY_BYTES;
    this.hi = this.buf.readUInt32LE(o);
    this.lo = this.buf.readUInt32LE(o + 4);
  }

  get position(): number {
    const o = this.i * ENTRY_BYTES;
    return this.buf.readUInt32LE(o + 8) + (this.buf.readUInt32LE(o + 12) & 0xffff) * 0x1_0000_0000;
  }

  get lengthHint(): number {
    return this.buf.readUInt32LE(this.i * ENTRY_BYTES + 12) >>> 16;
  }

  /** Loads the next run of whole slots; false at the end. */
  private async fill(): Promise<boolean> {
    const t = this.table;
    const slots = 2 ** t.dirBits;
    while (this.nextSlot < slots) {
      const first = this.nextSlot;
      const [a] = t.slotRange(first);
      let last = first;
      let b = t.slotRange(first)[1];
      while (last + 1 < slots && t.slotRange(last + 1)[1] - a <= MERGE_CHUNK_ENTRIES) b = t.slotRange(++last)[1];
      this.nextSlot = last + 1;
      if (b === a) continue;
      if ((b - a) * ENTRY_BYTES > this.buf.length) this.buf = Buffer.allocUnsafe((b - a) * ENTRY_BYTES);
      await t.readEntries(a, b - a, this.buf);
      for (let s = first; s <= last; s++) {
        const [sa, sb] = t.slotRange(s);
        if (crc32(this.buf.subarray((sa - a) * ENTRY_BYTES, (sb - a) * ENTRY_BYTES)) !== t.slotCrc(s)) {
          throw new CorruptError(t.path, t.layout.entriesOff + sa * ENTRY_BYTES, `entries of directory slot ${s} fail their CRC`);
        }
      }
      this.count = b - a;
      this.i = 0;
      return true;
    }
    return false;
  }
}

/**
 * Merges `inputs` into table `seq`: the values regions are concatenated (one sequential copy
 * each) and the sorted entries merged, their positions shifted by where each input's values went.
 */
export async function mergeTables(storage: Storage, dir: string, inputs: Table[], seq: number, level: number, p: BuildParams): Promise<Table> {
  assert(inputs.length >= 2, 'a merge takes at least two tables');
  const entryCount = inputs.reduce((n, t) => n + t.entryCount, 0);
  if (entryCount > 0xffff_ffff) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `a merged table would hold ${entryCount} entries (at most 2^32-1)`);
  const builder = await TableBuilder.create(storage, dir, {
    seq,
    level,
    entryCount,
    sources: inputs.map((t) => t.seq),
    filterBits: p.filterBitsFor(entryCount),
    filterHashes: p.filterHashes,
  });
  try {
    const cursors: EntryCursor[] = [];
    const chunk = Buffer.allocUnsafe(COPY_CHUNK_BYTES);
    for (const t of inputs) {
      cursors.push(new EntryCursor(t, builder.valuesWritten));
      const h = t.header;
      builder.noteTimes(h.minCompletedAt, h.maxCompletedAt, h.maxExpiresAt);
      for (let off = 0; off < h.valuesBytes; off += COPY_CHUNK_BYTES) {
        if (p.shouldStop()) throw new CompactionStopped();
        const len = Math.min(COPY_CHUNK_BYTES, h.valuesBytes - off);
        await t.readValues(off, len, chunk);
        await builder.addValueBytes(chunk.subarray(0, len));
      }
    }
    for (const c of cursors) await c.start();
    let live = cursors.filter((c) => !c.done);
    let steps = 0;
    while (live.length > 0) {
      let min = live[0] as EntryCursor;
      for (let k = 1; k < live.length; k++) {
        const c = live[k] as EntryCursor;
        if (c.hi >>> 0 < min.hi >>> 0 || (c.hi === min.hi && c.lo >>> 0 < min.lo >>> 0)) min = c;
      }
      await builder.addEntry(min.hi, min.lo, min.base + min.position, Math.min(min.lengthHint, LENGTH_HINT_MAX));
      await min.advance();
      if (min.done) live = live.filter((c) => !c.done);
      if (++steps % MERGE_CHUNK_ENTRIES === 0 && p.shouldStop()) throw new CompactionStopped();
    }
    return await builder.finish();
  } catch (err) {
    await builder.abort();
    throw err;
  }
}
