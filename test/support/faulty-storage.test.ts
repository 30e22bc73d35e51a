import { describe, it, expect } from 'vitest';
import { FaultyStorage, SECTOR_SIZE, seededRandom } from './faulty-storage.js';

async function setup(): Promise<FaultyStorage> {
  const fs = new FaultyStorage();
  fs.mkdirRaw('/data');
  return fs;
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(Error);
    return (err as NodeJS.ErrnoException).code;
  }
  throw new Error('expected a rejection');
}

describe('FaultyStorage durability', () => {
  it('loses an unsynced write on crashClean', async () => {
    // Proves: data written but not synced is volatile; reads see it before the crash, not after.
    const fs = await setup();
    fs.writeFileRaw('/data/a', Buffer.from('old!'));
    const f = await fs.open('/data/a', 'write');
    await f.writev([Buffer.from('new!'), Buffer.from('more')], 0);
    expect(fs.readFileSync('/data/a').toString()).toBe('new!more');
    fs.crashClean();
    expect(fs.readFileSync('/data/a').toString()).toBe('old!');
  });

  it('keeps a synced write through crashClean and crash', async () => {
    // Proves: sync() makes content durable, and a tearing crash never touches synced data.
    const fs = await setup();
    const f = await fs.open('/data/a', 'create');
    await fs.syncDir('/data');
    await f.writev([Buffer.from('hello')], 0);
    await f.sync();
    fs.crashClean();
    expect(fs.readFileSync('/data/a').toString()).toBe('hello');
    fs.crash(seededRandom(1));
    expect(fs.readFileSync('/data/a').toString()).toBe('hello');
  });

  it('drops a created file whose directory was not synced, even if its data was', async () => {
    // Proves: name durability (syncDir) is independent of content durability (sync).
    const fs = await setup();
    const f = await fs.open('/data/new', 'create');
    await f.writev([Buffer.from('x')], 0);
    await f.sync();
    expect(await fs.exists('/data/new')).toBe(true);
    fs.crash(seededRandom(2));
    expect(await fs.exists('/data/new')).toBe(false);
    expect(await fs.readdir('/data')).toEqual([]);

    const g = await fs.open('/data/new', 'create');
    await g.writev([Buffer.from('y')], 0);
    await g.sync();
    await fs.syncDir('/data');
    fs.crash(seededRandom(3));
    expect(fs.readFileSync('/data/new').toString()).toBe('y');
  });

  it('undoes a rename that was not dir-synced and keeps one that was', async () => {
    // Proves: rename is volatile until syncDir; rename over an existing target replaces it.
    const fs = await setup();
    fs.writeFileRaw('/data/tmp', Buffer.from('T'));
    fs.writeFileRaw('/data/target', Buffer.from('OLD'));
    await fs.rename('/data/tmp', '/data/target');
    expect(fs.listFiles()).toEqual(['/data/target']);
    expect(fs.readFileSync('/data/target').toString()).toBe('T');
    fs.crashClean();
    expect(fs.listFiles()).toEqual(['/data/target', '/data/tmp']);
    expect(fs.readFileSync('/data/target').toString()).toBe('OLD');

    await fs.rename('/data/tmp', '/data/target');
    await fs.syncDir('/data');
    fs.crashClean();
    expect(fs.listFiles()).toEqual(['/data/target']);
    expect(fs.readFileSync('/data/target').toString()).toBe('T');
  });

  it('undoes an unlink that was not dir-synced', async () => {
    // Proves: unlink is volatile until syncDir.
    const fs = await setup();
    fs.writeFileRaw('/data/a', Buffer.from('A'));
    await fs.unlink('/data/a');
    expect(await fs.exists('/data/a')).toBe(false);
    fs.crashClean();
    expect(fs.readFileSync('/data/a').toString()).toBe('A');
    await fs.unlink('/data/a');
    await fs.syncDir('/data');
    fs.crashClean();
    expect(await fs.exists('/data/a')).toBe(false);
  });

  it('records mkdir, which is volatile until the parent is synced', async () => {
    // Proves: mkdir creates parents, readdir/exists see directories, and a crash reverts an unsynced mkdir.
    const fs = new FaultyStorage();
    expect(await codeOf(fs.readdir('/nope'))).toBe('ENOENT');
    await fs.mkdir('/a/b');
    await fs.mkdir('/a/b');
    expect(await fs.exists('/a/b')).toBe(true);
    expect(await fs.readdir('/a')).toEqual(['b']);
    expect(await fs.readdir('/a/b')).toEqual([]);
    await fs.syncDir('/');
    fs.crashClean();
    expect(await fs.exists('/a')).toBe(true);
    expect(await fs.exists('/a/b')).toBe(false);
    expect(await codeOf(fs.open('/a/b/f', 'create'))).toBe('ENOENT');
  });

  it('reverts an unsynced truncate on crashClean', async () => {
    // Proves: truncate is volatile until sync.
    const fs = await setup();
    fs.writeFileRaw('/data/a', Buffer.from('abcdef'));
    const f = await fs.open('/data/a', 'write');
    await f.truncate(2);
    expect(await f.size()).toBe(2);
    fs.crashClean();
    expect(fs.readFileSync('/data/a').toString()).toBe('abcdef');
  });
});

