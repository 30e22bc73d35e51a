/**
 * An in-memory `Storage` for power-cut simulations (after SQLite's test6.c and leveldb's
 * fault_injection_test.cc).
 *
 * Model:
 * - Every file is an inode with a *durable* image (as of its last successful `sync`), the *current*
 *   image every read sees (the page cache), and the list of pending operations (writes, truncates)
 *   that turn the first into the second. Invariant: current = durable + pending, applied in order.
 * - Every directory has a *durable* map of names (as of its last `syncDir`) and a *current* one.
 *   Creating, renaming and unlinking change only the current map. Name durability and content
 *   durability are independent, as in POSIX.
 * - `truncate` both shrinks and extends. Extending is sparse, as `ftruncate` is on ext4: the new
 *   bytes read as zeros and take no space (`totalBytes`, `diskLimitBytes`) until written, so a
 *   write into preallocated space can still fail with ENOSPC. The new size, like every size
 *   change, is volatile until `sync`: a crash may leave either size.
 * - `crash(rng)` is a power cut: each pending write is applied, dropped or torn at a 512-byte sector
 *   boundary (the last applied sector possibly garbled), each pending truncate applied or dropped,
 *   every directory reverts to its durable names, and every open handle goes dead (EBADF).
 *   `crashClean()` drops all unsynced state without tearing.
 * - Paths are POSIX and resolved against `/`: `data/x` and `/data/x` name the same file.
 *   Parent directories must exist (create them with `mkdir`, or durably with `mkdirRaw`), as on a
 *   real disk; `writeFileRaw` creates missing parents durably.
 */
import path from 'node:path';
import { random } from '../../soak/messages.js';
import type { OpenMode, Storage, StorageFile } from '../../src/log/storage.js';

export const SECTOR_SIZE = 512;

/** Operation names passed to the fail predicate. */
export type StorageOp =
  | 'open'
  | 'readdir'
  | 'mkdir'
  | 'rename'
  | 'unlink'
  | 'syncDir'
  | 'exists'
  | 'read'
  | 'write'
  | 'sync'
  | 'truncate'
  | 'size'
  | 'close';

/** What `failNext` can target: one operation, or `any` operation at all. */
export type FaultOp = StorageOp | 'any';

export type FailPredicate = (op: string, path: string) => string | null;

export type Rng = () => number;

/** A small seeded PRNG (mulberry32) returning numbers in [0, 1): the soak's. */
export const seededRandom: (seed: number) => Rng = random;

const ERRNO: Record<string, [number, string]> = {
  ENOENT: [-2, 'no such file or directory'],
  EIO: [-5, 'i/o error'],
  EBADF: [-9, 'bad file descriptor'],
  EEXIST: [-17, 'file already exists'],
  ENOTDIR: [-20, 'not a directory'],
  EISDIR: [-21, 'illegal operation on a directory'],
  EINVAL: [-22, 'invalid argument'],
  ENOSPC: [-28, 'no space left on device'],
  ENOTEMPTY: [-39, 'directory not empty'],
};

/** An Error shaped like node's fs errors: `code`, `errno`, `syscall`, `path`. */
export function errnoError(code: string, syscall: string, filePath?: string, detail?: string): NodeJS.ErrnoException {
  const [errno, text] = ERRNO[code] ?? [-1, 'simulated error'];
  const where = filePath === undefined ? '' : ` '${filePath}'`;
  const err = new Error(`${code}: ${detail ?? text}, ${syscall}${where}`) as NodeJS.ErrnoException;
  err.code = code;
  err.errno = errno;
  err.syscall = syscall;
  if (filePath !== undefined) err.path = filePath;
  return err;
}

/** A growable byte array: capacity grows geometrically, `len` is the logical size. */
class ByteBuf {
  buf: Buffer;
  len: number;

  constructor(capacity = 0, len = 0) {
    this.buf = Buffer.alloc(capacity);
    this.len = len;
  }

  static from(data: Buffer): ByteBuf {
    const b = new ByteBuf(data.length, data.length);
    data.copy(b.buf, 0);
    return b;
  }

  view(): Buffer {
    return this.buf.subarray(0, this.len);
  }

