// Semantics of bad input: every refusal carries its stable error code and leaves the disk untouched.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Broker } from '../../src/broker/broker.js';
import { BrokerHarness, Inbox, expectCode, snapshotTree } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

const BAD_NAMES = ['', '.', '..', 'a/b', '../x', '../../escape', 'a\\b', 'x'.repeat(256), 'é', 'naïve', '日本', 'a b', 'a\0b', 'q\n'];

/** A broker whose data dir sits inside a private root, so writes outside the data dir are visible too. */
async function rooted(options: Parameters<BrokerHarness['openBroker']>[0] = {}): Promise<{ b: Broker; root: string }> {
  const root = h.dir('spool-sem-root-');
  const b = await h.openBroker({ ...options, dataDir: path.join(root, 'data') });
  return { b, root };
}

/** Runs the refusals and asserts nothing changed anywhere under `root`. */
async function unchanged(root: string, refusals: () => Promise<void>): Promise<void> {
  const before = snapshotTree(root);
  await refusals();
  expect(snapshotTree(root)).toEqual(before);
}

describe('invalid names → SPOOL_ERR_INVALID_NAME, nothing created', () => {
  it('queue, exchange and group names outside [A-Za-z0-9._-]{1,255}, "." and ".." are refused everywhere', async () => {
    // Proves name checking at every entry point for 14 bad names (traversal, separators, too long, unicode, NUL): each call fails INVALID_NAME and the tree under the data dir's parent is byte-identical.
    const { b, root } = await rooted();
    await b.assertQueue('q');
    await b.assertExchange('ex', 'direct');
    await unchanged(root, async () => {
      for (const name of BAD_NAMES) {
        const code = 'SPOOL_ERR_INVALID_NAME';
        await expectCode(() => b.assertQueue(name), code);
        await expectCode(() => b.assertExchange(name, 'direct'), code);
        await expectCode(() => b.assertExchange('ex2', 'direct', { alternateExchange: name }), code);
        await expectCode(() => b.assertQueue('q2', { deadLetterExchange: name }), code);
        await expectCode(() => b.consume('q', () => {}, { group: name }), code);
        await expectCode(() => b.subscribe('q', { group: name }).next(), code);
        await expectCode(() => b.bindQueue(name, 'ex', 'k'), code);
        await expectCode(() => b.bindQueue('q', name, 'k'), code);
        await expectCode(() => b.unbindQueue(name, 'ex', 'k'), code);
        await expectCode(() => b.deleteQueue(name), code);
        await expectCode(() => b.deleteExchange(name), code);
        await expectCode(() => b.sendToQueue(name, 'x'), code);
        await expectCode(() => b.queueStats(name), code);
        if (name !== '') await expectCode(() => b.publish(name, 'k', 'x'), code);
      }
    });
    expect(b.listQueues()).toEqual(['q']);
    expect(b.listExchanges().map((e) => e.name)).toEqual(['ex']);
    expect(Object.keys(b.queueStats('q').groups)).toEqual([]);
    expect(b.stats()).toMatchObject({ published: 0, unroutable: 0 });
  });

  it('names at the edge of the rules are accepted: 255 characters, dots, dashes, underscores', async () => {
    // Proves the checker is not over-strict: a 255-char queue/exchange/group and names like '...', '.hidden', 'A_b-9.c' work end to end and their directories stay inside the data dir.
    const { b, root } = await rooted();
    const long = 'L'.repeat(255);
    for (const name of [long, '...', '.hidden', 'A_b-9.c']) {
      await b.assertQueue(name);
      await b.assertExchange(name, 'fanout');
      await b.bindQueue(name, name);
      expect((await b.publish(name, '', 'x')).queues).toEqual([name]);
      const inbox = new Inbox();
      await b.consume(name, inbox.handler(), { group: name });
      await inbox.waitForCount(1);
      expect(fs.existsSync(path.join(root, 'data', 'queues', name, 'groups', name))).toBe(true);
    }
    expect(fs.readdirSync(root)).toEqual(['data']);
  });
});

