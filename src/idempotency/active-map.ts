/**
 * The in-memory index of the journal being written: key hash -> position of each DONE record.
 * An open-addressing table in one Uint32Array (3 words a slot: hash hi, hash lo, position + 1),
 * linear probing, grown by doubling at half load. 12 bytes a slot, 24 to 48 bytes a key: the
 * journal rolls after `journalKeysMax` keys, which bounds this table (asserted on insert).
 *
 * It never overwrites: the same hash may map to several positions (a 64-bit collision, or a key
 * whose short window expired and which was completed again). Readers compare full keys.
 */
import assert from 'node:assert/strict';

const WORDS = 3;
const INITIAL_SLOTS = 1024;
const NONE: readonly number[] = Object.freeze([]);

export class ActiveMap {
  private slots: Uint32Array;
  private mask: number;
  private count = 0;

  constructor(readonly keysMax: number) {
    assert(Number.isSafeInteger(keysMax) && keysMax >= 1);
    this.slots = new Uint32Array(INITIAL_SLOTS * WORDS);
    this.mask = INITIAL_SLOTS - 1;
  }

  get size(): number {
    return this.count;
  }

  get bytes(): number {
    return this.slots.byteLength;
  }

  insert(hi: number, lo: number, position: number): void {
    assert(this.count < this.keysMax + 64, `active map over its bound of ${this.keysMax} keys (the journal should have rolled)`);
    assert(Number.isSafeInteger(position) && position >= 0 && position < 0xffff_ffff, 'journal position fits in u32');
    if ((this.count + 1) * 2 > this.mask + 1) this.grow();
    this.place(this.slots, this.mask, hi >>> 0, lo >>> 0, position + 1);
    this.count++;
  }

  /** Every position recorded for this hash (any order); a shared empty array when there is none. */
  positions(hi: number, lo: number): readonly number[] {
    const s = this.slots;
    const mask = this.mask;
    let out: number[] | null = null;
    hi >>>= 0;
    lo >>>= 0;
    for (let i = lo & mask; ; i = (i + 1) & mask) {
      const b = i * WORDS;
      const p = s[b + 2] as number;
      if (p === 0) return out ?? NONE;
      if (s[b] === hi && s[b + 1] === lo) (out ??= []).push(p - 1);
    }
  }

  private place(s: Uint32Array, mask: number, hi: number, lo: number, pPlus1: number): void {
    for (let i = lo & mask; ; i = (i + 1) & mask) {
      const b = i * WORDS;
      if (s[b + 2] === 0) {
        s[b] = hi;
        s[b + 1] = lo;
        s[b + 2] = pPlus1;
        return;
      }
    }
  }

  private grow(): void {
    const old = this.slots;
    const slots = (this.mask + 1) * 2;
    const next = new Uint32Array(slots * WORDS);
    const mask = slots - 1;
    for (let b = 0; b < old.length; b += WORDS) {
      const p = old[b + 2] as number;
      if (p !== 0) this.place(next, mask, old[b] as number, old[b + 1] as number, p);
    }
    this.slots = next;
    this.mask = mask;
  }
}