  private ensure(capacity: number): void {
    if (capacity <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(capacity, this.buf.length * 2, 256));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  /** Sets the size; growing zero-fills. */
  setLength(n: number): void {
    if (n > this.len) {
      this.ensure(n);
      this.buf.fill(0, this.len, n);
    }
    this.len = n;
  }

  write(position: number, data: Buffer, start = 0, end = data.length): void {
    const n = end - start;
    if (n <= 0) return;
    if (position > this.len) this.setLength(position);
    this.ensure(position + n);
    data.copy(this.buf, position, start, end);
    if (position + n > this.len) this.len = position + n;
  }
}

type PendingOp = { kind: 'write'; position: number; data: Buffer } | { kind: 'truncate'; length: number };

class Inode {
  /** Current content (what reads see). */
  cur: ByteBuf;
  /** Content as of the last successful sync. */
  durable: ByteBuf;
  pending: PendingOp[] = [];
  /** Number of current directory entries naming this inode. */
  links = 0;
  /**
   * Bytes of the current image that take disk space: everything up to the end of the furthest
   * write. A `truncate` that extends the file leaves a sparse zero tail beyond this.
   */
  backed: number;

  constructor(content?: Buffer) {
    this.cur = content ? ByteBuf.from(content) : new ByteBuf();
    this.durable = content ? ByteBuf.from(content) : new ByteBuf();
    this.backed = this.cur.len;
  }
}

class Dir {
  cur = new Map<string, Node>();
  durable = new Map<string, Node>();
}

type Node = Inode | Dir;

function splitPath(p: string): string[] {
  return path.posix
    .resolve('/', p)
    .split('/')
    .filter((s) => s.length > 0);
}

function normalize(p: string): string {
  return path.posix.resolve('/', p);
}

const tick = (): Promise<void> => Promise.resolve();

interface FailRule {
  op: FaultOp;
  code: string;
  remaining: number;
}

class FaultyFile implements StorageFile {
  closed = false;

  constructor(
    private readonly fs: FaultyStorage,
    readonly path: string,
    readonly inode: Inode,
    private readonly writable: boolean,
    readonly epoch: number,
  ) {}

  private async enter(op: StorageOp): Promise<void> {
    this.check(op);
    await tick();
    this.check(op);
    this.fs.inject(op, this.path);
  }

  /** `enter` for the blocking forms: the same checks and injected faults, without a tick. */
  private enterNow(op: StorageOp): void {
    this.check(op);
    this.fs.inject(op, this.path);
  }

  private check(op: StorageOp): void {
    if (this.closed || this.epoch !== this.fs.epoch) {
      throw errnoError('EBADF', op, this.path, this.closed ? 'file is closed' : 'handle invalidated by crash');
    }
  }

  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    await this.enter('read');
    if (offset < 0 || length < 0 || offset + length > buffer.length || position < 0) {
      throw new RangeError(`read out of range: offset ${offset}, length ${length}, buffer ${buffer.length}, position ${position}`);
    }
    const cur = this.inode.cur;
    const n = Math.max(0, Math.min(length, cur.len - position));
    if (n > 0) cur.buf.copy(buffer, offset, position, position + n);
    return n;
  }

  async writev(buffers: readonly Buffer[], position: number): Promise<void> {
    await this.enter('write');
    this.write(buffers, position);
  }

  /** The blocking form (log.ts "blocking commit"): the same write, with no tick in between. */
  writevBlocking(buffers: readonly Buffer[], position: number): void {
    this.enterNow('write');
    this.write(buffers, position);
  }

  private write(buffers: readonly Buffer[], position: number): void {
    if (!this.writable) throw errnoError('EBADF', 'write', this.path, 'file opened read-only');
    if (position < 0) throw new RangeError(`negative write position ${position}`);
    let total = 0;
    for (const b of buffers) total += b.length;
    const inode = this.inode;
    // Writing into a sparse (preallocated) tail takes space just like growing the file.
    const grow = Math.max(0, position + total - inode.backed);
    if (grow > 0 && total > 0 && inode.links > 0 && this.fs.totalBytes + grow > this.fs.diskLimitBytes) {
      throw errnoError('ENOSPC', 'write', this.path);
    }
    if (total > 0) {
      const data = buffers.length === 1 ? Buffer.from(buffers[0]!) : Buffer.concat(buffers as Buffer[], total);
      inode.cur.write(position, data);
      inode.pending.push({ kind: 'write', position, data });
      inode.backed += grow;
      if (inode.links > 0) this.fs.totalBytes += grow;
    }
    this.fs.writeCount++;
    this.fs.bytesWritten += total;
  }

