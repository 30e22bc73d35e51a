/**
 * The one seam through which `src/log` touches the disk. The node implementation below is what
 * production uses; tests swap in `test/support/faulty-storage.ts`, which keeps unsynced writes
 * volatile and can crash, tear writes, and inject EIO or ENOSPC.
 *
 * Durability contract the log relies on (and the faulty storage models):
 * - `write`/`writev` data is volatile until `sync()` on that file resolves.
 * - Creating, renaming or unlinking a file is volatile until `syncDir()` on its directory resolves.
 * - `truncate` is volatile until `sync()`.
 */
import fs from 'node:fs';
import path from 'node:path';

export interface StorageFile {
  readonly path: string;
  /** Reads up to `length` bytes at `position` into `buffer` at `offset`; returns the bytes read (0 at end of file). */
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<number>;
  /** Writes all of `buffers`, back to back, starting at `position`. */
  writev(buffers: readonly Buffer[], position: number): Promise<void>;
  /** fdatasync: makes every write to this file durable. */
  sync(): Promise<void>;
  /**
   * Optional blocking forms of `writev` and `sync`, with the same contract, run on the calling
   * thread (log.ts "blocking commit": a short lone flush skips two thread-pool round trips).
   * Both or neither; they throw what the promise forms would reject with.
   */
  writevBlocking?(buffers: readonly Buffer[], position: number): void;
  syncBlocking?(): void;
  truncate(length: number): Promise<void>;
  size(): Promise<number>;
  close(): Promise<void>;
}

export type OpenMode =
  /** Read only; the file must exist. */
  | 'read'
  /** Read and write; the file must exist. */
  | 'write'
  /** Read and write; creates the file, failing if it exists. */
  | 'create';

export interface Storage {
  open(filePath: string, mode: OpenMode): Promise<StorageFile>;
  /** Names in `dir`, unsorted. Throws ENOENT if the directory does not exist. */
  readdir(dir: string): Promise<string[]>;
  /** Creates `dir` and its parents if needed. Durable only after `syncDir` of the parent. */
  mkdir(dir: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  unlink(filePath: string): Promise<void>;
  /** fsync of a directory: makes creates, renames and unlinks inside it durable. */
  syncDir(dir: string): Promise<void>;
  /** True if the path exists (file or directory). */
  exists(filePath: string): Promise<boolean>;
  /** Removes an empty directory. */
  rmdir?(dir: string): Promise<void>;
}

function call<T>(fn: (cb: (err: NodeJS.ErrnoException | null, value: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    fn((err, value) => (err ? reject(err) : resolve(value)));
  });
}

function callVoid(fn: (cb: (err: NodeJS.ErrnoException | null) => void) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    fn((err) => (err ? reject(err) : resolve()));
  });
}

const OPEN_FLAGS: Record<OpenMode, string> = { read: 'r', write: 'r+', create: 'wx+' };

/** The callback API rather than fs/promises: it is measurably cheaper per call on the append path. */
class NodeFile implements StorageFile {
  constructor(
    readonly path: string,
    private readonly fd: number,
  ) {}

  read(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    return call<number>((cb) => fs.read(this.fd, buffer, offset, length, position, cb));
  }

  async writev(buffers: readonly Buffer[], position: number): Promise<void> {
    let remaining = buffers.reduce((sum, b) => sum + b.length, 0);
    let list = buffers as Buffer[];
    let pos = position;
    // writev may write less than asked (large writes, signals); finish the rest.
    while (remaining > 0) {
      const written = await call<number>((cb) => fs.writev(this.fd, list, pos, cb));
      remaining -= written;
      pos += written;
      if (remaining > 0) list = dropBytes(list, written);
    }
  }

  sync(): Promise<void> {
    return callVoid((cb) => fs.fdatasync(this.fd, cb));
  }

  writevBlocking(buffers: readonly Buffer[], position: number): void {
    let remaining = buffers.reduce((sum, b) => sum + b.length, 0);
    let list = buffers as Buffer[];
    let pos = position;
    while (remaining > 0) {
      const written = fs.writevSync(this.fd, list, pos);
      remaining -= written;
      pos += written;
      if (remaining > 0) list = dropBytes(list, written);
    }
  }

  syncBlocking(): void {
    fs.fdatasyncSync(this.fd);
  }

  truncate(length: number): Promise<void> {
    return callVoid((cb) => fs.ftruncate(this.fd, length, cb));
  }

  async size(): Promise<number> {
    const st = await call<fs.Stats>((cb) => fs.fstat(this.fd, cb));
    return st.size;
  }

  close(): Promise<void> {
    return callVoid((cb) => fs.close(this.fd, cb));
  }
}

function dropBytes(buffers: Buffer[], count: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = count;
  for (const b of buffers) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

export class NodeStorage implements Storage {
  async open(filePath: string, mode: OpenMode): Promise<StorageFile> {
    const fd = await call<number>((cb) => fs.open(filePath, OPEN_FLAGS[mode], 0o644, cb));
    return new NodeFile(filePath, fd);
  }

  readdir(dir: string): Promise<string[]> {
    return fs.promises.readdir(dir);
  }

  async mkdir(dir: string): Promise<void> {
    await fs.promises.mkdir(dir, { recursive: true });
  }

  rename(from: string, to: string): Promise<void> {
    return fs.promises.rename(from, to);
  }

  unlink(filePath: string): Promise<void> {
    return fs.promises.unlink(filePath);
  }

  async syncDir(dir: string): Promise<void> {
    const fd = await call<number>((cb) => fs.open(dir, 'r', cb));
    try {
      await callVoid((cb) => fs.fsync(fd, cb));
    } finally {
      await callVoid((cb) => fs.close(fd, cb));
    }
  }

  rmdir(dir: string): Promise<void> {
    return fs.promises.rmdir(dir);
  }

  async exists(filePath: string): Promise<boolean> {
    try {
      await fs.promises.stat(filePath);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }
}

export const nodeStorage: Storage = new NodeStorage();

/** Writes a small file atomically: temp file, fsync, rename over the target, fsync the directory. */
export async function writeFileAtomic(storage: Storage, filePath: string, data: Buffer): Promise<void> {
  const tmp = `${filePath}.tmp`;
  if (await storage.exists(tmp)) await storage.unlink(tmp);
  const file = await storage.open(tmp, 'create');
  try {
    await file.writev([data], 0);
    await file.sync();
  } finally {
    await file.close();
  }
  await storage.rename(tmp, filePath);
  await storage.syncDir(path.dirname(filePath));
}

/** Reads a whole (small) file. */
export async function readWholeFile(storage: Storage, filePath: string): Promise<Buffer> {
  const file = await storage.open(filePath, 'read');
  try {
    const size = await file.size();
    const buf = Buffer.allocUnsafe(size);
    let got = 0;
    while (got < size) {
      const n = await file.read(buf, got, size - got, got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  } finally {
    await file.close();
  }
}
