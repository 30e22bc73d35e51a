/**
 * A queue's dedupe window: which dedupe keys (publisher ids, dead-letter and replay keys) it
 * stored in the last `windowMs`, so that a publish repeating one is answered 'duplicate'.
 *
 * A `Map<string, number>` of every key in a 2-minute window holds hundreds of thousands of strings
 * at a high publish rate; inserting into it and collecting the strings it keeps alive was the
 * largest cost of a publish with an id. This window keeps no stored key:
 *
 *   ring     one entry per claimed or stored key, in claim order (so expiries only grow): its
 *            64-bit hash, expiry, state and log offset, in typed arrays, evicted from the front
 *            as they expire;
 *   table    hash → ring entry: an open-addressing table of its own (two 32-bit words a slot,
 *            linear probing, backward-shift deletion), so a claim is one probe run that both
 *            looks for the key and finds the slot its entry goes into;
 *   pending  the exact keys of claims whose appends are in flight (a concurrent publish of one
 *            of them is a duplicate), a small ring that empties as appends resolve.
 *
 * A claim makes the key's ring entry and table slot at once; `stored` only flips the entry's state
 * and fills in its offset (appends resolve in claim order, so the claim is found by a hint, not a
 * lookup). So a key costs one hash, one probe run to claim it and one to forget it, and no
 * allocation. (The previous design took a Map insert and delete, two hashes, two probe runs and
 * an array per claim: about three times the cost per publish.)
 *
 * New keys: a server's client makes an id for each publish that has none, and says so when it
 * sends it the first time (docs/protocol.md, PUBLISH flag NEW_ID). Such a key cannot be in the
 * window, so `claimNew` looks nothing up: it makes the ring entry and the pending claim, and leaves
 * the entry out of the table ("unindexed"). Most of these keys are never asked about again (only a
 * resend after a lost connection repeats one), and an unindexed entry that leaves the window costs
 * no table work either. Any lookup (`claim`, `holds`) first puts every unindexed entry in the table,
 * so it sees them all. Each entry is still indexed at most once, so a mix of new and other keys
 * costs what it did before. But a long run of new keys and then one lookup pays for the run at
 * once, in one stall of the event loop (measured: 8 ms for 100,000 entries, 66-100 ms for
 * 1,000,000, the limit). So new keys stay unindexed only while the window saw no lookup for
 * `indexEagerlyMs` (10 s): a queue that also gets callers' ids or resends indexes each new key as
 * it comes (the old cost, no stalls), and one that gets only client-made ids skips the table
 * until its next lookup, typically a resend after a reconnect. Claiming a new key unindexed skips
 * the random access into the table that is most of a claim's cost (bench `micro`, a full window:
 * ~300 ns a key with the lookup, ~110 without; ~480 with the lookup before `hashKey` kept
 * consecutive ids together).
 *
 * A hash match is a candidate, not an answer: the record at the candidate's offset is read and its
 * key compared, so two keys that share a hash never make a message a false duplicate. Only when
 * the record is gone (retention deleted its segment inside the window) is a 64-bit hash match
 * taken as a duplicate; with n keys in the window that is wrong with probability about n / 2^64
 * (5e-14 for a million keys) per publish of a new key.
 */
import assert from 'node:assert/strict';
import { type IdHash, fmix } from './delay-index.js';

/** A key's 64-bit hash, as two 32-bit halves. */
export type KeyHash = IdHash;

/** Low bits of `h1` taken from the key's last code unit: consecutive ids share one cache line of the table. */
const LOCAL_BITS = 3;
const LOCAL_MASK = (1 << LOCAL_BITS) - 1;

/**
 * Hashes a key's UTF-16 code units, two per step: the hashes never leave this process, so they
 * need not match any byte encoding, and ids are mostly short ASCII (a quarter of the cost of
 * hashing UTF-8 bytes one at a time, which was a third of a claim).
 *
 * `h1` (which places the key in the table) keeps the low 3 bits of the last code unit as its own
 * low bits, and hashes the rest: ids made in sequence (a client's, `order-1`, `order-2`, ...)
 * differ mostly there, so up to 8 of them go to one 64-byte block of the table and one cache
 * miss serves them all, instead of one each (bench `micro`, a claim with its lookup in a full
 * window, 4 alternated pairs: 457/411, 463/270, 497/335, 556/247 ns a key). Ids that differ
 * elsewhere still scatter. The price is longer probe runs (about 10 slots instead of 4 at the
 * table's fullest), but within cache lines already fetched.
 */