  async sync(): Promise<void> {
    await this.enter('sync');
    const inode = this.inode;
    const ticks = this.fs.syncTicks;
    if (ticks > 0) {
      // A slow disk: work piles up behind this sync. It covers only what was written before it began.
      const covered = inode.pending.length;
      for (let i = 0; i < ticks; i++) await tick();
      this.check('sync');
      for (const op of inode.pending.slice(0, covered)) applyOp(inode.durable, op);
      inode.pending = inode.pending.slice(covered);
    } else {
      for (const op of inode.pending) applyOp(inode.durable, op);
      inode.pending = [];
    }
    this.fs.syncCount++;
  }

  /** The blocking form: nothing else runs meanwhile, so a slow disk (`syncTicks`) changes nothing. */
  syncBlocking(): void {
    this.enterNow('sync');
    for (const op of this.inode.pending) applyOp(this.inode.durable, op);
    this.inode.pending = [];
    this.fs.syncCount++;
    this.fs.blockingSyncCount++;
  }

  async truncate(length: number): Promise<void> {
    await this.enter('truncate');
    if (!this.writable) throw errnoError('EINVAL', 'ftruncate', this.path, 'file opened read-only');
    if (length < 0) throw errnoError('EINVAL', 'ftruncate', this.path);
    const inode = this.inode;
    // Extending is sparse: only shrinking below the written end changes the space used.
    const backed = Math.min(inode.backed, length);
    inode.cur.setLength(length);
    inode.pending.push({ kind: 'truncate', length });
    if (inode.links > 0) this.fs.totalBytes += backed - inode.backed;
    inode.backed = backed;
  }

  async size(): Promise<number> {
    await this.enter('size');
    return this.inode.cur.len;
  }

  async close(): Promise<void> {
    await this.enter('close');
    this.closed = true;
  }
}

function applyOp(target: ByteBuf, op: PendingOp): void {
  if (op.kind === 'write') target.write(op.position, op.data);
  else target.setLength(op.length);
}

export class FaultyStorage implements Storage {
  /** A write that would make the total current size of all files exceed this fails with ENOSPC. */
  diskLimitBytes = Infinity;
  /** Successful file syncs. */
  syncCount = 0;
  /** Of those, syncs made through the blocking form (`syncBlocking`). */
  blockingSyncCount = 0;
  /** Microtask ticks a file sync takes before it makes its writes durable (a slow disk). */
  syncTicks = 0;
  /** Successful directory syncs. */
  dirSyncCount = 0;
  /** Successful `writev` calls. */
  writeCount = 0;
  /** Bytes passed to successful `writev` calls. */
  bytesWritten = 0;
  /** Number of crashes so far; handles from an earlier epoch are dead. */
  epoch = 0;
  /** Space used by all linked files: their sizes, less sparse (preallocated, never written) tails. What `diskLimitBytes` is checked against. */
  totalBytes = 0;

  private root = new Dir();
  private rules: FailRule[] = [];
  private predicate: FailPredicate | null = null;

  // ---- fault injection -------------------------------------------------------------------------

  /** Makes the next `count` operations matching `op` reject with `code`; they have no effect. */
  failNext(op: FaultOp, code: 'EIO' | 'ENOSPC' | (string & {}), count = 1): void {
    this.rules.push({ op, code, remaining: count });
  }

  /** Arbitrary injection: return an errno code to fail the operation with, or null. */
  setFailPredicate(fn: FailPredicate | null): void {
    this.predicate = fn;
  }

  /** Drops every pending `failNext` rule. */
  clearFaults(): void {
    this.rules = [];
    this.predicate = null;
  }

  /** @internal Throws the injected error for this operation, if any. */
  inject(op: StorageOp, filePath: string): void {
    if (this.predicate) {
      const code = this.predicate(op, filePath);
      if (code) throw errnoError(code, op, filePath, 'injected fault');
    }
    for (let i = 0; i < this.rules.length; i++) {
      const rule = this.rules[i]!;
      if (rule.op !== 'any' && rule.op !== op) continue;
      rule.remaining--;
      if (rule.remaining <= 0) this.rules.splice(i, 1);
      throw errnoError(rule.code, op, filePath, 'injected fault');
    }
  }

