// SegmentIndex: offset/time lookups against brute force, file encode/decode round trip, and decode rejecting bad files.
import { describe, it, expect } from 'vitest';
import { INDEX_HEADER_BYTES, crc32 } from '../../src/log/format.js';
import { SegmentIndex } from '../../src/log/segment-index.js';
import { seededRandom } from '../support/faulty-storage.js';

interface Entry {
  rel: number;
  pos: number;
  ts: number;
}

/** Random increasing offsets/positions and non-decreasing maxTimestampBefore, as the log writes them. */
function randomEntries(seed: number, count: number): Entry[] {
  const rng = seededRandom(seed);
  const out: Entry[] = [];
  let rel = Math.floor(rng() * 5);
  let pos = 16 + Math.floor(rng() * 100);
  let ts = Math.floor(rng() * 2 ** 40) - 2 ** 39;
  for (let i = 0; i < count; i++) {
    out.push({ rel, pos, ts });
    rel += 1 + Math.floor(rng() * 50);
    pos += 40 + Math.floor(rng() * 5000);
    if (rng() < 0.7) ts += Math.floor(rng() * 1000); // plateaus are common: equal maxTsBefore values
  }
  return out;
}

function build(entries: Entry[], capacity?: number): SegmentIndex {
  const index = new SegmentIndex(capacity);
  for (const e of entries) index.add(e.rel, e.pos, e.ts);
  return index;
}

function bruteOffset(entries: Entry[], rel: number): { relOffset: number; position: number } | null {
  let best: Entry | null = null;
  for (const e of entries) if (e.rel <= rel) best = e;
  return best === null ? null : { relOffset: best.rel, position: best.pos };
}

function bruteTime(entries: Entry[], ts: number): { relOffset: number; position: number } | null {
  let best: Entry | null = null;
  for (const e of entries) if (e.ts < ts) best = e;
  return best === null ? null : { relOffset: best.rel, position: best.pos };
}

function probesFor(values: number[]): number[] {
  const out = new Set<number>();
  for (const v of values) for (const d of [-1, 0, 1]) out.add(v + d);
  out.add(Math.min(...values, 0) - 1000);
  out.add(Math.max(...values, 0) + 1000);
  return [...out];
}

function checkLookups(index: SegmentIndex, entries: Entry[], label: string): void {
  for (const q of probesFor(entries.map((e) => e.rel)).filter((q) => q >= 0)) {
    expect(index.lookupOffset(q), `${label} lookupOffset(${q})`).toEqual(bruteOffset(entries, q));
  }
  for (const q of probesFor(entries.map((e) => e.ts))) {
    expect(index.lookupTime(q), `${label} lookupTime(${q})`).toEqual(bruteTime(entries, q));
  }
}

describe('SegmentIndex lookups', () => {
  it('match brute force on random indexes of many sizes (seeded)', () => {
    // Proves both binary searches: every entry boundary ±1 is probed and compared to a linear scan.
    for (let seed = 1; seed <= 60; seed++) {
      const count = seed < 5 ? seed - 1 : Math.floor(seededRandom(seed * 7)() * 300);
      const entries = randomEntries(seed, count);
      checkLookups(build(entries, 1), entries, `seed ${seed}, ${count} entries`); // capacity 1 forces growth
    }
  });

  it('an empty index finds nothing', () => {
    // Proves null means "start at the segment beginning" when there are no entries.
    const index = new SegmentIndex();
    expect(index.length).toBe(0);
    expect(index.lookupOffset(0)).toBeNull();
    expect(index.lookupOffset(1e9)).toBeNull();
    expect(index.lookupTime(Number.MAX_SAFE_INTEGER)).toBeNull();
  });

  it('rejects out-of-order adds and truncates by position', () => {
    // Proves the monotonic invariant is enforced and truncateToPosition drops exactly entries at/after the cut.
    const entries = randomEntries(99, 40);
    const index = build(entries);
    const last = entries[entries.length - 1] as Entry;
    expect(() => index.add(last.rel, last.pos + 1, last.ts)).toThrow();
    expect(() => index.add(last.rel + 1, last.pos, last.ts)).toThrow();
    const cut = (entries[25] as Entry).pos;
    index.truncateToPosition(cut);
    expect(index.length).toBe(25);
    checkLookups(index, entries.slice(0, 25), 'after truncate');
  });
});

