/**
 * What the server needs from a broker, and which of its methods a remote client may call.
 * Methods the broker gained later (cancel, replay, purgeQueue) are looked up when called, so a
 * server built against an older broker answers "not supported" instead of failing to start.
 */
import type { Broker } from '../broker/broker.js';

export type ServedBroker = Broker;

/**
 * REQUEST ops that call the broker method of the same name (docs/protocol.md §3 REQUEST). A
 * closed list: a client must never reach `close` or anything else not meant for it.
 */
export const REMOTE_OPS: ReadonlySet<string> = new Set([
  'assertExchange',
  'deleteExchange',
  'assertQueue',
  'deleteQueue',
  'bindQueue',
  'unbindQueue',
  'queueStats',
  'stats',
  'listQueues',
  'listExchanges',
  'listBindings',
  'cancel',
  'replay',
  'purgeQueue',
]);

/**
 * Ops that change or read the topology. The server applies them one at a time, in arrival order,
 * across all connections: pipelined `assertQueue`, `bindQueue`, `listBindings` then behave as if
 * awaited one by one, and the broker never rewrites its topology file twice at once.
 */
export const TOPOLOGY_OPS: ReadonlySet<string> = new Set([
  'assertExchange',
  'deleteExchange',
  'assertQueue',
  'deleteQueue',
  'bindQueue',
  'unbindQueue',
  'purgeQueue',
  'queueStats',
  'stats',
  'listQueues',
  'listExchanges',
  'listBindings',
]);

/** Runs tasks one after another, in submission order; a failure does not stop the ones behind it. */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(task: () => T | Promise<T>): Promise<T> {
    const result = this.tail.then(task, task);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

/** The broker's method for `op`, bound, or null when this broker lacks it. */
export function brokerMethod(broker: ServedBroker, op: string): ((...args: unknown[]) => unknown) | null {
  if (!REMOTE_OPS.has(op)) return null;
  const fn = (broker as unknown as Record<string, unknown>)[op];
  return typeof fn === 'function' ? (fn as (...args: unknown[]) => unknown).bind(broker) : null;
}

/**
 * Records where the server listens in the data dir's LOCK, so `spool` commands find it
 * (docs/protocol.md §5; src/broker/lock.ts) through `broker.advertise`. Never writes a LOCK the
 * broker no longer holds.
 */
export function advertise(broker: ServedBroker, serving: { socket?: string; tcp?: string } | undefined, lockPid: () => number | null): void {
  const b = broker as unknown as { advertise?: (s: typeof serving) => void };
  if (lockPid() !== process.pid) return;
  if (typeof b.advertise === 'function') b.advertise(serving);
}
