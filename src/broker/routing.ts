/**
 * Exchange routing: which queues a routing key reaches.
 * - direct: the binding key equals the routing key;
 * - topic: dot-separated words, `*` matches exactly one word, `#` zero or more;
 * - fanout: every bound queue, whatever the key.
 * Results are cached per routing key until the exchange's bindings change.
 */
import assert from 'node:assert/strict';

export type ExchangeType = 'direct' | 'topic' | 'fanout';
export const EXCHANGE_TYPES: readonly ExchangeType[] = ['direct', 'topic', 'fanout'];

export interface Binding {
  queue: string;
  pattern: string;
}

/** True when topic binding `pattern` matches `routingKey`. */
export function topicMatches(pattern: string, routingKey: string): boolean {
  // As in RabbitMQ, an empty key has zero words: '#' matches it, '*' does not.
  return matchWords(pattern === '' ? [] : pattern.split('.'), 0, routingKey === '' ? [] : routingKey.split('.'), 0);
}

function matchWords(p: string[], pi: number, k: string[], ki: number): boolean {
  while (pi < p.length) {
    const word = p[pi] as string;
    if (word === '#') {
      // Collapse runs of '#', then try every split point for the rest.
      while (pi + 1 < p.length && p[pi + 1] === '#') pi++;
      if (pi + 1 === p.length) return true;
      for (let j = ki; j <= k.length; j++) if (matchWords(p, pi + 1, k, j)) return true;
      return false;
    }
    if (ki >= k.length) return false;
    if (word !== '*' && word !== k[ki]) return false;
    pi++;
    ki++;
  }
  return ki === k.length;
}

const ROUTE_CACHE_MAX = 10_000;

export class ExchangeRouter {
  private bindings: Binding[] = [];
  private cache = new Map<string, readonly string[]>();

  constructor(readonly type: ExchangeType) {
    assert(EXCHANGE_TYPES.includes(type));
  }

  get bindingList(): readonly Binding[] {
    return this.bindings;
  }

  /** Adds a binding; returns false when it already existed. */
  bind(queue: string, pattern: string): boolean {
    if (this.bindings.some((b) => b.queue === queue && b.pattern === pattern)) return false;
    this.bindings = [...this.bindings, { queue, pattern }];
    this.cache.clear();
    return true;
  }

  unbind(queue: string, pattern?: string): number {
    const before = this.bindings.length;
    this.bindings = this.bindings.filter((b) => !(b.queue === queue && (pattern === undefined || b.pattern === pattern)));
    this.cache.clear();
    return before - this.bindings.length;
  }

  /** The distinct queues `routingKey` reaches, in binding order. */
  route(routingKey: string): readonly string[] {
    const hit = this.cache.get(routingKey);
    if (hit !== undefined) return hit;
    const out: string[] = [];
    for (const b of this.bindings) {
      const match = this.type === 'fanout' || (this.type === 'direct' ? b.pattern === routingKey : topicMatches(b.pattern, routingKey));
      if (match && !out.includes(b.queue)) out.push(b.queue);
    }
    if (this.cache.size >= ROUTE_CACHE_MAX) this.cache.clear();
    this.cache.set(routingKey, out);
    return out;
  }
}
