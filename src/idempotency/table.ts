/**
 * Sealed tables (docs/idempotency.md "Table file"): the immutable, sorted home of completed keys.
 *
 * A table holds DONE records (its values region) and one 16-byte entry per record, sorted by key
 * hash. In memory it keeps only its Bloom filter (possibly folded, see bloom.ts) and a directory:
 * for each of 2^dirBits hash prefixes, where its entries start and the CRC of those entries. So:
 * - a negative lookup costs a few filter probes and no I/O, unless the filter answers "maybe";
 * - a positive lookup costs two reads: the directory slot's entries (about 4 KiB), then the record.
 * Tables are written once (`TableBuilder`: temp file, fsync, rename, fsync the directory) and then
 * only read, merged into bigger tables, or deleted whole when every key in them has expired.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { CorruptError, SpoolError, ioError } from '../errors.js';
import type { Storage, StorageFile } from '../log/index.js';
import { BloomFilter } from './bloom.js';
import {
  DIR_BITS_MAX,
  DIR_ENTRIES_PER_SLOT,
  ENTRY_BYTES,
  LENGTH_HINT_MAX,
  TABLE_HEADER_BYTES,
  type TableHeader,
  type TableLayout,
  checkRecord,
  crc32,
  decodeTableHeader,
  encodeTableHeader,
  seqName,
  tableLayout,
} from './format.js';
import { type ReadCounters, SharedFile, readFully } from './io.js';

export function dirBitsFor(entryCount: number): number {
  if (entryCount <= DIR_ENTRIES_PER_SLOT) return 0;
  return Math.min(DIR_BITS_MAX, Math.ceil(Math.log2(entryCount / DIR_ENTRIES_PER_SLOT)));
}

function slotOf(hi: number, dirBits: number): number {
  return dirBits === 0 ? 0 : hi >>> (32 - dirBits);
}

/** An entry found by hash: where its record is in the values region, and how long it probably is. */
export interface EntryRef {
  position: number;
  lengthHint: number;
}

export class Table {
  readonly path: string;
  readonly header: TableHeader;
  readonly layout: TableLayout;
  /** starts[s]..starts[s+1] are the entries of directory slot s. */
  private readonly starts: Uint32Array;
  private readonly slotCrcs: Uint32Array;
  readonly filter: BloomFilter;
  readonly sources: number[];
  readonly shared: SharedFile;
  /** Set while a merge is reading this table, so two merges never take the same input. */
  merging = false;

  private constructor(filePath: string, file: StorageFile, header: TableHeader, starts: Uint32Array, slotCrcs: Uint32Array, filter: BloomFilter, sources: number[]) {
    this.path = filePath;
    this.header = header;
    this.layout = tableLayout(header);
    this.starts = starts;
    this.slotCrcs = slotCrcs;
    this.filter = filter;
    this.sources = sources;
    this.shared = new SharedFile(file);
  }

  get seq(): number {
    return this.header.seq;
  }
  get entryCount(): number {
    return this.header.entryCount;
  }
  get fileBytes(): number {
    return this.layout.end;
  }
  /** Memory held by the directory (the filter is counted apart). */
  get directoryBytes(): number {
    return this.starts.byteLength + this.slotCrcs.byteLength;
  }

