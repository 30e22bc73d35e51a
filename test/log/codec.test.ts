// Record-batch codec: round trips, CRC coverage, checkBatch problem classification and decodeRecords structural checks.
import { describe, it, expect } from 'vitest';
import {
  BATCH_CRC_START,
  BATCH_HEADER_BYTES,
  BATCH_OFF_BASE_OFFSET,
  BATCH_OFF_COUNT,
  BATCH_OFF_CRC,
  BATCH_OFF_FIRST_TS,
  BATCH_OFF_LENGTH,
  BATCH_OFF_MAGIC,
  BATCH_OFF_MAX_TS,
  BATCH_OFF_TYPE,
  BATCH_TYPE_RECORDS,
  BATCH_TYPE_SAFE_TO_IGNORE,
  FORMAT_VERSION,
  RECORD_FIXED_BYTES,
  crc32,
  readI64,
  readU64,
} from '../../src/log/format.js';
import {
  BatchEncoder,
  type BatchHeader,
  type LogRecord,
  type RecordInput,
  checkBatch,
  decodeRecords,
  encodedRecordBytes,
  recordBytesBound,
  validateHeaders,
} from '../../src/log/record-batch.js';
import { seededRandom } from '../support/faulty-storage.js';

const LIMIT = 64 * 1024 * 1024;

type Timed = RecordInput & { timestamp: number };

/** Encodes `records` as one batch at `start` inside a buffer with `pad` extra bytes after it. */
function encode(records: Timed[], baseOffset = 0, start = 0, pad = 0): { buf: Buffer; batch: Buffer } {
  const sizes = records.map((r) => encodedRecordBytes(r));
  const total = sizes.reduce((a, b) => a + b, 0) + BATCH_HEADER_BYTES;
  const buf = Buffer.alloc(start + total + pad, 0xee);
  const enc = new BatchEncoder();
  enc.begin(buf, start, baseOffset);
  records.forEach((r, i) => enc.add(r, r.timestamp, sizes[i] as number));
  const batch = enc.seal();
  expect(batch.length).toBe(total);
  return { buf, batch };
}

function recomputeCrc(batch: Buffer): void {
  batch.writeUInt32LE(crc32(batch.subarray(BATCH_CRC_START)), BATCH_OFF_CRC);
}

