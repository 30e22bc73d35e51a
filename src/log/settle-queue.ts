/**
 * Settles items in order, at most `perTurn` in one event-loop turn; the rest in later turns.
 *
 * Why: settling an append's promise runs its caller's continuation, and a caller keeping many
 * appends outstanding makes its next append there. One group commit of 1,000 appends, settled at
 * once, held the event loop for 8-20 ms, and everything else due meanwhile waited behind it: timer
 * fires of delayed messages, another log's fdatasync completion, consumer deliveries, heartbeats.
 * Between two chunks the loop polls I/O and runs timers (the next chunk is a `setImmediate`).
 *
 * The first chunk is settled synchronously, so a lone append resolves exactly as soon as before.
 * Items pushed while older ones wait are settled after them: settlement order is push order.
 */
import assert from 'node:assert/strict';

export class SettleQueue<T> {
  private items: T[] = [];
  private head = 0;
  private scheduled = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly perTurn: number,
    private readonly settle: (item: T) => void,
  ) {
    assert.ok(Number.isInteger(perTurn) && perTurn > 0, 'perTurn is a positive integer');
  }

  /** Nothing is waiting to be settled. */
  get idle(): boolean {
    return this.head === this.items.length;
  }

  push(item: T): void {
    this.items.push(item);
  }

  /** Settles what was pushed: a chunk now, unless older items are already waiting for their turn. */
  flush(): void {
    if (!this.scheduled) this.runChunk();
  }

  /** Resolves once every item pushed so far is settled. */
  whenIdle(): Promise<void> {
    if (this.idle) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private runChunk(): void {
    const end = Math.min(this.items.length, this.head + this.perTurn);
    while (this.head < end) {
      const item = this.items[this.head] as T;
      this.items[this.head++] = undefined as T; // not kept alive until the array is reset
      this.settle(item);
    }
    if (this.head < this.items.length) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.runChunk();
      });
      return;
    }
    this.items.length = 0;
    this.head = 0;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