  private async enter(op: StorageOp, filePath: string): Promise<void> {
    const epoch = this.epoch;
    await tick();
    if (epoch !== this.epoch) throw errnoError('EIO', op, filePath, 'storage crashed during the operation');
    this.inject(op, filePath);
  }

  // ---- path resolution -------------------------------------------------------------------------

  private lookup(segments: readonly string[]): Node | undefined {
    let node: Node = this.root;
    for (const seg of segments) {
      if (!(node instanceof Dir)) return undefined;
      const next: Node | undefined = node.cur.get(seg);
      if (next === undefined) return undefined;
      node = next;
    }
    return node;
  }

  /** The parent directory of `filePath` and the last name; ENOENT/ENOTDIR if the parent is missing. */
  private parentOf(filePath: string, syscall: string): { dir: Dir; name: string } {
    const segs = splitPath(filePath);
    const name = segs.pop();
    if (name === undefined) throw errnoError('EISDIR', syscall, filePath);
    const parent = this.lookup(segs);
    if (parent === undefined) throw errnoError('ENOENT', syscall, filePath);
    if (!(parent instanceof Dir)) throw errnoError('ENOTDIR', syscall, filePath);
    return { dir: parent, name };
  }

  private dirAt(dirPath: string, syscall: string): Dir {
    const node = this.lookup(splitPath(dirPath));
    if (node === undefined) throw errnoError('ENOENT', syscall, dirPath);
    if (!(node instanceof Dir)) throw errnoError('ENOTDIR', syscall, dirPath);
    return node;
  }

  private unlinkNode(node: Node): void {
    if (node instanceof Inode) {
      node.links--;
      if (node.links === 0) this.totalBytes -= node.backed;
    }
  }

  // ---- Storage ---------------------------------------------------------------------------------

  async open(filePath: string, mode: OpenMode): Promise<StorageFile> {
    await this.enter('open', filePath);
    const { dir, name } = this.parentOf(filePath, 'open');
    let node = dir.cur.get(name);
    if (mode === 'create') {
      if (node !== undefined) throw errnoError('EEXIST', 'open', filePath);
      node = new Inode();
      node.links = 1;
      dir.cur.set(name, node);
    } else if (node === undefined) {
      throw errnoError('ENOENT', 'open', filePath);
    }
    if (node instanceof Dir) throw errnoError('EISDIR', 'open', filePath);
    return new FaultyFile(this, filePath, node, mode !== 'read', this.epoch);
  }

  async readdir(dir: string): Promise<string[]> {
    await this.enter('readdir', dir);
    return [...this.dirAt(dir, 'scandir').cur.keys()];
  }

  async mkdir(dir: string): Promise<void> {
    await this.enter('mkdir', dir);
    let node: Dir = this.root;
    for (const seg of splitPath(dir)) {
      const next = node.cur.get(seg);
      if (next === undefined) {
        const created = new Dir();
        node.cur.set(seg, created);
        node = created;
      } else if (next instanceof Dir) {
        node = next;
      } else {
        throw errnoError('EEXIST', 'mkdir', dir);
      }
    }
  }

  async rename(from: string, to: string): Promise<void> {
    await this.enter('rename', from);
    const src = this.parentOf(from, 'rename');
    const node = src.dir.cur.get(src.name);
    if (node === undefined) throw errnoError('ENOENT', 'rename', from);
    const dst = this.parentOf(to, 'rename');
    const existing = dst.dir.cur.get(dst.name);
    if (existing === node) return;
    if (node instanceof Dir) {
      // A directory may not move into itself.
      const fromSegs = splitPath(from);
      const toSegs = splitPath(to);
      if (toSegs.length > fromSegs.length && fromSegs.every((s, i) => toSegs[i] === s)) {
        throw errnoError('EINVAL', 'rename', from);
      }
      if (existing instanceof Inode) throw errnoError('ENOTDIR', 'rename', to);
      if (existing instanceof Dir && existing.cur.size > 0) throw errnoError('ENOTEMPTY', 'rename', to);
    } else if (existing instanceof Dir) {
      throw errnoError('EISDIR', 'rename', to);
    }
    if (existing !== undefined) this.unlinkNode(existing);
    src.dir.cur.delete(src.name);
    dst.dir.cur.set(dst.name, node);
  }