describe('unknown queue or exchange → SPOOL_ERR_NOT_FOUND, nothing written', () => {
  it('every operation on a missing queue or exchange fails NOT_FOUND', async () => {
    // Proves NOT_FOUND at every entry point (publish, sendToQueue, consume, subscribe, bind, unbind, delete, stats) with the tree unchanged and no 'return'/'unroutable' event.
    const { b, root } = await rooted();
    await b.assertQueue('q');
    await b.assertExchange('ex', 'topic');
    let events = 0;
    b.on('return', () => events++);
    b.on('unroutable', () => events++);
    await unchanged(root, async () => {
      const code = 'SPOOL_ERR_NOT_FOUND';
      await expectCode(() => b.publish('nope', 'k', 'x', { mandatory: true }), code);
      await expectCode(() => b.sendToQueue('nope', 'x'), code);
      await expectCode(() => b.consume('nope', () => {}, { group: 'g' }), code);
      await expectCode(() => b.subscribe('nope', { group: 'g' }).next(), code);
      await expectCode(() => b.bindQueue('nope', 'ex', 'k'), code);
      await expectCode(() => b.bindQueue('q', 'nope', 'k'), code);
      await expectCode(() => b.unbindQueue('nope', 'ex', 'k'), code);
      await expectCode(() => b.unbindQueue('q', 'nope', 'k'), code);
      await expectCode(() => b.deleteQueue('nope'), code);
      await expectCode(() => b.deleteExchange('nope'), code);
      await expectCode(() => b.queueStats('nope'), code);
    });
    expect(events).toBe(0);
    expect(fs.existsSync(path.join(root, 'data', 'queues', 'nope'))).toBe(false);
    await b.deleteQueue('q');
    await expectCode(() => b.deleteQueue('q'), 'SPOOL_ERR_NOT_FOUND');
    await expectCode(() => b.sendToQueue('q', 'x'), 'SPOOL_ERR_NOT_FOUND');
  });
});

describe('body over maxMessageBytes → SPOOL_ERR_MESSAGE_TOO_LARGE, nothing appended', () => {
  it('the limit counts bytes (not characters) for strings, Buffers and Uint8Arrays', async () => {
    // Proves the body limit with maxMessageBytes 1024: exactly 1024 bytes is stored; 1025-byte Buffer/Uint8Array and a 513-char (1026-byte) string are refused; files and counters unchanged by refusals.
    const { b, root } = await rooted({ maxMessageBytes: 1024 });
    await b.assertQueue('q');
    await b.assertExchange('fx', 'fanout');
    await b.bindQueue('q', 'fx');
    expect((await b.sendToQueue('q', Buffer.alloc(1024, 1))).status).toBe('confirmed');
    expect((await b.sendToQueue('q', 'é'.repeat(512))).status).toBe('confirmed');
    await unchanged(root, async () => {
      const code = 'SPOOL_ERR_MESSAGE_TOO_LARGE';
      await expectCode(() => b.sendToQueue('q', Buffer.alloc(1025)), code);
      await expectCode(() => b.sendToQueue('q', new Uint8Array(1025)), code);
      await expectCode(() => b.sendToQueue('q', 'é'.repeat(513)), code);
      await expectCode(() => b.publish('fx', 'k', Buffer.alloc(4096), { id: 'big' }), code);
    });
    expect(b.queueStats('q').endOffset).toBe(2);
    expect(b.stats()).toMatchObject({ published: 2, duplicates: 0 });
    // A refused id was not remembered for dedupe.
    expect((await b.publish('fx', 'k', 'small', { id: 'big' })).status).toBe('confirmed');
  });
});