export function hashKey(key: string, out: KeyHash): KeyHash {
  const n = key.length;
  let a = 0x9747_b28c ^ n;
  let b = 0x2f5c_1a3d;
  // Every code unit but the last in pairs; the last alone, below, split for `h1`.
  const m = n - 1;
  let i = 0;
  for (; i + 1 < m; i += 2) {
    const c = key.charCodeAt(i) | (key.charCodeAt(i + 1) << 16);
    a = Math.imul(a ^ c, 0x5bd1_e995);
    a ^= a >>> 15;
    b = Math.imul(b + c, 0x27d4_eb2f);
    b = (b << 13) | (b >>> 19);
  }
  if (i < m) {
    const c = key.charCodeAt(i);
    a = Math.imul(a ^ c, 0x5bd1_e995);
    b = Math.imul(b + c, 0x27d4_eb2f);
  }
  let low = 0;
  if (n > 0) {
    const c = key.charCodeAt(m);
    low = c & LOCAL_MASK;
    a = Math.imul(a ^ (c >>> LOCAL_BITS), 0x5bd1_e995);
    b = Math.imul(b + c, 0x27d4_eb2f);
  }
  out.h1 = ((fmix(a) & ~LOCAL_MASK) | low) >>> 0;
  out.h2 = fmix(b ^ n);
  return out;
}

/** The hash the window uses; a test swaps in a degenerate one to drive the confirm-by-reading paths. @internal */
export const keyHashing = { hashKey };

/** Ring sequence numbers are kept modulo this in a table slot (plus one: 0 marks an empty slot). */
const SEQ_MOD = 0x7fff_ffff;
const EMPTY = 0;
/** Table slots at least (a power of two); the table stays at most half full. */
const TABLE_SLOTS_MIN = 1024;
const RING_MIN = 1024;
/** Below this many slots the table grows fourfold (fewer rehashes while a queue warms up), then twofold. */
const GROW_FAST_BELOW = 1 << 20;
/** How far past the oldest pending claim `stored`/`release` look before hashing the key. */
const PENDING_SCAN = 8;

/** Ring entry states. */
const DEAD = 0;
const CLAIMED = 1;
const STORED = 2;

/** New keys are indexed as they come while the window saw a lookup this recently (see the header). */
const INDEX_EAGERLY_MS = 10_000;

export type Claim = 'claimed' | 'duplicate';

export class DedupeWindow {
  // --- ring: entry `seq` lives at index seq & ringMask ---
  private ringMask = RING_MIN - 1;
  private h1 = new Uint32Array(RING_MIN);
  private h2 = new Uint32Array(RING_MIN);
  private until = new Float64Array(RING_MIN);
  /** STORED: the log offset. CLAIMED: the claim's number in `pending`. */
  private offset = new Float64Array(RING_MIN);
  private state = new Uint8Array(RING_MIN);
  /** 1: the entry is not in the table yet (made by `claimNew`; see the header). */
  private unindexed = new Uint8Array(RING_MIN);
  /** Live entries with `unindexed` set, and a sequence number at or before the oldest of them. */
  private unindexedCount = 0;
  private unindexedFrom = 0;
  /** When `claim` or `holds` last ran (-Infinity: never). */
  private lookedUpAt = Number.NEGATIVE_INFINITY;
  /** Absolute sequence numbers: the oldest entry, and the next one to be made. */
  private head = 0;
  private tail = 0;
  private storedCount = 0;

  // --- table: slot i is words 2i (h1) and 2i+1 (ring seq mod SEQ_MOD, plus one) ---
  private table = new Uint32Array(TABLE_SLOTS_MIN * 2);
  private tableMask = TABLE_SLOTS_MIN - 1;
  private tableUsed = 0;

