/**
 * `spool verify`: checks every checksum of every log under the data dir (queue messages, group
 * state, delayed messages) read-only, without the lock; exits 1 when anything is bad.
 * `spool repair`: takes the data dir's lock and opens each log with repair, reporting what recovery did.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { DirLock } from '../../broker/lock.js';
import { SpoolError } from '../../errors.js';
import { Log, type RecoveryReport } from '../../log/index.js';
import { type ReadOnlyVerifyReport, findLogDirs, listSegmentBases, verifyLogDirReadOnly } from '../../log/tail.js';
import { type CommonOptions, common, usageError } from '../common.js';
import type { CliIo } from '../io.js';
import { emit, paint, progress } from '../output.js';

function checkDataDir(dataDir: string): string {
  const abs = path.resolve(dataDir);
  if (!fs.existsSync(abs)) throw new SpoolError('SPOOL_ERR_NOT_FOUND', `no data dir ${abs}`);
  return abs;
}

export interface VerifyResult {
  dataDir: string;
  ok: boolean;
  logs: (ReadOnlyVerifyReport & { log: string })[];
}

export async function verifyDataDir(dataDir: string, onLog: (done: number, total: number) => void = () => {}): Promise<VerifyResult> {
  const root = checkDataDir(dataDir);
  const dirs = await findLogDirs(root);
  const logs: VerifyResult['logs'] = [];
  for (const dir of dirs) {
    const report = await verifyLogDirReadOnly(dir);
    logs.push({ log: path.relative(root, dir), ...report });
    onLog(logs.length, dirs.length);
  }
  return { dataDir: root, ok: logs.every((l) => l.ok), logs };
}

export function renderVerify(r: VerifyResult, io: CliIo): string {
  const p = paint(io);
  const lines: string[] = [];
  for (const l of r.logs) {
    const tag = l.ok ? p.green('ok ') : p.red('BAD');
    lines.push(`${tag} ${l.log}: ${l.segments} segment${l.segments === 1 ? '' : 's'}, ${l.records} records, ${l.bytes} bytes${l.tornTail ? ` (${l.tornTail.bytes} bytes at the tail not complete yet)` : ''}`);
    for (const b of l.badRanges) lines.push(`    bad bytes ${b.start}..${b.end} in ${path.relative(r.dataDir, b.file)}: ${b.reason}`);
    for (const i of l.badIndexes) lines.push(`    bad or missing index ${i} (rebuildable: spool repair)`);
  }
  const bad = r.logs.filter((l) => !l.ok).length;
  lines.push(bad === 0 ? `${r.logs.length} logs verified, all good` : `${bad} of ${r.logs.length} logs have problems`);
  return lines.join('\n');
}

export interface RepairResult {
  dataDir: string;
  logs: {
    log: string;
    /** Bytes cut from the active segment's tail. */
    truncatedBytes: number;
    truncatedAt: RecoveryReport['truncatedAt'];
    /** Offsets of valid records cut because bad bytes came before them. */
    lostRange: RecoveryReport['lostRange'];
    /** Index files rebuilt (missing ones at open, damaged ones when first read). */
    rebuiltIndexes: string[];
    indexesRebuilt: number;
    removedFiles: string[];
    checkpointIgnored: string | null;
    /** Bad ranges still there after repair (in sealed segments, which repair does not cut). */
    stillBad: number;
    error: string | null;
  }[];
}

/** Opens every log with `repair: true` under the data dir's lock, then reads each sealed segment once so damaged indexes are rebuilt. */
export async function repairDataDir(dataDir: string, onLog: (done: number, total: number) => void = () => {}): Promise<RepairResult> {
  const root = checkDataDir(dataDir);
  const lock = DirLock.acquire(root);
  try {
    const dirs = await findLogDirs(root);
    const logs: RepairResult['logs'] = [];
    for (const dir of dirs) {
      const entry: RepairResult['logs'][number] = {
        log: path.relative(root, dir),
        truncatedBytes: 0,
        truncatedAt: null,
        lostRange: null,
        rebuiltIndexes: [],
        indexesRebuilt: 0,
        removedFiles: [],
        checkpointIgnored: null,
        stillBad: 0,
        error: null,
      };
      try {
        const { log, recovery } = await Log.open(dir, { repair: true, create: false });
        try {
          for (const base of (await listSegmentBases(dir)).slice(0, -1)) {
            if (base >= log.startOffset && base < log.endOffset) await log.read(base, { maxRecords: 1 }).catch(() => []);
          }
          const after = await log.verify();
          entry.truncatedBytes = recovery.truncatedBytes;
          entry.truncatedAt = recovery.truncatedAt;
          entry.lostRange = recovery.lostRange;
          entry.rebuiltIndexes = recovery.rebuiltIndexes;
          entry.indexesRebuilt = log.stats().indexesRebuilt;
          entry.removedFiles = recovery.removedFiles;
          entry.checkpointIgnored = recovery.checkpointIgnored;
          entry.stillBad = after.badRanges.length;
        } finally {
          await log.close();
        }
      } catch (err) {
        entry.error = err instanceof SpoolError ? `${err.code}: ${err.message}` : (err as Error).message;
      }
      logs.push(entry);
      onLog(logs.length, dirs.length);
    }
    return { dataDir: root, logs };
  } finally {
    lock.release();
  }
}

