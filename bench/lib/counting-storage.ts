/**
 * A `Storage` that forwards to `nodeStorage` and counts what the log asks of the disk: fdatasyncs
 * (file `sync()`), directory fsyncs, writev calls and bytes written. Passed as the `storage`
 * option of `Log.open`, it gives the benchmarks fsyncs/s and disk MB/s without touching src/.
 */
import { type OpenMode, type Storage, type StorageFile, nodeStorage } from '../../src/log/storage.js';

export interface IoCounters {
  /** StorageFile.sync() calls (fdatasync) that resolved. */
  syncs: number;
  /** Storage.syncDir() calls (directory fsync). */
  dirSyncs: number;
  /** StorageFile.writev() calls. */
  writes: number;
  bytesWritten: number;
  reads: number;
  bytesRead: number;
  opens: number;
  /** Wall time spent awaiting writev() calls, ns (flushes never overlap, so this is a share of the run). */
  writeNs: number;
  /** Wall time spent awaiting sync() calls, ns. */
  syncNs: number;
}

export function zeroCounters(): IoCounters {
  return { syncs: 0, dirSyncs: 0, writes: 0, bytesWritten: 0, reads: 0, bytesRead: 0, opens: 0, writeNs: 0, syncNs: 0 };
}

/** `a - b`, field by field: the I/O of a window between two snapshots. */
export function diffCounters(a: IoCounters, b: IoCounters): IoCounters {
  return {
    syncs: a.syncs - b.syncs,
    dirSyncs: a.dirSyncs - b.dirSyncs,
    writes: a.writes - b.writes,
    bytesWritten: a.bytesWritten - b.bytesWritten,
    reads: a.reads - b.reads,
    bytesRead: a.bytesRead - b.bytesRead,
    opens: a.opens - b.opens,
    writeNs: a.writeNs - b.writeNs,
    syncNs: a.syncNs - b.syncNs,
  };
}

class CountingFile implements StorageFile {
  writevBlocking?: (buffers: readonly Buffer[], position: number) => void;
  syncBlocking?: () => void;

  constructor(
    private readonly inner: StorageFile,
    private readonly c: IoCounters,
  ) {
    // The blocking forms only when the inner file has them (the log checks for them).
    const { writevBlocking, syncBlocking } = inner;
    if (writevBlocking !== undefined && syncBlocking !== undefined) {
      this.writevBlocking = (buffers, position) => {
        const t0 = process.hrtime.bigint();
        writevBlocking.call(inner, buffers, position);
        this.c.writeNs += Number(process.hrtime.bigint() - t0);
        this.c.writes++;
        for (const b of buffers) this.c.bytesWritten += b.length;
      };
      this.syncBlocking = () => {
        const t0 = process.hrtime.bigint();
        syncBlocking.call(inner);
        this.c.syncNs += Number(process.hrtime.bigint() - t0);
        this.c.syncs++;
      };
    }
  }

  get path(): string {
    return this.inner.path;
  }

  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    const n = await this.inner.read(buffer, offset, length, position);
    this.c.reads++;
    this.c.bytesRead += n;
    return n;
  }

  async writev(buffers: readonly Buffer[], position: number): Promise<void> {
    const t0 = process.hrtime.bigint();
    await this.inner.writev(buffers, position);
    this.c.writeNs += Number(process.hrtime.bigint() - t0);
    this.c.writes++;
    for (const b of buffers) this.c.bytesWritten += b.length;
  }

  async sync(): Promise<void> {
    const t0 = process.hrtime.bigint();
    await this.inner.sync();
    this.c.syncNs += Number(process.hrtime.bigint() - t0);
    this.c.syncs++;
  }

  truncate(length: number): Promise<void> {
    return this.inner.truncate(length);
  }

  size(): Promise<number> {
    return this.inner.size();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

export class CountingStorage implements Storage {
  readonly counters: IoCounters = zeroCounters();

  constructor(private readonly inner: Storage = nodeStorage) {}

  /** A copy of the counters now, for `diffCounters`. */
  snapshot(): IoCounters {
    return { ...this.counters };
  }

  async open(filePath: string, mode: OpenMode): Promise<StorageFile> {
    const f = await this.inner.open(filePath, mode);
    this.counters.opens++;
    return new CountingFile(f, this.counters);
  }

  readdir(dir: string): Promise<string[]> {
    return this.inner.readdir(dir);
  }

  mkdir(dir: string): Promise<void> {
    return this.inner.mkdir(dir);
  }

  rename(from: string, to: string): Promise<void> {
    return this.inner.rename(from, to);
  }

  unlink(filePath: string): Promise<void> {
    return this.inner.unlink(filePath);
  }

  async syncDir(dir: string): Promise<void> {
    await this.inner.syncDir(dir);
    this.counters.dirSyncs++;
  }

  exists(filePath: string): Promise<boolean> {
    return this.inner.exists(filePath);
  }
}