  // --- pending claims: claim number c lives at index c & pendingMask ---
  private pendingMask = 63;
  private pendingKeys: (string | undefined)[] = new Array<string | undefined>(64).fill(undefined);
  private pendingSeqs = new Float64Array(64);
  /** Claim numbers: the oldest still pending (or tail), and the next one to be made. */
  private pendingHead = 0;
  private pendingTail = 0;
  /** Where the next claim to resolve probably is: the one after the last resolved. */
  private pendingHint = 0;

  /** For hashes used synchronously (never across an await). */
  private readonly scratch: KeyHash = { h1: 0, h2: 0 };
  /** What the last `probe` found to confirm by reading (see there); taken at once by its caller. */
  private probeOffsets: number[] | null = null;

  constructor(
    private readonly windowMs: number,
    private readonly entriesMax: number,
    /** The dedupe key of the record at `offset` ('' when it has none), or null when the record is gone. */
    private readonly keyAt: (offset: number) => Promise<string | null>,
    /** How long after a lookup `claimNew` still indexes (see the header); tests vary it. */
    private readonly indexEagerlyMs = INDEX_EAGERLY_MS,
  ) {
    assert(entriesMax >= 1, 'the window holds at least one entry');
  }

  /** Stored keys remembered (for tests and stats). */
  get size(): number {
    return this.storedCount;
  }

  /** Entries in the table (the rest are unindexed; for tests). @internal */
  get indexed(): number {
    return this.tableUsed;
  }

  /** Appends in flight holding a claim. */
  get claimed(): number {
    let n = 0;
    for (let c = this.pendingHead; c < this.pendingTail; c++) if (this.pendingKeys[c & this.pendingMask] !== undefined) n++;
    return n;
  }

  /**
   * Claims `key` for an append: 'duplicate' when it was stored or claimed within the window,
   * 'claimed' otherwise (then call `stored` or `release`). Synchronous unless the key's hash
   * matches a stored entry, whose record must be read to tell.
   */
  claim(key: string, now: number): Claim | Promise<Claim> {
    this.evict(now);
    this.lookedUpAt = now;
    const slot = this.probeToInsert(key, now);
    if (slot < 0) return 'duplicate';
    const offsets = this.probeOffsets;
    this.probeOffsets = null;
    // Claimed at once, so a concurrent publish of the key sees it while the candidates are read.
    this.addClaim(key, this.scratch.h1, this.scratch.h2, now + this.windowMs, slot);
    if (offsets === null) return 'claimed';
    return this.confirm(key, offsets).then(
      (stored) => {
        if (!stored) return 'claimed';
        this.release(key);
        return 'duplicate';
      },
      (err: unknown) => {
        this.release(key);
        throw err;
      },
    );
  }

  /**
   * Claims `key`, which the caller knows is in no claim or stored entry of the window: a server's
   * client made it for this publish and sends it for the first time. Nothing is looked up (see the
   * header); then call `stored` or `release`, as after `claim`.
   */
  claimNew(key: string, now: number): Claim {
    this.evict(now);
    if (now - this.lookedUpAt < this.indexEagerlyMs) {
      // Lookups come here: index it now, as `claim` would, so none meets a long unindexed run.
      const slot = this.probeToInsert(key, now);
      // Held by a claim in flight: not new after all (a client that set NEW_ID wrongly). The
      // lazy path cannot see this; here it costs nothing to answer it right.
      if (slot < 0) return 'duplicate';
      // Stored entries with its hash are taken as other keys: the caller says it is new.
      this.probeOffsets = null;
      this.addClaim(key, this.scratch.h1, this.scratch.h2, now + this.windowMs, slot);
      return 'claimed';
    }
    if (this.tail - this.head >= this.entriesMax) this.dropOldest();
    const h = keyHashing.hashKey(key, this.scratch);
    this.addClaim(key, h.h1, h.h2, now + this.windowMs, -1);
    return 'claimed';
  }

  /**
   * `probe` for a key about to be claimed, with every entry indexed and room made first: dropping
   * an entry or growing the table moves slots, and the probe must end at the slot the new entry takes.
   */
  private probeToInsert(key: string, now: number): number {
    if (this.unindexedCount > 0) this.indexAll();
    if (this.tail - this.head >= this.entriesMax) this.dropOldest();
    if ((this.tableUsed + 1) * 2 > this.tableMask + 1) this.growTable();
    return this.probe(key, now);
  }

