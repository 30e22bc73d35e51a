/**
 * One owner per data directory. The lock is a file holding the owner's pid (and, once a server
 * runs, the address it serves), created with O_EXCL. A lock whose pid is no longer alive is stale
 * and is taken over. Hand-written rather than proper-lockfile: that library records no pid,
 * and the error must name the owner.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SpoolError } from '../errors.js';

export const LOCK_FILE = 'LOCK';

export interface LockInfo {
  pid: number;
  startedAt: string;
  /** Where a server owning this dir listens, when one does (read by the CLI to find it). */
  serving?: { socket?: string; tcp?: string };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function readLock(dataDir: string): LockInfo | null {
  try {
    const info = JSON.parse(fs.readFileSync(path.join(dataDir, LOCK_FILE), 'utf8')) as LockInfo;
    return typeof info.pid === 'number' ? info : null;
  } catch {
    return null;
  }
}

/** Returns the lock's info if a live process holds it. */
export function liveOwner(dataDir: string): LockInfo | null {
  const info = readLock(dataDir);
  return info !== null && alive(info.pid) ? info : null;
}

export class DirLock {
  private constructor(
    readonly dataDir: string,
    private info: LockInfo,
  ) {}

  static acquire(dataDir: string): DirLock {
    const file = path.join(dataDir, LOCK_FILE);
    const info: LockInfo = { pid: process.pid, startedAt: new Date().toISOString() };
    for (let attempt = 0; attempt < 3; attempt++) {
      // Written whole to a private file first, then linked into place: link fails if LOCK
      // exists, and a LOCK that exists always holds a complete pid (never a half-written one).
      const tmp = `${file}.${process.pid}.${attempt}`;
      fs.writeFileSync(tmp, JSON.stringify(info), { mode: 0o644 });
      try {
        fs.linkSync(tmp, file);
        return new DirLock(dataDir, info);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      } finally {
        fs.rmSync(tmp, { force: true });
      }
      const owner = readLock(dataDir);
      if (owner !== null && owner.pid !== process.pid && alive(owner.pid)) {
        throw new SpoolError('SPOOL_ERR_LOCKED', `data dir ${dataDir} is in use by pid ${owner.pid} (since ${owner.startedAt})`);
      }
      if (owner !== null && owner.pid === process.pid) {
        throw new SpoolError('SPOOL_ERR_LOCKED', `data dir ${dataDir} is already open in this process (pid ${process.pid})`);
      }
      // Stale (dead owner, or a torn lock file): remove it and race for it again.
      try {
        fs.unlinkSync(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    throw new SpoolError('SPOOL_ERR_LOCKED', `could not take the lock of ${dataDir}`);
  }

  /** Records where this owner serves, so other commands can connect instead of opening the dir. */
  advertise(serving: LockInfo['serving']): void {
    this.info = { ...this.info, serving };
    const file = path.join(this.dataDir, LOCK_FILE);
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(this.info));
    fs.renameSync(`${file}.tmp`, file);
  }

  release(): void {
    const owner = readLock(this.dataDir);
    if (owner?.pid === process.pid) fs.rmSync(path.join(this.dataDir, LOCK_FILE), { force: true });
  }
}
