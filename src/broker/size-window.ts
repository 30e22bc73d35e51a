/**
 * The body sizes of the messages in a queue's window [start, end), so `maxBytes` can be enforced
 * exactly: 4 bytes of memory per queued message, kept only for queues that set maxBytes.
 */
export class SizeWindow {
  private sizes = new Uint32Array(1024);
  private head = 0;
  private count = 0;
  /** Sum of the sizes in the window. */
  total = 0;

  constructor(
    /** Offset of the first message in the window. */
    public start: number,
  ) {}

  get end(): number {
    return this.start + this.count;
  }

  /** Records the size of the message at `offset` (appends arrive in offset order). */
  add(offset: number, size: number): void {
    if (offset < this.end) return;
    while (this.end < offset) this.push(0);
    this.push(size);
  }

  private push(size: number): void {
    if (this.count === this.sizes.length) {
      const bigger = new Uint32Array(this.sizes.length * 2);
      for (let i = 0; i < this.count; i++) bigger[i] = this.sizes[(this.head + i) % this.sizes.length] as number;
      this.sizes = bigger;
      this.head = 0;
    }
    this.sizes[(this.head + this.count) % this.sizes.length] = size;
    this.count++;
    this.total += size;
  }

  /** Drops sizes below `offset`. */
  advanceTo(offset: number): void {
    if (offset > this.end) {
      this.start = offset;
      this.head = 0;
      this.count = 0;
      this.total = 0;
      return;
    }
    while (this.start < offset) {
      this.total -= this.sizes[this.head] as number;
      this.head = (this.head + 1) % this.sizes.length;
      this.count--;
      this.start++;
    }
  }

  /** The first offset from which the window's sizes add up to at most `bytes`. */
  headFor(bytes: number): number {
    let t = this.total;
    let i = 0;
    while (t > bytes && i < this.count) {
      t -= this.sizes[(this.head + i) % this.sizes.length] as number;
      i++;
    }
    return this.start + i;
  }
}