  /** Puts every unindexed entry in the table, so that a probe sees all the window's entries. */
  private indexAll(): void {
    while ((this.tableUsed + this.unindexedCount + 1) * 2 > this.tableMask + 1) this.growTable();
    const flags = this.unindexed;
    const m = this.ringMask;
    for (let seq = Math.max(this.unindexedFrom, this.head); seq < this.tail && this.unindexedCount > 0; seq++) {
      const r = seq & m;
      if (flags[r] === 0) continue;
      flags[r] = 0;
      this.unindexedCount--;
      this.tableInsert(this.h1[r]!, seq);
    }
    assert.equal(this.unindexedCount, 0, 'every unindexed entry lies between unindexedFrom and tail');
    this.unindexedFrom = this.tail;
  }

  /**
   * Whether `key` is stored or claimed within the window, without claiming it: what `claim` would
   * answer 'duplicate' to. Synchronous unless a stored entry's hash matches (its record is read).
   */
  holds(key: string, now: number): boolean | Promise<boolean> {
    this.evict(now);
    this.lookedUpAt = now;
    if (this.unindexedCount > 0) this.indexAll();
    if (this.probe(key, now) < 0) return true;
    const offsets = this.probeOffsets;
    this.probeOffsets = null;
    return offsets === null ? false : this.confirm(key, offsets);
  }

  /**
   * One probe run for `key`, whose hash it leaves in `scratch`: -1 when a pending claim holds the
   * key, else the empty slot that ends the run (where a new entry for it goes). The offsets of
   * stored entries in the window whose hash matches are left in `probeOffsets` (null: none):
   * candidates, which only reading their records confirms.
   */
  private probe(key: string, now: number): number {
    const h = keyHashing.hashKey(key, this.scratch);
    const k1 = h.h1;
    const k2 = h.h2;
    const t = this.table;
    const mask = this.tableMask;
    let offsets: number[] | null = null;
    let i = k1 & mask;
    for (; t[2 * i + 1] !== EMPTY; i = (i + 1) & mask) {
      if (t[2 * i] !== k1) continue;
      const r = this.seqOfSlot(i) & this.ringMask;
      if (this.h2[r] !== k2 || this.until[r]! <= now) continue;
      if (this.state[r] === CLAIMED) {
        if (this.pendingKeys[this.offset[r]! & this.pendingMask] === key) return -1;
        continue;
      }
      (offsets ??= []).push(this.offset[r]!);
    }
    this.probeOffsets = offsets;
    return i;
  }

  /** The append of a claimed key is durable at `offset`: remember it for the rest of its window. */
  stored(key: string, offset: number): void {
    const c = this.findPending(key);
    // No pending claim: it outlived its window while the append ran (and was forgotten with it).
    if (c < 0) return;
    const seq = this.pendingSeqs[c & this.pendingMask]!;
    this.resolvePending(c);
    const r = seq & this.ringMask;
    this.state[r] = STORED;
    this.offset[r] = offset;
    this.storedCount++;
  }

  /** The append of a claimed key failed: forget the claim, so a retry may store it. */
  release(key: string): void {
    const c = this.findPending(key);
    if (c < 0) return;
    const seq = this.pendingSeqs[c & this.pendingMask]!;
    this.resolvePending(c);
    const r = seq & this.ringMask;
    this.unindex(r, seq);
    this.state[r] = DEAD;
    // A claim released at once (a duplicate found by reading, a full queue) leaves no hole behind.
    while (this.tail > this.head && this.state[(this.tail - 1) & this.ringMask] === DEAD) this.tail--;
  }

  /** At open: a key found in the log, stored at `offset`, remembered until `until`. */
  restore(key: string, offset: number, until: number): void {
    if (this.tail - this.head >= this.entriesMax) this.dropOldest();
    if ((this.tableUsed + 1) * 2 > this.tableMask + 1) this.growTable();
    const h = keyHashing.hashKey(key, this.scratch);
    const seq = this.pushEntry(h.h1, h.h2, until, STORED, offset);
    this.tableInsert(h.h1, seq);
    this.storedCount++;
  }

  // --- ring ---