export function renderRepair(r: RepairResult): string {
  const lines: string[] = [];
  for (const l of r.logs) {
    const did: string[] = [];
    if (l.truncatedBytes > 0) did.push(`truncated ${l.truncatedBytes} bytes${l.truncatedAt ? ` at byte ${l.truncatedAt.position} of ${path.basename(l.truncatedAt.file)} (${l.truncatedAt.reason})` : ''}`);
    if (l.lostRange) did.push(`lost offsets ${l.lostRange.fromOffset}..${l.lostRange.toOffset}`);
    if (l.indexesRebuilt > 0) did.push(`rebuilt ${l.indexesRebuilt} index${l.indexesRebuilt === 1 ? '' : 'es'}`);
    if (l.removedFiles.length > 0) did.push(`removed ${l.removedFiles.join(', ')}`);
    if (l.checkpointIgnored) did.push(`ignored checkpoint (${l.checkpointIgnored})`);
    if (l.stillBad > 0) did.push(`${l.stillBad} bad ranges remain in sealed segments`);
    if (l.error) did.push(`FAILED: ${l.error}`);
    lines.push(`${l.log}: ${did.length === 0 ? 'nothing to do' : did.join('; ')}`);
  }
  const failed = r.logs.filter((l) => l.error !== null || l.stillBad > 0).length;
  lines.push(`${r.logs.length} logs checked${failed > 0 ? `, ${failed} could not be fully repaired` : ''}`);
  return lines.join('\n');
}

export function registerVerify(program: Command, io: CliIo): void {
  const verify = program.command('verify').description('check every checksum of every log under the data dir, read-only (works while a broker runs)');
  common(verify, ['spool verify', 'spool verify --data /var/lib/spool --json']);
  verify.action(async (opts: CommonOptions) => {
    if (opts.broker !== undefined) usageError(verify, 'verify reads the files under --data; --broker does not apply');
    const root = checkDataDir(opts.data);
    const bar = progress(io, 'verifying', (await findLogDirs(root)).length, 'logs');
    let result: VerifyResult;
    try {
      result = await verifyDataDir(opts.data, () => bar.increment());
    } finally {
      bar.stop();
    }
    emit(io, opts.json, result, (d) => renderVerify(d, io));
    if (!result.ok) {
      const bad = result.logs.filter((l) => !l.ok).length;
      throw new SpoolError('SPOOL_ERR_CORRUPT', `${bad} log${bad === 1 ? '' : 's'} under ${result.dataDir} ha${bad === 1 ? 's' : 've'} bad data`);
    }
  });

  const repair = program.command('repair').description('truncate torn tails, rebuild indexes and report what changed (needs the data dir: stop the broker first)');
  common(repair, ['spool repair', 'spool repair --data /var/lib/spool --json']);
  repair.action(async (opts: CommonOptions) => {
    if (opts.broker !== undefined) usageError(repair, 'repair works on the files under --data; --broker does not apply');
    const root = checkDataDir(opts.data);
    const bar = progress(io, 'repairing', (await findLogDirs(root)).length, 'logs');
    let result: RepairResult;
    try {
      result = await repairDataDir(opts.data, () => bar.increment());
    } finally {
      bar.stop();
    }
    emit(io, opts.json, result, renderRepair);
    const failed = result.logs.filter((l) => l.error !== null);
    if (failed.length > 0) throw new SpoolError('SPOOL_ERR_CORRUPT', `${failed.length} log${failed.length === 1 ? '' : 's'} could not be repaired`);
  });
}