describe('conflicting redeclare → SPOOL_ERR_PRECONDITION, nothing changed', () => {
  it('queue options and exchange type/options must match an existing declaration', async () => {
    // Proves redeclare semantics: equal options (any key order) are idempotent; different queue options, exchange type or alternate exchange fail PRECONDITION and keep the original declaration.
    const { b, root } = await rooted();
    await b.assertQueue('q', { maxLength: 2, overflow: 'reject-publish' });
    await b.assertExchange('e', 'direct');
    await b.assertExchange('ae', 'fanout');
    await b.assertExchange('t', 'topic', { alternateExchange: 'ae' });
    await unchanged(root, async () => {
      await b.assertQueue('q', { overflow: 'reject-publish', maxLength: 2 });
      await b.assertExchange('e', 'direct');
      await b.assertExchange('t', 'topic', { alternateExchange: 'ae' });
      const code = 'SPOOL_ERR_PRECONDITION';
      await expectCode(() => b.assertQueue('q', { maxLength: 3, overflow: 'reject-publish' }), code);
      await expectCode(() => b.assertQueue('q', { maxLength: 2 }), code);
      await expectCode(() => b.assertQueue('q'), code);
      await expectCode(() => b.assertQueue('q', { maxLength: 2, overflow: 'reject-publish', dedupeWindowMs: 10 }), code);
      await expectCode(() => b.assertExchange('e', 'topic'), code);
      await expectCode(() => b.assertExchange('e', 'fanout'), code);
      await expectCode(() => b.assertExchange('e', 'direct', { alternateExchange: 'ae' }), code);
      await expectCode(() => b.assertExchange('t', 'topic'), code);
      await expectCode(() => b.assertExchange('t', 'topic', { alternateExchange: 'e' }), code);
    });
    expect(b.listExchanges().find((x) => x.name === 'e')).toEqual({ name: 'e', type: 'direct', options: {} });
    await b.sendToQueue('q', '1');
    await b.sendToQueue('q', '2');
    await expectCode(() => b.sendToQueue('q', '3'), 'SPOOL_ERR_QUEUE_FULL');
  });
});

