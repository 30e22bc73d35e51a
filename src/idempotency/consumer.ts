/**
 * Exactly-once handling per consumer group on top of at-least-once delivery: a handler wrapper for
 * `broker.consume` (the broker's `idempotent` consume option is meant to call this).
 *
 *   const handler = idempotentHandler(store, 'billing-svc', async (msg) => charge(msg.json()), { windowMs: DAY });
 *   await broker.consume('billing', handler, { group: 'billing-svc', retry: { attempts: 20 } });
 *
 * For each delivery, before the handler runs, the key `${group}:${msg.id}` is claimed:
 * - done: the message was handled before (a redelivery, or the same id published twice): the
 *   handler is skipped and counted, and the wrapper resolves, so the broker acks it;
 * - in-progress: another delivery of it is being handled right now (a lock timeout handed it out
 *   again): the wrapper throws a retriable SPOOL_ERR_IN_PROGRESS, so the broker nacks it and it comes
 *   back later, by which time it is done (skip) or the lease has expired (run);
 * - acquired: the handler runs. If it throws, the lease is released and the error rethrown (the
 *   broker's retry rules apply). If it resolves, the completion is made durable, and only then
 *   does the wrapper resolve and the broker ack.
 *
 * The window that remains: a crash after the handler's side effect but before `complete` is
 * durable runs the handler again on redelivery. docs/idempotency.md shows how to close it.
 */
import { SpoolError } from '../errors.js';
import type { IdempotencyStore } from './store.js';

export interface IdempotentOptions {
  /** How long a handled message id is remembered. Default: the store's retentionMs. */
  windowMs?: number;
  /**
   * How long one delivery may hold the id before another delivery may run the handler (a crashed
   * or hung handler must not block the id forever). Keep it at or above the consumer's
   * lockTimeoutMs. Default 30,000 (the broker's default lock timeout).
   */
  leaseMs?: number;
}

export interface IdempotentCounters {
  /** Handler calls that succeeded and were recorded. */
  processed: number;
  /** Deliveries skipped because their id was already done. */
  skipped: number;
  /** Deliveries sent back because another delivery held the id. */
  inProgress: number;
  /** Handler calls that threw (the lease was released). */
  failed: number;
}

export type IdempotentHandler<M> = ((msg: M) => Promise<void>) & { readonly counters: IdempotentCounters };

export function idempotencyKey(group: string, messageId: string): string {
  return `${group}:${messageId}`;
}

export function idempotentHandler<M extends { readonly id: string }>(
  store: IdempotencyStore,
  group: string,
  handler: (msg: M) => unknown,
  options: IdempotentOptions = {},
): IdempotentHandler<M> {
  if (typeof group !== 'string' || group.length === 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'idempotentHandler needs a non-empty group name');
  if (typeof handler !== 'function') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'idempotentHandler needs a handler function');
  const windowMs = options.windowMs ?? store.retentionMs;
  const leaseMs = options.leaseMs ?? 30_000;
  // Checked now rather than at complete(), which would be after the side effect.
  if (!Number.isSafeInteger(windowMs) || windowMs < 1 || windowMs > store.retentionMs) {
    throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `windowMs must be an integer in 1..${store.retentionMs} (the store's retentionMs)`);
  }
  if (!Number.isSafeInteger(leaseMs) || leaseMs < 1) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'leaseMs must be a positive integer');
  const counters: IdempotentCounters = { processed: 0, skipped: 0, inProgress: 0, failed: 0 };
  const wrapped = async (msg: M): Promise<void> => {
    const key = idempotencyKey(group, msg.id);
    const claim = await store.claim(key, { ttlMs: leaseMs });
    if (claim === 'in-progress') {
      counters.inProgress++;
      throw new SpoolError('SPOOL_ERR_IN_PROGRESS', `message ${msg.id} is being handled by another delivery in group ${group}; it will be redelivered`);
    }
    if (claim !== 'acquired') {
      counters.skipped++;
      return;
    }
    try {
      await handler(msg);
    } catch (err) {
      counters.failed++;
      await store.release(key).catch(() => {
        // The lease then simply expires after leaseMs.
      });
      throw err;
    }
    await store.complete(key, undefined, { windowMs });
    counters.processed++;
  };
  return Object.assign(wrapped, { counters });
}
