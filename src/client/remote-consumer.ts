/**
 * The client half of a remote consumer: runs the handler on deliveries with the embedded
 * consumer's rules (src/broker/group.ts `Consumer`), and reports back per ack mode
 * (docs/protocol.md §4):
 * - 'auto': DONE when the handler resolves (ack) or throws (nack, or the consumer's retry policy,
 *   applied by the broker), unless the handler settled the message itself;
 * - 'manual': nothing; the handler calls msg.ack()/msg.nack();
 * - 'none': CREDIT, returning the slot (the message was acked when it was sent).
 * It holds at most `prefetch` deliveries (the server never sends more) and runs at most
 * `concurrency` handlers.
 */
import type { AckMode } from '../broker/group.js';
import type { RemoteMessage } from './remote-message.js';

export type RemoteHandler = (msg: RemoteMessage) => unknown;

/** What a consumer needs from its broker connection. */
export interface ConsumerLink {
  /** DONE for an 'auto' delivery, when its connection is still the current one. */
  done(msg: RemoteMessage, failure: string | null): void;
  /** CREDIT for a 'none' delivery, when its connection is still the current one. */
  credit(consumerId: number, msg: RemoteMessage): void;
  /** Stops the consumer on the server (and forgets it). */
  closeConsumer(consumer: RemoteConsumer): Promise<void>;
}

export interface ResolvedRemoteOptions {
  ack: AckMode;
  prefetch: number;
  concurrency: number;
}

export class RemoteConsumer {
  closed = false;
  /** @internal The server has started it at least once (its first consume request was answered). */
  opened = false;
  /** The consumer group, known once the server has started it. */
  groupName: string;
  readonly ackMode: AckMode;
  readonly prefetch: number;
  readonly concurrency: number;
  private running = 0;
  private waiting: RemoteMessage[] = [];
  private waitingHead = 0;
  private idle: (() => void)[] = [];

  constructor(
    /** @internal Unique on the client; the server knows the consumer by it. */
    readonly consumerId: number,
    readonly queue: string,
    private readonly handler: RemoteHandler,
    resolved: ResolvedRemoteOptions,
    /** @internal The options sent to the server (without client-side ones). */
    readonly wireOptions: Record<string, unknown>,
    private readonly link: ConsumerLink,
  ) {
    this.ackMode = resolved.ack;
    this.prefetch = resolved.prefetch;
    this.concurrency = resolved.concurrency;
    this.groupName = (wireOptions.group as string | undefined) ?? 'default';
  }

  /** @internal A delivery arrived. */
  push(msg: RemoteMessage): void {
    if (this.closed) return; // the server takes it back when the close reaches it
    // Not asserted against prefetch: as embedded, a lock timeout hands a waiting delivery back and
    // the server may send another in its place, while the stale one still waits here.
    if (this.running < this.concurrency) this.run(msg);
    else this.waiting.push(msg);
  }

  /** @internal The connection was lost: deliveries not started yet are the server's again. */
  dropWaiting(): void {
    this.waiting = [];
    this.waitingHead = 0;
  }

  private run(msg: RemoteMessage): void {
    this.running++;
    let result: unknown;
    try {
      result = this.handler(msg);
    } catch (err) {
      this.finish(msg, false, err);
      return;
    }
    if (result !== null && typeof result === 'object' && typeof (result as Promise<unknown>).then === 'function') {
      (result as Promise<unknown>).then(
        () => this.finish(msg, true, undefined),
        (err: unknown) => this.finish(msg, false, err),
      );
    } else {
      this.finish(msg, true, undefined);
    }
  }

  private finish(msg: RemoteMessage, ok: boolean, err: unknown): void {
    if (this.ackMode === 'auto') {
      if (!msg.settled) {
        msg.settled = true;
        this.link.done(msg, ok ? null : failureText(err));
      }
    } else if (this.ackMode === 'none') {
      this.link.credit(this.consumerId, msg);
    }
    this.running--;
    this.next();
  }

  private next(): void {
    if (this.waitingHead < this.waiting.length && !this.closed) {
      const msg = this.waiting[this.waitingHead++] as RemoteMessage;
      if (this.waitingHead === this.waiting.length) {
        this.waiting = [];
        this.waitingHead = 0;
      }
      this.run(msg);
    } else if (this.running === 0) {
      const idle = this.idle;
      this.idle = [];
      for (const f of idle) f();
    }
  }

  /**
   * Stops taking messages, waits for running handlers to settle (their outcomes still count),
   * then closes the consumer on the server, which hands every unsettled delivery to the others.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.dropWaiting();
    if (this.running > 0) await new Promise<void>((resolve) => this.idle.push(resolve));
    await this.link.closeConsumer(this);
  }
}

function failureText(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}