describe('FaultyStorage torn writes', () => {
  it('leaves old data, full new data, or a sector-aligned prefix with garbage only in the last sector', async () => {
    // Proves: crash(rng) applies, drops or tears a pending write only at sector boundaries, over many seeds.
    const size = 4096;
    const fresh = Buffer.alloc(size, 0);
    const next = Buffer.alloc(size);
    for (let i = 0; i < size; i++) next[i] = (i % 251) + 1; // never zero
    const seen = { old: 0, full: 0, prefix: 0, garbled: 0 };
    for (let seed = 0; seed < 500; seed++) {
      const fs = await setup();
      fs.writeFileRaw('/data/f', fresh);
      const f = await fs.open('/data/f', 'write');
      await f.writev([next], 0);
      fs.crash(seededRandom(seed));
      const after = fs.readFileSync('/data/f');
      expect(after.length).toBe(size);
      if (after.equals(fresh)) {
        seen.old++;
        continue;
      }
      if (after.equals(next)) {
        seen.full++;
        continue;
      }
      // The first sector that is not the new data is the last applied (garbled) sector or old data.
      const sectors = size / SECTOR_SIZE;
      let s = 0;
      while (s < sectors && after.subarray(s * SECTOR_SIZE, (s + 1) * SECTOR_SIZE).equals(next.subarray(s * SECTOR_SIZE, (s + 1) * SECTOR_SIZE))) s++;
      const rest = (from: number): boolean => after.subarray(from * SECTOR_SIZE).equals(fresh.subarray(from * SECTOR_SIZE));
      if (s > 0 && rest(s)) {
        seen.prefix++;
      } else {
        // Sector s is garbage: everything after it must be old, and the prefix before it new.
        expect(rest(s + 1)).toBe(true);
        seen.garbled++;
      }
    }
    expect(seen.old).toBeGreaterThan(0);
    expect(seen.full).toBeGreaterThan(0);
    expect(seen.prefix).toBeGreaterThan(0);
    expect(seen.garbled).toBeGreaterThan(0);
  });

  it('tears an unaligned write on absolute sector boundaries and never damages synced bytes', async () => {
    // Proves: tear points are file-offset sector boundaries, and garbage stays inside the torn write.
    const base = Buffer.alloc(1000, 7);
    const data = Buffer.alloc(1500, 9);
    for (let seed = 0; seed < 300; seed++) {
      const fs = new FaultyStorage();
      fs.mkdirRaw('/d');
      fs.writeFileRaw('/d/f', base);
      const f = await fs.open('/d/f', 'write');
      await f.writev([data], 1000);
      fs.crash(seededRandom(seed));
      const after = fs.readFileSync('/d/f');
      expect(after.subarray(0, 1000).equals(base)).toBe(true);
      expect([1000, 1024, 1536, 2048, 2500]).toContain(after.length);
    }
  });

  it('makes the current image equal the durable one after random writes, truncates and crashes', async () => {
    // Proves: after crash the visible content is exactly the settled durable image (no stale page-cache bytes).
    const rng = seededRandom(99);
    const fs = await setup();
    fs.writeFileRaw('/data/f', Buffer.alloc(3000, 1));
    for (let round = 0; round < 300; round++) {
      const f = await fs.open('/data/f', 'write');
      const ops = 1 + Math.floor(rng() * 8);
      for (let i = 0; i < ops; i++) {
        const r = rng();
        const size = await f.size();
        if (r < 0.6) {
          const buf = Buffer.alloc(1 + Math.floor(rng() * 1500), 2 + Math.floor(rng() * 200));
          await f.writev([buf], Math.floor(rng() * (size + 700)));
        } else if (r < 0.8) {
          await f.truncate(Math.floor(rng() * (size + 600)));
        } else {
          await f.sync();
        }
      }
      const durableBefore = fs.readDurableSync('/data/f');
      if (round % 2 === 0) {
        fs.crashClean();
        expect(fs.readFileSync('/data/f').equals(durableBefore)).toBe(true);
      } else {
        fs.crash(rng);
      }
      expect(fs.readFileSync('/data/f').equals(fs.readDurableSync('/data/f'))).toBe(true);
    }
  });

  it('is deterministic for a given seed', async () => {
    // Proves: the same seed yields the same post-crash state, so failures can be replayed.
    const run = async (seed: number): Promise<Buffer> => {
      const fs = await setup();
      const f = await fs.open('/data/f', 'create');
      await fs.syncDir('/data');
      for (let i = 0; i < 50; i++) await f.writev([Buffer.alloc(300, i)], i * 300);
      fs.crash(seededRandom(seed));
      return fs.readFileSync('/data/f');
    };
    expect((await run(42)).equals(await run(42))).toBe(true);
    const r = seededRandom(5);
    for (let i = 0; i < 1000; i++) {
      const x = r();
      expect(x).toBeGreaterThanOrEqual(0);
      expect(x).toBeLessThan(1);
    }
  });
});