describe('invalid options → SPOOL_ERR_INVALID_ARGUMENT, nothing written', () => {
  it('bad queue options, exchange types, publish arguments and consumer options are refused', async () => {
    // Proves argument checking at every entry point (values of the wrong type or range) with the tree and counters unchanged, and no queue/group created.
    const { b, root } = await rooted();
    await b.assertQueue('q');
    await b.assertExchange('ex', 'direct');
    await b.bindQueue('q', 'ex', 'k');
    const anyB = b as unknown as Record<string, (...args: unknown[]) => unknown>;
    await unchanged(root, async () => {
      const code = 'SPOOL_ERR_INVALID_ARGUMENT';
      const badQueueOptions: unknown[] = [
        { maxLength: -1 },
        { maxLength: 1.5 },
        { maxLength: '5' },
        { maxLength: Number.NaN },
        { maxLength: Number.POSITIVE_INFINITY },
        { maxBytes: -1 },
        { messageTtl: -5 },
        { deliveryLimit: 2.5 },
        { dedupeWindowMs: 'x' },
        { overflow: 'bogus' },
        { deadLetterRoutingKey: 5 },
        null,
      ];
      for (const o of badQueueOptions) await expectCode(() => anyB.assertQueue!.call(b, 'newq', o), code);
      for (const t of ['headers', 'Direct', '', undefined]) await expectCode(() => anyB.assertExchange!.call(b, 'newx', t), code);
      // publish arguments
      await expectCode(() => anyB.publish!.call(b, 'ex', 5, 'x'), code);
      for (const body of [5, {}, null, undefined, ['a']]) await expectCode(() => anyB.publish!.call(b, 'ex', 'k', body), code);
      for (const id of ['', 5, 'i'.repeat(1025)]) await expectCode(() => anyB.publish!.call(b, 'ex', 'k', 'x', { id }), code);
      // Header values are JSON (x-death is an array of objects), so only non-JSON values are refused.
      for (const headers of [[], 'h', null, 5, { a: undefined }, { a: Number.NaN }, { a: () => 1 }, { a: [1, undefined] }, { a: new Date() }]) {
        await expectCode(() => anyB.publish!.call(b, 'ex', 'k', 'x', { headers }), code);
      }
      await expectCode(() => anyB.bindQueue!.call(b, 'q', 'ex', 5), code);
      // consumer options
      await expectCode(() => anyB.consume!.call(b, 'q', 'not a function', { group: 'g' }), code);
      for (const o of [{ ack: 'bogus' }, { prefetch: 0 }, { prefetch: -1 }, { prefetch: 1.5 }, { concurrency: 0 }, { lockTimeoutMs: 0 }, { lockTimeoutMs: 'x' }]) {
        await expectCode(() => anyB.consume!.call(b, 'q', () => {}, { group: 'g', ...o }), code);
        await expectCode(() => (b.subscribe('q', { group: 'g', ...(o as object) }) as AsyncIterator<unknown>).next(), code);
      }
    });
    expect(b.listQueues()).toEqual(['q']);
    expect(b.listExchanges().map((e) => e.name)).toEqual(['ex']);
    expect(Object.keys(b.queueStats('q').groups)).toEqual([]);
    expect(b.queueStats('q').endOffset).toBe(0);
    expect(b.stats()).toMatchObject({ published: 0, unroutable: 0, duplicates: 0 });
    // 'i'.repeat(1024) is the longest id allowed.
    expect((await b.publish('ex', 'k', 'x', { id: 'i'.repeat(1024) })).status).toBe('confirmed');
  });

  it('an invalid `from` is refused and leaves no consumer group behind, not even after a restart', async () => {
    // Proves consumer 'from' validation writes nothing: from -1 / 1.5 / 'bogus' fail INVALID_ARGUMENT; no group in queueStats, no group directory on disk, and none appears after reopening.
    const { b, root } = await rooted();
    await b.assertQueue('q');
    const anyB = b as unknown as Record<string, (...args: unknown[]) => unknown>;
    for (const from of [-1, 1.5, 'bogus']) {
      await expectCode(() => anyB.consume!.call(b, 'q', () => {}, { group: 'g', from }), 'SPOOL_ERR_INVALID_ARGUMENT');
    }
    expect(Object.keys(b.queueStats('q').groups)).toEqual([]);
    const groupsDir = path.join(root, 'data', 'queues', 'q', 'groups');
    const leftovers = fs.existsSync(groupsDir) ? fs.readdirSync(groupsDir) : [];
    const b2 = await h.restart(b);
    expect(Object.keys(b2.queueStats('q').groups), 'groups after reopening').toEqual([]);
    expect(leftovers, 'group directories left by the refused consume').toEqual([]);
  });
});

describe('reserved header names', () => {
  it("header names starting with '\\0' are refused; look-alike names without it round-trip untouched", async () => {
    // Proves the metadata namespace is closed to users: '\0e', '\0k', '\0u', '\0h', '\0' fail INVALID_ARGUMENT with nothing appended; headers 'e'/'k'/'u' pass through and cannot spoof exchange or routing key.
    const { b, root } = await rooted();
    await b.assertQueue('q');
    await unchanged(root, async () => {
      for (const name of ['\0e', '\0k', '\0u', '\0h', '\0x', '\0', '\0custom']) {
        await expectCode(() => b.sendToQueue('q', 'x', { headers: { ok: 1, [name]: 'spoof' } }), 'SPOOL_ERR_INVALID_ARGUMENT');
      }
    });
    expect(b.queueStats('q').endOffset).toBe(0);
    const headers = { e: 'spoofed-exchange', k: 'spoofed-key', u: '', 'x\0': 'nul inside is fine', '\u0001': 'ctl' };
    await b.sendToQueue('q', 'body', { headers });
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'g' });
    await inbox.waitForCount(1);
    const m = inbox.messages[0]!;
    expect(m.headers).toEqual(headers);
    expect(m.exchange).toBe('');
    expect(m.routingKey).toBe('q');
  });
});
