/**
 * A Bloom filter that can be halved in place ("folded") without its keys, so that the store can
 * keep every table's filter under one memory budget however many keys it holds.
 *
 * Bit positions use exact "fastrange" reduction: position = floor(x * m / 2^32) for a 32-bit x.
 * For an even m, floor(x * (m/2) / 2^32) = floor(floor(x * m / 2^32) / 2), so the folded filter's
 * bit j is the OR of the old bits 2j and 2j+1, and every key that was in the filter still is:
 * folding raises the false-positive rate but never causes a false negative. Positions are derived
 * from the key's 64-bit hash by double hashing (Kirsch and Mitzenmacher): x_i = lo + i * hi.
 */
import assert from 'node:assert/strict';
import { FILTER_BITS_QUANTUM } from './format.js';

/** floor(x * m / 2^32) computed exactly in doubles (x < 2^32, m <= 2^32). */
function fastrange(x: number, m: number): number {
  const hi = x >>> 16;
  const lo = x & 0xffff;
  return Math.floor((hi * m + Math.floor((lo * m) / 65536)) / 65536);
}

export class BloomFilter {
  /** Bit j lives in word j >>> 5 at bit j & 31. */
  words: Uint32Array;
  /** Size in bits; always a multiple of 64 (so it can be folded at least once more, down to 64). */
  bits: number;
  readonly hashes: number;
  /** How many times this filter was halved since it was built. */
  folds = 0;

  constructor(bits: number, hashes: number, words?: Uint32Array) {
    assert(Number.isSafeInteger(bits) && bits >= 64 && bits % 64 === 0 && bits <= 2 ** 32, `filter bits ${bits} must be a multiple of 64 up to 2^32`);
    assert(Number.isInteger(hashes) && hashes >= 1 && hashes <= 16, 'filter hash count 1..16');
    this.bits = bits;
    this.hashes = hashes;
    this.words = words ?? new Uint32Array(bits / 32);
    assert.equal(this.words.length, bits / 32);
  }

  /** The bits for `keys` keys at `bitsPerKey`, rounded up so the filter can be folded 9 times. */
  static sizeFor(keys: number, bitsPerKey: number): number {
    const want = Math.max(1, Math.ceil(keys * bitsPerKey));
    return Math.min(2 ** 32 - FILTER_BITS_QUANTUM, Math.ceil(want / FILTER_BITS_QUANTUM) * FILTER_BITS_QUANTUM);
  }

  get bytes(): number {
    return this.words.byteLength;
  }

  add(hi: number, lo: number): void {
    const m = this.bits;
    const w = this.words;
    for (let i = 0; i < this.hashes; i++) {
      const j = fastrange((lo + Math.imul(i, hi)) >>> 0, m);
      w[j >>> 5] = (w[j >>> 5] as number) | (1 << (j & 31));
    }
  }

  mayContain(hi: number, lo: number): boolean {
    const m = this.bits;
    const w = this.words;
    for (let i = 0; i < this.hashes; i++) {
      const j = fastrange((lo + Math.imul(i, hi)) >>> 0, m);
      if (((w[j >>> 5] as number) & (1 << (j & 31))) === 0) return false;
    }
    return true;
  }

  /** Whether a fold would leave a valid filter (at least 64 bits). */
  get canFold(): boolean {
    return this.bits >= 128 && this.bits % 128 === 0;
  }

  /** Halves the filter: new bit j = old bit 2j | old bit 2j+1. */
  fold(): void {
    assert(this.canFold, `a ${this.bits}-bit filter cannot be folded`);
    const src = this.words;
    const dst = new Uint32Array(src.length / 2);
    for (let w = 0; w < dst.length; w++) {
      const a = src[2 * w] as number;
      const b = src[2 * w + 1] as number;
      dst[w] = (compressPairs(a | (a >>> 1)) | (compressPairs(b | (b >>> 1)) << 16)) >>> 0;
    }
    this.words = dst;
    this.bits /= 2;
    this.folds++;
  }
}

/** Packs the even bits of x (bits 0, 2, 4, ... 30) into the low 16 bits. */
function compressPairs(x: number): number {
  x &= 0x55555555;
  x = (x | (x >>> 1)) & 0x33333333;
  x = (x | (x >>> 2)) & 0x0f0f0f0f;
  x = (x | (x >>> 4)) & 0x00ff00ff;
  x = (x | (x >>> 8)) & 0x0000ffff;
  return x;
}

/** The false-positive rate of a filter with `bitsPerKey` bits per key and `k` hashes (the textbook estimate). */
export function estimatedFalsePositiveRate(bitsPerKey: number, k: number): number {
  if (bitsPerKey <= 0) return 1;
  return (1 - Math.exp(-k / bitsPerKey)) ** k;
}