describe('FaultyStorage fault injection', () => {
  it('leaves data non-durable when sync fails with EIO', async () => {
    // Proves: failNext('sync', 'EIO') rejects the sync and the pending writes stay pending.
    const fs = await setup();
    fs.writeFileRaw('/data/a', Buffer.alloc(0));
    const f = await fs.open('/data/a', 'write');
    await f.writev([Buffer.from('abc')], 0);
    fs.failNext('sync', 'EIO');
    expect(await codeOf(f.sync())).toBe('EIO');
    expect(fs.syncCount).toBe(0);
    expect(fs.readDurableSync('/data/a').length).toBe(0);
    await f.sync(); // the rule was used up
    expect(fs.readDurableSync('/data/a').toString()).toBe('abc');

    await f.writev([Buffer.from('zzz')], 0);
    fs.failNext('sync', 'EIO');
    await expect(f.sync()).rejects.toThrow(/EIO/);
    fs.crashClean();
    expect(fs.readFileSync('/data/a').toString()).toBe('abc');
  });

  it('writes nothing when a write fails, and counts failures per rule', async () => {
    // Proves: failNext('write', code, count) fails exactly `count` writes, which leave no bytes behind.
    const fs = await setup();
    const f = await fs.open('/data/a', 'create');
    fs.failNext('write', 'ENOSPC', 2);
    expect(await codeOf(f.writev([Buffer.from('a')], 0))).toBe('ENOSPC');
    expect(await codeOf(f.writev([Buffer.from('b')], 0))).toBe('ENOSPC');
    expect(await f.size()).toBe(0);
    await f.writev([Buffer.from('c')], 0);
    expect(fs.readFileSync('/data/a').toString()).toBe('c');
    expect(fs.writeCount).toBe(1);
    fs.failNext('any', 'EIO');
    expect(await codeOf(f.size())).toBe('EIO');
    expect(await f.size()).toBe(1);
  });

  it('rejects with ENOSPC when diskLimitBytes would be exceeded', async () => {
    // Proves: the disk limit counts all files' current bytes; overwrites in place and freed space are fine.
    const fs = await setup();
    fs.writeFileRaw('/data/other', Buffer.alloc(60));
    fs.diskLimitBytes = 100;
    const f = await fs.open('/data/a', 'create');
    await f.writev([Buffer.alloc(40)], 0);
    expect(await codeOf(f.writev([Buffer.alloc(1)], 40))).toBe('ENOSPC');
    expect(await f.size()).toBe(40);
    await f.writev([Buffer.alloc(40, 1)], 0); // overwrite, no growth
    await fs.unlink('/data/other');
    await f.writev([Buffer.alloc(60)], 40);
    expect(await f.size()).toBe(100);
  });

  it('fails whatever the predicate picks', async () => {
    // Proves: setFailPredicate can target an operation on a path.
    const fs = await setup();
    fs.setFailPredicate((op, p) => (op === 'rename' && p.endsWith('.tmp') ? 'EIO' : null));
    fs.writeFileRaw('/data/x.tmp', Buffer.from('1'));
    expect(await codeOf(fs.rename('/data/x.tmp', '/data/x'))).toBe('EIO');
    expect(fs.listFiles()).toEqual(['/data/x.tmp']);
    fs.setFailPredicate(null);
    await fs.rename('/data/x.tmp', '/data/x');
    expect(fs.listFiles()).toEqual(['/data/x']);
  });
});

