/**
 * `broker.subscribe()`: a consumer seen as an async iterator. Deliveries wait in a buffer bounded
 * by prefetch. With ack 'auto' the handler's promise settles (and so acks) when the loop asks for
 * the next message; breaking out of the loop closes the consumer and hands back what it held.
 */
import type { Message } from './delivery.js';
import type { AckMode, Consumer } from './group.js';

export class Subscription implements AsyncIterableIterator<Message> {
  private buffer: { msg: Message; done: () => void; cancel: () => void }[] = [];
  private pull: ((r: IteratorResult<Message>) => void) | null = null;
  /** The handler call of the message the loop is working on: settle it to ack ('auto') or cancel to give it back. */
  private current: { done: () => void; cancel: () => void } | null = null;
  private consumer: Consumer | null = null;
  private ready: Promise<void> = Promise.resolve();
  private closed = false;
  private closeHooks: (() => void)[] = [];
  private failure: Error | null = null;

  constructor(private readonly ackMode: AckMode) {}

  /** @internal The consumer's handler: parks each message until the loop takes it. */
  readonly handler = (msg: Message): Promise<void> | void => {
    if (this.closed) return;
    return new Promise<void>((done, fail) => {
      const cancel = () => fail(new Error('subscription closed before the message was taken'));
      if (this.pull !== null) {
        const pull = this.pull;
        this.pull = null;
        this.current = { done, cancel };
        pull({ value: msg, done: false });
      } else {
        this.buffer.push({ msg, done, cancel });
      }
    });
  };

  /** @internal */
  attach(c: Consumer): void {
    this.consumer = c;
    if (this.closed) void c.close();
  }

  /** @internal */
  starting(p: Promise<void>): void {
    this.ready = p.catch((err: Error) => {
      this.failure = err;
    });
  }

  /** @internal */
  onClose(f: () => void): void {
    this.closeHooks.push(f);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<Message>> {
    await this.ready;
    if (this.failure !== null) throw this.failure;
    // Settling the previous handler call acks it in 'auto' mode and frees the slot.
    this.releaseCurrent();
    if (this.closed) return { value: undefined, done: true };
    const head = this.buffer.shift();
    if (head !== undefined) {
      this.current = head;
      return { value: head.msg, done: false };
    }
    return new Promise((resolve) => {
      this.pull = resolve;
    });
  }

  private releaseCurrent(): void {
    const current = this.current;
    this.current = null;
    current?.done();
  }

  async return(): Promise<IteratorResult<Message>> {
    await this.close();
    return { value: undefined, done: true };
  }

  /** Stops the subscription; messages it held but did not ack are redelivered to others. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // The message the loop held when it ended is not acked, even in 'auto' mode: the loop may
    // have ended by a throw while processing it. It is redelivered (at least once).
    const pull = this.pull;
    this.pull = null;
    if (pull !== null) pull({ value: undefined, done: true });
    // Parked messages were never processed: fail their handler calls so they are redelivered, not acked.
    const parked = this.buffer;
    this.buffer = [];
    const current = this.current;
    this.current = null;
    const closing = this.consumer?.close();
    for (const p of parked) p.cancel();
    current?.cancel();
    await closing;
    for (const f of this.closeHooks) f();
  }
}
