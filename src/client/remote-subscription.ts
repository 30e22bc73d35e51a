/**
 * `remote.subscribe()`: a remote consumer seen as an async iterator, with the embedded rules
 * (src/broker/subscription.ts). Deliveries wait in a buffer bounded by prefetch. With ack 'auto'
 * a message is acked when the loop asks for the next one; breaking out of the loop closes the
 * consumer and hands back what it held.
 */
import type { AckMode } from '../broker/group.js';
import type { RemoteMessage } from './remote-message.js';

interface Closable {
  close(): Promise<void>;
}

export class RemoteSubscription implements AsyncIterableIterator<RemoteMessage> {
  private buffer: { msg: RemoteMessage; done: () => void; cancel: () => void }[] = [];
  private pull: ((r: IteratorResult<RemoteMessage>) => void) | null = null;
  /** The handler call of the message the loop is working on: settle it to ack ('auto') or cancel to give it back. */
  private current: { done: () => void; cancel: () => void } | null = null;
  private consumer: Closable | null = null;
  private ready: Promise<void> = Promise.resolve();
  private closed = false;
  private failure: Error | null = null;

  constructor(readonly ackMode: AckMode) {}

  /** @internal The consumer's handler: parks each message until the loop takes it. */
  readonly handler = (msg: RemoteMessage): Promise<void> | void => {
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
  starting(p: Promise<Closable>): void {
    this.ready = p.then(
      (c) => {
        this.consumer = c;
        if (this.closed) void c.close();
      },
      (err: Error) => {
        this.failure = err;
      },
    );
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<RemoteMessage>> {
    await this.ready;
    if (this.failure !== null) throw this.failure;
    // Settling the previous handler call acks it in 'auto' mode and frees the slot.
    const previous = this.current;
    this.current = null;
    previous?.done();
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

  async return(): Promise<IteratorResult<RemoteMessage>> {
    await this.close();
    return { value: undefined, done: true };
  }

  /** Stops the subscription; messages it held but did not ack are redelivered to others. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // As embedded: the message the loop held when it ended is not acked, even in 'auto' mode.
    const pull = this.pull;
    this.pull = null;
    if (pull !== null) pull({ value: undefined, done: true });
    const parked = this.buffer;
    this.buffer = [];
    const current = this.current;
    this.current = null;
    const closing = this.consumer?.close();
    for (const p of parked) p.cancel();
    current?.cancel();
    await closing;
  }
}