  /** Opens a table file and loads its filter and directory, checking their CRCs and the file's size. */
  static async open(storage: Storage, filePath: string): Promise<Table> {
    let file: StorageFile;
    try {
      file = await storage.open(filePath, 'read');
    } catch (err) {
      throw ioError(err, `opening ${filePath}`);
    }
    try {
      const hb = Buffer.alloc(TABLE_HEADER_BYTES);
      const got = await readFully(file, hb, 0, TABLE_HEADER_BYTES, 0);
      const decoded = decodeTableHeader(hb.subarray(0, got));
      if (!decoded.ok) {
        if (decoded.version !== undefined) throw new SpoolError('SPOOL_ERR_UNKNOWN_VERSION', `${filePath}: table format version ${decoded.version} is unknown`);
        throw new CorruptError(filePath, 0, decoded.reason);
      }
      const h = decoded.header;
      const layout = tableLayout(h);
      const size = await file.size();
      if (size !== layout.end) throw new CorruptError(filePath, Math.min(size, layout.end), `file is ${size} bytes, its header says ${layout.end}`);
      const meta = Buffer.alloc(layout.entriesOff - layout.sourcesOff);
      await readFully(file, meta, 0, meta.length, layout.sourcesOff);
      const sourcesBuf = meta.subarray(0, layout.directoryOff - layout.sourcesOff);
      const dirBuf = meta.subarray(layout.directoryOff - layout.sourcesOff, layout.filterOff - layout.sourcesOff);
      const filterBuf = meta.subarray(layout.filterOff - layout.sourcesOff);
      if (crc32(sourcesBuf) !== h.sourcesCrc) throw new CorruptError(filePath, layout.sourcesOff, 'sources CRC mismatch');
      if (crc32(dirBuf) !== h.directoryCrc) throw new CorruptError(filePath, layout.directoryOff, 'directory CRC mismatch');
      if (crc32(filterBuf) !== h.filterCrc) throw new CorruptError(filePath, layout.filterOff, 'filter CRC mismatch');
      const sources: number[] = [];
      for (let i = 0; i < h.sourceCount; i++) sources.push(sourcesBuf.readUInt32LE(8 * i) + sourcesBuf.readUInt32LE(8 * i + 4) * 0x1_0000_0000);
      const slots = 2 ** h.dirBits;
      const starts = new Uint32Array(slots + 1);
      const slotCrcs = new Uint32Array(slots);
      for (let s = 0; s <= slots; s++) starts[s] = dirBuf.readUInt32LE(4 * s);
      for (let s = 0; s < slots; s++) slotCrcs[s] = dirBuf.readUInt32LE(4 * (slots + 1) + 4 * s);
      if (starts[0] !== 0 || starts[slots] !== h.entryCount) throw new CorruptError(filePath, layout.directoryOff, 'directory does not span the entries');
      for (let s = 0; s < slots; s++) {
        if ((starts[s] as number) > (starts[s + 1] as number)) throw new CorruptError(filePath, layout.directoryOff + 4 * s, 'directory is not ascending');
      }
      const words = new Uint32Array(filterBuf.length / 4);
      Buffer.from(words.buffer).set(filterBuf);
      const filter = new BloomFilter(h.filterBits, h.filterHashes, words);
      return new Table(filePath, file, h, starts, slotCrcs, filter, sources);
    } catch (err) {
      await file.close().catch(() => {});
      throw err;
    }
  }

  /** The entries whose hash equals (hi, lo). Reads one directory slot; CRC-checked. */
  async find(hi: number, lo: number, counters: ReadCounters): Promise<EntryRef[]> {
    const slot = slotOf(hi, this.header.dirBits);
    const a = this.starts[slot] as number;
    const b = this.starts[slot + 1] as number;
    if (a === b) return [];
    const bytes = (b - a) * ENTRY_BYTES;
    const buf = Buffer.allocUnsafe(bytes);
    const position = this.layout.entriesOff + a * ENTRY_BYTES;
    const got = await this.shared.use((f) => readFully(f, buf, 0, bytes, position));
    counters.lookupReads++;
    counters.lookupBytesRead += got;
    if (got !== bytes || crc32(buf) !== this.slotCrcs[slot]) throw new CorruptError(this.path, position, `entries of directory slot ${slot} fail their CRC`);
    // Lower bound by binary search, then every equal entry (collisions are possible).
    hi >>>= 0;
    lo >>>= 0;
    let l = 0;
    let r = b - a;
    while (l < r) {
      const m = (l + r) >>> 1;
      const mh = buf.readUInt32LE(m * ENTRY_BYTES);
      const ml = buf.readUInt32LE(m * ENTRY_BYTES + 4);
      if (mh < hi || (mh === hi && ml < lo)) l = m + 1;
      else r = m;
    }
    const out: EntryRef[] = [];
    for (let i = l; i < b - a; i++) {
      const o = i * ENTRY_BYTES;
      if (buf.readUInt32LE(o) !== hi || buf.readUInt32LE(o + 4) !== lo) break;
      const w3 = buf.readUInt32LE(o + 12);
      out.push({ position: buf.readUInt32LE(o + 8) + (w3 & 0xffff) * 0x1_0000_0000, lengthHint: w3 >>> 16 });
    }
    return out;
  }

