/**
 * A hierarchical timing wheel (Varghese & Lauck; Kafka's TimingWheel). Schedule and cancel are
 * O(1); advancing costs O(1) per tick with work plus O(1) per entry per level it falls through.
 *
 * Level 0 has `slots` buckets of `tickMs` each; level L's buckets are `slots` times wider than
 * level L-1's. An entry goes into the lowest level whose span covers its delay; when a higher
 * level's bucket comes due, its entries are re-inserted and fall to finer levels.
 *
 * Worked example (tickMs 4, slots 64): level 0 spans 256 ms, level 1 16.4 s, level 2 17.5 min,
 * level 3 18.6 h, level 4 49.7 days. An entry due in 20 s lands in level 2; when that bucket's
 * 17.5-min window starts it moves to level 1, then to level 0, then fires within one tick of its
 * due time. Advancing over an idle stretch jumps straight to the next occupied bucket.
 *
 * Time is passed in: nothing here reads a clock.
 */
import assert from 'node:assert/strict';

export interface WheelEntry<K> {
  key: K;
  dueAt: number;
  /** @internal */ level: number;
  /** @internal */ slot: number;
}

export class TimingWheel<K> {
  private readonly levels: Set<WheelEntry<K>>[][];
  private readonly byKey = new Map<K, WheelEntry<K>>();
  /** Entries scheduled for a tick already passed: the next advance returns them first. */
  private readonly overdue = new Set<WheelEntry<K>>();
  /** Entries beyond the wheel's span; placed once their due time comes within it. */
  private readonly far = new Set<WheelEntry<K>>();
  private farMinTick = Number.MAX_SAFE_INTEGER;
  private readonly spanTicks: number;
  /** Entries per level, so advancing can skip empty levels and idle stretches. */
  private readonly counts: number[];
  /** The current time in ticks: every entry due before this tick has been returned. */
  private tick: number;
  readonly tickMs: number;
  readonly slots: number;
  private readonly slotBits: number;

  constructor(options: { tickMs?: number; slots?: number; levels?: number; startMs: number }) {
    this.tickMs = options.tickMs ?? 4;
    this.slots = options.slots ?? 64;
    assert(Number.isInteger(Math.log2(this.slots)), 'slots must be a power of two');
    this.slotBits = Math.log2(this.slots);
    const levelCount = options.levels ?? 5;
    this.levels = Array.from({ length: levelCount }, () => Array.from({ length: this.slots }, () => new Set<WheelEntry<K>>()));
    this.counts = new Array<number>(levelCount).fill(0);
    this.tick = Math.floor(options.startMs / this.tickMs);
    this.spanTicks = this.slots ** levelCount;
  }

  get size(): number {
    return this.byKey.size;
  }

  /** The longest delay the wheel's levels hold; later entries wait aside until they come within it. */
  get spanMs(): number {
    return this.tickMs * this.slots ** this.levels.length;
  }

  has(key: K): boolean {
    return this.byKey.has(key);
  }

  /** Schedules `key` at `dueAt` (ms), replacing an earlier schedule of the same key. */
  schedule(key: K, dueAt: number): void {
    this.cancel(key);
    const entry: WheelEntry<K> = { key, dueAt, level: 0, slot: 0 };
    this.byKey.set(key, entry);
    this.place(entry);
  }

  /** Removes `key`; returns false when it was not scheduled. */
  cancel(key: K): boolean {
    const entry = this.byKey.get(key);
    if (entry === undefined) return false;
    this.byKey.delete(key);
    if (entry.level === -1) {
      this.overdue.delete(entry);
      return true;
    }
    if (entry.level === -2) {
      this.far.delete(entry);
      return true;
    }
    this.levels[entry.level]![entry.slot]!.delete(entry);
    this.counts[entry.level]!--;
    return true;
  }

  private place(entry: WheelEntry<K>): void {
    const dueTick = Math.floor(entry.dueAt / this.tickMs);
    if (dueTick < this.tick) {
      entry.level = -1;
      this.overdue.add(entry);
      return;
    }
    const delta = dueTick - this.tick;
    if (delta >= this.spanTicks) {
      entry.level = -2;
      this.far.add(entry);
      this.farMinTick = Math.min(this.farMinTick, dueTick);
      return;
    }
    let level = 0;
    while (level < this.levels.length - 1 && delta >= this.slots ** (level + 1)) level++;
    // Bucket index at this level: the due tick's digit in base `slots`.
    const slot = Math.floor(dueTick / this.slots ** level) % this.slots;
    entry.level = level;
    entry.slot = slot;
    this.levels[level]![slot]!.add(entry);
    this.counts[level]!++;
  }