  /**
   * A claim: a ring entry, a pending key and the entry's table slot `slot` (the end of its probe
   * run), or no slot (-1): an unindexed entry, from `claimNew`.
   */
  private addClaim(key: string, k1: number, k2: number, until: number, slot: number): void {
    if (this.pendingTail - this.pendingHead > this.pendingMask) this.growPending();
    const c = this.pendingTail++;
    const seq = this.pushEntry(k1, k2, until, CLAIMED, c);
    this.pendingKeys[c & this.pendingMask] = key;
    this.pendingSeqs[c & this.pendingMask] = seq;
    if (slot < 0) {
      this.unindexed[seq & this.ringMask] = 1;
      if (this.unindexedCount++ === 0) this.unindexedFrom = seq;
      return;
    }
    const t = this.table;
    t[2 * slot] = k1;
    t[2 * slot + 1] = (seq % SEQ_MOD) + 1;
    this.tableUsed++;
  }

  private pushEntry(k1: number, k2: number, until: number, state: number, offset: number): number {
    if (this.tail - this.head > this.ringMask) this.growRing();
    const seq = this.tail++;
    const r = seq & this.ringMask;
    this.h1[r] = k1;
    this.h2[r] = k2;
    this.until[r] = until;
    this.state[r] = state;
    this.offset[r] = offset;
    // Ring growth copies stale flags into free indexes (see growRing): every entry starts indexed.
    this.unindexed[r] = 0;
    return seq;
  }

  /** Forgets entries whose window ended. */
  private evict(now: number): void {
    while (this.head < this.tail && this.until[this.head & this.ringMask]! <= now) this.dropOldest();
  }

  private dropOldest(): void {
    const seq = this.head;
    const r = seq & this.ringMask;
    const state = this.state[r];
    if (state !== DEAD) this.unindex(r, seq);
    if (state === STORED) this.storedCount--;
    else if (state === CLAIMED) this.resolvePending(this.offset[r]!);
    this.state[r] = DEAD;
    this.head++;
    if (this.tableUsed * 16 < this.tableMask + 1 && this.tableMask + 1 > TABLE_SLOTS_MIN) this.resizeTable((this.tableMask + 1) / 2);
  }

  /** Takes live entry `seq` (at ring index `r`) out of the table, or out of the unindexed count. */
  private unindex(r: number, seq: number): void {
    if (this.unindexed[r] === 1) {
      this.unindexed[r] = 0;
      this.unindexedCount--;
    } else {
      this.tableRemove(this.h1[r]!, seq);
    }
  }

  private growRing(): void {
    const size = this.ringMask + 1;
    const next = size * 2;
    // Entry `seq` moves from seq & (size - 1) to seq & (next - 1), which is that index plus a
    // multiple of `size`: a copy of the old ring at every multiple puts each entry in place.
    const spread = <T extends Uint32Array | Float64Array | Uint8Array>(old: T, fresh: T): T => {
      for (let at = 0; at < next; at += size) fresh.set(old, at);
      return fresh;
    };
    this.h1 = spread(this.h1, new Uint32Array(next));
    this.h2 = spread(this.h2, new Uint32Array(next));
    this.until = spread(this.until, new Float64Array(next));
    this.offset = spread(this.offset, new Float64Array(next));
    this.state = spread(this.state, new Uint8Array(next));
    this.unindexed = spread(this.unindexed, new Uint8Array(next));
    this.ringMask = next - 1;
  }

  // --- pending claims ---

  /** The claim number of `key`'s pending claim, or -1. Claims mostly resolve in order: a hint first. */
  private findPending(key: string): number {
    const keys = this.pendingKeys;
    const m = this.pendingMask;
    const hint = this.pendingHint;
    if (hint >= this.pendingHead && hint < this.pendingTail && keys[hint & m] === key) return hint;
    const scanEnd = Math.min(this.pendingTail, this.pendingHead + PENDING_SCAN);
    for (let c = this.pendingHead; c < scanEnd; c++) if (keys[c & m] === key) return c;
    // Out of order: through the table (rare: appends resolve in claim order).
    if (this.unindexedCount > 0) this.indexAll();
    const h = keyHashing.hashKey(key, this.scratch);
    const t = this.table;
    const mask = this.tableMask;
    for (let i = h.h1 & mask; t[2 * i + 1] !== EMPTY; i = (i + 1) & mask) {
      if (t[2 * i] !== h.h1) continue;
      const r = this.seqOfSlot(i) & this.ringMask;
      if (this.state[r] !== CLAIMED || this.h2[r] !== h.h2) continue;
      const c = this.offset[r]!;
      if (keys[c & m] === key) return c;
    }
    return -1;
  }

