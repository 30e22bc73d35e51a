/**
 * Where each pending delayed message is, by id, for `cancel` and for duplicate caller ids.
 *
 * A JS `Map<string, number>` of a million 26-character ids costs about 100 MB of heap and rehashes
 * in bursts as it grows. This index keeps no ids at all: an open-addressing table in one
 * `Uint32Array`, four words a slot (two independent 32-bit hashes of the id's UTF-8 bytes, the
 * bucket number + 1, the offset), 16 bytes a slot and at most 3/4 full, so about 21-43 bytes a
 * pending message, off the JS heap. The ids stay on disk in the bucket logs.
 *
 * Since only hashes are kept, a lookup by id returns candidate locations. Two pending ids with the
 * same 64-bit hash are astronomically rare but possible, so callers confirm a candidate by reading
 * its record's key (`DelayStore.idAt`) before acting on it. A removal names the exact location,
 * which is unique, so claiming a message for a fire needs no such check.
 *
 * Linear probing with backward-shift deletion (no tombstones, so a table that churns does not
 * fill up with them). The table doubles past 3/4 full and halves below 1/16 full.
 */
import assert from 'node:assert/strict';

const WORDS = 4;
const CAPACITY_MIN = 1024;
/** Slot word 2 holds bucket + 1, so 0 marks an empty slot. */
const EMPTY = 0;
const BUCKET_MAX = 0xffff_fffe;

/** A 64-bit hash of a UTF-8 byte string, as two 32-bit halves. */
export interface IdHash {
  h1: number;
  h2: number;
}

/** MurmurHash3's 32-bit finalizer: every input bit affects every output bit. */
export function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85eb_ca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2_ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Hashes a key's bytes (as stored in a bucket log). */
export function hashBytes(bytes: Uint8Array, out: IdHash = { h1: 0, h2: 0 }): IdHash {
  let a = 0x9747_b28c;
  let b = 0x2f5c_1a3d ^ bytes.length;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i] as number;
    a = Math.imul(a ^ c, 0x5bd1_e995);
    a ^= a >>> 15;
    b = Math.imul(b + c, 0x27d4_eb2f);
    b = (b << 13) | (b >>> 19);
  }
  out.h1 = fmix(a ^ bytes.length);
  out.h2 = fmix(b);
  return out;
}