describe('SegmentIndex files', () => {
  const base = 123_456;
  const entries = randomEntries(7, 50);
  const segmentBytes = (entries[entries.length - 1] as Entry).pos + 1000;
  const nextOffset = base + (entries[entries.length - 1] as Entry).rel + 10;
  const maxTs = (entries[entries.length - 1] as Entry).ts + 5;
  const index = build(entries);
  const offsetFile = index.encodeOffsetIndex(base, nextOffset);
  const timeFile = index.encodeTimeIndex(base, maxTs);

  it('round-trips through encode/decode', () => {
    // Proves the files hold every entry plus nextOffset and maxTimestamp: decode, compare lookups and fields.
    const d = SegmentIndex.decode(offsetFile, timeFile, base, segmentBytes);
    expect(d).not.toBeNull();
    expect(d?.nextOffset).toBe(nextOffset);
    expect(d?.maxTimestamp).toBe(maxTs);
    expect(d?.index.length).toBe(entries.length);
    checkLookups(d?.index as SegmentIndex, entries, 'decoded');
  });

  it('round-trips an empty index, including an unknown max timestamp', () => {
    // Proves a segment with no entries (small, or empty) still has valid index files.
    const empty = new SegmentIndex();
    const d = SegmentIndex.decode(empty.encodeOffsetIndex(5, 5), empty.encodeTimeIndex(5, Number.MIN_SAFE_INTEGER), 5, 16);
    expect(d).not.toBeNull();
    expect(d?.index.length).toBe(0);
    expect(d?.nextOffset).toBe(5);
    expect(d?.maxTimestamp).toBe(Number.MIN_SAFE_INTEGER);
  });

  it('rejects every single-byte corruption of either file', () => {
    // Proves the CRC/magic cover every byte: XOR each byte of each file with 0x01 and 0xff, decode must return null.
    for (const which of ['offset', 'time'] as const) {
      const file = which === 'offset' ? offsetFile : timeFile;
      for (let i = 0; i < file.length; i++) {
        for (const mask of [0x01, 0xff]) {
          const bad = Buffer.from(file);
          bad[i] = (bad[i] as number) ^ mask;
          const d = which === 'offset' ? SegmentIndex.decode(bad, timeFile, base, segmentBytes) : SegmentIndex.decode(offsetFile, bad, base, segmentBytes);
          expect(d, `${which} file byte ${i} ^ ${mask}`).toBeNull();
        }
      }
    }
  });

  it('rejects truncated, extended, empty and garbage files', () => {
    // Proves length checks: any size other than header + count * entry is refused.
    const g = seededRandom(3);
    const garbage = Buffer.from(Array.from({ length: offsetFile.length }, () => Math.floor(g() * 256)));
    for (const bad of [offsetFile.subarray(0, offsetFile.length - 1), Buffer.concat([offsetFile, Buffer.alloc(8)]), Buffer.alloc(0), offsetFile.subarray(0, 10), garbage]) {
      expect(SegmentIndex.decode(bad, timeFile, base, segmentBytes)).toBeNull();
    }
    expect(SegmentIndex.decode(offsetFile, timeFile.subarray(0, INDEX_HEADER_BYTES), base, segmentBytes)).toBeNull();
  });

  it('rejects the wrong kind (files swapped or duplicated)', () => {
    // Proves the kind byte is checked: a time index is never read as an offset index or vice versa.
    expect(SegmentIndex.decode(timeFile, offsetFile, base, segmentBytes)).toBeNull();
    expect(SegmentIndex.decode(offsetFile, offsetFile, base, segmentBytes)).toBeNull();
    expect(SegmentIndex.decode(timeFile, timeFile, base, segmentBytes)).toBeNull();
  });

  it('rejects files of another segment (wrong base offset)', () => {
    // Proves an index file renamed onto another segment is not trusted.
    expect(SegmentIndex.decode(offsetFile, timeFile, base + 1, segmentBytes)).toBeNull();
    expect(SegmentIndex.decode(offsetFile, timeFile, 0, segmentBytes)).toBeNull();
  });

  it('rejects a mismatched pair: different counts, or same count with different offsets', () => {
    // Proves the two files must describe the same entries.
    const fewer = build(entries.slice(0, 49));
    expect(SegmentIndex.decode(fewer.encodeOffsetIndex(base, nextOffset), timeFile, base, segmentBytes)).toBeNull();
    const shifted = build(entries.map((e) => ({ ...e, rel: e.rel + 1 })));
    expect(SegmentIndex.decode(offsetFile, shifted.encodeTimeIndex(base, maxTs), base, segmentBytes)).toBeNull();
    expect(SegmentIndex.decode(shifted.encodeOffsetIndex(base, nextOffset + 1), timeFile, base, segmentBytes)).toBeNull();
    // Control: the same entries encoded again are accepted.
    expect(SegmentIndex.decode(build(entries).encodeOffsetIndex(base, nextOffset), timeFile, base, segmentBytes)).not.toBeNull();
  });

  it('rejects well-formed files that disagree with the segment', () => {
    // Proves the semantic checks past the CRC: entries past the segment size, past nextOffset, or time going backwards.
    const lastPos = (entries[entries.length - 1] as Entry).pos;
    expect(SegmentIndex.decode(offsetFile, timeFile, base, lastPos)).toBeNull();
    expect(SegmentIndex.decode(offsetFile, timeFile, base, lastPos + 1)).not.toBeNull();
    const lastRel = (entries[entries.length - 1] as Entry).rel;
    expect(SegmentIndex.decode(index.encodeOffsetIndex(base, base + lastRel), timeFile, base, segmentBytes)).toBeNull();
    expect(SegmentIndex.decode(index.encodeOffsetIndex(base, base - 1), timeFile, base, segmentBytes)).toBeNull();
    const backwards = new SegmentIndex();
    backwards.add(1, 100, 50);
    backwards.add(2, 200, 10);
    expect(SegmentIndex.decode(backwards.encodeOffsetIndex(0, 10), backwards.encodeTimeIndex(0, 50), 0, 1000)).toBeNull();
  });

  it('rejects a file whose count field was changed even with a recomputed CRC', () => {
    // Proves the count/length consistency check is reached and holds past the CRC.
    const bad = Buffer.from(offsetFile);
    bad.writeUInt32LE(entries.length + 1, 12);
    bad.writeUInt32LE(crc32(bad.subarray(8)), 4);
    expect(SegmentIndex.decode(bad, timeFile, base, segmentBytes)).toBeNull();
  });
});
