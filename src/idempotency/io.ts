/**
 * Small I/O helpers over the `Storage` seam, and the read counters that let tests and benchmarks
 * prove what touched the disk.
 */
import assert from 'node:assert/strict';
import type { StorageFile } from '../log/index.js';

/** Reads issued by lookups. Negative lookups that pass every filter read nothing. */
export interface ReadCounters {
  /** pread calls made to answer claim/complete/release/lookup. */
  lookupReads: number;
  lookupBytesRead: number;
}

/** Reads exactly `length` bytes at `position` unless the file ends first; returns the bytes read. */
export async function readFully(file: StorageFile, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  let got = 0;
  while (got < length) {
    const n = await file.read(buf, offset + got, length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/**
 * A file handle shared by readers and closed by its owner only once the last reader is done, so a
 * table or journal can be retired (merged away, expired, sealed) while a lookup is still reading it.
 */
export class SharedFile {
  private readers = 0;
  private retired = false;
  private closed: Promise<void> | null = null;
  private readonly waiters: (() => void)[] = [];

  constructor(readonly file: StorageFile) {}

  /**
   * Takes a reference: the file stays open until `unref`. Returns false (and takes nothing) once
   * the file is retired. Lookups take references on every source they may read, synchronously,
   * so a source retired mid-lookup is closed only after the lookup is done with it.
   */
  ref(): boolean {
    if (this.retired) return false;
    this.readers++;
    return true;
  }

  unref(): void {
    assert(this.readers > 0, 'unref without ref');
    this.readers--;
    if (this.retired && this.readers === 0) void this.closeNow();
  }

  /** Runs `f` with the file held open (a reference for the duration of the call). */
  async use<T>(f: (file: StorageFile) => Promise<T>): Promise<T> {
    assert(this.closed === null, 'read of a closed shared file (take a reference first)');
    this.readers++;
    try {
      return await f(this.file);
    } finally {
      this.unref();
    }
  }

  /** No new readers will come; close once the current ones finish. Resolves when closed. */
  retire(): Promise<void> {
    this.retired = true;
    if (this.readers === 0) return this.closeNow();
    return new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  private closeNow(): Promise<void> {
    this.closed ??= this.file
      .close()
      .catch(() => {
        // A close error on a handle whose data is already synced (or only read) loses nothing.
      })
      .then(() => {
        for (const w of this.waiters.splice(0)) w();
      });
    return this.closed;
  }
}