/** Hashes an id as its UTF-8 bytes (the key stored in the bucket log), without encoding ASCII ids. */
export function hashId(id: string, out: IdHash = { h1: 0, h2: 0 }): IdHash {
  let ascii = true;
  for (let i = 0; i < id.length; i++) {
    if (id.charCodeAt(i) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (!ascii) return hashBytes(Buffer.from(id, 'utf8'), out);
  let a = 0x9747_b28c;
  let b = 0x2f5c_1a3d ^ id.length;
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    a = Math.imul(a ^ c, 0x5bd1_e995);
    a ^= a >>> 15;
    b = Math.imul(b + c, 0x27d4_eb2f);
    b = (b << 13) | (b >>> 19);
  }
  out.h1 = fmix(a ^ id.length);
  out.h2 = fmix(b);
  return out;
}

/**
 * The hash functions the delay store calls. A test swaps in a degenerate one (every id the same
 * hash) to drive the confirm-by-key paths, which real collisions would exercise once in ages. @internal
 */
export const idHashing = { hashId, hashBytes };

/** A location: bucket number (bucket start / BUCKET_MS) and offset in that bucket's log. */
export interface DelayLocation {
  bucket: number;
  offset: number;
}

export class DelayIndex {
  private table: Uint32Array;
  private mask: number;
  private count = 0;

  constructor(capacity = CAPACITY_MIN) {
    assert(Number.isInteger(Math.log2(capacity)) && capacity >= CAPACITY_MIN, 'capacity is a power of two ≥ 1024');
    this.table = new Uint32Array(capacity * WORDS);
    this.mask = capacity - 1;
  }

  get size(): number {
    return this.count;
  }

  /** Bytes held by the table (for tests and status). */
  get bytes(): number {
    return this.table.byteLength;
  }

  /** Makes room for `n` entries in all, so adding them rehashes at most once (at open, where the count is known). */
  reserve(n: number): void {
    let capacity = this.mask + 1;
    while (n * 4 > capacity * 3) capacity *= 2;
    if (capacity > this.mask + 1) this.resize(capacity);
  }

  /** Empties the index and gives its memory back (at close). */
  clear(): void {
    this.table = new Uint32Array(CAPACITY_MIN * WORDS);
    this.mask = CAPACITY_MIN - 1;
    this.count = 0;
  }

  /** Adds a pending message. Its location must not be in the index already. */
  add(h: IdHash, bucket: number, offset: number): void {
    assert(Number.isInteger(bucket) && bucket >= 0 && bucket <= BUCKET_MAX, 'bucket number fits 32 bits');
    assert(Number.isInteger(offset) && offset >= 0 && offset <= 0xffff_ffff, 'offset fits 32 bits');
    if ((this.count + 1) * 4 > (this.mask + 1) * 3) this.resize((this.mask + 1) * 2);
    this.insert(h.h1, h.h2, bucket + 1, offset);
    this.count++;
  }

  private insert(h1: number, h2: number, bucketPlus1: number, offset: number): void {
    const t = this.table;
    let i = h1 & this.mask;
    while (t[i * WORDS + 2] !== EMPTY) {
      assert(!(t[i * WORDS + 2] === bucketPlus1 && t[i * WORDS + 3] === offset), 'a location is indexed once');
      i = (i + 1) & this.mask;
    }
    const p = i * WORDS;
    t[p] = h1;
    t[p + 1] = h2;
    t[p + 2] = bucketPlus1;
    t[p + 3] = offset;
  }

  /** The locations of pending messages whose id hashes to `h`: usually none or one. */
  find(h: IdHash): DelayLocation[] {
    const t = this.table;
    const found: DelayLocation[] = [];
    for (let i = h.h1 & this.mask; t[i * WORDS + 2] !== EMPTY; i = (i + 1) & this.mask) {
      const p = i * WORDS;
      if (t[p] === h.h1 && t[p + 1] === h.h2) found.push({ bucket: (t[p + 2] as number) - 1, offset: t[p + 3] as number });
    }
    return found;
  }

  /** Whether the message of hash `h` at this location is pending. */
  has(h: IdHash, bucket: number, offset: number): boolean {
    return this.slotOf(h, bucket, offset) >= 0;
  }

  /** Removes the message of hash `h` at this location; false when it was not pending (fired or cancelled meanwhile). */
  remove(h: IdHash, bucket: number, offset: number): boolean {
    const slot = this.slotOf(h, bucket, offset);
    if (slot < 0) return false;
    this.deleteSlot(slot);
    this.count--;
    if (this.count * 16 < this.mask + 1 && this.mask + 1 > CAPACITY_MIN) this.resize((this.mask + 1) / 2);
    return true;
  }

  private slotOf(h: IdHash, bucket: number, offset: number): number {
    const t = this.table;
    for (let i = h.h1 & this.mask; t[i * WORDS + 2] !== EMPTY; i = (i + 1) & this.mask) {
      const p = i * WORDS;
      if (t[p + 2] === bucket + 1 && t[p + 3] === offset) {
        assert(t[p] === h.h1 && t[p + 1] === h.h2, 'a location is indexed under its own id');
        return i;
      }
    }
    return -1;
  }

  /** Backward-shift deletion: moves later entries of the probe run into the hole, so no tombstone is needed. */
  private deleteSlot(hole: number): void {
    const t = this.table;
    let i = hole;
    for (;;) {
      t[hole * WORDS + 2] = EMPTY;
      for (;;) {
        i = (i + 1) & this.mask;
        if (t[i * WORDS + 2] === EMPTY) return;
        const home = (t[i * WORDS] as number) & this.mask;
        // The entry at i may move to the hole only if its home is not cyclically in (hole, i].
        const stays = hole <= i ? hole < home && home <= i : hole < home || home <= i;
        if (!stays) break;
      }
      t.copyWithin(hole * WORDS, i * WORDS, i * WORDS + WORDS);
      hole = i;
    }
  }

  private resize(capacity: number): void {
    const old = this.table;
    this.table = new Uint32Array(capacity * WORDS);
    this.mask = capacity - 1;
    for (let p = 0; p < old.length; p += WORDS) {
      if (old[p + 2] !== EMPTY) this.insert(old[p] as number, old[p + 1] as number, old[p + 2] as number, old[p + 3] as number);
    }
  }
}