  private resolvePending(c: number): void {
    const keys = this.pendingKeys;
    const m = this.pendingMask;
    keys[c & m] = undefined;
    this.pendingHint = c + 1;
    while (this.pendingHead < this.pendingTail && keys[this.pendingHead & m] === undefined) this.pendingHead++;
  }

  private growPending(): void {
    const size = this.pendingMask + 1;
    const next = size * 2;
    const keys = new Array<string | undefined>(next).fill(undefined);
    const seqs = new Float64Array(next);
    for (let c = this.pendingHead; c < this.pendingTail; c++) {
      keys[c & (next - 1)] = this.pendingKeys[c & this.pendingMask];
      seqs[c & (next - 1)] = this.pendingSeqs[c & this.pendingMask]!;
    }
    this.pendingMask = next - 1;
    this.pendingKeys = keys;
    this.pendingSeqs = seqs;
  }

  // --- table ---

  /** The absolute ring sequence number held by table slot `i`. */
  private seqOfSlot(i: number): number {
    const mod = this.table[2 * i + 1]! - 1;
    const seq = this.head + ((mod - (this.head % SEQ_MOD) + SEQ_MOD) % SEQ_MOD);
    assert(seq < this.tail, 'an indexed entry lies in the ring');
    return seq;
  }

  private tableInsert(k1: number, seq: number): void {
    const t = this.table;
    const mask = this.tableMask;
    let i = k1 & mask;
    while (t[2 * i + 1] !== EMPTY) i = (i + 1) & mask;
    t[2 * i] = k1;
    t[2 * i + 1] = (seq % SEQ_MOD) + 1;
    this.tableUsed++;
  }

  /** Removes ring entry `seq` (hash word `k1`) from the table: backward-shift deletion, no tombstones. */
  private tableRemove(k1: number, seq: number): void {
    const t = this.table;
    const mask = this.tableMask;
    const want = (seq % SEQ_MOD) + 1;
    let hole = k1 & mask;
    while (t[2 * hole + 1] !== want) {
      assert(t[2 * hole + 1] !== EMPTY, 'every live ring entry is indexed');
      hole = (hole + 1) & mask;
    }
    this.tableUsed--;
    let i = hole;
    for (;;) {
      t[2 * hole + 1] = EMPTY;
      for (;;) {
        i = (i + 1) & mask;
        if (t[2 * i + 1] === EMPTY) return;
        const home = t[2 * i]! & mask;
        // The entry at i may move to the hole only if its home is not cyclically in (hole, i].
        const stays = hole <= i ? hole < home && home <= i : hole < home || home <= i;
        if (!stays) break;
      }
      t[2 * hole] = t[2 * i]!;
      t[2 * hole + 1] = t[2 * i + 1]!;
      hole = i;
    }
  }

  private growTable(): void {
    const slots = this.tableMask + 1;
    this.resizeTable(slots < GROW_FAST_BELOW ? slots * 4 : slots * 2);
  }

  private resizeTable(slots: number): void {
    const old = this.table;
    const t = new Uint32Array(slots * 2);
    const mask = slots - 1;
    let used = 0;
    for (let p = 0; p < old.length; p += 2) {
      const ref = old[p + 1]!;
      if (ref === EMPTY) continue;
      const k1 = old[p]!;
      let i = k1 & mask;
      while (t[2 * i + 1] !== EMPTY) i = (i + 1) & mask;
      t[2 * i] = k1;
      t[2 * i + 1] = ref;
      used++;
    }
    this.table = t;
    this.tableMask = mask;
    this.tableUsed = used;
  }

  private async confirm(key: string, offsets: readonly number[]): Promise<boolean> {
    for (const offset of offsets) {
      const stored = await this.keyAt(offset);
      if (stored === null || stored === key) return true;
    }
    return false;
  }
}
