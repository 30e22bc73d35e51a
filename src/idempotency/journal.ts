/**
 * Journals (docs/idempotency.md "Journal file"): the append-only, authoritative record of recent
 * leases, completions and releases. Exactly one journal takes writes; its DONE records are indexed
 * in memory (`ActiveMap`). When it rolls, live leases are copied into the next journal, and this
 * one is sealed into a table and deleted.
 *
 * A journal file is born whole: header plus carried-over leases are written to a temp file,
 * fsynced, renamed into place and the directory fsynced. So a journal that exists always has a
 * valid header and every lease that was live when it was created.
 */
import path from 'node:path';
import { CorruptError, SpoolError, ioError } from '../errors.js';
import type { Storage, StorageFile } from '../log/index.js';
import { ActiveMap } from './active-map.js';
import { type DecodedRecord, JOURNAL_HEADER_BYTES, checkJournalHeader, checkRecord, decodeRecord, encodeJournalHeader, seqName } from './format.js';
import { type ReadCounters, SharedFile, readFully } from './io.js';

const SCAN_CHUNK_BYTES = 1024 * 1024;

export type RecordVisitor = (rec: DecodedRecord, position: number, raw: Buffer) => void | Promise<void>;

export interface JournalOpenOptions {
  keysMax: number;
  recordBytesMax: number;
  /**
   * Bad bytes this close to the end are a torn write and are truncated; null: any bad byte is
   * corruption (a journal that stopped taking writes before the crash was fully synced).
   */
  tornTailBytesMax: number | null;
}

export class Journal {
  readonly path: string;
  /** The durable end: every byte before it was fsynced. */
  size: number;
  /** Where appends began (after the header and carried leases): the journal rolls on bytes appended past it. */
  readonly baseSize: number;
  readonly map: ActiveMap;
  /** The retention bucket of its first DONE record (tables never span buckets by much). */
  bucket: number | null = null;
  minCompletedAt = Number.MAX_SAFE_INTEGER;
  maxCompletedAt = 0;
  maxExpiresAt = 0;
  readonly shared: SharedFile;

  private constructor(
    readonly seq: number,
    filePath: string,
    readonly file: StorageFile,
    size: number,
    baseSize: number,
    keysMax: number,
  ) {
    this.path = filePath;
    this.size = size;
    this.baseSize = baseSize;
    this.map = new ActiveMap(keysMax);
    this.shared = new SharedFile(file);
  }

  get doneCount(): number {
    return this.map.size;
  }

  /** Creates journal `seq` holding `records` (carried leases), atomically. */
  static async create(storage: Storage, dir: string, seq: number, records: Buffer[], keysMax: number): Promise<Journal> {
    const filePath = path.join(dir, seqName(seq, 'jnl'));
    const tmp = `${filePath}.tmp`;
    let file: StorageFile | null = null;
    try {
      if (await storage.exists(tmp)) await storage.unlink(tmp);
      const t = await storage.open(tmp, 'create');
      const data = [encodeJournalHeader(seq), ...records];
      await t.writev(data, 0);
      await t.sync();
      await t.close();
      await storage.rename(tmp, filePath);
      await storage.syncDir(dir);
      file = await storage.open(filePath, 'write');
      const size = data.reduce((n, b) => n + b.length, 0);
      return new Journal(seq, filePath, file, size, size, keysMax);
    } catch (err) {
      if (file !== null) await file.close().catch(() => {});
      throw ioError(err, `creating ${filePath}`);
    }
  }