  /**
   * Advances to `nowMs` and returns the keys now due, in due order within each tick.
   * @example
   *   const wheel = new TimingWheel<string>({ startMs: 0 });
   *   wheel.schedule('order-1', 1_800_000);
   *   wheel.advance(1_800_004); // ['order-1']
   */
  advance(nowMs: number): K[] {
    const target = Math.floor(nowMs / this.tickMs);
    const due: K[] = [];
    if (this.overdue.size > 0) {
      const late = [...this.overdue].sort((a, b) => a.dueAt - b.dueAt);
      this.overdue.clear();
      for (const e of late) {
        this.byKey.delete(e.key);
        due.push(e.key);
      }
    }
    if (this.byKey.size === 0) {
      this.tick = Math.max(this.tick, target);
      return due;
    }
    // Whole ticks before the current one: everything in their level-0 bucket is due.
    while (this.tick < target) {
      this.drainSlot(this.tick % this.slots, due, Number.POSITIVE_INFINITY);
      this.moveTo(this.tick + 1);
      // Skip idle ticks: with level 0 empty nothing fires before the next occupied coarser
      // bucket starts, so jump straight to that boundary (where it cascades).
      if (this.counts[0] === 0 && this.byKey.size > 0) {
        const next = this.nextOccupiedBoundary();
        if (next > this.tick) this.moveTo(Math.min(next, target));
      }
      if (this.byKey.size === 0) {
        this.tick = target;
        return due;
      }
    }
    // The current tick is only partly over: fire what is due by now and come back to it.
    this.drainSlot(this.tick % this.slots, due, nowMs);
    return due;
  }

  /**
   * A time before which nothing comes due, for arming a timer: the earliest due time in level 0's
   * first occupied bucket, or the start of the next coarser bucket that cascades (its entries are
   * due no sooner), whichever is first. -Infinity when entries are overdue, +Infinity when empty.
   * Waking then and advancing never fires late; at worst it finds nothing due yet. O(levels × slots).
   */
  nextWakeAt(): number {
    if (this.overdue.size > 0) return Number.NEGATIVE_INFINITY;
    if (this.byKey.size === 0) return Number.POSITIVE_INFINITY;
    let wake = this.counts[0]! > 0 ? this.firstDueInLevel0() : Number.POSITIVE_INFINITY;
    if (this.counts[0]! < this.byKey.size) {
      const boundary = this.nextOccupiedBoundary();
      if (boundary < Number.MAX_SAFE_INTEGER) wake = Math.min(wake, boundary * this.tickMs);
    }
    return wake;
  }

  /** Level 0 holds ticks [tick, tick + slots): the first occupied bucket from the current one holds the earliest. */
  private firstDueInLevel0(): number {
    for (let i = 0; i < this.slots; i++) {
      const bucket = this.levels[0]![(this.tick + i) % this.slots]!;
      if (bucket.size === 0) continue;
      let min = Number.POSITIVE_INFINITY;
      for (const e of bucket) if (e.dueAt < min) min = e.dueAt;
      return min;
    }
    assert.fail('level 0 counts entries but has none');
  }

  /** The earliest future tick at which some occupied bucket of level 1 or above cascades, or a far entry comes within span. */
  private nextOccupiedBoundary(): number {
    let best = this.far.size > 0 ? this.farMinTick - this.spanTicks + 1 : Number.MAX_SAFE_INTEGER;
    for (let level = 1; level < this.levels.length; level++) {
      if (this.counts[level] === 0) continue;
      const width = this.slots ** level;
      const window = Math.floor(this.tick / width);
      for (let i = 1; i <= this.slots; i++) {
        if (this.levels[level]![(window + i) % this.slots]!.size > 0) {
          best = Math.min(best, (window + i) * width);
          break;
        }
      }
    }
    return best;
  }

  /** Sets the current tick; at a level boundary, the coarser buckets that start now fall to finer levels. */
  private moveTo(tick: number): void {
    this.tick = tick;
    if (this.far.size > 0 && this.farMinTick - tick < this.spanTicks) this.placeFar();
    for (let level = 1; level < this.levels.length && tick % this.slots ** level === 0; level++) {
      this.cascade(level, Math.floor(tick / this.slots ** level) % this.slots);
    }
  }

  /** Moves the far entries that are now within span into the wheel. */
  private placeFar(): void {
    const entries = [...this.far];
    this.far.clear();
    this.farMinTick = Number.MAX_SAFE_INTEGER;
    for (const e of entries) this.place(e);
  }

  /** Returns the level-0 bucket's entries due by `limitMs`, in due order. */
  private drainSlot(slot: number, due: K[], limitMs: number): void {
    const bucket = this.levels[0]![slot]!;
    if (bucket.size === 0) return;
    const ready: WheelEntry<K>[] = [];
    for (const e of bucket) if (e.dueAt <= limitMs) ready.push(e);
    ready.sort((a, b) => a.dueAt - b.dueAt);
    for (const e of ready) {
      bucket.delete(e);
      this.counts[0]!--;
      this.byKey.delete(e.key);
      due.push(e.key);
    }
  }

  private cascade(level: number, slot: number): void {
    const bucket = this.levels[level]![slot]!;
    if (bucket.size === 0) return;
    const moving = [...bucket];
    bucket.clear();
    this.counts[level]! -= moving.length;
    for (const e of moving) this.place(e);
  }

  /** The earliest due time among scheduled keys, or null (O(n); for tests and status). */
  earliest(): number | null {
    let min: number | null = null;
    for (const e of this.byKey.values()) if (min === null || e.dueAt < min) min = e.dueAt;
    return min;
  }
}