  async unlink(filePath: string): Promise<void> {
    await this.enter('unlink', filePath);
    const { dir, name } = this.parentOf(filePath, 'unlink');
    const node = dir.cur.get(name);
    if (node === undefined) throw errnoError('ENOENT', 'unlink', filePath);
    if (node instanceof Dir) throw errnoError('EISDIR', 'unlink', filePath);
    dir.cur.delete(name);
    this.unlinkNode(node);
  }

  async syncDir(dir: string): Promise<void> {
    await this.enter('syncDir', dir);
    const d = this.dirAt(dir, 'fsync');
    d.durable = new Map(d.cur);
    this.dirSyncCount++;
  }

  async exists(filePath: string): Promise<boolean> {
    await this.enter('exists', filePath);
    return this.lookup(splitPath(filePath)) !== undefined;
  }

  // ---- crashes ---------------------------------------------------------------------------------

  /**
   * Power cut. Each pending write is independently applied (1/3), dropped (1/3) or torn (1/3): only
   * its first k sectors (k >= 1, sectors aligned to absolute file offsets) reach the disk, and with
   * probability 1/2 the bytes of the last applied sector are garbage. Garbage is confined to the
   * torn write's own bytes: data made durable before is never damaged. Pending truncates are
   * applied or dropped (1/2). Directories revert to their last `syncDir`. Open handles die.
   */
  crash(rng: Rng): void {
    this.revert((inode) => {
      for (const op of inode.pending) {
        if (op.kind === 'truncate') {
          if (rng() < 0.5) inode.durable.setLength(op.length);
          continue;
        }
        const r = rng();
        if (r < 1 / 3) {
          inode.durable.write(op.position, op.data);
        } else if (r < 2 / 3) {
          // dropped
        } else {
          tornWrite(inode.durable, op.position, op.data, rng);
        }
      }
    });
  }

  /** Power cut that drops every unsynced write, truncate and directory change, without tearing. */
  crashClean(): void {
    this.revert(() => {});
  }

  /** Settles each dirty inode's durable image with `settle`, then makes current = durable everywhere. */
  private revert(settle: (inode: Inode) => void): void {
    this.epoch++;
    const seenDirs = new Set<Dir>();
    const seenInodes = new Set<Inode>();
    const stack: Dir[] = [this.root];
    this.totalBytes = 0;
    while (stack.length > 0) {
      const dir = stack.pop()!;
      if (seenDirs.has(dir)) continue;
      seenDirs.add(dir);
      dir.cur = new Map(dir.durable);
      for (const child of dir.durable.values()) {
        if (child instanceof Dir) {
          stack.push(child);
          continue;
        }
        if (!seenInodes.has(child)) {
          seenInodes.add(child);
          child.links = 0;
          if (child.pending.length > 0) settleInode(child, settle);
          // What survived may be shorter; a sparse tail that survived stays sparse.
          child.backed = Math.min(child.backed, child.cur.len);
          this.totalBytes += child.backed;
        }
        child.links++;
      }
    }
  }

  // ---- test helpers ----------------------------------------------------------------------------

  /** Current content of a file (what a read would see), as a copy. */
  readFileSync(filePath: string): Buffer {
    const node = this.lookup(splitPath(filePath));
    if (node === undefined) throw errnoError('ENOENT', 'open', filePath);
    if (node instanceof Dir) throw errnoError('EISDIR', 'read', filePath);
    return Buffer.from(node.cur.view());
  }

  /** Durable content of a file, as a copy: what `crashClean()` would leave (ignores directory state). */
  readDurableSync(filePath: string): Buffer {
    const node = this.lookup(splitPath(filePath));
    if (node === undefined) throw errnoError('ENOENT', 'open', filePath);
    if (node instanceof Dir) throw errnoError('EISDIR', 'read', filePath);
    return Buffer.from(node.durable.view());
  }

  /** Creates a directory and its parents, durably. */
  mkdirRaw(dirPath: string): void {
    this.ensureDirDurable(splitPath(dirPath), dirPath);
  }

  private ensureDirDurable(segments: readonly string[], original: string): Dir {
    let dir = this.root;
    for (const seg of segments) {
      let next = dir.cur.get(seg);
      if (next === undefined) next = new Dir();
      if (!(next instanceof Dir)) throw errnoError('ENOTDIR', 'mkdir', original);
      dir.cur.set(seg, next);
      dir.durable.set(seg, next);
      dir = next;
    }
    return dir;
  }

