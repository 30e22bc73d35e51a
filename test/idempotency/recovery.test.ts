// Recovery's decision table (docs/idempotency.md "Recovery"), one case per crash point and kind of damage: torn journal tails are cut, leftovers of seals and merges are removed, damage elsewhere is SPOOL_ERR_CORRUPT and never a wrong answer.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SpoolError } from '../../src/errors.js';
import { nodeStorage, type Storage } from '../../src/log/index.js';
import { TABLE_HEADER_BYTES, crc32, decodeTableHeader, tableLayout } from '../../src/idempotency/format.js';
import type { IdempotencyStore } from '../../src/idempotency/index.js';
import { StoreHarness, fakeClock, listStore } from './helpers.js';

const h = new StoreHarness();
afterEach(() => h.cleanup());

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof SpoolError) return e.code;
    throw e;
  }
}

async function fill(s: IdempotencyStore, from: number, n: number): Promise<void> {
  await Promise.all(Array.from({ length: n }, (_, i) => s.complete(`k${from + i}`, `v${from + i}`)));
}

async function expectAll(s: IdempotencyStore, from: number, n: number): Promise<void> {
  for (let i = from; i < from + n; i++) expect(await s.lookup(`k${i}`), `k${i}`).toEqual({ status: 'done', result: `v${i}` });
}

/** A storage whose renames of table temp files fail: a crash between writing a table and publishing it. */
function failingTableRenames(): Storage {
  return Object.assign(Object.create(nodeStorage) as Storage, {
    rename: async (from: string, to: string) => {
      if (from.endsWith('.tbl.tmp')) throw Object.assign(new Error('EIO: simulated'), { code: 'EIO' });
      return nodeStorage.rename(from, to);
    },
  });
}

describe('journal tails', () => {
  it('a torn tail (a partial record, or zeroes) is truncated and reported; acknowledged records stay', async () => {
    // Proves torn-write recovery for the journal that was taking writes: garbage after the last record is cut, truncatedBytes says how much, and every completed key is still done.
    const clock = fakeClock();
    let s = await h.openStore({ clock });
    await fill(s, 0, 50);
    const dir = s.dir;
    await h.close(s);
    const [journal] = listStore(dir).journals;
    const file = path.join(dir, journal as string);
    const size = fs.statSync(file).size;
    const partial = fs.readFileSync(file).subarray(size - 60, size - 20); // the middle of a record
    for (const tail of [partial, Buffer.alloc(300)]) {
      fs.appendFileSync(file, tail);
      s = await h.openStore({ clock, dir });
      expect(s.recovery.truncatedBytes).toBe(tail.length);
      expect(fs.statSync(file).size).toBe(size);
      await expectAll(s, 0, 50);
      await h.close(s);
    }
  });

  it('a flipped byte inside an acknowledged record makes the lookup fail CORRUPT, never answer wrongly', async () => {
    // Proves CRC checking on reads of the journal being written: damage to a durable record surfaces as SPOOL_ERR_CORRUPT (on open, since it is followed by valid records... within the torn-tail window it is cut instead).
    const clock = fakeClock();
    const s = await h.openStore({ clock });
    await s.complete('victim', 'secret');
    await fill(s, 0, 20);
    const [journal] = listStore(s.dir).journals;
    const file = path.join(s.dir, journal as string);
    const bytes = fs.readFileSync(file);
    const at = bytes.indexOf(Buffer.from('secret'));
    expect(at).toBeGreaterThan(0);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, Buffer.from('S'), 0, 1, at);
    fs.closeSync(fd);
    expect(await codeOf(s.lookup('victim'))).toBe('SPOOL_ERR_CORRUPT');
    expect(await codeOf(s.claim('victim', { ttlMs: 10 }))).toBe('SPOOL_ERR_CORRUPT');
  });
});

