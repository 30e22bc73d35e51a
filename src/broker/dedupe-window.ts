/**
 * A queue's dedupe window: which dedupe keys (publisher ids, dead-letter and replay keys) it
 * stored in the last `windowMs`, so that a publish repeating one is answered 'duplicate'.
 *
 * A `Map<string, number>` of every key in a 2-minute window holds hundreds of thousands of strings
 * at a high publish rate; inserting into it and collecting the strings it keeps alive was the
 * largest cost of a publish with an id (about 1.5 us of 4). This window keeps no stored key:
 *
 *   claims   exact keys of appends in flight (a concurrent publish of one of them is a duplicate),
 *            a small Map that empties as appends resolve;
 *   ring     every stored key's 64-bit hash, expiry and log offset, in the order they were
 *            stored, in typed arrays (24 bytes an entry), evicted from the front as they expire;
 *   index    hash → ring entry (`DelayIndex`'s open-addressing table), to find candidates.
 *
 * A hash match is a candidate, not an answer: the record at the candidate's offset is read and its
 * key compared, so two keys that share a hash never make a message a false duplicate. Only when
 * the record is gone (retention deleted its segment inside the window) is a 64-bit hash match
 * taken as a duplicate; with n keys in the window that is wrong with probability about n / 2^64
 * (5e-14 for a million keys) per publish of a new key.
 */
import assert from 'node:assert/strict';
import { DelayIndex, type IdHash, idHashing } from './delay-index.js';

/** Ring sequence numbers are kept modulo this in the index's 32-bit location field. */
const SEQ_MOD = 0x7fff_ffff;

export type Claim = 'claimed' | 'duplicate';

export class DedupeWindow {
  private readonly index = new DelayIndex();
  private readonly claims = new Map<string, number>();
  private capacity = 1024;
  private h1 = new Uint32Array(this.capacity);
  private h2 = new Uint32Array(this.capacity);
  private until = new Float64Array(this.capacity);
  private offset = new Float64Array(this.capacity);
  /** Absolute sequence numbers: the oldest entry, and the next one to be stored. */
  private head = 0;
  private tail = 0;
  /** For hashes used synchronously (never across an await). */
  private readonly scratch: IdHash = { h1: 0, h2: 0 };

  constructor(
    private readonly windowMs: number,
    private readonly entriesMax: number,
    /** The dedupe key of the record at `offset` ('' when it has none), or null when the record is gone. */
    private readonly keyAt: (offset: number) => Promise<string | null>,
  ) {}

  /** Stored keys remembered (for tests and stats). */
  get size(): number {
    return this.tail - this.head;
  }

  /** Appends in flight holding a claim. */
  get claimed(): number {
    return this.claims.size;
  }

  /**
   * Claims `key` for an append: 'duplicate' when it was stored or claimed within the window,
   * 'claimed' otherwise (then call `stored` or `release`). Synchronous unless the key's hash
   * matches a stored entry, whose record must be read to tell.
   */
  claim(key: string, now: number): Claim | Promise<Claim> {
    this.evict(now);
    const held = this.claims.get(key);
    if (held !== undefined && held > now) return 'duplicate';
    const offsets = this.candidates(idHashing.hashId(key, this.scratch), now);
    // Claimed at once, so a concurrent publish of the key sees it while the candidates are read.
    this.claims.set(key, now + this.windowMs);
    if (offsets.length === 0) return 'claimed';
    return this.confirm(key, offsets).then(
      (stored) => {
        if (!stored) return 'claimed';
        this.claims.delete(key);
        return 'duplicate';
      },
      (err: unknown) => {
        this.claims.delete(key);
        throw err;
      },
    );
  }

  /** The append of a claimed key is durable at `offset`: remember it for the rest of its window. */
  stored(key: string, offset: number): void {
    const until = this.claims.get(key);
    assert(until !== undefined, 'only a claimed key is stored');
    this.claims.delete(key);
    this.push(idHashing.hashId(key, this.scratch), until, offset);
  }

  /** The append of a claimed key failed: forget the claim, so a retry may store it. */
  release(key: string): void {
    this.claims.delete(key);
  }

  /** At open: a key found in the log, stored at `offset`, remembered until `until`. */
  restore(key: string, offset: number, until: number): void {
    this.push(idHashing.hashId(key, this.scratch), until, offset);
  }

  private push(h: IdHash, until: number, offset: number): void {
    if (this.tail - this.head === this.capacity) this.grow();
    const i = this.tail % this.capacity;
    this.h1[i] = h.h1;
    this.h2[i] = h.h2;
    this.until[i] = until;
    this.offset[i] = offset;
    this.index.add(h, this.tail % SEQ_MOD, 0);
    this.tail++;
    if (this.tail - this.head > this.entriesMax) this.dropOldest();
  }

  /** Forgets entries whose window ended (and the oldest beyond entriesMax). */
  private evict(now: number): void {
    while (this.head < this.tail && this.until[this.head % this.capacity]! <= now) this.dropOldest();
  }

  private dropOldest(): void {
    const i = this.head % this.capacity;
    const removed = this.index.remove({ h1: this.h1[i]!, h2: this.h2[i]! }, this.head % SEQ_MOD, 0);
    assert(removed, 'every ring entry is indexed');
    this.head++;
  }

  /** Offsets of stored entries, still in their window, whose key hashes to `h`. */
  private candidates(h: IdHash, now: number): number[] {
    const found = this.index.find(h);
    if (found.length === 0) return [];
    const out: number[] = [];
    const headMod = this.head % SEQ_MOD;
    for (const f of found) {
      const seq = this.head + ((f.bucket - headMod + SEQ_MOD) % SEQ_MOD);
      assert(seq >= this.head && seq < this.tail, 'an indexed entry lies in the ring');
      const i = seq % this.capacity;
      if (this.until[i]! > now) out.push(this.offset[i]!);
    }
    return out;
  }

  private async confirm(key: string, offsets: readonly number[]): Promise<boolean> {
    for (const offset of offsets) {
      const stored = await this.keyAt(offset);
      if (stored === null || stored === key) return true;
    }
    return false;
  }

  private grow(): void {
    const next = this.capacity * 2;
    const h1 = new Uint32Array(next);
    const h2 = new Uint32Array(next);
    const until = new Float64Array(next);
    const offset = new Float64Array(next);
    for (let s = this.head; s < this.tail; s++) {
      const from = s % this.capacity;
      const to = s % next;
      h1[to] = this.h1[from]!;
      h2[to] = this.h2[from]!;
      until[to] = this.until[from]!;
      offset[to] = this.offset[from]!;
    }
    this.capacity = next;
    this.h1 = h1;
    this.h2 = h2;
    this.until = until;
    this.offset = offset;
  }
}