  /** Reads and checks the record at `position` of the values region. Never returns bytes whose CRC fails. */
  async readRecord(ref: EntryRef, recordBytesMax: number, counters: ReadCounters): Promise<Buffer> {
    const at = this.layout.valuesOff + ref.position;
    const avail = this.layout.end - at;
    let len = Math.min(avail, ref.lengthHint === LENGTH_HINT_MAX ? 4096 : ref.lengthHint);
    for (let attempt = 0; attempt < 2; attempt++) {
      const buf = Buffer.allocUnsafe(len);
      const got = await this.shared.use((f) => readFully(f, buf, 0, len, at));
      counters.lookupReads++;
      counters.lookupBytesRead += got;
      const c = checkRecord(buf, 0, got, recordBytesMax);
      if (c.status === 'ok') return buf.subarray(0, c.recordBytes);
      if (c.status === 'bad') throw new CorruptError(this.path, at, c.reason);
      if (c.need > avail || got < len) break;
      len = c.need;
    }
    throw new CorruptError(this.path, at, 'record runs past the end of the table');
  }

  /** Reads `count` entries from index `start` into `buf` (for merges). */
  async readEntries(start: number, count: number, buf: Buffer): Promise<void> {
    const bytes = count * ENTRY_BYTES;
    const got = await this.shared.use((f) => readFully(f, buf, 0, bytes, this.layout.entriesOff + start * ENTRY_BYTES));
    if (got !== bytes) throw new CorruptError(this.path, this.layout.entriesOff + start * ENTRY_BYTES, 'entries region is short');
  }

  get dirBits(): number {
    return this.header.dirBits;
  }

  /** The entry index range of directory slot `slot` (merges read and CRC-check whole slots). */
  slotRange(slot: number): [number, number] {
    return [this.starts[slot] as number, this.starts[slot + 1] as number];
  }
  slotCrc(slot: number): number {
    return this.slotCrcs[slot] as number;
  }

  /** Reads `length` bytes of the values region from `offset` (for merges). */
  async readValues(offset: number, length: number, buf: Buffer): Promise<void> {
    const got = await this.shared.use((f) => readFully(f, buf, 0, length, this.layout.valuesOff + offset));
    if (got !== length) throw new CorruptError(this.path, this.layout.valuesOff + offset, 'values region is short');
  }

  /** Closes the file once in-flight reads finish. */
  retire(): Promise<void> {
    return this.shared.retire();
  }
}

/** What a builder needs to know before the first entry arrives (the layout is fixed up front). */
export interface TableParams {
  seq: number;
  level: number;
  entryCount: number;
  sources: number[];
  filterBits: number;
  filterHashes: number;
}

const WRITE_BUFFER_BYTES = 1024 * 1024;

/**
 * Writes one table file. Entries must come in ascending hash order (asserted); values are the
 * DONE records, appended in any order, and entries point into them. `finish()` writes the
 * directory, filter and header, fsyncs, renames into place and fsyncs the directory.
 */
export class TableBuilder {
  private readonly layout: TableLayout;
  private readonly filter: BloomFilter;
  private readonly dirBits: number;
  private readonly starts: Uint32Array;
  private readonly slotCrcs: Uint32Array;
  private entriesAdded = 0;
  private currentSlot = 0;
  private slotCrc = 0;
  private lastHi = 0;
  private lastLo = 0;
  private entryBuf = Buffer.allocUnsafe(WRITE_BUFFER_BYTES);
  private entryBufUsed = 0;
  private entryWritePos: number;
  private valueBuf = Buffer.allocUnsafe(WRITE_BUFFER_BYTES);
  private valueBufUsed = 0;
  private valuesBytes = 0;
  private minCompletedAt = Number.MAX_SAFE_INTEGER;
  private maxCompletedAt = 0;
  private maxExpiresAt = 0;
  private done = false;