describe('seals and merges interrupted', () => {
  it('a journal rolled but not sealed (table never published) is sealed on the next open', async () => {
    // Proves the crash point between roll and seal: the table rename fails, so two journals remain; reopening seals the older one into a table and every key is found.
    const clock = fakeClock();
    const errors: Error[] = [];
    let s = await h.openStore({ clock, storage: failingTableRenames(), lock: true, journalKeysMax: 40, onError: (e) => errors.push(e) });
    await fill(s, 0, 100);
    expect(await codeOf(s.maintain())).toBe('SPOOL_ERR_IO');
    expect(listStore(s.dir).journals.length).toBeGreaterThanOrEqual(2);
    expect(listStore(s.dir).tables).toEqual([]);
    await expectAll(s, 0, 100); // still served from the rolled journals' indexes
    s = await h.reopen(s, { clock, journalKeysMax: 40 });
    expect(s.recovery.journalsSealed).toBeGreaterThanOrEqual(1);
    expect(listStore(s.dir).journals).toHaveLength(1);
    expect(listStore(s.dir).tables.length).toBeGreaterThanOrEqual(1);
    expect(listStore(s.dir).other.filter((n) => n.endsWith('.tmp'))).toEqual([]);
    await expectAll(s, 0, 100);
  });

  it('a journal left beside its own table (deletion lost) is removed on open', async () => {
    // Proves the crash point between publishing a table and deleting its journal: same sequence number → the journal is redundant.
    const clock = fakeClock();
    let s = await h.openStore({ clock, journalKeysMax: 30 });
    const [j0] = listStore(s.dir).journals;
    const saved = fs.readFileSync(path.join(s.dir, j0 as string));
    await fill(s, 0, 60);
    await s.maintain();
    expect(listStore(s.dir).tables).toContain((j0 as string).replace('.jnl', '.tbl'));
    fs.writeFileSync(path.join(s.dir, j0 as string), saved);
    s = await h.reopen(s, { clock, journalKeysMax: 30 });
    expect(s.recovery.removedFiles).toContain(j0);
    await expectAll(s, 0, 60);
  });

  it('merge inputs left beside the merged table (deletion lost) are removed on open', async () => {
    // Proves the crash point after a merge published its table: the inputs are listed as its sources and deleted by recovery; lookups are unaffected.
    const clock = fakeClock();
    let s = await h.openStore({ clock, journalKeysMax: 30, mergeFanIn: 3 });
    const saved = new Map<string, Buffer>();
    for (const from of [0, 100, 200]) {
      await fill(s, from, 35);
      await s.maintain();
      for (const n of listStore(s.dir).tables) if (!saved.has(n)) saved.set(n, fs.readFileSync(path.join(s.dir, n)));
    }
    const before = [...saved.keys()];
    const after = listStore(s.dir).tables;
    expect(s.stats().merges).toBeGreaterThanOrEqual(1);
    const gone = before.filter((n) => !after.includes(n));
    expect(gone.length).toBeGreaterThanOrEqual(2);
    for (const n of gone) fs.writeFileSync(path.join(s.dir, n), saved.get(n) as Buffer);
    s = await h.reopen(s, { clock, journalKeysMax: 30, mergeFanIn: 3 });
    for (const n of gone) expect(s.recovery.removedFiles).toContain(n);
    expect(listStore(s.dir).tables).toEqual(after);
    await expectAll(s, 0, 35);
    await expectAll(s, 100, 35);
    await expectAll(s, 200, 35);
  });

  it('temp files of an interrupted journal creation or table build are removed on open', async () => {
    // Proves the crash points before a rename: *.tmp files are never trusted and are deleted.
    const clock = fakeClock();
    let s = await h.openStore({ clock });
    await fill(s, 0, 10);
    const dir = s.dir;
    await h.close(s);
    fs.writeFileSync(path.join(dir, '00000000000000000007.tbl.tmp'), 'half a table');
    fs.writeFileSync(path.join(dir, '00000000000000000008.jnl.tmp'), 'half a journal');
    s = await h.openStore({ clock, dir });
    expect(s.recovery.removedFiles.sort()).toEqual(['00000000000000000007.tbl.tmp', '00000000000000000008.jnl.tmp']);
    await expectAll(s, 0, 10);
  });
});

describe('damaged tables', () => {
  async function sealedStore(): Promise<{ s: IdempotencyStore; table: string }> {
    const clock = fakeClock();
    const s = await h.openStore({ clock, journalKeysMax: 1000 });
    await fill(s, 0, 1000);
    await s.maintain();
    const [table] = listStore(s.dir).tables;
    return { s, table: path.join(s.dir, table as string) };
  }

  function flip(file: string, at: number): void {
    const fd = fs.openSync(file, 'r+');
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0] = (b[0] as number) ^ 0x40;
    fs.writeSync(fd, b, 0, 1, at);
    fs.closeSync(fd);
  }

  it('a flipped byte in a stored result fails that lookup CORRUPT; other keys still answer', async () => {
    // Proves per-record CRCs in tables: the damaged key's result is never returned.
    const { s, table } = await sealedStore();
    const at = fs.readFileSync(table).indexOf(Buffer.from('v777'));
    expect(at).toBeGreaterThan(0);
    flip(table, at + 1);
    expect(await codeOf(s.lookup('k777'))).toBe('SPOOL_ERR_CORRUPT');
    expect(await s.lookup('k778')).toEqual({ status: 'done', result: 'v778' });
  });

  it('a flipped byte in the entries fails lookups of that directory slot CORRUPT', async () => {
    // Proves the per-slot CRCs: damaged entries are detected before they are trusted.
    const { s, table } = await sealedStore();
    const decoded = decodeTableHeader(fs.readFileSync(table).subarray(0, TABLE_HEADER_BYTES));
    if (!decoded.ok) throw new Error(decoded.reason);
    expect(decoded.header.dirBits).toBeGreaterThan(0);
    const layout = tableLayout(decoded.header);
    flip(table, layout.entriesOff + 16 * 500 + 3); // a hash byte of entry 500
    let corrupt = 0;
    for (let i = 0; i < 1000; i++) if ((await codeOf(s.lookup(`k${i}`))) === 'SPOOL_ERR_CORRUPT') corrupt++;
    expect(corrupt).toBeGreaterThan(0);
    expect(corrupt).toBeLessThan(1000);
  });

  it('damage to a table header or filter refuses to open (CORRUPT); a newer version is UNKNOWN_VERSION', async () => {
    // Proves the open-time checks: header CRC, filter CRC, and the version field (with a recomputed CRC so the version check itself is reached).
    const { s, table } = await sealedStore();
    const dir = s.dir;
    await h.close(s);
    const good = fs.readFileSync(table);
    flip(table, TABLE_HEADER_BYTES + 40);
    expect(await codeOf(h.openStore({ dir }))).toBe('SPOOL_ERR_CORRUPT');
    const v2 = Buffer.from(good);
    v2.writeUInt16LE(2, 8);
    v2.writeUInt32LE(crc32(v2.subarray(0, 124)), 124);
    fs.writeFileSync(table, v2);
    expect(await codeOf(h.openStore({ dir }))).toBe('SPOOL_ERR_UNKNOWN_VERSION');
    fs.writeFileSync(table, good.subarray(0, good.length - 1));
    expect(await codeOf(h.openStore({ dir }))).toBe('SPOOL_ERR_CORRUPT');
    fs.writeFileSync(table, good);
    const s2 = await h.openStore({ dir, clock: fakeClock() });
    await expectAll(s2, 0, 1000);
  });
});