describe('FaultyStorage handles and file semantics', () => {
  it('invalidates open handles after a crash', async () => {
    // Proves: every call on a pre-crash handle rejects with EBADF, including calls in flight.
    const fs = await setup();
    fs.writeFileRaw('/data/a', Buffer.from('abc'));
    const f = await fs.open('/data/a', 'write');
    const inFlight = f.writev([Buffer.from('zzz')], 0);
    fs.crashClean();
    expect(await codeOf(inFlight)).toBe('EBADF');
    expect(await codeOf(f.read(Buffer.alloc(3), 0, 3, 0))).toBe('EBADF');
    expect(await codeOf(f.writev([Buffer.from('x')], 0))).toBe('EBADF');
    expect(await codeOf(f.sync())).toBe('EBADF');
    expect(await codeOf(f.truncate(0))).toBe('EBADF');
    expect(await codeOf(f.size())).toBe('EBADF');
    expect(await codeOf(f.close())).toBe('EBADF');
    expect(fs.readFileSync('/data/a').toString()).toBe('abc');
    const g = await fs.open('/data/a', 'read');
    expect(await g.size()).toBe(3);
    const openInFlight = fs.open('/data/b', 'create');
    fs.crashClean();
    expect(await codeOf(openInFlight)).toBe('EIO');
    expect(await fs.exists('/data/b')).toBe(false);
  });

  it('reads, zero-fills gaps, truncates both ways and enforces open modes', async () => {
    // Proves: read/writev/truncate/size/open behave like node's fs on a real file.
    const fs = await setup();
    expect(await codeOf(fs.open('/data/a', 'read'))).toBe('ENOENT');
    expect(await codeOf(fs.open('/data/a', 'write'))).toBe('ENOENT');
    const f = await fs.open('/data/a', 'create');
    expect(await codeOf(fs.open('/data/a', 'create'))).toBe('EEXIST');
    await f.writev([Buffer.from('ab'), Buffer.from('cd')], 2);
    expect(fs.readFileSync('/data/a')).toEqual(Buffer.from([0, 0, 0x61, 0x62, 0x63, 0x64]));
    const buf = Buffer.alloc(10, 0xee);
    expect(await f.read(buf, 1, 10 - 1, 3)).toBe(3);
    expect(buf.subarray(0, 5)).toEqual(Buffer.from([0xee, 0x62, 0x63, 0x64, 0xee]));
    expect(await f.read(buf, 0, 4, 6)).toBe(0);
    expect(await f.read(buf, 0, 4, 100)).toBe(0);
    await f.truncate(3);
    expect(await f.size()).toBe(3);
    await f.truncate(5);
    expect(fs.readFileSync('/data/a')).toEqual(Buffer.from([0, 0, 0x61, 0, 0]));
    await f.close();
    expect(await codeOf(f.size())).toBe('EBADF');
    const r = await fs.open('/data/a', 'read');
    expect(await codeOf(r.writev([Buffer.from('x')], 0))).toBe('EBADF');
    await expect(fs.unlink('/data/nope')).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('keeps counters and test helpers consistent', async () => {
    // Proves: syncCount/writeCount/bytesWritten count successes; writeFileRaw and flipByte are durable.
    const fs = new FaultyStorage();
    fs.writeFileRaw('deep/dir/f', Buffer.from([1, 2, 3]));
    expect(fs.listFiles()).toEqual(['/deep/dir/f']);
    fs.flipByte('/deep/dir/f', 1);
    fs.crashClean();
    expect(fs.readFileSync('/deep/dir/f')).toEqual(Buffer.from([1, 0xfd, 3]));
    const f = await fs.open('/deep/dir/f', 'write');
    await f.writev([Buffer.alloc(10), Buffer.alloc(5)], 3);
    await f.writev([Buffer.alloc(2)], 0);
    await f.sync();
    expect(fs.writeCount).toBe(2);
    expect(fs.bytesWritten).toBe(17);
    expect(fs.syncCount).toBe(1);
    expect(await codeOf(Promise.resolve().then(() => fs.readFileSync('/nope')))).toBe('ENOENT');
  });

  it('survives many crash cycles with many small writes quickly', async () => {
    // Proves: the simulator is cheap enough for power-cut loops (geometric buffers, per-op pending list).
    const fs = await setup();
    const rng = seededRandom(7);
    const rec = Buffer.alloc(37, 0x5a);
    const start = Date.now();
    for (let cycle = 0; cycle < 200; cycle++) {
      const name = `/data/seg`;
      const f = (await fs.exists(name)) ? await fs.open(name, 'write') : await fs.open(name, 'create');
      await fs.syncDir('/data');
      let pos = await f.size();
      for (let i = 0; i < 1000; i++) {
        await f.writev([rec], pos);
        pos += rec.length;
        if (i % 100 === 49) await f.sync();
      }
      fs.crash(rng);
    }
    expect(fs.readFileSync('/data/seg').length).toBeGreaterThan(200 * 900 * rec.length);
    expect(Date.now() - start).toBeLessThan(10_000);
  });
});
