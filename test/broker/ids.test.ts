// Generated message ids: 26 base32hex characters, unique, and sorting in generation order.
import { afterEach, describe, expect, it } from 'vitest';
import { generateId, generateIds } from '../../src/broker/message.js';
import { BrokerHarness } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

describe('generateId', () => {
  it('makes unique, time-sortable 26-character base32hex ids whose counter counts up by one', () => {
    // Proves the id layout: 10 chars of ms, 8 fixed random chars, an 8-char counter (parsed back, +1 each call); sorting the ids keeps generation order.
    const ids = Array.from({ length: 100_000 }, () => generateId());
    for (const id of ids) expect(id).toMatch(/^[0-9a-v]{26}$/);
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
    for (let i = 1; i < ids.length; i++) {
      const prev = parseInt((ids[i - 1] as string).slice(18), 32);
      const cur = parseInt((ids[i] as string).slice(18), 32);
      if (cur !== (prev + 1) % 2 ** 40) expect.fail(`id ${i}: counter ${cur} after ${prev}`);
      expect((ids[i] as string).slice(10, 18)).toBe((ids[0] as string).slice(10, 18));
    }
    const ms = parseInt((ids[0] as string).slice(0, 10), 32);
    expect(Math.abs(ms - Date.now())).toBeLessThan(60_000);
  });

  it('generateIds makes the ids generateId would have made one by one, and generateId carries on after them', () => {
    // Proves the bulk path: 3,000 ids (two 1,024 carries) have the layout, count up by one, share the ms and random parts, and the next lone id follows the last.
    const now = Date.now(); // one ms for all: a clock step would hide a stale cached head
    const before = generateId(now);
    const ids = generateIds(3000, now);
    const after = generateId(now);
    const counter = (id: string) => parseInt(id.slice(18), 32);
    const all = [before, ...ids, after];
    for (const id of all) expect(id).toMatch(/^[0-9a-v]{26}$/);
    for (let i = 1; i < all.length; i++) {
      if (counter(all[i] as string) !== (counter(all[i - 1] as string) + 1) % 2 ** 40) expect.fail(`id ${i}: ${all[i]} after ${all[i - 1]}`);
    }
    expect([...all].sort()).toEqual(all);
    expect(new Set(ids.map((id) => id.slice(10, 18)))).toEqual(new Set([before.slice(10, 18)]));
    expect(generateIds(0)).toEqual([]);
    expect(generateIds(1)[0]).toMatch(/^[0-9a-v]{26}$/);
  });
});

describe('publishBatch ids', () => {
  it('makes ids only for the messages without one: the generated ones count up by one across the batch and on after it', async () => {
    // A served client's batches carry an id on every message; making an id for each anyway cost
    // ~2% of the server's publish CPU. Made only where missing, the counter moves by exactly those.
    const b = await h.openBroker();
    await b.assertQueue('q');
    const own = (i: number) => ({ routingKey: 'q', body: `own ${i}`, id: `caller-${i}` });
    const none = (i: number) => ({ routingKey: 'q', body: `none ${i}` });
    const batch = [own(0), none(1), own(2), own(3), none(4), own(5), none(6)];
    const results = await b.publishBatch('', batch);
    const after = (await b.sendToQueue('q', 'after')).id;
    expect(results.map((r) => r.status)).toEqual(batch.map(() => 'confirmed'));
    expect(results.filter((_r, i) => 'id' in (batch[i] as object)).map((r) => r.id)).toEqual(['caller-0', 'caller-2', 'caller-3', 'caller-5']);
    const made = [...results.filter((_r, i) => !('id' in (batch[i] as object))).map((r) => r.id), after];
    const counter = (id: string) => parseInt(id.slice(18), 32);
    for (let i = 1; i < made.length; i++) expect(counter(made[i] as string), `${made[i]} after ${made[i - 1]}`).toBe((counter(made[i - 1] as string) + 1) % 2 ** 40);
    // A batch whose every message has an id makes none: the next generated id follows `after`.
    await b.publishBatch('', [own(10), own(11)]);
    const next = (await b.sendToQueue('q', 'next')).id;
    expect(counter(next)).toBe((counter(after) + 1) % 2 ** 40);
  });
});