  private constructor(
    private readonly storage: Storage,
    readonly finalPath: string,
    readonly tempPath: string,
    private readonly file: StorageFile,
    private readonly params: TableParams,
  ) {
    this.dirBits = dirBitsFor(params.entryCount);
    // valuesBytes is not known yet; it only moves `end`, which the layout's other offsets ignore.
    this.layout = tableLayout({ sourceCount: params.sources.length, dirBits: this.dirBits, filterBits: params.filterBits, entryCount: params.entryCount, valuesBytes: 0 });
    this.filter = new BloomFilter(params.filterBits, params.filterHashes);
    this.starts = new Uint32Array(2 ** this.dirBits + 1);
    this.slotCrcs = new Uint32Array(2 ** this.dirBits);
    this.entryWritePos = this.layout.entriesOff;
  }

  static async create(storage: Storage, dir: string, params: TableParams): Promise<TableBuilder> {
    assert(Number.isSafeInteger(params.entryCount) && params.entryCount >= 1 && params.entryCount <= 0xffff_ffff, 'a table holds 1..2^32-1 entries');
    const finalPath = path.join(dir, seqName(params.seq, 'tbl'));
    const tempPath = `${finalPath}.tmp`;
    try {
      if (await storage.exists(tempPath)) await storage.unlink(tempPath);
      const file = await storage.open(tempPath, 'create');
      return new TableBuilder(storage, finalPath, tempPath, file, params);
    } catch (err) {
      throw ioError(err, `creating ${tempPath}`);
    }
  }

  /** Appends one record to the values region; returns its position there. */
  async addValue(record: Buffer, completedAt: number, expiresAt: number): Promise<number> {
    const position = this.valuesBytes;
    this.minCompletedAt = Math.min(this.minCompletedAt, completedAt);
    this.maxCompletedAt = Math.max(this.maxCompletedAt, completedAt);
    this.maxExpiresAt = Math.max(this.maxExpiresAt, expiresAt);
    await this.addValueBytes(record);
    return position;
  }

  /** Appends raw values-region bytes (a merge copies whole regions); the caller accounts for times. */
  async addValueBytes(bytes: Buffer): Promise<void> {
    if (this.valueBufUsed + bytes.length > this.valueBuf.length) await this.flushValues();
    if (bytes.length >= this.valueBuf.length) {
      assert.equal(this.valueBufUsed, 0, 'the value buffer was flushed before a large write');
      await this.write([bytes], this.layout.valuesOff + this.valuesBytes);
    } else {
      bytes.copy(this.valueBuf, this.valueBufUsed);
      this.valueBufUsed += bytes.length;
    }
    this.valuesBytes += bytes.length;
  }

  noteTimes(minCompletedAt: number, maxCompletedAt: number, maxExpiresAt: number): void {
    this.minCompletedAt = Math.min(this.minCompletedAt, minCompletedAt);
    this.maxCompletedAt = Math.max(this.maxCompletedAt, maxCompletedAt);
    this.maxExpiresAt = Math.max(this.maxExpiresAt, maxExpiresAt);
  }

  get valuesWritten(): number {
    return this.valuesBytes;
  }

  /** Adds one entry; entries must arrive in ascending (hi, lo) order. */
  async addEntry(hi: number, lo: number, position: number, recordBytes: number): Promise<void> {
    hi >>>= 0;
    lo >>>= 0;
    assert(this.entriesAdded < this.params.entryCount, 'more entries than the table was sized for');
    if (this.entriesAdded > 0) assert(hi > this.lastHi || (hi === this.lastHi && lo >= this.lastLo), 'table entries must be added in hash order');
    assert(Number.isSafeInteger(position) && position >= 0 && position < 2 ** 48, 'value position fits in 48 bits');
    this.lastHi = hi;
    this.lastLo = lo;
    const slot = slotOf(hi, this.dirBits);
    if (slot !== this.currentSlot) this.closeSlotsUpTo(slot);
    if (this.entryBufUsed + ENTRY_BYTES > this.entryBuf.length) await this.flushEntries();
    const o = this.entryBufUsed;
    const e = this.entryBuf;
    e.writeUInt32LE(hi, o);
    e.writeUInt32LE(lo, o + 4);
    e.writeUInt32LE(position % 0x1_0000_0000, o + 8);
    e.writeUInt32LE(((Math.floor(position / 0x1_0000_0000) & 0xffff) | (Math.min(recordBytes, LENGTH_HINT_MAX) << 16)) >>> 0, o + 12);
    this.slotCrc = crc32(e.subarray(o, o + ENTRY_BYTES), this.slotCrc);
    this.entryBufUsed += ENTRY_BYTES;
    this.filter.add(hi, lo);
    this.entriesAdded++;
  }

