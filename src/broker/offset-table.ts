/**
 * A map from non-negative integer keys to values, for keys that live in a moving window: a
 * consumer group's deliveries in flight by log offset, a connection's deliveries by tag, a
 * client's calls by request id (src/server/tag-table.ts). Each sets, looks up and removes one
 * entry per message; a Map's hashing, allocations and rehashes after every few thousand
 * deletions were ~9% of a drain's CPU and a tenth of the server's garbage per delivery.
 *
 * The live keys are mostly consecutive and mostly removed in order, so each goes straight to slot
 * `key & mask`, one array read and one compare, no probing. The array is kept at least twice the
 * live count. A key that stays while the window moves on (a message held unacked) would be
 * overwritten when the window comes round to its slot: it moves to a Map on the side instead, so
 * one straggler never makes the array grow with the window. (`&` works on any safe integer key:
 * it takes the key modulo 2^32 exactly, and the mask keeps the low bits.)
 */
import assert from 'node:assert/strict';

const SLOTS_MIN = 64;
/** Empty slot marker in `keys` (keys are never negative). */
const EMPTY = -1;

export class OffsetTable<T> {
  private keys: Float64Array;
  private slots: (T | undefined)[];
  private mask: number;
  /** Entries in the array. */
  private count = 0;
  /** Entries whose slot was needed by a newer key. */
  private readonly aside = new Map<number, T>();

  constructor(slots = SLOTS_MIN) {
    assert(Number.isInteger(Math.log2(slots)), 'slots is a power of two');
    this.keys = new Float64Array(slots).fill(EMPTY);
    this.slots = new Array<T | undefined>(slots).fill(undefined);
    this.mask = slots - 1;
  }

  get size(): number {
    return this.count + this.aside.size;
  }

  get(key: number): T | undefined {
    const i = key & this.mask;
    if (this.keys[i] === key) return this.slots[i];
    return this.aside.size === 0 ? undefined : this.aside.get(key);
  }

  has(key: number): boolean {
    return this.get(key) !== undefined;
  }

  /** Adds or replaces the value at `key` (never undefined: that means absent). */
  set(key: number, value: T): void {
    assert(value !== undefined && Number.isSafeInteger(key) && key >= 0, 'a value at a valid key');
    // A key already aside stays there, so it is never in two places.
    if (this.aside.size > 0 && this.aside.has(key)) {
      this.aside.set(key, value);
      return;
    }
    const i = key & this.mask;
    if (this.keys[i] === key) {
      this.slots[i] = value;
      return;
    }
    if ((this.count + 1) * 2 > this.mask + 1) this.resize((this.mask + 1) * 2);
    this.place(key, value);
  }

  /** Puts a key that is not in the table into its slot, moving the key that held the slot aside. */
  private place(key: number, value: T): void {
    const i = key & this.mask;
    const held = this.keys[i] as number;
    if (held !== EMPTY) {
      this.aside.set(held, this.slots[i] as T);
      this.count--;
    }
    this.keys[i] = key;
    this.slots[i] = value;
    this.count++;
  }

  /** Removes `key` and returns its value (undefined when it was not there). */
  take(key: number): T | undefined {
    const i = key & this.mask;
    if (this.keys[i] === key) {
      const value = this.slots[i];
      this.keys[i] = EMPTY;
      this.slots[i] = undefined;
      this.count--;
      return value;
    }
    if (this.aside.size === 0) return undefined;
    const value = this.aside.get(key);
    if (value !== undefined) this.aside.delete(key);
    return value;
  }

  delete(key: number): boolean {
    return this.take(key) !== undefined;
  }

  /** Calls `fn` for every entry, in no particular order. Removing entries meanwhile is safe; adding is not. */
  forEach(fn: (value: T, key: number) => void): void {
    for (let i = 0; i <= this.mask; i++) {
      const key = this.keys[i] as number;
      if (key !== EMPTY) fn(this.slots[i] as T, key);
    }
    for (const [key, value] of [...this.aside]) if (this.aside.has(key)) fn(value, key);
  }

  /** The values, as `forEach` walks them (removing entries meanwhile is safe: not yet reached, skipped). */
  *values(): IterableIterator<T> {
    for (let i = 0; i <= this.mask; i++) {
      const v = this.slots[i];
      if (v !== undefined) yield v;
    }
    for (const [key, value] of [...this.aside]) if (this.aside.has(key)) yield value;
  }

  private resize(slots: number): void {
    const oldKeys = this.keys;
    const oldSlots = this.slots;
    this.keys = new Float64Array(slots).fill(EMPTY);
    this.slots = new Array<T | undefined>(slots).fill(undefined);
    this.mask = slots - 1;
    this.count = 0;
    for (let j = 0; j < oldKeys.length; j++) {
      const key = oldKeys[j] as number;
      // Keys apart under the old mask are apart under the new one: nothing moves aside here.
      if (key !== EMPTY) this.place(key, oldSlots[j] as T);
    }
  }
}
