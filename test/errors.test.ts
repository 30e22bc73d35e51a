// Error registry: every code constructs a SpoolError with the registry's retriable flag, and docs/errors.md lists exactly the registry's codes.
import { describe, it, expect } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CorruptError, ERROR_CODES, SpoolError, type SpoolErrorCode, ioError, isSpoolError } from '../src/errors.js';

const CODES = Object.keys(ERROR_CODES) as SpoolErrorCode[];
const DOCS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'docs', 'errors.md');

describe('ERROR_CODES', () => {
  it('every code builds a SpoolError whose code and retriable match the registry', () => {
    // Proves the constructor wires `code` and `retriable` from ERROR_CODES for each of the codes, and keeps `cause`.
    expect(CODES.length).toBeGreaterThanOrEqual(12);
    for (const code of CODES) {
      const cause = new Error('root');
      const err = new SpoolError(code, `message for ${code}`, { cause });
      expect(err).toBeInstanceOf(Error);
      expect(err.name).toBe('SpoolError');
      expect(err.code).toBe(code);
      expect(err.retriable, code).toBe(ERROR_CODES[code].retriable);
      expect(err.message).toBe(`message for ${code}`);
      expect(err.cause).toBe(cause);
      expect(isSpoolError(err)).toBe(true);
      expect(isSpoolError(err, code)).toBe(true);
      for (const other of CODES) if (other !== code) expect(isSpoolError(err, other)).toBe(false);
    }
  });

  it('codes are stable SPOOL_ERR_ names with a boolean retriable flag and an exit status', () => {
    // Proves the registry's shape so callers can switch on codes and the CLI can map exits.
    for (const code of CODES) {
      expect(code).toMatch(/^SPOOL_ERR_[A-Z_]+$/);
      expect(typeof ERROR_CODES[code].retriable).toBe('boolean');
      expect(Number.isInteger(ERROR_CODES[code].exit) && ERROR_CODES[code].exit > 0).toBe(true);
    }
    // The conditions documented as transient are retriable; damage and bad input never are.
    for (const c of ['SPOOL_ERR_DISK_FULL', 'SPOOL_ERR_IO', 'SPOOL_ERR_LOCKED'] as SpoolErrorCode[]) expect(ERROR_CODES[c].retriable, c).toBe(true);
    for (const c of ['SPOOL_ERR_CORRUPT', 'SPOOL_ERR_INVALID_ARGUMENT', 'SPOOL_ERR_CLOSED', 'SPOOL_ERR_UNKNOWN_VERSION'] as SpoolErrorCode[]) {
      expect(ERROR_CODES[c].retriable, c).toBe(false);
    }
  });

  it('CorruptError is a non-retriable SPOOL_ERR_CORRUPT naming the file and byte position', () => {
    // Proves the subclass keeps the SpoolError contract and carries where the damage is.
    const err = new CorruptError('/var/q/00000000000000000000.log', 4096, 'bad crc');
    expect(err).toBeInstanceOf(SpoolError);
    expect(err.name).toBe('CorruptError');
    expect(err.code).toBe('SPOOL_ERR_CORRUPT');
    expect(err.retriable).toBe(false);
    expect(err.file).toBe('/var/q/00000000000000000000.log');
    expect(err.position).toBe(4096);
    expect(err.message).toContain('/var/q/00000000000000000000.log');
    expect(err.message).toContain('4096');
    expect(err.message).toContain('bad crc');
    expect(isSpoolError(err, 'SPOOL_ERR_CORRUPT')).toBe(true);
  });

  it('ioError maps ENOSPC/EDQUOT to DISK_FULL and everything else to IO, keeping the cause', () => {
    // Proves the OS-error mapping, including values that are not errors at all.
    for (const errno of ['ENOSPC', 'EDQUOT']) {
      const cause = Object.assign(new Error(errno), { code: errno });
      const e = ioError(cause, 'writing');
      expect(e.code).toBe('SPOOL_ERR_DISK_FULL');
      expect(e.retriable).toBe(true);
      expect(e.cause).toBe(cause);
      expect(e.message).toContain('writing');
    }
    const eio = Object.assign(new Error('EIO'), { code: 'EIO' });
    expect(ioError(eio, 'syncing')).toMatchObject({ code: 'SPOOL_ERR_IO', retriable: true, cause: eio });
    expect(ioError(eio, 'syncing').message).toContain('EIO');
    expect(ioError(undefined, 'x').code).toBe('SPOOL_ERR_IO');
    expect(ioError('weird', 'x').message).toContain('unknown');
  });
});

describe('docs/errors.md', () => {
  it('lists every error code (and no code the registry lacks)', () => {
    // Proves docs and registry stay in sync: each ERROR_CODES key appears in docs/errors.md, and every SPOOL_ERR_ name there exists.
    expect(fs.existsSync(DOCS), `docs/errors.md is missing (expected at ${DOCS}); it must document each of: ${CODES.join(', ')}`).toBe(true);
    const text = fs.readFileSync(DOCS, 'utf8');
    const missing = CODES.filter((c) => !new RegExp(`\\b${c}\\b`).test(text));
    expect(missing, `docs/errors.md does not mention: ${missing.join(', ')}`).toEqual([]);
    const documented = new Set(text.match(/\bSPOOL_ERR_[A-Z_]*[A-Z]\b/g) ?? []);
    const unknown = [...documented].filter((c) => !(c in ERROR_CODES));
    expect(unknown, `docs/errors.md mentions codes that ERROR_CODES does not define: ${unknown.join(', ')}`).toEqual([]);
  });
});
