// Semantics of exchange routing: default, direct, topic, fanout, multi-binding, and durable topology.
import { afterEach, describe, expect, it } from 'vitest';
import { BrokerHarness, Inbox, expectCode } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

describe('routing', () => {
  it('default exchange routes by queue name', async () => {
    // Proves '' delivers to exactly the queue named by the routing key and nowhere else: publish to q1, check result, offsets of q1/q2, and that a consumer of q1 reads it.
    const b = await h.openBroker();
    await b.assertQueue('q1');
    await b.assertQueue('q2');
    const r = await b.publish('', 'q1', 'hello');
    expect(r.status).toBe('confirmed');
    expect(r.queues).toEqual(['q1']);
    expect(b.queueStats('q1').endOffset).toBe(1);
    expect(b.queueStats('q2').endOffset).toBe(0);
    const miss = await b.publish('', 'nope', 'x');
    expect(miss).toMatchObject({ status: 'unroutable', queues: [] });
    const inbox = new Inbox();
    await b.consume('q1', inbox.handler(), { group: 'g' });
    await inbox.waitForCount(1);
    expect(inbox.messages[0]!.body.toString()).toBe('hello');
    expect(inbox.messages[0]!.exchange).toBe('');
    expect(inbox.messages[0]!.routingKey).toBe('q1');
  });

  it('direct exchange routes on exact binding-key equality', async () => {
    // Proves direct matching is exact (no prefix, case or wildcard matching): table of keys vs the queues each reaches.
    const b = await h.openBroker();
    await b.assertExchange('dx', 'direct');
    await b.assertQueue('qa');
    await b.assertQueue('qb');
    await b.bindQueue('qa', 'dx', 'k');
    await b.bindQueue('qb', 'dx', 'k.x');
    await b.bindQueue('qb', 'dx', '*');
    const cases: [string, string[]][] = [
      ['k', ['qa']],
      ['k.x', ['qb']],
      ['*', ['qb']],
      ['K', []],
      ['k.', []],
      ['kk', []],
      ['', []],
      ['anything', []],
    ];
    const wrong: string[] = [];
    for (const [key, expected] of cases) {
      const r = await b.publish('dx', key, key);
      if (JSON.stringify([...r.queues].sort()) !== JSON.stringify(expected)) wrong.push(`${JSON.stringify(key)} → ${JSON.stringify(r.queues)}, expected ${JSON.stringify(expected)}`);
    }
    expect(wrong).toEqual([]);
    expect(b.queueStats('qa').endOffset).toBe(1);
    expect(b.queueStats('qb').endOffset).toBe(2);
  });

  it('topic exchange: * is exactly one word, # is zero or more words', async () => {
    // Proves topic matching against a table of (pattern, routing key, match?) cases, including empty words; one queue per pattern, each key published once and its reached queues compared.
    const b = await h.openBroker();
    await b.assertExchange('tx', 'topic');
    const table: [pattern: string, matches: string[], misses: string[]][] = [
      ['a.#', ['a', 'a.b', 'a.b.c', 'a.'], ['b', 'ab', '', 'b.a']],
      ['#', ['', 'a', 'a.b.c', '.', 'x..y'], []],
      ['a.*.c', ['a.b.c', 'a..c', 'a.xyz.c'], ['a.c', 'a.b.b.c', 'a.b.c.d', 'x.b.c', 'a.b']],
      ['#.c', ['c', 'a.c', 'a.b.c', '.c'], ['a.c.d', 'cc', 'a.bc', '']],
      ['a.#.c', ['a.c', 'a.b.c', 'a.b.d.c', 'a.c.c', 'a..c'], ['a.b', 'ac', 'a.c.d', 'b.a.c']],
      ['a.*', ['a.b', 'a.'], ['a', 'a.b.c', 'b.a']],
      ['*.a', ['x.a', '.a'], ['a', 'x.y.a']],
      ['*.*', ['a.b', '.', 'a.'], ['a', 'a.b.c']],
      ['a.b', ['a.b'], ['a.b.c', 'a', 'a.bb', 'a..b']],
      ['a..b', ['a..b'], ['a.b', 'a.x.b']],
      ['#.#', ['', 'a', 'a.b.c'], []],
      ['*.#', ['a', 'a.b', 'a.b.c'], []],
      ['a.#.#.b', ['a.b', 'a.x.b', 'a.x.y.b'], ['a', 'b', 'a.x']],
    ];
    const queueOf = new Map<string, string>();
    for (const [i, [pattern]] of table.entries()) {
      const q = `p${i}`;
      queueOf.set(pattern, q);
      await b.assertQueue(q);
      await b.bindQueue(q, 'tx', pattern);
    }
    const keys = new Set<string>();
    for (const [, m, x] of table) for (const k of [...m, ...x]) keys.add(k);
    const wrong: string[] = [];
    for (const key of keys) {
      const r = await b.publish('tx', key, 'x');
      const reached = new Set(r.queues);
      for (const [pattern, matches, misses] of table) {
        const q = queueOf.get(pattern) as string;
        if (matches.includes(key) && !reached.has(q)) wrong.push(`pattern ${JSON.stringify(pattern)} should match key ${JSON.stringify(key)}`);
        if (misses.includes(key) && reached.has(q)) wrong.push(`pattern ${JSON.stringify(pattern)} should not match key ${JSON.stringify(key)}`);
      }
    }
    expect(wrong).toEqual([]);
    // The stored messages agree with the routing results: each queue holds one message per key it matched.
    for (const [pattern, matches] of table) {
      const q = queueOf.get(pattern) as string;
      expect(b.queueStats(q).endOffset, `messages in ${q} (${pattern})`).toBeGreaterThanOrEqual(matches.length);
    }
    expect(b.queueStats(queueOf.get('a.b') as string).endOffset).toBe(1);
  });

  it('fanout exchange delivers to every bound queue whatever the key', async () => {
    // Proves fanout ignores routing and binding keys: three queues bound with unrelated keys all receive each publish; an unbound queue does not.
    const b = await h.openBroker();
    await b.assertExchange('fx', 'fanout');
    for (const q of ['f1', 'f2', 'f3', 'other']) await b.assertQueue(q);
    await b.bindQueue('f1', 'fx', '');
    await b.bindQueue('f2', 'fx', 'zzz');
    await b.bindQueue('f3', 'fx', 'a.#');
    for (const key of ['', 'a', 'whatever.key']) {
      const r = await b.publish('fx', key, key);
      expect([...r.queues].sort()).toEqual(['f1', 'f2', 'f3']);
    }
    for (const q of ['f1', 'f2', 'f3']) expect(b.queueStats(q).endOffset).toBe(3);
    expect(b.queueStats('other').endOffset).toBe(0);
  });

  it('a message matching several bindings arrives once per queue', async () => {
    // Proves routing dedupes by queue: qa is bound twice (both patterns match), qb once; each queue stores and delivers the message exactly once.
    const b = await h.openBroker();
    await b.assertExchange('tx', 'topic');
    await b.assertQueue('qa');
    await b.assertQueue('qb');
    await b.bindQueue('qa', 'tx', 'order.*');
    await b.bindQueue('qa', 'tx', '*.created');
    await b.bindQueue('qa', 'tx', '#');
    await b.bindQueue('qb', 'tx', 'order.created');
    const r = await b.publish('tx', 'order.created', 'once');
    expect(r.status).toBe('confirmed');
    expect([...r.queues].sort()).toEqual(['qa', 'qb']);
    expect(b.queueStats('qa').endOffset).toBe(1);
    expect(b.queueStats('qb').endOffset).toBe(1);
    const inbox = new Inbox();
    await b.consume('qa', inbox.handler('qa'), { group: 'g' });
    await b.consume('qb', inbox.handler('qb'), { group: 'g' });
    await inbox.waitForCount(2);
    await inbox.expectStays(2, 100);
    expect(inbox.bodies('qa')).toEqual(['once']);
    expect(inbox.bodies('qb')).toEqual(['once']);
    expect(inbox.messages[0]!.id).toBe(inbox.messages[1]!.id);
  });

  it('binding the same (queue, pattern) twice is one binding; unbind removes it', async () => {
    // Proves bindQueue is idempotent and unbindQueue stops routing: listBindings has one entry, and after unbind the key is unroutable.
    const b = await h.openBroker();
    await b.assertExchange('dx', 'direct');
    await b.assertQueue('q');
    await b.bindQueue('q', 'dx', 'k');
    await b.bindQueue('q', 'dx', 'k');
    expect(b.listBindings()).toEqual([{ exchange: 'dx', queue: 'q', pattern: 'k' }]);
    expect((await b.publish('dx', 'k', 'x')).queues).toEqual(['q']);
    await b.unbindQueue('q', 'dx', 'k');
    expect(b.listBindings()).toEqual([]);
    expect((await b.publish('dx', 'k', 'x')).status).toBe('unroutable');
    expect(b.queueStats('q').endOffset).toBe(1);
  });

  it('topology (exchanges, queues, bindings, options) survives a restart', async () => {
    // Proves topology is durable: declare, bind, unbind and delete, close and reopen; lists match, options are enforced (PRECONDITION on conflict), and routing still works.
    let b = await h.openBroker();
    await b.assertExchange('ae', 'fanout');
    await b.assertExchange('orders', 'topic', { alternateExchange: 'ae' });
    await b.assertExchange('direct1', 'direct');
    await b.assertExchange('gone', 'fanout');
    await b.assertQueue('billing', { maxLength: 10, overflow: 'reject-publish', dedupeWindowMs: 5000 });
    await b.assertQueue('lost', {});
    await b.assertQueue('audit', { messageTtl: 1000, deliveryLimit: 3, deadLetterExchange: 'ae' });
    await b.assertQueue('tmp');
    await b.bindQueue('billing', 'orders', 'order.*');
    await b.bindQueue('audit', 'orders', '#');
    await b.bindQueue('billing', 'direct1', 'pay');
    await b.bindQueue('billing', 'direct1', 'removed');
    await b.bindQueue('lost', 'ae');
    await b.bindQueue('tmp', 'gone');
    await b.unbindQueue('billing', 'direct1', 'removed');
    await b.deleteExchange('gone');
    await b.deleteQueue('tmp');
    const exchanges = b.listExchanges();
    const queues = b.listQueues();
    const bindings = b.listBindings();

    b = await h.restart(b);
    const sortEx = (xs: typeof exchanges) => [...xs].sort((x, y) => x.name.localeCompare(y.name));
    expect(sortEx(b.listExchanges())).toEqual(sortEx(exchanges));
    expect(sortEx(b.listExchanges())).toEqual([
      { name: 'ae', type: 'fanout', options: {} },
      { name: 'direct1', type: 'direct', options: {} },
      { name: 'orders', type: 'topic', options: { alternateExchange: 'ae' } },
    ]);
    expect(b.listQueues()).toEqual(queues);
    expect(b.listQueues()).toEqual(['audit', 'billing', 'lost']);
    const key = (x: { exchange: string; queue: string; pattern: string }) => `${x.exchange}|${x.queue}|${x.pattern}`;
    expect(b.listBindings().map(key).sort()).toEqual(bindings.map(key).sort());
    expect(b.listBindings().map(key).sort()).toEqual(['ae|lost|', 'direct1|billing|pay', 'orders|audit|#', 'orders|billing|order.*']);
    // Same declarations are idempotent; conflicting ones are refused, so the options were restored.
    await b.assertQueue('billing', { maxLength: 10, overflow: 'reject-publish', dedupeWindowMs: 5000 });
    await b.assertExchange('orders', 'topic', { alternateExchange: 'ae' });
    await expectCode(() => b.assertQueue('billing', {}), 'SPOOL_ERR_PRECONDITION');
    await expectCode(() => b.assertQueue('audit', { messageTtl: 1000, deliveryLimit: 4, deadLetterExchange: 'ae' }), 'SPOOL_ERR_PRECONDITION');
    await expectCode(() => b.assertExchange('orders', 'topic'), 'SPOOL_ERR_PRECONDITION');
    await expectCode(() => b.assertExchange('direct1', 'fanout'), 'SPOOL_ERR_PRECONDITION');
    // Routing is restored too: bindings, the alternate exchange, and the removals.
    expect([...(await b.publish('orders', 'order.created', 'x')).queues].sort()).toEqual(['audit', 'billing']);
    expect((await b.publish('direct1', 'pay', 'x')).queues).toEqual(['billing']);
    expect((await b.publish('direct1', 'removed', 'x')).status).toBe('unroutable');
    await expectCode(() => b.publish('gone', '', 'x'), 'SPOOL_ERR_NOT_FOUND');
    await expectCode(() => b.sendToQueue('tmp', 'x'), 'SPOOL_ERR_NOT_FOUND');
    await b.deleteQueue('audit');
    expect((await b.publish('orders', 'x.y', 'x')).queues).toEqual(['lost']);
    // The reject-publish limit came back with the queue: 2 stored so far, 8 more fit, the 11th is refused.
    for (let i = 0; i < 8; i++) await b.sendToQueue('billing', `fill${i}`);
    await expectCode(() => b.sendToQueue('billing', 'over'), 'SPOOL_ERR_QUEUE_FULL');
  });
});

