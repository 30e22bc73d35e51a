/**
 * The deliveries of one connection by delivery tag (docs/protocol.md §4): what a `Map<number, T>`
 * did, without its allocations. Every delivery adds a tag and every DONE or ACK removes one, a
 * thousand in flight at a time; a Map's ordered hash table allocated and rehashed as entries came
 * and went, about a tenth of the server's garbage per delivery.
 *
 * Tags are handed out in order and mostly settled in order, so the live ones are a window of
 * consecutive numbers: each goes straight to slot tag & mask, with no probing. The array is kept
 * at least twice the live count. A tag that stays while the window moves on (a message held
 * unacked) would be overwritten when the window comes round to its slot: it moves to a Map on the
 * side instead, so one slow delivery never makes the array grow with the window.
 */
import assert from 'node:assert/strict';

const SLOTS_MIN = 64;
/** Tag 0 means "nothing to settle" on the wire (docs/protocol.md §3 DELIVERY), so it marks an empty slot. */
const EMPTY = 0;

export class TagTable<T> {
  private tags = new Float64Array(SLOTS_MIN);
  private values: (T | undefined)[] = new Array<T | undefined>(SLOTS_MIN).fill(undefined);
  private mask = SLOTS_MIN - 1;
  /** Entries in the array. */
  private count = 0;
  /** Entries whose slot was needed by a newer tag. */
  private readonly aside = new Map<number, T>();

  get size(): number {
    return this.count + this.aside.size;
  }

  has(tag: number): boolean {
    return this.tags[tag & this.mask] === tag || this.aside.has(tag);
  }

  get(tag: number): T | undefined {
    const i = tag & this.mask;
    return this.tags[i] === tag ? this.values[i] : this.aside.get(tag);
  }

  /** Adds `tag`, which must not be in the table. */
  set(tag: number, value: T): void {
    assert(Number.isInteger(tag) && tag > 0, 'a delivery tag is a positive integer');
    if ((this.count + 1) * 2 > this.mask + 1) this.resize((this.mask + 1) * 2);
    const i = tag & this.mask;
    const held = this.tags[i] as number;
    if (held !== EMPTY) {
      assert(held !== tag && !this.aside.has(tag), 'a tag is in the table once');
      this.aside.set(held, this.values[i] as T);
      this.count--;
    }
    this.tags[i] = tag;
    this.values[i] = value;
    this.count++;
  }

  /** Removes `tag` and returns its value (undefined when it was not there). */
  take(tag: number): T | undefined {
    const i = tag & this.mask;
    if (this.tags[i] === tag) {
      const value = this.values[i];
      this.tags[i] = EMPTY;
      this.values[i] = undefined;
      this.count--;
      return value;
    }
    if (this.aside.size === 0) return undefined;
    const value = this.aside.get(tag);
    if (value !== undefined) this.aside.delete(tag);
    return value;
  }

  /** Calls `fn` for every entry (the table must not change meanwhile; collect first to remove). */
  forEach(fn: (value: T, tag: number) => void): void {
    for (let i = 0; i <= this.mask; i++) if (this.tags[i] !== EMPTY) fn(this.values[i] as T, this.tags[i] as number);
    for (const [tag, value] of this.aside) fn(value, tag);
  }

  private resize(slots: number): void {
    const oldTags = this.tags;
    const oldValues = this.values;
    this.tags = new Float64Array(slots);
    this.values = new Array<T | undefined>(slots).fill(undefined);
    this.mask = slots - 1;
    this.count = 0;
    for (let j = 0; j < oldTags.length; j++) {
      const tag = oldTags[j] as number;
      if (tag !== EMPTY) this.set(tag, oldValues[j] as T);
    }
  }
}