  /**
   * Opens journal `seq`, calling `visit` for every valid record in order, and truncates a torn
   * tail when allowed. Returns the journal and how many bytes were cut.
   */
  static async open(storage: Storage, dir: string, seq: number, opts: JournalOpenOptions, visitor: (journal: Journal) => RecordVisitor): Promise<{ journal: Journal; truncatedBytes: number }> {
    const filePath = path.join(dir, seqName(seq, 'jnl'));
    let file: StorageFile;
    try {
      file = await storage.open(filePath, 'write');
    } catch (err) {
      throw ioError(err, `opening ${filePath}`);
    }
    try {
      const size = await file.size();
      const hb = Buffer.alloc(JOURNAL_HEADER_BYTES);
      const got = await readFully(file, hb, 0, JOURNAL_HEADER_BYTES, 0);
      const h = checkJournalHeader(hb.subarray(0, got));
      if (!h.ok) {
        if (h.version !== undefined) throw new SpoolError('SPOOL_ERR_UNKNOWN_VERSION', `${filePath}: journal format version ${h.version} is unknown`);
        throw new CorruptError(filePath, 0, h.reason);
      }
      if (h.seq !== seq) throw new CorruptError(filePath, 16, `header names journal ${h.seq}`);
      const journal = new Journal(seq, filePath, file, size, JOURNAL_HEADER_BYTES, opts.keysMax);
      const scan = await scanRecords(file, JOURNAL_HEADER_BYTES, size, opts.recordBytesMax, visitor(journal));
      let truncatedBytes = 0;
      if (scan.bad !== null) {
        const badBytes = size - scan.validEnd;
        if (opts.tornTailBytesMax === null || badBytes > opts.tornTailBytesMax) {
          throw new CorruptError(filePath, scan.validEnd, `${scan.bad}, ${badBytes} bytes before the end${opts.tornTailBytesMax === null ? ' of a journal that was sealed off' : ''}`);
        }
        try {
          await file.truncate(scan.validEnd);
          await file.sync();
        } catch (err) {
          throw ioError(err, `truncating the torn tail of ${filePath}`);
        }
        truncatedBytes = badBytes;
        journal.size = scan.validEnd;
      }
      return { journal, truncatedBytes };
    } catch (err) {
      await file.close().catch(() => {});
      throw err;
    }
  }

  /** Indexes a DONE record that is now durable at `position`. */
  noteDone(hi: number, lo: number, position: number, completedAt: number, expiresAt: number, bucket: number): void {
    this.map.insert(hi, lo, position);
    this.bucket ??= bucket;
    if (completedAt < this.minCompletedAt) this.minCompletedAt = completedAt;
    if (completedAt > this.maxCompletedAt) this.maxCompletedAt = completedAt;
    if (expiresAt > this.maxExpiresAt) this.maxExpiresAt = expiresAt;
  }

  /** Reads and checks the durable record at `position`. */
  async readRecord(position: number, recordBytesMax: number, counters: ReadCounters): Promise<Buffer> {
    let len = Math.min(4096, this.size - position);
    for (let attempt = 0; attempt < 2; attempt++) {
      const buf = Buffer.allocUnsafe(len);
      const got = await this.shared.use((f) => readFully(f, buf, 0, len, position));
      counters.lookupReads++;
      counters.lookupBytesRead += got;
      const c = checkRecord(buf, 0, got, recordBytesMax);
      if (c.status === 'ok') return buf.subarray(0, c.recordBytes);
      if (c.status === 'bad') throw new CorruptError(this.path, position, c.reason);
      if (position + c.need > this.size) break;
      len = c.need;
    }
    throw new CorruptError(this.path, position, 'record runs past the durable end of the journal');
  }

  /** Reads every durable record in order (sealing). */
  scan(recordBytesMax: number, visit: RecordVisitor): Promise<{ validEnd: number; bad: string | null }> {
    return this.shared.use((f) => scanRecords(f, JOURNAL_HEADER_BYTES, this.size, recordBytesMax, visit));
  }

  retire(): Promise<void> {
    return this.shared.retire();
  }
}

/**
 * Walks the records in [start, end) in large chunks, stopping at the first bytes that are not a
 * valid record. Returns where valid records end and, if it stopped early, why.
 */
export async function scanRecords(file: StorageFile, start: number, end: number, recordBytesMax: number, visit: RecordVisitor): Promise<{ validEnd: number; bad: string | null }> {
  let pos = start;
  let buf = Buffer.allocUnsafe(SCAN_CHUNK_BYTES);
  while (pos < end) {
    const want = Math.min(buf.length, end - pos);
    const got = await readFully(file, buf, 0, want, pos);
    if (got === 0) return { validEnd: pos, bad: 'file shorter than its size' };
    let off = 0;
    for (;;) {
      if (off === got) break;
      const c = checkRecord(buf, off, got, recordBytesMax);
      if (c.status === 'ok') {
        await visit(decodeRecord(buf, off), pos + off, buf.subarray(off, off + c.recordBytes));
        off += c.recordBytes;
        continue;
      }
      if (c.status === 'bad') return { validEnd: pos + off, bad: c.reason };
      // Short: the record runs past this chunk, or past the end of the file.
      if (pos + off + c.need > end) return { validEnd: pos + off, bad: 'record cut off at the end of the file' };
      if (off === 0) buf = Buffer.allocUnsafe(Math.max(c.need, buf.length * 2));
      break;
    }
    pos += off;
  }
  return { validEnd: pos, bad: null };
}