  /** Seals slot `currentSlot` and every empty slot before `slot`. */
  private closeSlotsUpTo(slot: number): void {
    assert(slot > this.currentSlot);
    this.slotCrcs[this.currentSlot] = this.slotCrc;
    for (let s = this.currentSlot + 1; s <= slot; s++) this.starts[s] = this.entriesAdded;
    this.currentSlot = slot;
    this.slotCrc = 0;
  }

  private async flushEntries(): Promise<void> {
    if (this.entryBufUsed === 0) return;
    await this.write([this.entryBuf.subarray(0, this.entryBufUsed)], this.entryWritePos);
    this.entryWritePos += this.entryBufUsed;
    this.entryBufUsed = 0;
  }

  private async flushValues(): Promise<void> {
    if (this.valueBufUsed === 0) return;
    await this.write([this.valueBuf.subarray(0, this.valueBufUsed)], this.layout.valuesOff + this.valuesBytes - this.valueBufUsed);
    this.valueBufUsed = 0;
  }

  private async write(bufs: Buffer[], position: number): Promise<void> {
    try {
      await this.file.writev(bufs, position);
    } catch (err) {
      throw ioError(err, `writing ${this.tempPath}`);
    }
  }

  /** Writes the rest, fsyncs, renames the file into place and fsyncs the directory; returns the opened table. */
  async finish(): Promise<Table> {
    assert(!this.done);
    assert.equal(this.entriesAdded, this.params.entryCount, 'a table gets exactly the entries it was sized for');
    const slots = 2 ** this.dirBits;
    this.slotCrcs[this.currentSlot] = this.slotCrc;
    for (let s = this.currentSlot + 1; s <= slots; s++) this.starts[s] = this.entriesAdded;
    await this.flushEntries();
    await this.flushValues();
    const sources = Buffer.alloc(8 * this.params.sources.length);
    this.params.sources.forEach((s, i) => {
      sources.writeUInt32LE(s % 0x1_0000_0000, 8 * i);
      sources.writeUInt32LE(Math.floor(s / 0x1_0000_0000), 8 * i + 4);
    });
    const dir = Buffer.alloc(this.layout.directoryBytes);
    for (let s = 0; s <= slots; s++) dir.writeUInt32LE(this.starts[s] as number, 4 * s);
    for (let s = 0; s < slots; s++) dir.writeUInt32LE(this.slotCrcs[s] as number, 4 * (slots + 1) + 4 * s);
    const filterBytes = Buffer.from(this.filter.words.buffer, this.filter.words.byteOffset, this.filter.words.byteLength);
    const header: TableHeader = {
      seq: this.params.seq,
      level: this.params.level,
      entryCount: this.params.entryCount,
      filterBits: this.params.filterBits,
      filterHashes: this.params.filterHashes,
      dirBits: this.dirBits,
      minCompletedAt: this.minCompletedAt,
      maxCompletedAt: this.maxCompletedAt,
      maxExpiresAt: this.maxExpiresAt,
      valuesBytes: this.valuesBytes,
      sourceCount: this.params.sources.length,
      sourcesCrc: crc32(sources),
      directoryCrc: crc32(dir),
      filterCrc: crc32(filterBytes),
    };
    await this.write([encodeTableHeader(header), sources, dir, filterBytes], 0);
    try {
      await this.file.sync();
      await this.file.close();
      this.done = true;
      await this.storage.rename(this.tempPath, this.finalPath);
      await this.storage.syncDir(path.dirname(this.finalPath));
    } catch (err) {
      throw ioError(err, `sealing ${this.finalPath}`);
    }
    return Table.open(this.storage, this.finalPath);
  }

  /** Abandons the table: closes and removes the temp file. */
  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    await this.file.close().catch(() => {});
    await this.storage.unlink(this.tempPath).catch(() => {});
  }
}