function bytesOf(v: Buffer | Uint8Array | string): Buffer {
  return typeof v === 'string' ? Buffer.from(v, 'utf8') : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

function mustCheck(buf: Buffer, pos = 0, end = buf.length): BatchHeader {
  const c = checkBatch(buf, pos, end, LIMIT);
  if (!c.ok) throw new Error(`expected a valid batch, got ${c.problem}`);
  return c.header;
}

function expectSame(got: LogRecord, want: Timed, offset: number): void {
  expect(got.offset).toBe(offset);
  expect(got.timestamp).toBe(want.timestamp);
  if (want.key == null) expect(got.key).toBeNull();
  else expect(Buffer.compare(got.key as Buffer, bytesOf(want.key))).toBe(0);
  expect(Buffer.compare(got.value, bytesOf(want.value))).toBe(0);
  const wantHeaders = want.headers ?? {};
  expect(Object.keys(got.headers).sort()).toEqual(Object.keys(wantHeaders).sort());
  for (const [k, v] of Object.entries(wantHeaders)) {
    expect(Buffer.compare(got.headers[k] as Buffer, bytesOf(v)), `header ${JSON.stringify(k)}`).toBe(0);
  }
}

const backing = Buffer.from('....Uint8Array view with an offset....');
const SAMPLE: Timed[] = [
  { value: 'plain', timestamp: 1_700_000_000_000 },
  { value: '', key: null, timestamp: 1_700_000_000_005 },
  { value: Buffer.alloc(0), key: '', timestamp: 1_700_000_000_001 },
  { value: 'héllo wörld 日本語 🎉', key: '🔑ключ', timestamp: 1_699_999_999_000 }, // negative delta
  { value: Buffer.from([0, 1, 2, 255, 0]), key: Buffer.from([9, 0, 9]), timestamp: 1_700_000_000_000 },
  { value: new Uint8Array(backing.buffer, backing.byteOffset + 4, 10), key: new Uint8Array([1, 2, 3]), timestamp: 1_700_000_002_000 },
  {
    value: 'with headers',
    key: 'k',
    headers: { a: '1', empty: '', '': 'empty name', 'ünï': Buffer.from([0xff, 0]), bin: new Uint8Array([7, 7]) },
    timestamp: 1_700_000_000_010,
  },
  { value: Buffer.alloc(3000, 0x5a), headers: {}, timestamp: 1_700_000_000_011 },
];

describe('record batch round trip', () => {
  it('decodes every record field exactly as encoded', () => {
    // Proves the encoder and decoder agree on every field: encode SAMPLE (all value/key/header kinds), decode, compare bytes.
    const base = 1000;
    const { batch } = encode(SAMPLE, base);
    const header = mustCheck(batch);
    expect(header).toEqual({
      length: batch.length,
      type: BATCH_TYPE_RECORDS,
      recordCount: SAMPLE.length,
      baseOffset: base,
      firstTimestamp: 1_700_000_000_000,
      maxTimestamp: 1_700_000_002_000,
    });
    expect(readI64(batch, BATCH_OFF_FIRST_TS)).toBe(1_700_000_000_000);
    expect(readI64(batch, BATCH_OFF_MAX_TS)).toBe(1_700_000_002_000);
    expect(readU64(batch, BATCH_OFF_BASE_OFFSET)).toBe(base);
    const out: LogRecord[] = [];
    expect(decodeRecords(batch, 0, header, base, out, Number.MAX_SAFE_INTEGER)).toBeNull();
    expect(out.length).toBe(SAMPLE.length);
    SAMPLE.forEach((r, i) => expectSame(out[i] as LogRecord, r, base + i));
  });

  it('handles negative timestamps and negative deltas', () => {
    // Proves timestamps before the epoch and below the first timestamp survive: encode, decode, compare.
    const recs: Timed[] = [
      { value: 'a', timestamp: -5 },
      { value: 'b', timestamp: -2_000_000_000 },
      { value: 'c', timestamp: 0 },
      { value: 'd', timestamp: 2_000_000_000 },
    ];
    const { batch } = encode(recs, 0);
    const header = mustCheck(batch);
    expect(header.firstTimestamp).toBe(-5);
    expect(header.maxTimestamp).toBe(2_000_000_000);
    const out: LogRecord[] = [];
    expect(decodeRecords(batch, 0, header, 0, out, 100)).toBeNull();
    expect(out.map((r) => r.timestamp)).toEqual([-5, -2_000_000_000, 0, 2_000_000_000]);
  });

  it('works inside a larger buffer, skips below fromOffset and stops at maxRecords', () => {
    // Proves position handling and the fromOffset/maxRecords contract: encode at byte 13 of a padded buffer, decode slices.
    const start = 13;
    const base = 2 ** 40; // offsets above 2^32 exercise the u64 fields
    const { buf } = encode(SAMPLE, base, start, 50);
    const header = mustCheck(buf, start, buf.length);
    for (let from = base; from <= base + SAMPLE.length; from++) {
      for (const max of [1, 2, 3, 100]) {
        const out: LogRecord[] = [];
        expect(decodeRecords(buf, start, header, from, out, max)).toBeNull();
        const want = Math.min(max, base + SAMPLE.length - from);
        expect(out.length).toBe(want);
        out.forEach((r, i) => expectSame(r, SAMPLE[from - base + i] as Timed, from + i));
      }
    }
  });

  it('appends after records already in the output array', () => {
    // Proves decodeRecords pushes onto `out` without disturbing its earlier contents.
    const { batch } = encode(SAMPLE.slice(0, 2), 7);
    const sentinel = { offset: -1 } as LogRecord;
    const out: LogRecord[] = [sentinel];
    expect(decodeRecords(batch, 0, mustCheck(batch), 0, out, 10)).toBeNull();
    expect(out.length).toBe(3);
    expect(out[0]).toBe(sentinel);
    expect(out.map((r) => r.offset)).toEqual([-1, 7, 8]);
  });

  it('round-trips random records (seeded)', () => {
    // Proves round-trip on 300 random batches: random keys/values/headers/timestamps, seed printed on failure.
    const seed = 0xc0dec;
    const rng = seededRandom(seed);
    const int = (n: number) => Math.floor(rng() * n);
    const randBytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
    const randStr = (n: number) => Array.from({ length: n }, () => String.fromCodePoint([0x41 + int(26), 0xe9, 0x65e5, 0x1f600][int(4)] as number)).join('');
    for (let iter = 0; iter < 300; iter++) {
      const t0 = int(2 ** 45) - 2 ** 44;
      const recs: Timed[] = Array.from({ length: 1 + int(6) }, () => {
        const headers: Record<string, Buffer | string> = {};
        for (let h = int(4); h > 0; h--) headers[randStr(int(5))] = rng() < 0.5 ? randStr(int(6)) : randBytes(int(6));
        return {
          value: rng() < 0.5 ? randBytes(int(200)) : randStr(int(50)),
          key: rng() < 0.3 ? null : rng() < 0.5 ? randBytes(int(20)) : randStr(int(8)),
          headers: rng() < 0.5 ? headers : undefined,
          timestamp: t0 + int(2_000_000_000) - 1_000_000_000,
        };
      });
      const base = int(2 ** 50);
      const { batch } = encode(recs, base);
      const header = mustCheck(batch);
      const out: LogRecord[] = [];
      expect(decodeRecords(batch, 0, header, base, out, 1000), `seed ${seed} iter ${iter}`).toBeNull();
      expect(out.length, `seed ${seed} iter ${iter}`).toBe(recs.length);
      recs.forEach((r, i) => expectSame(out[i] as LogRecord, r, base + i));
    }
  });

  it('rejects header maps the format cannot hold', () => {
    // Proves validateHeaders catches oversize names and non-byte values before encoding.
    expect(validateHeaders(undefined)).toBeNull();
    expect(validateHeaders({ a: 'x', b: Buffer.from('y') })).toBeNull();
    expect(validateHeaders({ ['n'.repeat(0x10000)]: 'x' })).toMatch(/longer than/);
    expect(validateHeaders({ a: 5 as unknown as string })).toMatch(/string or bytes/);
  });
});

describe('strings sized by a bound', () => {
  it('encodes short and long, ASCII and not, exactly as UTF-8, within the bound, and reports the exact size', () => {
    // Proves the encoder's short-ASCII copy and its fallback: strings around the 48-unit cut, ASCII then non-ASCII at the last unit, a lone surrogate; each record is written into exactly its bound of room and takes encodedRecordBytes.
    const a = (n: number) => 'x'.repeat(n);
    const texts = [a(47), a(48), a(49), a(47) + 'é', a(48) + 'é', 'é' + a(47), a(20) + '\ud800' + a(5), '日本語', a(64), a(65) + '🎉', ''];
    const records: Timed[] = texts.map((t, i) => ({ key: t, value: texts[texts.length - 1 - i] as string, headers: { [t.slice(0, 3) || 'h']: t }, timestamp: 1_700_000_000_000 + i }));
    let offset = 0;
    for (const r of records) {
      const bound = recordBytesBound(r);
      expect(bound).toBeGreaterThanOrEqual(encodedRecordBytes(r));
      // Only the bound's room: a write past it would land in the guard bytes after.
      const buf = Buffer.alloc(BATCH_HEADER_BYTES + bound + 8, 0xee);
      const enc = new BatchEncoder();
      enc.begin(buf, 0, offset);
      expect(enc.add(r, r.timestamp, bound)).toBe(encodedRecordBytes(r));
      const batch = enc.seal();
      expect(batch.length).toBe(BATCH_HEADER_BYTES + encodedRecordBytes(r));
      expect(buf.subarray(BATCH_HEADER_BYTES + bound).every((b) => b === 0xee)).toBe(true);
      const out: LogRecord[] = [];
      expect(decodeRecords(batch, 0, mustCheck(batch), 0, out, 10)).toBeNull();
      expectSame(out[0] as LogRecord, r, offset);
      offset++;
    }
  });
});

describe('shared frozen header maps', () => {
  it('encode the same bytes as an equal unfrozen map, however often they are reused', () => {
    // Proves the cached header block: a frozen string-valued map (the broker's route header) encodes byte-identical batches to a fresh map each time.
    const frozen = Object.freeze({ '\0m': 'orders\0order.created', '\0u': '' });
    const records = (headers: () => Record<string, string>): Timed[] =>
      Array.from({ length: 5 }, (_, i) => ({ key: `id-${i}`, value: `body ${i} ${'x'.repeat(i * 7)}`, headers: headers(), timestamp: 1000 + i }));
    const a = encode(records(() => frozen)).batch;
    const again = encode(records(() => frozen)).batch;
    const b = encode(records(() => ({ '\0m': 'orders\0order.created', '\0u': '' }))).batch;
    expect(a.equals(b)).toBe(true);
    expect(again.equals(b)).toBe(true);
  });

  it('encode the current content of a Buffer value, never a copy cached earlier', () => {
    // Proves Buffer-valued frozen maps are not cached: mutating the Buffer between encodes changes the encoded bytes.
    const value = Buffer.from('first');
    const frozen = Object.freeze({ h: value });
    const rec = (): Timed[] => [{ key: 'k', value: 'v', headers: frozen, timestamp: 1 }];
    const before = encode(rec()).batch;
    value.write('later');
    const after = encode(rec()).batch;
    expect(after.includes(Buffer.from('later'))).toBe(true);
    expect(before.includes(Buffer.from('first'))).toBe(true);
  });
});

describe('batch CRC', () => {
  function flipsAllDetected(batch: Buffer, bits: number[]): void {
    for (const bit of bits) {
      const copy = Buffer.from(batch);
      copy[bit >> 3] = (copy[bit >> 3] as number) ^ (1 << (bit & 7));
      const c = checkBatch(copy, 0, copy.length, LIMIT);
      expect(c.ok, `flip of bit ${bit} (byte ${bit >> 3}) went undetected`).toBe(false);
      if (!c.ok) expect(c.problem, `bit ${bit}`).not.toBe('zeroed');
    }
  }

  it('detects every single-bit flip of a small batch', () => {
    // Proves the CRC and length checks cover every bit: flip each bit of a ~250-byte batch, checkBatch must fail.
    const { batch } = encode(SAMPLE.slice(0, 7), 42);
    expect(batch.length).toBeLessThan(1000);
    flipsAllDetected(batch, Array.from({ length: batch.length * 8 }, (_, i) => i));
  });

  it('detects sampled single-bit flips of a large batch (all header bits, every 7th body bit)', () => {
    // Proves coverage across a 3 KiB body: all 320 header bits plus a stride-7 sample of body bits.
    const { batch } = encode(SAMPLE, 1 << 20);
    const bits: number[] = [];
    for (let b = 0; b < BATCH_HEADER_BYTES * 8; b++) bits.push(b);
    for (let b = BATCH_HEADER_BYTES * 8; b < batch.length * 8; b += 7) bits.push(b);
    bits.push(batch.length * 8 - 1);
    flipsAllDetected(batch, bits);
  });
});

describe('checkBatch problems', () => {
  const fresh = () => Buffer.from(encode(SAMPLE.slice(0, 3), 5).batch);

  it('zeroed: unused space reads as zeroed, short or long', () => {
    // Proves preallocated/never-written space is classified `zeroed`, not as corruption.
    expect(checkBatch(Buffer.alloc(100), 0, 100, LIMIT)).toEqual({ ok: false, problem: 'zeroed' });
    expect(checkBatch(Buffer.alloc(10), 0, 10, LIMIT)).toEqual({ ok: false, problem: 'zeroed' });
    const b = Buffer.alloc(100);
    b[20] = 1; // zero length, crc and magic: still "never written"
    expect(checkBatch(b, 0, 100, LIMIT)).toEqual({ ok: false, problem: 'zeroed' });
  });

  it('short-header: fewer than 40 bytes that are not all zero', () => {
    // Proves a partial header with data in it is not mistaken for unused space.
    const b = fresh();
    expect(checkBatch(b, 0, 39, LIMIT)).toEqual({ ok: false, problem: 'short-header' });
  });

  it('truncated: the length runs past the valid bytes', () => {
    // Proves a batch cut short by one byte is `truncated`, not accepted.
    const b = fresh();
    expect(checkBatch(b, 0, b.length - 1, LIMIT)).toEqual({ ok: false, problem: 'truncated' });
    expect(checkBatch(b, 0, b.length, LIMIT).ok).toBe(true);
  });

  it('bad-length: below the header size or above batchBytesMax', () => {
    // Proves length bounds are checked before the CRC.
    const b = fresh();
    b.writeUInt32LE(BATCH_HEADER_BYTES - 1, BATCH_OFF_LENGTH);
    expect(checkBatch(b, 0, b.length, LIMIT)).toEqual({ ok: false, problem: 'bad-length' });
    const c = fresh();
    expect(checkBatch(c, 0, c.length, c.length - 1)).toEqual({ ok: false, problem: 'bad-length' });
  });

  it('bad-crc: any body change', () => {
    // Proves a tampered body byte fails the CRC.
    const b = fresh();
    b[b.length - 1] = (b[b.length - 1] as number) ^ 0x40;
    expect(checkBatch(b, 0, b.length, LIMIT)).toEqual({ ok: false, problem: 'bad-crc' });
  });

  it('unknown-version: magic byte changed and CRC recomputed', () => {
    // Proves the version is checked after the CRC: a well-formed batch of another version is `unknown-version`.
    const b = fresh();
    b[BATCH_OFF_MAGIC] = FORMAT_VERSION + 1;
    expect(checkBatch(b, 0, b.length, LIMIT)).toEqual({ ok: false, problem: 'bad-crc' });
    recomputeCrc(b);
    expect(checkBatch(b, 0, b.length, LIMIT)).toEqual({ ok: false, problem: 'unknown-version' });
  });

  it('unknown-type: without the safe-to-ignore bit; ignorable with it', () => {
    // Proves types are gated: type 2 is rejected, type 0x82 is accepted as skippable.
    const b = fresh();
    b[BATCH_OFF_TYPE] = 2;
    recomputeCrc(b);
    expect(checkBatch(b, 0, b.length, LIMIT)).toEqual({ ok: false, problem: 'unknown-type' });
    b[BATCH_OFF_TYPE] = 2 | BATCH_TYPE_SAFE_TO_IGNORE;
    recomputeCrc(b);
    const c = checkBatch(b, 0, b.length, LIMIT);
    expect(c.ok).toBe(true);
    if (c.ok) expect(c.header.type).toBe(0x82);
  });

  it('bad-header: base offset beyond 2^53, or a records batch with zero records', () => {
    // Proves header fields are validated after the CRC.
    const b = fresh();
    b.writeUInt32LE(0x00200000, BATCH_OFF_BASE_OFFSET + 4);
    recomputeCrc(b);
    expect(checkBatch(b, 0, b.length, LIMIT)).toEqual({ ok: false, problem: 'bad-header' });
    const c = fresh();
    c.writeUInt32LE(0, BATCH_OFF_COUNT);
    recomputeCrc(c);
    expect(checkBatch(c, 0, c.length, LIMIT)).toEqual({ ok: false, problem: 'bad-header' });
  });
});

describe('decodeRecords structural checks (CRC recomputed after tampering)', () => {
  // Three records: r0 plain, r1 with key and one header, r2 plain. Positions computed from the format.
  const recs: Timed[] = [
    { value: 'zero', timestamp: 10 },
    { value: 'one!', key: 'key1', headers: { hn: 'hv' }, timestamp: 11 },
    { value: 'two', timestamp: 12 },
  ];
  const r0 = BATCH_HEADER_BYTES;
  const r1 = r0 + encodedRecordBytes(recs[0] as Timed);
  const r2 = r1 + encodedRecordBytes(recs[1] as Timed);
  // Inside r1: fixed 16 bytes, key (4), headerCount (2), nameLen (2), name (2), valueLen (4), value (2), valueLen (4), value.
  const r1Key = r1 + RECORD_FIXED_BYTES;
  const r1HeaderCount = r1Key + 4;
  const r1NameLen = r1HeaderCount + 2;
  const r1HValueLen = r1NameLen + 2 + 2;
  const r1ValueLen = r1HValueLen + 4 + 2;

  function tampered(edit: (b: Buffer) => void): { batch: Buffer; header: BatchHeader } {
    const { batch } = encode(recs, 100);
    edit(batch);
    recomputeCrc(batch);
    return { batch, header: mustCheck(batch) };
  }

  const cases: [string, (b: Buffer) => void, RegExp][] = [
    ['offsetDelta out of sequence', (b) => b.writeUInt32LE(2, r1 + 4), /offset delta out of sequence/],
    ['first offsetDelta not zero', (b) => b.writeUInt32LE(1, r0 + 4), /offset delta out of sequence/],
    ['record length past the batch end', (b) => b.writeUInt32LE(10_000, r0), /record length out of bounds/],
    ['record length below the fixed minimum', (b) => b.writeUInt32LE(3, r0), /record length out of bounds/],
    ['value length longer than the record', (b) => b.writeUInt32LE(5, r1ValueLen), /value does not end the record/],
    ['value length shorter than the record', (b) => b.writeUInt32LE(1, r1ValueLen), /value does not end the record/],
    ['value length past the record end', (b) => b.writeUInt32LE(0xffffffff, r1ValueLen), /value does not end the record|past/],
    ['negative key length other than -1', (b) => b.writeInt32LE(-2, r1 + 12), /negative key length/],
    ['key past the record end', (b) => b.writeInt32LE(1000, r1 + 12), /key past record end/],
    ['header count too high', (b) => b.writeUInt16LE(50, r1HeaderCount), /header/],
    ['header name past the record end', (b) => b.writeUInt16LE(500, r1NameLen), /header name past record end/],
    ['header value past the record end', (b) => b.writeUInt32LE(500, r1HValueLen), /header value past record end/],
    ['record count too high', (b) => b.writeUInt32LE(4, BATCH_OFF_COUNT), /record header past batch end/],
    ['record count too low', (b) => b.writeUInt32LE(2, BATCH_OFF_COUNT), /bytes left after the last record/],
    ['last record length shortened', (b) => b.writeUInt32LE(b.readUInt32LE(r2) - 1, r2), /value does not end the record/],
  ];

  for (const [name, edit, reason] of cases) {
    it(`${name} → fault, no records pushed`, () => {
      // Proves this structural fault is caught past a valid CRC and that a faulty batch yields nothing.
      const { batch, header } = tampered(edit);
      const sentinel = { offset: -1 } as LogRecord;
      const out: LogRecord[] = [sentinel];
      const fault = decodeRecords(batch, 0, header, 100, out, Number.MAX_SAFE_INTEGER);
      expect(fault).toMatch(reason);
      expect(out).toEqual([sentinel]);
    });
  }

  it('a fault in the last record also discards the records decoded before it', () => {
    // Proves "a batch with a structural fault yields no records at all" even when earlier records were fine.
    const { batch, header } = tampered((b) => b.writeUInt32LE(9, r2 + 4));
    const out: LogRecord[] = [];
    expect(decodeRecords(batch, 0, header, 100, out, 100)).toMatch(/offset delta/);
    expect(out).toEqual([]);
  });

  it('the untampered batch decodes (control)', () => {
    // Proves the fault cases above fail because of the tampering, not the fixture.
    const { batch, header } = tampered(() => {});
    const out: LogRecord[] = [];
    expect(decodeRecords(batch, 0, header, 100, out, 100)).toBeNull();
    expect(out.map((r) => r.value.toString())).toEqual(['zero', 'one!', 'two']);
    expect(out[1]?.headers.hn?.toString()).toBe('hv');
  });
});