  /** Sets a file's content, durably, creating the file and its parent directories durably. */
  writeFileRaw(filePath: string, data: Buffer): void {
    const segs = splitPath(filePath);
    const name = segs.pop();
    if (name === undefined) throw errnoError('EISDIR', 'open', filePath);
    const dir = this.ensureDirDurable(segs, filePath);
    const existing = dir.cur.get(name);
    if (existing instanceof Dir) throw errnoError('EISDIR', 'open', filePath);
    let inode: Inode;
    if (existing === undefined) {
      inode = new Inode(data);
      inode.links = 1;
      this.totalBytes += data.length;
    } else {
      inode = existing;
      this.totalBytes += data.length - inode.backed;
      inode.cur = ByteBuf.from(data);
      inode.durable = ByteBuf.from(data);
      inode.pending = [];
      inode.backed = data.length;
    }
    dir.cur.set(name, inode);
    dir.durable.set(name, inode);
  }

  /** Every file path in the current tree, absolute and sorted. */
  listFiles(): string[] {
    const out: string[] = [];
    const walk = (dir: Dir, prefix: string): void => {
      for (const [name, node] of dir.cur) {
        const p = `${prefix}/${name}`;
        if (node instanceof Dir) walk(node, p);
        else out.push(p);
      }
    };
    walk(this.root, '');
    return out.sort();
  }

  /** XORs the byte at `position` with `mask`, in both the current and the durable image. */
  flipByte(filePath: string, position: number, mask = 0xff): void {
    const node = this.lookup(splitPath(filePath));
    if (node === undefined) throw errnoError('ENOENT', 'open', filePath);
    if (node instanceof Dir) throw errnoError('EISDIR', 'write', filePath);
    if (position < 0 || position >= node.cur.len) {
      throw new RangeError(`flipByte: position ${position} outside ${normalize(filePath)} (size ${node.cur.len})`);
    }
    node.cur.buf[position] = node.cur.buf[position]! ^ mask;
    if (position < node.durable.len) node.durable.buf[position] = node.durable.buf[position]! ^ mask;
    // Keep current = durable + pending: pending writes covering the byte carry the flip too.
    for (const op of node.pending) {
      if (op.kind === 'write' && position >= op.position && position < op.position + op.data.length) {
        op.data[position - op.position] = op.data[position - op.position]! ^ mask;
      }
    }
  }
}

/**
 * Settles an inode's pending operations into its durable image, then makes the current image equal
 * to it. Only bytes a pending operation could have touched can differ, so only those are copied:
 * crash cost is proportional to the unsynced bytes, not to the file size.
 */
function settleInode(inode: Inode, settle: (inode: Inode) => void): void {
  let boundary = inode.durable.len;
  for (const op of inode.pending) if (op.kind === 'truncate') boundary = Math.min(boundary, op.length);
  settle(inode);
  const nd = inode.durable;
  const cur = inode.cur;
  cur.setLength(nd.len);
  for (const op of inode.pending) {
    if (op.kind !== 'write') continue;
    const end = Math.min(op.position + op.data.length, nd.len);
    if (end > op.position) nd.buf.copy(cur.buf, op.position, op.position, end);
  }
  if (nd.len > boundary) nd.buf.copy(cur.buf, boundary, boundary, nd.len);
  inode.pending = [];
}

/** Applies the first k sectors of a write (k >= 1), possibly garbling the last applied sector. */
function tornWrite(target: ByteBuf, position: number, data: Buffer, rng: Rng): void {
  const end = position + data.length;
  const firstSector = Math.floor(position / SECTOR_SIZE);
  const sectors = Math.ceil(end / SECTOR_SIZE) - firstSector;
  const k = 1 + Math.floor(rng() * sectors);
  const appliedEnd = Math.min(end, (firstSector + k) * SECTOR_SIZE);
  target.write(position, data, 0, appliedEnd - position);
  if (rng() < 0.5) {
    const garbleStart = Math.max(position, Math.floor((appliedEnd - 1) / SECTOR_SIZE) * SECTOR_SIZE);
    for (let i = garbleStart; i < appliedEnd; i++) target.buf[i] = Math.floor(rng() * 256);
  }
}
